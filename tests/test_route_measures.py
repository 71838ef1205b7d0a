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
    near = r["nearest_kind"]
    assert len(near) >= 2 and set(near) <= set(r["differences"])
    for kind, n in near.items():
        assert n["nearest"] in near and n["nearest"] != kind and 0.0 <= n["points"] <= 100.0 and n["queries"] >= 1
        # the distance is symmetric, so the nearest kind's own nearest is at most as far
        assert near[n["nearest"]]["points"] <= n["points"] + 1e-9
    assert 0.0 < r["entropy_ratio"] <= 1.0 + 1e-6
    assert r["entropy"] == pytest.approx(r["entropy_ratio"] * math.log(4))
    rec = r["recall"]
    assert 0.0 <= rec["R@1"] <= 100.0 and 0.0 <= rec["R@1 uniform routes"] <= 100.0
    assert rec["cost"] == pytest.approx(rec["R@1"] - rec["R@1 uniform routes"])
    text = quality.read_text()
    assert text.startswith("# Quality\n\nthe quality table\n") and "<!-- routes:start -->" in text
    assert "| tiny |" in text and tmp_path.as_posix() not in text and "NEAREST other kind" in text
    assert text.count("| tiny |") == 2   # the main table and the single-change table
    # another section records other checkpoints beside the routes section, which stays as it was
    routes.main(["--checkpoint", str(tiny_checkpoint), "--label", "again", "--catalog", str(small_catalog),
                 "--quality", str(quality), "--section", "routes-more", "--title", "More routes"])
    both = quality.read_text()
    assert both.startswith(text.rstrip("\n")) and "<!-- routes-more:start -->\n## More routes" in both
    assert both.count("| again |") == 2 and both.count("| tiny |") == 2


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


def routed_trace(weights: list[torch.Tensor]):
    from sdfn.fusion import RouterTrace
    from sdfn.fusion.dfn import mix_incoming

    return RouterTrace("msr", ("a", "b", "c", "d"), weights, [mix_incoming(w) for w in weights],
                       [w / 2 for w in weights], [w / 2 for w in weights])


def one_hot_routes(cells: list[int]) -> list[torch.Tensor]:
    """Per query a route through one cell per layer: every path out of that cell open, the others shut."""
    first = torch.zeros(len(cells), 4, 4)
    last = torch.zeros(len(cells), 4, 1)
    for b, c in enumerate(cells):
        first[b, c, :] = 0.9
        last[b, c, 0] = 0.9
    return [first, last]


def test_route_shaping_terms_reward_decisive_balanced_kind_specific_routes():
    from sdfn.losses import route_shaping, shaping_ramp

    kinds = torch.zeros(8, 8, dtype=torch.bool)
    kinds[:4, 0] = True                                         # four colour requests, four sleeve requests
    kinds[4:, 2] = True
    uniform = routed_trace([torch.full((8, 4, 4), 0.76), torch.full((8, 4, 1), 0.76)])
    same_cell = routed_trace(one_hot_routes([1] * 8))
    by_kind = routed_trace(one_hot_routes([0] * 4 + [3] * 4))
    u, s, k = (route_shaping(t, kinds=kinds) for t in (uniform, same_cell, by_kind))
    assert u["entropy"] == pytest.approx(2 * math.log(4), abs=1e-4)   # two layers of uniform incoming mixes
    assert s["entropy"] < 0.05 and k["entropy"] < 0.05            # one path per cell: decisive
    assert k["balance"] < s["balance"]                            # the batch uses two cells instead of one
    assert u["kind"] == pytest.approx(0.0, abs=1e-6) and s["kind"] == pytest.approx(0.0, abs=1e-6)
    assert k["kind"] < -1.0                                       # colour and sleeve leave through different cells
    assert route_shaping(uniform, budget=0.8)["sparsity"] == 0.0 and u["sparsity"] == pytest.approx(2 * 0.76)
    text = route_shaping(by_kind, router="text", kinds=kinds)     # the text part alone is the same route here
    assert text["kind"] == pytest.approx(float(k["kind"]), abs=1e-5)
    shared = routed_trace(one_hot_routes([0] * 8))
    shared.text = None
    with pytest.raises(ValueError, match="modality-specific"):
        route_shaping(shared, router="text")
    assert [shaping_ramp(e, 1.0, 2.0) for e in (0.5, 1.0, 2.0, 3.0, 5.0)] == [0.0, 0.0, 0.5, 1.0, 1.0]
    assert shaping_ramp(1.0, 1.0, 0.0) == 1.0


