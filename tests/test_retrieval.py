"""The retrieval engine and `sdfn search`: ranked items, honest notes, clear errors on bad input, thread safety."""

from __future__ import annotations

import io
import json
import shutil
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

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
    return Retriever(checkpoint, catalog, progress=False).load()


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
    assert first.image.is_file() and {"category", "title", "color"} <= set(first.metadata)
    assert result.query.reference == "dress-000004" and result.query.mode == "composed" and result.query.notes == []
    assert result.trace is not None and result.trace.weights[0].shape[0] == 1
    assert set(result.timings_ms) >= {"preprocess", "encode_image", "encode_text", "fuse", "search", "total"}


def test_json_shape(retriever):
    data = json.loads(json.dumps(retriever.search("shirt-000002", "is darker", k=3).to_json()))
    assert set(data) == {"query", "results", "routing"}
    assert data["query"]["reference"] == "shirt-000002" and data["query"]["text_used"] == "is darker"
    assert list(data["results"][0])[:4] == ["rank", "id", "score", "image"]
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
    retriever = Retriever(checkpoint, catalog, progress=False)  # not loaded: the threads race to load it
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


def test_huge_image_is_downscaled_and_searched(retriever, tmp_path):
    path = tmp_path / "huge.png"
    path.write_bytes(png_1bit(10_000, 10_000))
    assert len(retriever.search(path, "is red", k=3).items) == 3


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


@pytest.mark.parametrize("k", [0, -3, 2.5, True])
def test_bad_k_is_an_error(retriever, k):
    with pytest.raises(ConfigError, match=r"k must be a whole number of at least 1"):
        retriever.search("dress-000001", "is red", k=k)


def test_k_larger_than_catalog_or_category_is_clamped(retriever):
    result = retriever.search("dress-000001", "is red", k=1000)
    assert len(result.items) == 199 and "k larger than the catalog: returning all 199 items" in result.query.notes
    result = retriever.search("dress-000001", "is red", k=50, category="shirt")
    assert len(result.items) == 40
    assert "k larger than category 'shirt': returning all 40 items" in result.query.notes


def test_empty_category_lists_categories_with_counts(retriever):
    with pytest.raises(DataError, match=r"category 'hats' has no items.*dress \(40\), shirt \(40\), skirt \(40\)"):
        retriever.search("dress-000001", "is red", category="hats")


def test_index_of_another_model_is_rebuilt_on_open(catalog, tmp_path):
    copy = tmp_path / "catalog"
    shutil.copytree(catalog, copy)
    torch.manual_seed(5)
    ComposedRetrievalModel(ModelConfig(fusion=FusionConfig(width=32, heads=2, router_hidden=16))).save(tmp_path / "b")
    other = Retriever(tmp_path / "b", copy, progress=False).load()
    assert other.index_status.action == "rebuilt" and "another model" in other.index_status.message


# ---- command line --------------------------------------------------------------------------------

def test_cli_search_json(checkpoint, catalog, capsys):
    assert main(["search", "--catalog", str(catalog), "--checkpoint", str(checkpoint), "--ref", "dress-000001",
                 "--text", "is red 👗", "-k", "4", "--json", "--quiet"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["query"]["text"] == "is red 👗" and len(data["results"]) == 4 and data["routing"]["layers"]


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
