"""Explain this query (sdfn.explain, sdfn.demo_explain): leave-one-out occlusion of the words, word-to-region
attention, SDFN vs the shipped Combiner, two phrasings; the /explain and /compare_models endpoints and the tab in a
real browser."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from sdfn.backbone import ImageFeatures
from sdfn.errors import CheckpointError, ConfigError
from sdfn.explain import (
    SHIPPED_COMBINER,
    Explainer,
    explain_features,
    leave_one_out,
    load_fusion,
    route_changes,
    save_fusion,
    word_spans,
)
from sdfn.fusion import FusionConfig, create_fusion
from sdfn.fusion.cells import CrossModalRefinementCell, TextContext, recording_attention
from sdfn.model import ComposedRetrievalModel
from sdfn.retrieval import Retriever

# words that name what a change asks for (sdfn.routes' kinds of change), and words that carry none
CONTENT = re.compile(r"red|blue|green|black|white|gr[ae]y|pink|purple|yellow|orange|brown|beige|navy|maroon|"
                     r"strip|dot|plaid|check|floral|print|pattern|solid|plain|sleeve|strap|short|long|mini|midi|"
                     r"maxi|neck|collar|scoop|crew|fit|tight|loose|baggy|slim|button|belt", re.I)
FUNCTION = {"is", "and", "a", "an", "the", "has", "it", "in", "with", "of", "to"}


@pytest.fixture(scope="module")
def tiny_model(tiny_checkpoint) -> ComposedRetrievalModel:
    return ComposedRetrievalModel.load(tiny_checkpoint).eval()


@pytest.fixture(scope="module")
def shipped(small_catalog, tmp_path_factory) -> Explainer:
    """The shipped model and Combiner on a copy of the small catalog (its index built for the shipped model)."""
    folder = tmp_path_factory.mktemp("explain") / "catalog"
    shutil.copytree(small_catalog, folder)
    return Explainer(Retriever(None, folder, progress=False, threads=1))


def _features(model: ComposedRetrievalModel, seed: int = 0) -> ImageFeatures:
    g = torch.Generator().manual_seed(seed)
    size = model.backbone.image_size
    with torch.inference_mode():
        return model.encode_images(torch.randn(1, 3, *size, generator=g))


# ---- occlusion ----------------------------------------------------------------------------------------------

def test_occlusion_runs_one_batch_and_equals_each_query_run_alone(tiny_model, monkeypatch):
    text = "is red and has longer sleeves"
    image = _features(tiny_model)
    calls = []
    encode = tiny_model.encode_texts
    monkeypatch.setattr(tiny_model, "encode_texts", lambda texts: calls.append(list(texts)) or encode(texts))
    e = explain_features(tiny_model, image, text)
    monkeypatch.undo()
    words = text.split()
    assert calls == [[text, *leave_one_out(words)]]          # the full text and every variant, one batch
    assert [w.word for w in e.words] == words
    with torch.inference_mode():
        full = tiny_model.fusion(image, tiny_model.encode_texts([text]))
        for w in e.words:
            alone = tiny_model.fusion(image, tiny_model.encode_texts([leave_one_out(words)[w.index]]))
            change = route_changes(full.trace, alone.trace)[0]
            for router, values in change.points.items():
                assert w.route.points[router] == pytest.approx(values, abs=2e-3)
            assert w.query_shift == pytest.approx(1 - float(alone.query[0] @ full.query[0]), abs=1e-5)
            # the word's path effects: every path's weight with the word minus without it, in points
            effect = torch.cat([(a[0] - b[0]).flatten() for a, b in zip(full.trace.weights, alone.trace.weights,
                                                                         strict=True)]) * 100
            assert e.path_effects[w.index] == pytest.approx(effect.numpy(), abs=2e-3)
    assert len(e.path_labels) == e.path_effects.shape[1]


def test_route_change_units_are_points_and_bits(tiny_model):
    image = _features(tiny_model)
    with torch.inference_mode():
        out = tiny_model.fusion(ImageFeatures(image.tokens.expand(2, -1, -1), image.pooled.expand(2, -1)),
                                tiny_model.encode_texts(["make it red", "make it red"]))
    same = route_changes(out.trace[0:1], out.trace[1:2])[0]
    assert all(v == pytest.approx(0, abs=1e-3) for values in same.points.values() for v in values)
    assert same.js_bits == pytest.approx([0] * len(same.js_bits), abs=1e-6)
    other = out.trace[1:2]
    other.weights[0] = other.weights[0].clone()
    other.weights[0][0, 0, 0] += 0.05                       # one path 5 points higher
    moved = route_changes(out.trace[0:1], other)[0]
    k_in, k_out = other.weights[0].shape[1:]
    assert moved.points["path"][0] == pytest.approx(5 / (k_in * k_out), abs=1e-3)
    assert moved.max_points["path"][0] == pytest.approx(5, abs=1e-3)
    assert moved.largest == {"layer": 1, "from": other.cells[0], "to": other.cells[0], "points": pytest.approx(5)}


def test_words_that_name_a_change_move_the_shipped_route_more_than_filler_words(shipped):
    """Over the small catalog's first 40 val queries (all of them, no picking): leaving out a word that names
    what to change (colour, pattern, sleeves, ...) moves the trained model's route and query more, on average,
    than leaving out a filler word (is, and, a, has, ...)."""
    from sdfn.data.base import open_dataset
    from sdfn.evaluate import join_captions

    r = shipped.retriever
    triplets = open_dataset("fashioniq", r.catalog.root).triplets("val")[:40]
    content, filler, content_shift, filler_shift = [], [], [], []
    for t in triplets:
        e, _ = shipped.explain(t.reference, join_captions(t.captions))
        for w in e.words:
            bare = w.word.lower().strip(".,!?")
            if bare in FUNCTION:
                filler.append(w.route_points)
                filler_shift.append(w.query_shift)
            elif CONTENT.search(bare):
                content.append(w.route_points)
                content_shift.append(w.query_shift)
    assert len(content) > 40 and len(filler) > 40
    assert np.mean(content) > np.mean(filler)
    assert np.mean(content_shift) > np.mean(filler_shift)


def test_a_text_without_words_is_refused(tiny_model):
    with pytest.raises(ConfigError, match="change text"):
        explain_features(tiny_model, _features(tiny_model), "   ")


# ---- attention ------------------------------------------------------------------------------------------------

def test_attention_maps_are_each_patchs_shares_over_the_words(tiny_model):
    text = "has a v-neck and longer sleeves"
    e = explain_features(tiny_model, _features(tiny_model), text)
    words, spans, _ = word_spans(tiny_model.backbone, text)
    gh, gw = e.grid
    assert gh * gw == tiny_model.backbone.clip.visual.grid_size[0] * tiny_model.backbone.clip.visual.grid_size[1]
    cells = sum(isinstance(c, CrossModalRefinementCell) for layer in tiny_model.fusion.layers for c in layer)
    assert [a.layer for a in e.attention] == list(range(1, cells + 1))
    for a in e.attention:
        assert a.maps.shape == (len(words), gh, gw)
        assert (a.maps >= 0).all() and (a.maps <= 1).all()
        # every patch's attention over all tokens (the words, start and end) sums to 1
        assert a.maps.sum(0) + a.start_end == pytest.approx(np.ones((gh, gw)), abs=1e-5)
    # "v-neck" is several tokens: its span covers them all, and spans tile the text's tokens in order
    assert spans[0][0] == 1 and all(a[1] == b[0] for a, b in zip(spans, spans[1:], strict=False))
    assert spans[2][1] - spans[2][0] > 1


def test_the_attention_hook_is_off_outside_the_block_and_changes_no_output():
    torch.manual_seed(0)
    cell = CrossModalRefinementCell(16, 2, 2.0, 0.0).eval()
    torch.nn.init.normal_(cell.film.weight)
    x = torch.randn(2, 5, 16)
    text = TextContext(torch.randn(2, 4, 16), torch.tensor([[True] * 4, [True, True, False, False]]),
                       torch.randn(2, 16))
    plain = cell(x, text)
    with recording_attention() as records:
        recorded = cell(x, text)
    after = cell(x, text)
    assert torch.allclose(plain, recorded, atol=1e-6) and torch.allclose(plain, after)
    assert len(records) == 1 and records[0][0] is cell
    weights = records[0][1]
    assert weights.shape == (2, 5, 4)
    assert torch.allclose(weights.sum(-1), torch.ones(2, 5), atol=1e-5)
    assert torch.all(weights[1, :, 2:] == 0)                   # padding gets no attention


# ---- the Combiner ---------------------------------------------------------------------------------------------

def test_the_shipped_combiner_loads_beside_the_shipped_backbone_and_checks_its_fingerprint(tmp_path, tiny_model):
    model = ComposedRetrievalModel.load()
    loaded = load_fusion(SHIPPED_COMBINER, model)
    assert loaded.name == "combiner" and not loaded.fusion.has_routes
    assert sum(f.stat().st_size for f in SHIPPED_COMBINER.iterdir()) < 10 * 2**20
    with pytest.raises(CheckpointError, match="backbone"):       # another backbone: refused, says why
        load_fusion(SHIPPED_COMBINER, tiny_model)
    altered = tmp_path / "combiner"
    shutil.copytree(SHIPPED_COMBINER, altered)
    from safetensors.torch import load_file, save_file

    tensors = load_file(str(altered / "fusion.safetensors"))
    name = sorted(tensors)[0]
    tensors[name] = tensors[name] + 1e-3
    save_file(tensors, str(altered / "fusion.safetensors"))
    with pytest.raises(CheckpointError, match="fingerprint"):
        load_fusion(altered, model)


def test_a_saved_fusion_round_trips(tmp_path, tiny_model):
    combiner = _combiner_beside(tiny_model, tmp_path / "combiner")
    loaded = load_fusion(combiner, tiny_model)
    assert loaded.fusion.cfg.name == "combiner" and loaded.meta["backbone_fingerprint"] == \
        tiny_model.backbone_fingerprint()
    (combiner / "README.md").write_text("recipe and metrics\n")
    _combiner_beside(tiny_model, combiner)          # saved again over it: new weights, the card is kept
    assert (combiner / "README.md").read_text() == "recipe and metrics\n"
    assert load_fusion(combiner, tiny_model).meta["fingerprint"] == loaded.meta["fingerprint"]


def _combiner_beside(model: ComposedRetrievalModel, folder: Path) -> Path:
    """A (random) Combiner fusion saved for `model`'s backbone."""
    from dataclasses import replace

    torch.manual_seed(1)
    other = ComposedRetrievalModel.load(model.source)
    cfg = FusionConfig(name="combiner", width=32)
    other.fusion = create_fusion(cfg, other.backbone.embed_dim, other.backbone.image_token_dim,
                                 other.backbone.text_token_dim)
    other.cfg = replace(other.cfg, fusion=cfg)
    save_fusion(other, folder)
    return folder