def test_route_shaping_trains_the_routes_and_refuses_settings_that_cannot_apply(small_catalog, tmp_path):
    from sdfn.config import load_config
    from sdfn.errors import ConfigError
    from sdfn.training.trainer import Trainer

    def config(*overrides: str):
        return load_config("tiny-synthetic", [
            f"data.root={small_catalog}", "data.synthesize=false", "pretrain.epochs=0",
            "model.backbone.model=sdfn-tiny", "model.fusion.width=32", "model.fusion.heads=2",
            "model.fusion.router_hidden=16", "optim.batch_size=16",
            "optim.num_workers=0", "eval.every=0", *overrides])

    assert load_config("tiny-synthetic", ["model.fusion.name=sdfn"]).routes.kind_weight >= 0.0
    paper = load_config("tiny-synthetic", ["routes.kind_weight=0", "routes.entropy_weight=0", "routes.balance_weight=0",
                                           "routes.sparsity_weight=0"])
    assert not any((paper.routes.kind_weight, paper.routes.entropy_weight, paper.routes.sparsity_weight))
    trainer = Trainer(config("routes.kind_weight=1.0", "routes.sparsity_weight=0.5", "routes.budget=0.2"),
                      tmp_path / "shaped", progress=False)
    assert trainer.shaping and trainer.kinds.shape == (len(trainer.triplets), 8) and trainer.kinds.any()
    before = trainer.model.fusion.routers[0].text.b2.detach().clone()
    record = trainer.train_step(list(range(16)), __import__("random").Random(0))
    assert {"route_kind", "route_sparsity", "route_entropy", "route_balance"} <= set(record)
    assert record["loss"] != pytest.approx(record["bbc"] + record["spd"])    # the terms are in the loss
    assert not torch.equal(before, trainer.model.fusion.routers[0].text.b2)
    for bad, match in ((["routes.kind_weight=-1"], "kind_weight"), (["routes.router=words"], "routes.router"),
                       (["routes.router=text", "routes.kind_weight=1", "model.fusion.router=shared"], "text router"),
                       (["routes.kind_weight=1", "model.fusion.name=combiner"], "has no routes")):
        with pytest.raises(ConfigError, match=match):
            Trainer(config(*bad), tmp_path / "bad", progress=False)


def test_paraphrase_consistency_compares_routes_of_one_request_phrased_differently(small_catalog, tiny_checkpoint):
    from sdfn.data.base import open_dataset
    from sdfn.routes import paraphrase_consistency, route_js_divergence

    model = ComposedRetrievalModel.load(tiny_checkpoint)
    dataset = open_dataset("fashioniq", small_catalog)
    result = paraphrase_consistency(model, dataset, "val", paraphrases=3, limit=40)
    assert 40 <= result.pairs <= 3 * 40                        # pairs with the same text are left out
    assert 0.0 <= result.same_strongest_path <= 1.0
    assert 0.0 < result.js_divergence <= math.log(2)
    assert result.to_json()["part"] == "heldout"
    a = routed_trace(one_hot_routes([0, 1, 2, 3]))
    b = routed_trace(one_hot_routes([0, 1, 3, 2]))
    js = route_js_divergence(a, b)
    assert js[:2].tolist() == pytest.approx([0.0, 0.0], abs=1e-6) and (js[2:] > 0.1).all()
    from sdfn.model import ModelConfig

    combiner = ComposedRetrievalModel(ModelConfig(fusion=FusionConfig(name="combiner", width=32, heads=2)))
    assert paraphrase_consistency(combiner, dataset, "val", limit=5) is None
