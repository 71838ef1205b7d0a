"""The fusion network and its routers: shapes, the documented weight semantics, gradients, every registered fusion."""

from __future__ import annotations

import pytest
import torch

from sdfn.backbone import ImageFeatures, TextFeatures
from sdfn.errors import ConfigError
from sdfn.fusion import FusionConfig, create_fusion, list_fusions
from sdfn.losses import BatchClassificationLoss, SelfPathDistillation, route_kl, spd_ramp

E, DV, DT, N, L, B = 32, 24, 20, 9, 7, 6


def features(seed: int = 0) -> tuple[ImageFeatures, TextFeatures]:
    g = torch.Generator().manual_seed(seed)
    mask = torch.ones(B, L, dtype=torch.bool)
    mask[:, 4:] = False   # padded words
    return (ImageFeatures(torch.randn(B, N, DV, generator=g), torch.randn(B, E, generator=g)),
            TextFeatures(torch.randn(B, L, DT, generator=g), mask, torch.randn(B, E, generator=g)))


def sdfn(**kw):
    cfg = FusionConfig(name="sdfn", width=16, layers=3, heads=2, router_hidden=8, dropout=0.0, **kw)
    return create_fusion(cfg, E, DV, DT)


def test_registry_has_sdfn_and_every_baseline():
    assert set(list_fusions()) >= {"sdfn", "image_only", "text_only", "sum", "concat_mlp", "tirg", "combiner"}
    with pytest.raises(ConfigError, match="unknown fusion 'nope'.*combiner"):
        create_fusion(FusionConfig(name="nope"), E, DV, DT)


@pytest.mark.parametrize("name", ["sdfn", "image_only", "text_only", "sum", "concat_mlp", "tirg", "combiner"])
def test_every_fusion_gives_unit_queries_and_targets(name):
    fusion = create_fusion(FusionConfig(name=name, width=16, heads=2, router_hidden=8), E, DV, DT).eval()
    image, text = features()
    out = fusion(image, text)
    assert out.query.shape == (B, E)
    torch.testing.assert_close(out.query.norm(dim=-1), torch.ones(B))
    torch.testing.assert_close(fusion.embed_target(image.pooled).norm(dim=-1), torch.ones(B))
    assert (out.trace is not None) == (name == "sdfn")


def test_router_trace_shapes_and_documented_normalisation():
    fusion = sdfn().eval()
    trace = fusion(*features()).trace
    k = 4
    assert [tuple(w.shape) for w in trace.weights] == [(B, k, k), (B, k, k), (B, k, 1)]
    for w, p, img, txt in zip(trace.weights, trace.incoming, trace.image, trace.text, strict=True):
        assert (w >= 0).all() and (w < 1).all()
        assert (img >= 0).all() and (txt >= 0).all()
        torch.testing.assert_close(img + txt, w)                        # msr: the two parts make the weight
        torch.testing.assert_close(p.sum(dim=1), torch.ones(B, p.shape[2]))   # what each cell receives sums to 1
    assert trace.flat_route().shape == (B, k * k * 2 + k)


def test_routes_differ_between_queries_and_captions():
    fusion = sdfn().eval()
    image, text = features()
    a = fusion(image, text).trace.flat_route()
    b = fusion(image, features(seed=1)[1]).trace.flat_route()
    assert not torch.allclose(a[0], a[1])      # per-query routes, not one static path
    assert not torch.allclose(a, b)            # the text router changes the route


def test_shared_and_fixed_router_ablations():
    shared = sdfn(router="shared").eval()(*features()).trace
    assert shared.image is None and shared.text is None
    fixed = sdfn(router="fixed").eval()(*features()).trace
    for p in fixed.incoming:
        torch.testing.assert_close(p, torch.full_like(p, 1 / p.shape[1]))   # uniform static paths
    with pytest.raises(ConfigError, match="router mode 'weird'"):
        sdfn(router="weird")


def test_zero_incoming_weight_falls_back_to_the_uniform_mix():
    from sdfn.fusion.dfn import mix_incoming

    w = torch.zeros(1, 4, 2)
    w[0, 1, 1] = 0.5
    p = mix_incoming(w)
    torch.testing.assert_close(p[0, :, 0], torch.full((4,), 0.25))
    assert p[0, 1, 1] > 0.99