def test_sdfn_and_combiner_answer_over_the_same_items_with_the_targets_exact_rank(shipped):
    r = shipped.retriever
    reference = r.catalog.ids[0]
    category = r.catalog.rows[0]["category"]
    target = next(i for i in r.catalog.ids[1:] if r.catalog.rows[r.catalog.row_of[i]]["category"] == category)
    c = shipped.compare_models(reference, "is red and has longer sleeves", 5, category, target)
    in_category = sum(row["category"] == category for row in r.catalog.rows)
    assert c.searched == in_category - 1                      # the reference left out
    assert [a.model for a in c.answers] == ["SDFN", "Combiner"]
    assert c.answers[0].route is not None and c.answers[1].route is None
    # the served model's list is what a search of the same query returns
    search = r.search(reference, "is red and has longer sleeves", 5, category)
    assert [i["id"] for i in c.answers[0].items] == [i.id for i in search.items]
    full = shipped.compare_models(reference, "is red and has longer sleeves", c.searched, category, target)
    for short, long in zip(c.answers, full.answers, strict=True):
        ids = [i["id"] for i in long.items]
        assert short.target_rank == long.target_rank == ids.index(target) + 1
        assert reference not in ids
        assert all(i["category"] == category for i in (r.catalog.metadata(r.catalog.row_of[x]) for x in ids))
    assert "rank" in c.summary()


