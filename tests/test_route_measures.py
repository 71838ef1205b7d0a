"""Uniform routes at inference (an ablation flag of the fusion network) and the route measures of
benchmarks/routes.py: the flag really replaces the routes and only inside its block, and the script reports
sane figures on a tiny checkpoint."""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path

import pytest
import torch

from sdfn.backbone import ImageFeatures, TextFeatures
from sdfn.fusion import FusionConfig, create_fusion
from sdfn.fusion.dfn import DynamicFusionNetwork, uniform_routes
from sdfn.model import ComposedRetrievalModel

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"
E, DV, DT, N, L, B = 32, 24, 20, 9, 7, 6


def features(seed: int = 0) -> tuple[ImageFeatures, TextFeatures]:
    g = torch.Generator().manual_seed(seed)
    mask = torch.ones(B, L, dtype=torch.bool)
    return (ImageFeatures(torch.randn(B, N, DV, generator=g), torch.randn(B, E, generator=g)),
            TextFeatures(torch.randn(B, L, DT, generator=g), mask, torch.randn(B, E, generator=g)))


def network(**kw) -> DynamicFusionNetwork:
    torch.manual_seed(0)
    cfg = FusionConfig(name="sdfn", width=16, layers=3, heads=2, router_hidden=8, dropout=0.0, **kw)
    return create_fusion(cfg, E, DV, DT).eval()


def test_uniform_routes_equal_the_fixed_route_and_apply_only_inside_the_block():
    fusion, fixed = network(), network(router="fixed")
    fixed.load_state_dict(fusion.state_dict(), strict=False)   # same cells and head; fixed has no routers
    learned = fusion(*features())
    with uniform_routes(fusion) as inside:
        assert inside is fusion and fusion.uniform_routes
        uniform = fusion(*features())
    for p in uniform.trace.incoming:
        torch.testing.assert_close(p, torch.full_like(p, 1 / p.shape[1]))
    assert uniform.trace.image is None and uniform.trace.text is None
    torch.testing.assert_close(uniform.query, fixed(*features()).query)      # = the fixed-route forward
    assert not torch.allclose(uniform.query, learned.query)
    assert not fusion.uniform_routes and not DynamicFusionNetwork.uniform_routes
    torch.testing.assert_close(fusion(*features()).query, learned.query)    # restored after the block


def test_uniform_routes_reaches_a_whole_model_and_is_restored_after_an_error(tiny_checkpoint):
    model = ComposedRetrievalModel.load(tiny_checkpoint)
    with pytest.raises(RuntimeError, match="inside"), uniform_routes(model):
        assert model.fusion.uniform_routes
        raise RuntimeError("inside")
    assert not model.fusion.uniform_routes
    with uniform_routes(network()) as plain:                 # nesting keeps the outer setting
        with uniform_routes(plain, enabled=False):
            assert not plain.uniform_routes
        assert plain.uniform_routes
    baseline = create_fusion(FusionConfig(name="combiner", width=16, heads=2), E, DV, DT)
    with uniform_routes(baseline):                          # a static fusion is left as it is
        assert not hasattr(baseline, "uniform_routes")


def load_script(name: str):
    spec = importlib.util.spec_from_file_location(f"benchmarks_{name}", BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_route_benchmark_on_a_tiny_checkpoint(small_catalog, tiny_checkpoint, tmp_path):
    routes = load_script("routes")
    quality = tmp_path / "QUALITY.md"
    quality.write_text("# Quality\n\nthe quality table\n")
    results = routes.main(["--checkpoint", str(tiny_checkpoint), "--label", "tiny", "--catalog", str(small_catalog),
                           "--quality", str(quality)])
    r = results["tiny"]
    assert set(r["differences"]) <= {"color", "pattern", "sleeve", "length", "neckline", "fit", "buttons", "belt"}
    assert len(r["differences"]) >= 5 and all(0.0 <= d <= 100.0 for d in r["differences"].values())
    assert 0.0 < r["entropy_ratio"] <= 1.0 + 1e-6
    assert r["entropy"] == pytest.approx(r["entropy_ratio"] * math.log(4))
    rec = r["recall"]
    assert 0.0 <= rec["R@1"] <= 100.0 and 0.0 <= rec["R@1 uniform routes"] <= 100.0
    assert rec["cost"] == pytest.approx(rec["R@1"] - rec["R@1 uniform routes"])
    text = quality.read_text()
    assert text.startswith("# Quality\n\nthe quality table\n") and "<!-- routes:start -->" in text
    assert "| tiny |" in text and tmp_path.as_posix() not in text


def test_router_temperature_sharpens_path_weights_and_defaults_to_the_paper():
    from sdfn.config import load_config
    from sdfn.errors import ConfigError

    paper, sharp = network(), network(router_temperature=0.25)
    sharp.load_state_dict(paper.state_dict())                 # same parameters, only the temperature differs
    torch.testing.assert_close(network(router_temperature=1.0)(*features()).query, paper(*features()).query)

    def undecided(fusion) -> float:
        w = torch.cat([x.flatten() for x in fusion(*features()).trace.weights])
        return float(((w > 0.05) & (w < 0.95)).float().mean())

    assert undecided(sharp) < undecided(paper)
    with pytest.raises(ConfigError, match="router_temperature"):
        network(router_temperature=0.0)
    assert load_config("tiny-synthetic").model.fusion.router_temperature == 1.0
    assert load_config("tiny-synthetic", ["model.fusion.router_temperature=0.5"]).model.fusion.router_temperature == 0.5