def test_gradients_reach_every_router_and_cell():
    fusion = sdfn()
    image, text = features()
    out = fusion(image, text)
    loss = BatchClassificationLoss()(out.query, fusion.embed_target(image.pooled))
    loss.backward()
    for r, (cells, routers) in enumerate(zip(fusion.layers, fusion.routers, strict=True)):
        for i, cell in enumerate(cells):
            params = list(cell.parameters())
            if params:
                assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in params), f"cell {r}.{i}"
            for bank in (routers.image, routers.text):
                for name, p in bank.named_parameters():     # [K, ...]: slice i is cell i's router
                    assert p.grad is not None and p.grad[i].abs().sum() > 0, f"router {r}.{i} {name}"


def test_batch_loss_ignores_duplicate_targets_as_negatives():
    loss = BatchClassificationLoss(init_temperature=0.1)
    q = torch.nn.functional.normalize(torch.randn(4, 8), dim=-1)
    t = q.clone()
    t[1] = t[0]          # queries 0 and 1 want the same image
    keys = torch.tensor([7, 7, 8, 9])
    with_keys, without = loss(q, t, keys), loss(q, t)
    assert with_keys < without


def test_self_path_distillation_memory():
    fusion = sdfn().eval()
    trace = fusion(*features()).trace
    spd = SelfPathDistillation(num_samples=10, route_size=trace.flat_route().shape[1])
    ids = torch.arange(B)
    assert spd(trace, ids).item() == 0.0                     # nothing remembered yet (first epoch)
    spd.update(trace.flat_route().detach(), ids)
    assert spd(trace, ids).item() == pytest.approx(0.0, abs=1e-6)   # same route: no distance
    changed = fusion(*features(seed=3)).trace
    assert spd(changed, ids).item() > 0                       # the route moved: pulled back
    assert route_kl(trace.flat_route(), changed.incoming).shape == (B,)
    assert spd_ramp(0, 10, 0.8) == 0.0 and spd_ramp(5, 10, 0.8) == pytest.approx(0.4)


@pytest.mark.parametrize("router", ["msr", "shared", "fixed"])
def test_one_interactive_query_runs_a_trace_with_the_eager_results(router):
    from sdfn.backbone import BackboneConfig
    from sdfn.model import ComposedRetrievalModel, ModelConfig

    model = ComposedRetrievalModel(ModelConfig(BackboneConfig(model="sdfn-tiny", pretrained=None),
                                               FusionConfig(width=32, heads=2, router_hidden=16, router=router)))
    model.eval()
    with torch.no_grad():
        images = model.encode_images(torch.randn(2, 3, 96, 96))
        texts = model.encode_texts(["is red", "has longer sleeves and a belt, and is a darker shade of blue"])
        for i in range(2):          # the trace recorded on the first text answers the second one too
            fast = model.compose(images[i:i + 1], texts[i:i + 1])
            slow = model.fusion(images[i:i + 1], texts[i:i + 1])
            assert torch.allclose(fast.query, slow.query, atol=1e-6)
            for a, b in zip(fast.trace.weights + fast.trace.incoming, slow.trace.weights + slow.trace.incoming,
                            strict=True):
                assert torch.allclose(a, b, atol=1e-6)
            assert (fast.trace.image is None) == (router != "msr")
        assert len(model._fusion_traces) == 1
        for p in model.fusion.parameters():     # weights changed in place (a training step) ...
            p.add_(0.01)
        model.train()
        model.eval()                            # ... and the next query records the trace again
        fast, slow = model.compose(images[:1], texts[:1]), model.fusion(images[:1], texts[:1])
        assert torch.allclose(fast.query, slow.query, atol=1e-6)
    batch = model.compose(images, texts)        # batches (and autograd) run the module itself
    assert batch.query.requires_grad and len(model._fusion_traces) == 1


def test_composing_never_switches_a_served_eval_model_and_restores_a_training_one():
    """The served model is shared (route statistics compose beside searches): compose_queries must not flip an
    eval model's mode at all; a model in training mode composes in eval and comes back training."""
    from sdfn.backbone import BackboneConfig
    from sdfn.encode import compose_queries
    from sdfn.model import ComposedRetrievalModel, ModelConfig

    model = ComposedRetrievalModel(ModelConfig(BackboneConfig(model="sdfn-tiny", pretrained=None),
                                               FusionConfig(width=32, heads=2, router_hidden=16)))
    modes, switch = [], model.train

    def recording_train(mode: bool = True):
        modes.append(mode)
        return switch(mode)

    model.eval()
    model.train = recording_train
    with torch.no_grad():
        image = model.encode_images(torch.randn(2, 3, 96, 96))
        served, _ = compose_queries(model, image, ["is red", "is blue"], 1)
        assert modes == [] and not model.training
        switch(True)
        trained, _ = compose_queries(model, image, ["is red", "is blue"], 1)
    assert modes == [False, True] and model.training
    assert torch.allclose(served, trained, atol=1e-5)        # the training model composed in eval mode