def test_two_phrasings_side_by_side(shipped):
    r = shipped.retriever
    from sdfn.data.base import open_dataset

    t = open_dataset("fashioniq", r.catalog.root).triplets("val")[0]
    texts = shipped.paraphrases(t.reference, t.target, n=2)
    assert len(texts) == 2 and texts[0] != texts[1] and all(texts)
    same = shipped.compare_phrasings(t.reference, texts[0], texts[0])
    assert same.query_cosine == pytest.approx(1, abs=1e-5)
    assert max(same.change.points["path"]) == pytest.approx(0, abs=1e-3)
    other = shipped.compare_phrasings(t.reference, texts[0], texts[1], contrast="is striped instead of plain")
    assert other.query_cosine < 1 and max(other.change.points["path"]) > 0
    alone = shipped.compare_phrasings(t.reference, texts[0], "is striped instead of plain")
    for router, values in alone.change.points.items():            # the contrast rides in the same batch
        assert other.contrast_change.points[router] == pytest.approx(values, abs=2e-3)
    assert same.contrast is None and same.contrast_change is None
    assert len(other.to_json()["routing"]) == 2


def test_an_uploaded_reference_is_explained_too(shipped, small_catalog):
    image = next((small_catalog / "images").rglob("*.png"))
    e, view = shipped.explain(image, "is red")
    assert e.reference == "uploaded image" and [w.word for w in e.words] == ["is", "red"]
    assert view.size == tuple(shipped.retriever.model.backbone.image_size)


