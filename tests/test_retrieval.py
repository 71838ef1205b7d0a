"""The retrieval engine and `sdfn search`: ranked items, honest notes, clear errors on bad input, thread safety."""

from __future__ import annotations

import io
import json
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import png_1bit
from PIL import Image

from sdfn import Retriever
from sdfn.cli import main
from sdfn.errors import ConfigError, DataError, ImageError
from sdfn.fusion import FusionConfig
from sdfn.model import ComposedRetrievalModel, ModelConfig


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("ckpt") / "sdfn"
    ComposedRetrievalModel(ModelConfig(fusion=FusionConfig(width=32, heads=2, router_hidden=16))).save(folder)
    return folder


@pytest.fixture(scope="module")
def catalog(small_catalog, tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("retrieval") / "catalog"
    shutil.copytree(small_catalog, root)
    return root


@pytest.fixture(scope="module")
def retriever(checkpoint, catalog) -> Retriever:
    return Retriever(checkpoint, catalog, progress=False)


def ids(result) -> list[str]:
    return [item.id for item in result.items]


# ---- answers -------------------------------------------------------------------------------------

def test_search_by_catalog_id(retriever):
    result = retriever.search("dress-000004", "is red and has long sleeves", k=10)
    assert [item.rank for item in result.items] == list(range(1, 11))
    scores = [item.score for item in result.items]
    assert scores == sorted(scores, reverse=True)
    assert "dress-000004" not in ids(result)
    first = result.items[0]
    assert first.file.is_file() and first.file == catalog_file(retriever, first.image)
    assert not Path(first.image).is_absolute() and first.image.startswith("images/")
    assert {"category", "title", "color"} <= set(first.metadata)
    assert result.query.reference == "dress-000004" and result.query.mode == "composed" and result.query.notes == []
    assert result.trace is not None and result.trace.weights[0].shape[0] == 1
    assert set(result.timings_ms) >= {"preprocess", "encode_image", "encode_text", "fuse", "search", "total"}


def catalog_file(retriever, image: str) -> Path:
    return retriever.catalog.root / image


def test_json_shape(retriever):
    text = json.dumps(retriever.search("shirt-000002", "is darker", k=3).to_json())
    assert str(retriever.catalog.root) not in text  # no folder of the server in an answer
    data = json.loads(text)
    assert set(data) == {"query", "results", "routing"}
    assert data["query"]["reference"] == "shirt-000002" and data["query"]["text_used"] == "is darker"
    assert data["query"]["reference_image"] == "images/shirt-000002.png"
    assert list(data["results"][0])[:4] == ["rank", "id", "score", "image"]
    assert "file" not in data["results"][0]
    assert all(catalog_file(retriever, r["image"]).is_file() for r in data["results"])
    assert "title" in data["results"][0] and "category" in data["results"][0]
    routing = data["routing"]
    assert routing["mode"] == "msr" and len(routing["layers"]) == 3 and len(routing["strongest_path"]) == 3
    last = routing["layers"][-1]
    assert last["to"] == ["output"] and len(last["incoming"]) == 4 and len(last["incoming"][0]) == 1
    assert abs(sum(row[0] for row in last["incoming"]) - 1) < 1e-3
    assert routing["layers"][0]["image"] is not None and routing["layers"][0]["text"] is not None


def test_keep_reference(retriever):
    result = retriever.search("skirt-000001", "", k=1, exclude_reference=False)
    assert ids(result) == ["skirt-000001"]


def test_uploaded_copy_of_an_item_finds_it_first(retriever, catalog):
    path = catalog / "images" / "trousers-000007.png"
    for reference in (path, str(path), Image.open(path), path.read_bytes()):
        result = retriever.search(reference, "", k=3)
        assert result.query.reference == "uploaded image"
        assert ids(result)[0] == "trousers-000007"


def test_category_filter(retriever):
    result = retriever.search("dress-000001", "is blue", k=5, category="skirt")
    assert len(result.items) == 5 and {item.metadata["category"] for item in result.items} == {"skirt"}


# ---- scope: a catalog reference's own category, an upload's predicted one ----------------------------------------

def test_catalog_reference_searches_its_own_category_by_default(retriever):
    result = retriever.search("skirt-000003", "is red and has a belt", k=10)
    assert {item.metadata["category"] for item in result.items} == {"skirt"}
    query = result.to_json()["query"]
    assert query["category"] == "skirt" and query["category_source"] == "reference" and query["prediction"] is None
    assert "category skirt (the reference's category)" in result.to_table().splitlines()[0]


@pytest.mark.parametrize("asked", ["all", "All", " ALL "])
def test_all_searches_the_whole_catalog(retriever, asked):
    result = retriever.search("skirt-000003", "is red", k=60, category=asked)
    assert len(result.items) == 60 and len({item.metadata["category"] for item in result.items}) > 1  # 39 skirts
    assert (result.query.category, result.query.category_source) == (None, "asked")
    assert "all categories (as asked)" in result.to_table().splitlines()[0]


def test_a_named_category_overrides_the_reference_category(retriever):
    result = retriever.search("skirt-000003", "is red", k=5, category="trousers")
    assert {item.metadata["category"] for item in result.items} == {"trousers"}
    assert (result.query.category, result.query.category_source) == ("trousers", "asked")


def test_a_category_in_any_case_is_the_catalog_s_own(retriever):
    result = retriever.search("skirt-000003", "is red", k=5, category=" Trousers ")
    assert {item.metadata["category"] for item in result.items} == {"trousers"}
    assert result.query.category == "trousers"


def test_a_huge_or_broken_text_costs_no_more_than_a_short_one(retriever):
    """A request far past any context (one 2-million-letter word, thousands of words) is cut before it is read or
    tokenised, and says so; a lone surrogate (no keyboard types one) becomes U+FFFD, so the answer is valid JSON."""
    for text in ("x" * 2_000_000, "red " * 100_000, ("abcdefghij" * 300 + " ") * 20):
        result = retriever.search("skirt-000003", text, k=3)
        assert len(result.query.text_used) <= 1000 and len(result.items) == 3
        assert len(result.query.text) <= 1003 and result.query.text.endswith("...")   # not echoed back whole
        cut = [r for r in result.query.rewrites if r["kind"] == "cut"]
        assert cut and any(n.startswith("only the first") for n in result.query.notes)
        assert 4 < len(cut[0]["original"]) <= 43 and cut[0]["original"][:3] in text   # what was left out
    broken = retriever.search("skirt-000003", "is red \ud800 please", k=3)
    assert broken.query.text == "is red \ufffd please"
    json.dumps(broken.to_json(), ensure_ascii=False).encode("utf-8")


def test_an_upload_searches_its_predicted_category(retriever, catalog):
    # even this random-init model's features tell most categories apart (0.88 of the catalog's items)
    right = [retriever.predict_category(i).category == i.split("-")[0] for i in retriever.catalog.ids]
    assert sum(right) >= 0.8 * len(right)
    for category in ("dress", "shirt", "skirt", "toptee", "trousers"):
        result = retriever.search(catalog / "images" / f"{category}-000001.png", "is red", k=5)
        query = result.query
        assert query.prediction["category"] == category, query.prediction
        assert query.prediction["out_of_catalog"] is False and query.warning is None
        assert (query.category, query.category_source) == (category, "predicted")
        assert {item.metadata["category"] for item in result.items} == {category}
    # asked for another category: searched there, the prediction still reported
    result = retriever.search(catalog / "images" / "dress-000001.png", "is red", k=5, category="shirt")
    assert (result.query.category, result.query.category_source) == ("shirt", "asked")
    assert result.query.prediction["category"] == "dress"
    assert retriever.predict_category(catalog / "images" / "skirt-000001.png").category == "skirt"


def _sunset() -> Image.Image:
    rows = np.linspace(0, 1, 240)[:, None, None]
    sky = np.array([255, 140, 40]) * (1 - rows) + np.array([60, 20, 90]) * rows   # orange to purple
    return Image.fromarray(np.repeat(sky, 320, axis=1).astype(np.uint8))


@pytest.mark.parametrize("make", [
    lambda: Image.fromarray(np.random.default_rng(0).integers(0, 256, (160, 160, 3), dtype=np.uint8)),
    _sunset], ids=["noise", "sunset"])
def test_an_upload_unlike_every_catalog_item_is_warned_about(retriever, make):
    result = retriever.search(make(), "is red", k=5)
    query = result.query
    assert query.prediction["out_of_catalog"] is True and query.prediction["distance"] > query.prediction["threshold"]
    assert query.warning and "unlike every catalog item" in query.warning
    assert (query.category, query.category_source) == (None, "uncertain")
    assert "warning: this image looks unlike every catalog item" in result.to_table()
    assert result.to_json()["query"]["warning"] == query.warning


def test_catalog_profile_judges_only_a_catalog_large_enough():
    from sdfn.scope import MIN_PROFILE_ITEMS, CatalogProfile

    rng = np.random.default_rng(0)
    centres = {"a": np.zeros(12), "b": np.full(12, 3.0)}

    def draw(n):
        names = ["a", "b"] * (n // 2)
        return torch.tensor(np.stack([centres[c] + rng.normal(size=12) for c in names])), names

    small = CatalogProfile.fit(*draw(MIN_PROFILE_ITEMS - 2))
    assert small.threshold is None and small.predict(torch.zeros(1, 12))[0].out_of_catalog is None
    profile = CatalogProfile.fit(*draw(600))
    near, far = profile.predict(torch.tensor(np.stack([np.full(12, 3.0), np.full(12, 40.0)])))
    assert near.category == "b" and near.confidence > 0.99 and near.out_of_catalog is False
    assert far.out_of_catalog is True and far.warning() is not None and near.warning() is None


def test_fast_path_answers_as_the_plain_model(retriever):
    """Searches (text padding cut, traced text tower and fusion, cached result names) rank exactly the items the
    plain model ranks: eager fusion on the full-length text encoding, the same category searched."""
    model, index = retriever.model, retriever.index
    texts = ["is red", "has long sleeves and a belt and is darker", "a", " ".join(["is much longer"] * 12)]
    for text in texts:
        for reference in ("dress-000003", "toptee-000017"):
            got = retriever.search(reference, text, k=8)
            with torch.no_grad():
                row = index.row_of[reference]
                words = model.backbone.encode_text(model.backbone.tokenize([" ".join(text.split())]))
                plain = model.fusion(index.cache.features([row]), words).query.float().numpy()
            scores, rows = index.search(plain, 9, category=reference.split("-")[0])
            expected = [(index.ids[r], sc) for r, sc in zip(rows[0], scores[0], strict=True) if r != row][:8]
            assert ids(got) == [i for i, _ in expected], (text, reference)
            assert [i.score for i in got.items] == pytest.approx([sc for _, sc in expected], abs=1e-5)


def test_search_batch_matches_single_searches(retriever, catalog):
    queries = [{"reference": "dress-000001", "text": "is green", "k": 5},
               {"reference": catalog / "images" / "shirt-000009.png", "text": "has no buttons", "k": 4},
               {"reference": "toptee-000002", "text": " ", "k": 3, "category": "toptee"}]
    batch = retriever.search_batch(queries)
    for query, got in zip(queries, batch, strict=True):
        single = retriever.search(**query)
        assert ids(got) == ids(single)
        assert [i.score for i in got.items] == pytest.approx([i.score for i in single.items], abs=1e-4)


def test_concurrent_searches_answer_as_sequential_ones(checkpoint, catalog):
    retriever = Retriever(checkpoint, catalog, progress=False)
    queries = [(f"{c}-{i:06d}", text) for c in ("dress", "shirt", "skirt", "toptee")
               for i, text in enumerate(["is red", "", "has long sleeves and a belt"])]

    def run(query):
        result = retriever.search(query[0], query[1], k=8)
        return ids(result), [round(item.score, 5) for item in result.items]

    with ThreadPoolExecutor(8) as pool:
        concurrent = list(pool.map(run, queries * 2))
    sequential = [run(q) for q in queries * 2]
    assert concurrent == sequential


def test_static_fusion_has_no_routing(catalog, checkpoint, tmp_path):
    combiner = ComposedRetrievalModel(ModelConfig(fusion=FusionConfig(name="combiner", width=32)))
    combiner.backbone.load_state_dict(ComposedRetrievalModel.load(checkpoint).backbone.state_dict())
    combiner.save(tmp_path / "combiner")
    copy = tmp_path / "catalog"
    shutil.copytree(catalog, copy)
    result = Retriever(tmp_path / "combiner", copy, progress=False).search("dress-000003", "is red", k=2)
    assert result.trace is None and result.to_json()["routing"] is None and len(result.items) == 2


# ---- bad input -----------------------------------------------------------------------------------

def test_unknown_id_names_it_and_where_ids_come_from(retriever):
    with pytest.raises(DataError, match=r"unknown item id 'dress-9999'.*`id` column of .*catalog\.csv"):
        retriever.search("dress-9999", "is red")


@pytest.mark.parametrize("name,data,message", [
    ("notes.jpg", b"these are not pixels\n" * 10, r"notes\.jpg: not an image"),
    ("cut.png", None, r"cut\.png: (truncated|corrupt)"),
    ("absent.png", "absent", r"absent\.png: image file not found"),
])
def test_bad_reference_files_are_named(retriever, tmp_path, name, data, message):
    path = tmp_path / name
    if data is None:
        buffer = io.BytesIO()
        Image.radial_gradient("L").convert("RGB").save(buffer, "PNG")
        path.write_bytes(buffer.getvalue()[:300])
    elif isinstance(data, bytes):
        path.write_bytes(data)
    with pytest.raises(ImageError, match=message):
        retriever.search(path, "is red")


def test_large_image_is_downscaled_and_searched(retriever, tmp_path):
    path = tmp_path / "large.png"
    path.write_bytes(png_1bit(7_000, 7_000))  # 49 MP: under the cap
    assert len(retriever.search(path, "is red", k=3).items) == 3


def test_huge_upload_is_refused_before_decoding(retriever, tmp_path):
    path = tmp_path / "huge.png"
    path.write_bytes(png_1bit(12_000, 12_000))  # 144 MP in a few hundred KB
    with pytest.raises(ImageError, match=r"huge\.png: refused to decode: .*12000x12000 = 144,000,000 pixels, over "
                                         r"the limit of 50,000,000"):
        retriever.search(path, "is red")


def test_decompression_bomb_is_refused(retriever, tmp_path):
    path = tmp_path / "bomb.png"
    path.write_bytes(png_1bit(20_000, 20_000))
    with pytest.raises(ImageError, match=r"bomb\.png: refused to decode.*decompression-bomb"):
        retriever.search(path, "is red")


@pytest.mark.parametrize("text", ["", "   \t\n "])
def test_empty_text_is_an_image_only_search(retriever, text):
    result = retriever.search("shirt-000005", text, k=5)
    assert result.query.mode == "image-only" and result.query.text_used == ""
    assert any("image-only search" in note for note in result.query.notes)
    assert result.trace is None and len(result.items) == 5


def test_long_text_is_truncated_and_says_so(retriever):
    text = " ".join(["has very long sleeves"] * 20)
    result = retriever.search("dress-000002", text, k=3)
    note = next(n for n in result.query.notes if "truncated" in n)
    assert "text truncated to 30 tokens" in note
    assert text.startswith(result.query.text_used) and len(result.query.text_used) < len(text)


@pytest.mark.parametrize("text", ["is red 👗✨", "ist rot mit Ärmeln", "красное платье", "赤いドレス", "فستان أحمر"])
def test_emoji_and_non_latin_text(retriever, text):
    result = retriever.search("dress-000002", text, k=3)
    assert len(result.items) == 3 and result.query.mode == "composed"


@pytest.mark.parametrize("k", [0, -3, 2.5, 2.7, True, 1e300, float("nan"), float("inf"), 1001, "3"])
def test_bad_k_is_an_error_naming_the_range(retriever, k):
    with pytest.raises(ConfigError, match=r"^k must be a whole number from 1 to 1,000, got "):
        retriever.search("dress-000001", "is red", k=k)
    with pytest.raises(ConfigError, match=r"^k must be a whole number from 1 to 1,000"):
        retriever.search_batch([{"reference": "dress-000001", "k": k}])


def test_whole_float_k_is_accepted_as_the_api_accepts_it(retriever):
    assert len(retriever.search("dress-000001", "is red", k=3.0).items) == 3
    assert retriever.search("dress-000001", "is red", k=np.int64(2)).query.k == 2


@pytest.mark.parametrize("reference", ["", "   ", Path("")])
def test_empty_reference_says_what_to_give(retriever, reference):
    with pytest.raises(ConfigError, match=r"empty reference .*: give a catalog item id \(e\.g\. dress-000000\), the "
                                          r"path of an image file, a PIL image or image bytes"):
        retriever.search(reference, "is red")


def test_k_larger_than_catalog_or_category_is_clamped(retriever):
    result = retriever.search("dress-000001", "is red", k=1000, category="all")
    assert len(result.items) == 199 and "k larger than the catalog: returning all 199 items" in result.query.notes
    result = retriever.search("dress-000001", "is red", k=1000)   # its own category, less itself
    assert len(result.items) == 39 and "k larger than category 'dress': returning all 39 items" in result.query.notes
    result = retriever.search("dress-000001", "is red", k=50, category="shirt")
    assert len(result.items) == 40
    assert "k larger than category 'shirt': returning all 40 items" in result.query.notes


def test_empty_category_lists_categories_with_counts(retriever):
    with pytest.raises(DataError, match=r"category 'hats' has no items.*dress \(40\), shirt \(40\), skirt \(40\)"):
        retriever.search("dress-000001", "is red", category="hats")


def _exif_rotated_rgba(path: Path) -> Path:
    exif = Image.Exif()
    exif[0x0112] = 6  # displayed rotated 90 degrees clockwise
    image = Image.open(path).convert("RGBA").resize((160, 96))
    image.putalpha(Image.linear_gradient("L").resize((160, 96)))
    image.save(path.parent / "rotated.png", exif=exif.tobytes())
    return path.parent / "rotated.png"


def test_pil_image_file_and_bytes_are_one_query(retriever, catalog, tmp_path):
    """An upload gives the same answer as a file, bytes or a PIL image (EXIF rotation and alpha included)."""
    shutil.copy(catalog / "images" / "toptee-000004.png", tmp_path / "toptee.png")
    path = _exif_rotated_rgba(tmp_path / "toptee.png")
    answers = [retriever.search(ref, "is blue", k=5) for ref in (path, path.read_bytes(), Image.open(path))]
    assert ids(answers[0]) == ids(answers[1]) == ids(answers[2])
    assert [i.score for i in answers[0].items] == [i.score for i in answers[1].items] == \
        [i.score for i in answers[2].items]
    assert answers[0].query.reference_image == "rotated.png" and answers[2].query.reference_image is None


def test_text_is_tokenised_once_per_query(retriever, monkeypatch):
    tokenizer = retriever.model.backbone.tokenizer
    calls = []
    encode = tokenizer.encode  # the word-piece (BPE) step, which `tokenize` runs on every text
    monkeypatch.setattr(tokenizer, "encode", lambda text: calls.append(text) or encode(text))
    retriever.search("dress-000002", "is red", k=2)
    assert calls == ["is red"]
    calls.clear()
    long = retriever.search("dress-000002", " ".join(["has very long sleeves"] * 20), k=2)
    assert len(calls) == 2 and any("truncated" in n for n in long.query.notes)  # a long text is counted once more


def test_snapshot_survives_a_rebuild_by_another_process(checkpoint, catalog, tmp_path):
    """A running retriever keeps answering from the (model, index) it opened when another process rebuilds the
    catalog's index with another model (issue 12: it read the new features against its old vectors)."""
    copy = tmp_path / "catalog"
    shutil.copytree(catalog, copy)
    serving = Retriever(checkpoint, copy, progress=False)
    before = serving.search("dress-000000", "is red", k=5)
    fingerprint = serving.fingerprint
    assert fingerprint == serving.model.fingerprint()
    torch.manual_seed(7)
    ComposedRetrievalModel(ModelConfig(fusion=FusionConfig(width=32, heads=2, router_hidden=16))).save(tmp_path / "b")
    done = subprocess.run([sys.executable, "-m", "sdfn", "index", "--catalog", str(copy), "--checkpoint",
                           str(tmp_path / "b")], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    manifest = json.loads((copy / "index" / "manifest.json").read_text())
    assert manifest["model"]["fingerprint"] != fingerprint  # the folder now holds the other model's index
    after = serving.search("dress-000000", "is red", k=5)
    assert ids(after) == ids(before) and [i.score for i in after.items] == [i.score for i in before.items]
    assert serving.fingerprint == fingerprint
    fresh = Retriever(tmp_path / "b", copy, progress=False)  # a new retriever opens the new snapshot
    assert fresh.fingerprint == manifest["model"]["fingerprint"] and fresh.index_status.action == "reused"


def test_an_index_of_another_model_is_rebuilt_for_this_one(checkpoint, catalog, tmp_path):
    """A retriever never serves another model's index: opening the catalog rebuilds it for this model."""
    copy = tmp_path / "catalog"
    shutil.copytree(catalog, copy)
    torch.manual_seed(9)
    ComposedRetrievalModel(ModelConfig(fusion=FusionConfig(width=32, heads=2, router_hidden=16))).save(tmp_path / "b")
    other = Retriever(tmp_path / "b", copy, progress=False)
    mine = Retriever(checkpoint, copy, progress=False)
    assert mine.fingerprint == mine.model.fingerprint() != other.fingerprint
    assert "built by another model" in mine.index_status.message


def test_compose_queries_batches_give_the_same_vectors_and_traces(retriever):
    from sdfn.encode import compose_queries

    model = retriever.model
    features = retriever.index.cache.features([0, 5, 9, 17, 30])
    texts = ["is red", "has long sleeves", "", "is darker and shorter", "has a belt"]
    one, trace_one = compose_queries(model, features, texts, batch_size=2)
    all_, trace_all = compose_queries(model, features, texts, batch_size=128)
    assert one.shape == (5, model.backbone.embed_dim)
    assert torch.allclose(one, all_, atol=1e-5)
    assert trace_one.weights[0].shape[0] == 5
    assert all(torch.allclose(a, b, atol=1e-5) for a, b in zip(trace_one.incoming, trace_all.incoming, strict=True))
    with pytest.raises(ValueError, match="5 references for 4 texts"):
        compose_queries(model, features, texts[:4])


def test_index_of_another_model_is_rebuilt_on_open(catalog, tmp_path):
    copy = tmp_path / "catalog"
    shutil.copytree(catalog, copy)
    torch.manual_seed(5)
    ComposedRetrievalModel(ModelConfig(fusion=FusionConfig(width=32, heads=2, router_hidden=16))).save(tmp_path / "b")
    other = Retriever(tmp_path / "b", copy, progress=False)
    assert other.index_status.action == "rebuilt" and "another model" in other.index_status.message


# ---- command line --------------------------------------------------------------------------------

def test_cli_search_json(checkpoint, catalog, capsys):
    assert main(["search", "--catalog", str(catalog), "--checkpoint", str(checkpoint), "--ref", "dress-000001",
                 "--text", "is red 👗", "-k", "4", "--json", "--quiet"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["query"]["text"] == "is red 👗" and len(data["results"]) == 4 and data["routing"]["layers"]


def test_cli_search_scope(checkpoint, catalog, capsys, tmp_path):
    base = ["search", "--catalog", str(catalog), "--checkpoint", str(checkpoint), "--text", "is red", "-k", "45",
            "--json", "--quiet"]
    assert main([*base, "--ref", "shirt-000002"]) == 0
    query = json.loads(capsys.readouterr().out)["query"]
    assert (query["category"], query["category_source"], query["k"]) == ("shirt", "reference", 45)
    assert main([*base, "--ref", "shirt-000002", "--category", "all"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["query"]["category"] is None and len(data["results"]) == 45   # more than the 39 other shirts
    sunset = tmp_path / "sunset.png"
    _sunset().save(sunset)
    assert main([*base, "--ref-image", str(sunset)]) == 0
    captured = capsys.readouterr()
    assert json.loads(captured.out)["query"]["prediction"]["out_of_catalog"] is True
    assert captured.err.startswith("warning: this image looks unlike every catalog item")


def test_cli_search_table_with_an_image(checkpoint, catalog, capsys):
    image = catalog / "images" / "skirt-000003.png"
    assert main(["search", "--catalog", str(catalog), "--checkpoint", str(checkpoint), "--ref-image", str(image),
                 "--text", "", "-k", "2", "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "reference uploaded image (image only)" in out and "note: empty text" in out and "skirt-000003" in out


def test_cli_search_errors_are_one_line(checkpoint, catalog, capsys):
    assert main(["search", "--catalog", str(catalog), "--checkpoint", str(checkpoint), "--ref", "images/x.png",
                 "--text", "is red", "--quiet"]) == 2
    assert "sdfn search: error: unknown item id 'images/x.png'" in capsys.readouterr().err
    assert main(["search", "--catalog", str(catalog), "--checkpoint", str(checkpoint), "--ref", "dress-000001",
                 "--text", "is red", "-k", "0", "--quiet"]) == 2
    assert "k must be a whole number" in capsys.readouterr().err


def test_k_and_the_demo_training_bounds_share_one_whole_number_rule():
    from sdfn.demo_training import whole_number as training_rule
    from sdfn.retrieval import check_k, whole_number

    assert training_rule is whole_number
    assert check_k(np.int64(3)) == 3 and check_k(np.float32(2.0)) == 2 and check_k(5.0) == 5
    for bad in (0, 2.5, 1e300, float("nan"), True, "3", np.float64(1001)):
        with pytest.raises(ConfigError, match=r"k must be a whole number from 1 to 1,000, got "):
            check_k(bad)
    with pytest.raises(ConfigError, match="epochs must be a whole number from 1 to 20, got 2.5"):
        whole_number("epochs", 2.5, 1, 20)