def test_interactive_queries_reuse_the_recorded_trace():
    """Each query through the one compose loop switches the model to eval mode; that must not throw the recorded
    trace away (re-recording it cost ~170 ms a query instead of ~15 ms on 2 cores)."""
    from sdfn.backbone import BackboneConfig
    from sdfn.encode import compose_queries
    from sdfn.model import ComposedRetrievalModel, ModelConfig

    model = ComposedRetrievalModel(ModelConfig(BackboneConfig(model="sdfn-tiny", pretrained=None),
                                               FusionConfig(width=32, heads=2, router_hidden=16)))
    model.eval()
    with torch.no_grad():
        image = model.encode_images(torch.randn(1, 3, 96, 96))
        compose_queries(model, image, ["is red"], 128)
        recorded = dict(model._fusion_traces)
        compose_queries(model, image, ["has long sleeves"], 128)
    assert len(recorded) == 1 and model._fusion_traces == recorded


def test_text_free_cells_leave_the_routers_as_the_only_way_the_sentence_reaches_the_stream():
    from sdfn.fusion.cells import CELLS, TEXT_FREE_CELLS

    assert set(TEXT_FREE_CELLS) <= set(CELLS)
    image, text = features()
    other = TextFeatures(text.tokens.flip(0), text.mask, text.pooled)   # other words, same sentence vector
    fusion, paper = sdfn(cells=TEXT_FREE_CELLS).eval(), sdfn().eval()
    with torch.no_grad():   # trained-like weights (the paper's FiLM starts at the identity)
        for p in [*fusion.parameters(), *paper.parameters()]:
            p.add_(0.3 * torch.randn_like(p))
    # the words reach no cell: with the sentence vector (the text router's input) fixed, nothing changes
    torch.testing.assert_close(fusion(image, text).query, fusion(image, other).query)
    assert not torch.allclose(paper(image, text).query, paper(image, other).query)   # the paper's cells read them
    routes = fusion(image, text).trace.flat_route()
    assert not torch.allclose(routes, fusion(image, features(seed=1)[1]).trace.flat_route())   # the sentence routes
    for name in ("token_mlp", "context_mix"):
        cell = CELLS[name](16, 2, 2.0, 0.0)
        assert "without reading the text" in cell.description
        x = torch.randn(2, 5, 16)
        assert cell(x, None).shape == x.shape


def test_region_cells_each_edit_one_band_of_the_garment_and_together_every_patch_once():
    from sdfn.fusion.cells import CELLS, REGION_CELLS

    assert set(REGION_CELLS) <= set(CELLS)
    bands = ("upper_edit", "middle_edit", "lower_edit")
    for patches, rows in ((64, [3, 2, 3]), (49, [3, 1, 3]), (N, [1, 1, 1])):   # 8x8, 7x7 (ViT-B-32), 3x3
        x = torch.randn(2, 1 + patches, 16)
        edited = []
        for name, want_rows in zip(bands, rows, strict=True):
            cell = CELLS[name](16, 2, 2.0, 0.0)
            changed = (cell(x, None) - x).abs().sum(dim=(0, 2)) > 0
            assert not changed[0]   # the global token passes unchanged
            tokens = changed.nonzero().flatten().tolist()
            side = int(patches ** 0.5)
            assert len(tokens) == want_rows * side and tokens == list(range(tokens[0], tokens[-1] + 1))
            edited += tokens
        assert sorted(edited) == list(range(1, 1 + patches))   # every patch token in exactly one band
    upper = CELLS["upper_edit"](16, 2, 2.0, 0.0)
    assert upper.token_span(64) == (0, 24) and "upper band" in upper.description
    assert "text-free" in CELLS["lower_edit"](16, 2, 2.0, 0.0).description
    image, text = features()
    other = TextFeatures(text.tokens.flip(0), text.mask, text.pooled)
    fusion = sdfn(cells=REGION_CELLS).eval()
    with torch.no_grad():
        for p in fusion.parameters():
            p.add_(0.3 * torch.randn_like(p))
        torch.testing.assert_close(fusion(image, text).query, fusion(image, other).query)   # text-free
        assert fusion(image, text).trace.flat_route().shape[-1] > 0