# ---- endpoints via the demo service ----------------------------------------------------------------------------

@pytest.fixture(scope="module")
def client(served_demo, tmp_path_factory):
    from gradio_client import Client

    from sdfn.demo_explain import use_combiner

    service = served_demo[0]
    use_combiner(service, _combiner_beside(service.retriever.model, tmp_path_factory.mktemp("fusion") / "combiner"))
    return Client(served_demo[1], verbose=False)


def test_explain_endpoint(client, served_demo):
    service = served_demo[0]
    reference = service.retriever.catalog.ids[3]
    out = client.predict(reference=reference, text="is red and has longer sleeves", api_name="/explain")
    assert [w["word"] for w in out["words"]] == ["is", "red", "and", "has", "longer", "sleeves"]
    assert set(out["words"][0]["route"]["points"]) == {"path", "image", "text"}
    assert "points of path weight" in out["units"]["points"]
    gh, gw = out["grid"]
    assert np.asarray(out["attention"][0]["maps"]).shape == (6, gh, gw)
    assert len(out["path_effects"]["paths"]) == len(out["path_effects"]["points"][0])
    both = client.predict(reference=reference, text="is red", other="make it red", api_name="/explain")
    assert both["phrasing"]["texts"] == ["is red", "make it red"]
    assert both["phrasing"]["contrast"] not in (None, "is red", "make it red")
    from gradio_client.exceptions import AppError

    with pytest.raises(AppError, match="change text"):
        client.predict(reference=reference, text="", api_name="/explain")
    with pytest.raises(AppError, match="unknown item id"):
        client.predict(reference="no-such-item", text="is red", api_name="/explain")


def test_compare_models_endpoint_gives_each_models_list_and_the_known_targets_rank(client, served_demo):
    service = served_demo[0]
    captions = service.captions()
    reference, s = next((ref, s) for ref in sorted(captions.by_reference) for s in captions.for_reference(ref)
                        if s.split == "val" and s.target)
    out = client.predict(reference=reference, text=s.text, k=4, api_name="/compare_models")
    assert out["target"] == s.target and out["category"] == service.item(reference)[1]["category"]
    assert [len(a["items"]) for a in out["answers"]] == [4, 4]
    assert all(isinstance(a["target_rank"], int) and a["target_rank"] >= 1 for a in out["answers"])
    everywhere = client.predict(reference=reference, text="is red", k=3, category="all", api_name="/compare_models")
    assert everywhere["category"] is None and everywhere["target"] is None
    assert everywhere["searched"] == len(service.retriever.index) - 1
    info = client.view_api(return_format="dict", print_info=False)["named_endpoints"]
    assert {"/search", "/route", "/route_plot", "/suggestions", "/route_statistics", "/info", "/explain",
            "/compare_models"} <= set(info)


def test_compare_models_refuses_a_combiner_of_another_backbone(served_demo, tmp_path):
    from sdfn.demo_explain import explainer_for, use_combiner

    service = served_demo[0]
    use_combiner(service, SHIPPED_COMBINER)      # trained on the shipped backbone, not the test checkpoint's
    try:
        with pytest.raises(CheckpointError, match="same backbone"):
            explainer_for(service).compare_models(service.retriever.catalog.ids[0], "is red")
    finally:
        use_combiner(service, _combiner_beside(service.retriever.model, tmp_path / "combiner"))


# ---- the Explain tab in a real browser -------------------------------------------------------------------------

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]
ARTIFACTS = Path(__file__).resolve().parent / "artifacts"
TIMEOUT_MS = 30_000
browser_only = pytest.mark.skipif(not CHROMIUM.is_file(), reason="needs Debian's chromium at /usr/bin/chromium")


@pytest.fixture(scope="module")
def browser():
    sync_api = pytest.importorskip("playwright.sync_api")
    with sync_api.sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


def _open(browser, served_demo, client, width: int, height: int):
    """A page on the demo (with the test Combiner in place: `client` set it) at this viewport; the page may fetch
    nothing from outside the demo's server."""
    from playwright.sync_api import expect

    expect.set_options(timeout=TIMEOUT_MS)    # page timeouts do not reach expect(); a busy machine takes seconds
    url = served_demo[1]
    context = browser.new_context(viewport={"width": width, "height": height})
    page = context.new_page()
    page.set_default_timeout(TIMEOUT_MS)
    outside: list[str] = []
    own = (url.rstrip("/"), "data:", "blob:")
    page.on("request", lambda r: None if r.url.startswith(own) else outside.append(r.url))
    page.goto(url)
    expect(page.locator("#catalog-browser button.thumbnail-item")).to_have_count(12)
    return context, page, outside


@browser_only
@pytest.mark.filterwarnings("ignore:.*(no_silent_downcasting|copy keyword).*")
def test_the_explain_tab_explains_the_example_then_the_searched_query(browser, served_demo, client):
    from playwright.sync_api import expect

    from sdfn.demo_explain import default_query

    service = served_demo[0]
    reference, text = default_query(service)
    context, page, outside = _open(browser, served_demo, client, 1400, 1000)
    # before any search: the fixed example, explained on opening the tab
    page.get_by_role("tab", name="Explain").click()
    expect(page.locator("#explain-query")).to_contain_text(reference)
    words = page.locator("#explain-words .sdfn-words span")
    expect(words).to_have_count(len(text.split()))
    colours = [words.nth(i).get_attribute("style") for i in range(len(text.split()))]
    assert all(re.search(r"background:rgba\(220,38,38,[01]\.\d\d\)", c) for c in colours), colours
    expect(page.locator("#explain-words")).to_contain_text("points")
    expect(page.locator("#explain-paths .js-plotly-plot")).to_be_visible()
    page.get_by_role("tab", name="Words → garment regions").click()
    layers = len(service.retriever.model.fusion.layers)
    expect(page.locator("#explain-regions button.thumbnail-item")).to_have_count(len(text.split()) * layers)
    page.get_by_role("tab", name="SDFN vs Combiner").click()
    expect(page.locator("#explain-sdfn button.thumbnail-item")).to_have_count(10)
    expect(page.locator("#explain-combiner button.thumbnail-item")).to_have_count(10)
    expect(page.locator("#explain-compare")).to_contain_text("Annotated target")
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "explain-compare.png"), full_page=True)
    # a search on the Search tab: opening Explain explains that query
    page.get_by_role("tab", name="Search").click()
    page.locator("#catalog-browser button.thumbnail-item").nth(2).click()
    expect(page.locator("#reference-info")).to_contain_text(re.compile(r"\w+-\d{6}"))
    picked = re.search(r"\w+-\d{6}", page.locator("#reference-info").inner_text()).group(0)
    page.locator("#change-text textarea").fill("is red and has longer sleeves")
    page.get_by_role("tab", name="Explain").click()
    expect(page.locator("#explain-query")).to_contain_text(f"{picked} + “is red and has longer sleeves”")
    expect(words).to_have_count(6)
    page.get_by_role("tab", name="Words → routes").click()
    page.screenshot(path=str(ARTIFACTS / "explain-words.png"), full_page=True)
    # two phrasings side by side
    page.get_by_role("tab", name="Paraphrases").click()
    expect(page.locator("#explain-text textarea")).to_have_value("is red and has longer sleeves")
    # a tab's fields mount when it is first shown and can take their initial value back after a robot's instant
    # fill (no person types that fast): fill until the value stays
    other = page.locator("#explain-other textarea")
    for _ in range(5):
        other.fill("make it red with long sleeves")
        page.wait_for_timeout(300)
        if other.input_value() == "make it red with long sleeves":
            break
    expect(other).to_have_value("make it red with long sleeves")
    page.locator("#explain-compare-phrasings").click()
    expect(page.locator("#explain-phrasing")).to_contain_text("Mean change of the path weights")
    expect(page.locator("#explain-phrasing")).to_contain_text("make it red with long sleeves")
    context.close()
    assert outside == [], f"the page fetched from outside the demo: {outside}"


@browser_only
@pytest.mark.filterwarnings("ignore:.*(no_silent_downcasting|copy keyword).*")
def test_the_explain_tab_follows_an_uploaded_photo_before_any_search(browser, served_demo, client):
    from playwright.sync_api import expect

    context, page, outside = _open(browser, served_demo, client, 1400, 1000)
    photo = served_demo[0].retriever.catalog.root / "images" / "skirt-000005.png"
    page.locator("input[type=file][data-testid$='upload-button']").set_input_files(str(photo))
    expect(page.locator("#reference-info")).to_contain_text("your photo (skirt-000005.png)")
    page.get_by_role("tab", name="Explain").click()   # no search, no change typed: the photo, not the example
    expect(page.locator("#explain-query")).to_contain_text("skirt-000005.png")
    context.close()
    assert outside == [], f"the page fetched from outside the demo: {outside}"


@browser_only
@pytest.mark.filterwarnings("ignore:.*(no_silent_downcasting|copy keyword).*")
def test_the_explain_tab_fits_a_phone(browser, served_demo, client):
    from playwright.sync_api import expect

    context, page, _ = _open(browser, served_demo, client, 390, 844)
    page.get_by_role("tab", name="Explain").click()
    expect(page.locator("#explain-words .sdfn-words span").first).to_be_visible()
    # nothing pushes the page wider than the phone: the wide table scrolls inside its own box
    assert page.evaluate("document.documentElement.scrollWidth") <= 390
    for selector in ("#explain-words .sdfn-effects", "#explain-words .sdfn-words"):
        box = page.locator(selector).bounding_box()
        assert box["x"] >= 0 and box["x"] + box["width"] <= 390, selector
    words = page.locator("#explain-words .sdfn-words span")
    for i in range(words.count()):     # every word wraps inside the phone's width, none is cut off
        box = words.nth(i).bounding_box()
        assert box["x"] >= 0 and box["x"] + box["width"] <= 390, words.nth(i).inner_text()
    page.get_by_role("tab", name="SDFN vs Combiner").click()
    for gallery in ("#explain-sdfn", "#explain-combiner"):   # every result of both lists is on the phone's screen
        items = page.locator(f"{gallery} button.thumbnail-item")
        expect(items).to_have_count(10)
        for i in range(items.count()):
            box = items.nth(i).bounding_box()
            assert box["x"] >= 0 and box["x"] + box["width"] <= 390, f"{gallery} result {i + 1}"
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "explain-phone.png"), full_page=True)
    context.close()
