"""Readers for FashionIQ (real val annotations), Shoes and Fashion200k (hand-written fixtures in their formats)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from sdfn.data.base import Triplet, open_dataset
from sdfn.data.fashion200k import modification_text
from sdfn.errors import ConfigError, DataError
from sdfn.evaluate import EvalProtocol, build_queries, join_captions, query_texts

FIXTURES = Path(__file__).parent / "fixtures"
FASHIONIQ = FIXTURES / "fashioniq"
SHOES = FIXTURES / "shoes"
FASHION200K = FIXTURES / "fashion200k"

# Published FashionIQ val counts (triplets, gallery images) per category.
FASHIONIQ_VAL = {"dress": (2017, 3817), "shirt": (2038, 6346), "toptee": (1961, 5373)}


def write_json(path: Path, data: object) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data))
    return path


def small_fashioniq(root: Path, entries: list[dict] | None = None, images: list[str] | None = None) -> Path:
    """A one-category (dress) nested-layout folder."""
    entries = entries if entries is not None else [{"candidate": "a", "target": "b", "captions": ["is red", "longer"]}]
    write_json(root / "captions" / "cap.dress.val.json", entries)
    write_json(root / "image_splits" / "split.dress.val.json", images if images is not None else ["a", "b", "c"])
    return root


# ---- FashionIQ on the real val annotations ------------------------------------------------------------


@pytest.fixture(scope="module")
def fashioniq():
    return open_dataset("fashioniq", FASHIONIQ)


@pytest.mark.parametrize("category", sorted(FASHIONIQ_VAL))
def test_fashioniq_val_counts_match_the_published_ones(fashioniq, category):
    triplets, gallery = FASHIONIQ_VAL[category]
    assert len(fashioniq.triplets("val", category)) == triplets
    assert len(fashioniq.gallery("val", category)) == gallery


def test_fashioniq_categories_and_flat_layout_are_discovered(fashioniq):
    assert fashioniq.categories == ("dress", "shirt", "toptee")
    assert fashioniq.layout == "flat"
    assert len(fashioniq.triplets("val")) == sum(t for t, _ in FASHIONIQ_VAL.values())


def test_fashioniq_triplet_fields_of_a_known_entry(fashioniq):
    first = fashioniq.triplets("val", "dress")[0]
    assert first == Triplet(reference="B005X4PL1G", captions=("is shiny and silver with shorter sleeves",
                                                                "fit and flare"),
                            target="B0084Y8XIU", category="dress", source="cap.dress.val.json", index=0)


def test_fashioniq_joined_caption_of_a_known_entry(fashioniq):
    first = fashioniq.triplets("val", "dress")[0]
    assert join_captions(first.captions) == "Is shiny and silver with shorter sleeves and fit and flare"
    assert query_texts(first.captions, "both-orders") == [
        "Is shiny and silver with shorter sleeves and fit and flare",
        "Fit and flare and is shiny and silver with shorter sleeves"]
    assert query_texts(first.captions, "single") == ["Is shiny and silver with shorter sleeves", "Fit and flare"]


def test_fashioniq_empty_caption_leaves_the_other_alone(fashioniq):
    triplet = next(t for t in fashioniq.triplets("val", "shirt") if "" in t.captions)
    other = next(c for c in triplet.captions if c).strip(".?, ").capitalize()
    assert query_texts(triplet.captions, "joined") == [other]
    assert query_texts(triplet.captions, "both-orders") == [other, other]  # still two queries, as documented
    assert query_texts(triplet.captions, "single") == ["", other]  # the empty one is skipped by evaluation


# Real val triplets with an empty caption, and whose two caption orders read the same (identical captions,
# or one empty): what captions="single" skips and what captions="both-orders" still counts twice.
FASHIONIQ_VAL_EMPTY = {"dress": 0, "shirt": 1, "toptee": 2}
FASHIONIQ_VAL_SAME_BOTH_ORDERS = {"dress": 3, "shirt": 9, "toptee": 9}


@pytest.mark.parametrize("category", sorted(FASHIONIQ_VAL))
def test_fashioniq_queries_per_triplet_under_each_caption_mode(fashioniq, category):
    triplets = FASHIONIQ_VAL[category][0]
    joined, _ = build_queries(fashioniq, "val", category, EvalProtocol(captions="joined"))
    assert len(joined) == triplets and all(q.text for q in joined)
    both, _ = build_queries(fashioniq, "val", category, EvalProtocol(captions="both-orders"))
    assert len(both) == 2 * triplets
    assert [q.triplet for q in both[::2]] == [q.triplet for q in both[1::2]] == [q.triplet for q in joined]
    same = sum(a.text == b.text for a, b in zip(both[::2], both[1::2], strict=True))
    assert same == FASHIONIQ_VAL_SAME_BOTH_ORDERS[category]
    single, _ = build_queries(fashioniq, "val", category, EvalProtocol(captions="single"))
    assert len(single) == 2 * triplets
    assert sum(not q.text for q in single) == FASHIONIQ_VAL_EMPTY[category]


@pytest.mark.parametrize("category", sorted(FASHIONIQ_VAL))
def test_val_subset_gallery_is_smaller_and_holds_every_candidate_and_target(fashioniq, category):
    queries, subset = build_queries(fashioniq, "val", category, EvalProtocol(gallery="val-subset"))
    _, full = build_queries(fashioniq, "val", category, EvalProtocol(gallery="split"))
    assert len(subset) < len(full)
    assert len(subset) == len(set(subset))
    members = set(subset)
    for triplet in fashioniq.triplets("val", category):
        assert triplet.reference in members and triplet.target in members
    assert all(subset[q.reference_index] == q.reference for q in queries)
    assert all([subset[i] for i in q.positives] == [q.target] for q in queries)


def test_fashioniq_nested_layout_reads_the_same(tmp_path):
    (tmp_path / "captions").mkdir()
    (tmp_path / "image_splits").mkdir()
    shutil.copy(FASHIONIQ / "cap.dress.val.json", tmp_path / "captions")
    shutil.copy(FASHIONIQ / "split.dress.val.json", tmp_path / "image_splits")
    dataset = open_dataset("fashioniq", tmp_path)
    assert dataset.layout == "nested" and dataset.categories == ("dress",)
    assert len(dataset.triplets("val")) == 2017 and len(dataset.gallery("val")) == 3817
    assert dataset.triplets("val")[0].source == "captions/cap.dress.val.json"


def test_fashioniq_image_extension_is_looked_up(tmp_path):
    small_fashioniq(tmp_path)
    (tmp_path / "images").mkdir()
    (tmp_path / "images" / "a.png").write_bytes(b"")
    (tmp_path / "images" / "b.png").write_bytes(b"")
    dataset = open_dataset("fashioniq", tmp_path)
    assert dataset.image_path("a") == tmp_path / "images" / "a.png"
    assert dataset.image_path("zzz") == tmp_path / "images" / "zzz.png"  # absent: the folder's usual suffix


def test_synthetic_catalog_categories_and_asks_read_through_the_same_reader(tmp_path):
    for category in ("skirt", "trousers"):
        write_json(tmp_path / "captions" / f"cap.{category}.train.json",
                   [{"candidate": "x1", "target": "x2", "captions": ["is blue", "shorter"],
                     "asks": {"colour": ["blue", "navy"], "length": ["short"]}}])
        write_json(tmp_path / "image_splits" / f"split.{category}.train.json", ["x1", "x2"])
    dataset = open_dataset("fashioniq", tmp_path)
    assert dataset.categories == ("skirt", "trousers")
    triplet = dataset.triplets("train", "trousers")[0]
    assert triplet.asks == {"colour": ("blue", "navy"), "length": ("short",)}
    assert open_dataset("fashioniq", tmp_path, categories=["trousers"]).categories == ("trousers",)


def test_fashioniq_test_split_has_no_targets(tmp_path):
    write_json(tmp_path / "cap.dress.test.json", [{"candidate": "a", "captions": ["is red", "long"]}])
    write_json(tmp_path / "split.dress.test.json", ["a", "b"])
    (triplet,) = open_dataset("fashioniq", tmp_path).triplets("test")
    assert triplet.target is None and triplet.reference == "a"


# ---- FashionIQ errors ---------------------------------------------------------------------------------


def test_missing_file_names_the_path_and_the_layout(tmp_path):
    small_fashioniq(tmp_path)
    with pytest.raises(DataError, match=r"cap\.dress\.train\.json: file not found \(layout: FashionIQ nested"):
        open_dataset("fashioniq", tmp_path).triplets("train")


def test_folder_without_annotations_says_what_was_expected(tmp_path):
    with pytest.raises(DataError, match=r"no FashionIQ annotation files; expected .*captions/cap"):
        open_dataset("fashioniq", tmp_path)
    with pytest.raises(DataError, match="FashionIQ folder not found"):
        open_dataset("fashioniq", tmp_path / "absent")


def test_malformed_json_names_file_line_and_column(tmp_path):
    small_fashioniq(tmp_path)
    (tmp_path / "captions" / "cap.dress.val.json").write_text('[\n  {"candidate": "a",, }\n]')
    with pytest.raises(DataError, match=r"cap\.dress\.val\.json: malformed JSON at line 2, column 21"):
        open_dataset("fashioniq", tmp_path).triplets("val")


@pytest.mark.parametrize(("entry", "message"), [
    ({"target": "b", "captions": ["x", "y"]}, r"entry 1: missing key 'candidate'"),
    ({"candidate": "a", "captions": ["x", "y"]}, r"entry 1: missing key 'target'"),
    ({"candidate": "a", "target": "b"}, r"entry 1: missing key 'captions'"),
    ({"candidate": 7, "target": "b", "captions": ["x"]}, r"entry 1: key 'candidate' must be a non-empty string"),
    ({"candidate": "a", "target": "b", "captions": "x"}, r"entry 1: key 'captions' must be a non-empty list"),
    ({"candidate": "a", "target": "b", "captions": ["", " "]}, r"entry 1: key 'captions' holds only empty"),
    ({"candidate": "a", "target": "b", "captions": ["x"], "asks": {"colour": "red"}}, r"entry 1: key 'asks'"),
    (["a", "b"], r"entry 1: expected a JSON object, found list"),
])
def test_bad_entry_names_file_index_and_key(tmp_path, entry, message):
    good = {"candidate": "a", "target": "b", "captions": ["x", "y"]}
    small_fashioniq(tmp_path, entries=[good, entry])
    with pytest.raises(DataError, match=r"cap\.dress\.val\.json: " + message):
        open_dataset("fashioniq", tmp_path).triplets("val")


def test_bad_gallery_entry_names_file_and_index(tmp_path):
    small_fashioniq(tmp_path, images=["a", 3])
    with pytest.raises(DataError, match=r"split\.dress\.val\.json: entry 1: expected a non-empty image id"):
        open_dataset("fashioniq", tmp_path).gallery("val")


def test_unknown_category_lists_the_known_ones(fashioniq):
    with pytest.raises(DataError, match=r"unknown category 'skirt'.*known categories: dress, shirt, toptee"):
        fashioniq.triplets("val", "skirt")
    with pytest.raises(DataError, match=r"known categories: dress, shirt, toptee"):
        open_dataset("fashioniq", FASHIONIQ, categories=["skirt"])


def test_empty_split_names_the_file_and_what_to_do(tmp_path):
    small_fashioniq(tmp_path, entries=[])
    with pytest.raises(DataError, match=r"cap\.dress\.val\.json: the split is empty.*regenerate"):
        open_dataset("fashioniq", tmp_path).triplets("val")
    small_fashioniq(tmp_path, images=[])
    with pytest.raises(DataError, match=r"split\.dress\.val\.json: the split is empty"):
        open_dataset("fashioniq", tmp_path).gallery("val")


def test_unknown_split_lists_the_known_ones(fashioniq):
    with pytest.raises(DataError, match=r"unknown split 'dev'.*known splits: train, val, test"):
        fashioniq.triplets("dev")


def test_unknown_dataset_name_lists_the_known_ones():
    with pytest.raises(ConfigError, match=r"unknown data set 'cirr'; known data sets: fashion200k, fashioniq, shoes"):
        open_dataset("cirr", FASHIONIQ)


# ---- Shoes --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def shoes():
    return open_dataset("shoes", SHOES)


def test_shoes_split_triplets_follow_either_image_in_the_split(shoes):
    assert [t.index for t in shoes.triplets("eval")] == [1, 2, 4, 5, 6]
    assert [t.index for t in shoes.triplets("train")] == [0, 3]
    first = shoes.triplets("eval")[0]
    assert first == Triplet(reference="img_womens_high_heels_848.jpg", captions=("has fewer straps",),
                            target="img_womens_high_heels_838.jpg", category="shoes",
                            source="relative_captions_shoes.json", index=1)
    assert shoes.triplets("eval")[2].captions == ("has laces",)  # trailing white space trimmed


def test_shoes_gallery_is_the_eval_list_plus_missing_triplet_images(shoes):
    gallery = shoes.gallery("eval")
    listed = (SHOES / "eval_im_names.txt").read_text().split()
    assert gallery[:len(listed)] == listed
    assert gallery[len(listed):] == ["img_womens_rain_boots_816.jpg"]
    for triplet in shoes.triplets("eval"):
        assert triplet.reference in gallery and triplet.target in gallery


def test_shoes_images_are_found_by_name_anywhere_below_the_root(tmp_path):
    shutil.copytree(SHOES, tmp_path / "shoes")
    nested = tmp_path / "shoes" / "womens_flats" / "0" / "img_womens_flats_570.jpg"
    nested.parent.mkdir(parents=True)
    nested.write_bytes(b"")
    dataset = open_dataset("shoes", tmp_path / "shoes")
    assert dataset.image_path("img_womens_flats_570.jpg") == nested
    assert dataset.image_path("img_womens_flats_1411.jpg") == tmp_path / "shoes" / "img_womens_flats_1411.jpg"


def test_shoes_errors_name_file_entry_and_key(tmp_path):
    shutil.copytree(SHOES, tmp_path / "shoes")
    root = tmp_path / "shoes"
    with pytest.raises(DataError, match=r"test_im_names\.txt: file not found \(layout: Shoes layout"):
        open_dataset("shoes", root).triplets("test")
    with pytest.raises(DataError, match=r"unknown split 'val'.*known splits: train, eval, test"):
        open_dataset("shoes", root).triplets("val")
    assert open_dataset("shoes", root, categories=["shoes"]).categories == ("shoes",)
    with pytest.raises(DataError, match=r"unknown category 'boots'.*known categories: shoes"):
        open_dataset("shoes", root, categories=["boots"])
    (root / "train_im_names.txt").write_text("\n")
    with pytest.raises(DataError, match=r"train_im_names\.txt: the split is empty"):
        open_dataset("shoes", root).gallery("train")
    write_json(root / "relative_captions_shoes.json", [{"ImageName": "a.jpg", "ReferenceImageName": "b.jpg"}])
    with pytest.raises(DataError, match=r"relative_captions_shoes\.json: entry 0: missing key 'RelativeCaption'"):
        open_dataset("shoes", root).triplets("eval")


# ---- Fashion200k --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def fashion200k():
    return open_dataset("fashion200k", FASHION200K)


def test_fashion200k_gallery_is_every_test_image(fashion200k):
    gallery = fashion200k.gallery("test")
    assert len(gallery) == 8 and len(fashion200k.gallery("train")) == 2
    assert gallery[0] == "women/dresses/casual_and_day_dresses/51727804/51727804_0.jpeg"
    assert fashion200k.image_caption(gallery[3], "test") == "red sleeveless dress"  # trailing space trimmed
    train_image = "women/dresses/casual_and_day_dresses/50000008/50000008_0.jpeg"
    assert fashion200k.image_caption(train_image, "train") == "green cotton shirt dress"
    assert fashion200k.image_caption(train_image, "test") is None
    assert fashion200k.image_path(gallery[0]) == FASHION200K / gallery[0]


def test_fashion200k_queries_are_replace_texts_with_target_captions(fashion200k):
    triplets = fashion200k.triplets("test")
    assert [t.captions[0] for t in triplets] == [
        "replace black with red", "replace red with black", "replace black with red",
        "replace pleated with leather", "replace blue with black"]
    assert [t.target_caption for t in triplets][:2] == ["red sleeveless dress", "black sleeveless dress"]
    assert triplets[0].source == "test_queries.txt" and triplets[4].index == 4


def test_fashion200k_positives_are_every_image_with_the_target_caption(fashion200k):
    queries, gallery = build_queries(fashion200k, "test", "all", EvalProtocol.default_for("fashion200k"))
    positives = [sorted(gallery[i].split("/")[-1] for i in q.positives) for q in queries]
    assert positives == [
        ["52000001_0.jpeg", "53000002_0.jpeg"],
        ["51727804_0.jpeg", "51727804_1.jpeg"],
        ["54000005_0.jpeg"],
        ["54000006_0.jpeg"],
        ["51727804_0.jpeg", "51727804_1.jpeg"]]
    assert [gallery[q.reference_index] for q in queries] == [t.reference for t in fashion200k.triplets("test")]


def test_fashion200k_captions_come_from_the_evaluated_split_only(tmp_path):
    root = shutil.copytree(FASHION200K, tmp_path / "f200k")
    shared = "women/dresses/casual_and_day_dresses/52000001/52000001_0.jpeg"  # query 0's target
    with (root / "labels" / "dress_train_detect_all.txt").open("a") as f:
        f.write(f"{shared}\t-1.00\tred cotton shirt dress\n")  # the same image, listed in train too
    dataset = open_dataset("fashion200k", root)
    assert dataset.image_caption(shared, "test") == "red sleeveless dress"
    assert dataset.image_caption(shared, "train") == "red cotton shirt dress"
    protocol = EvalProtocol.default_for("fashion200k")
    queries, gallery = build_queries(dataset, "test", "all", protocol)
    assert shared in {gallery[i] for i in queries[0].positives}  # its own target is a correct answer

    # Evaluating test never reads the train label files: a broken one does not matter there.
    (root / "labels" / "dress_train_detect_all.txt").write_text("not a label line\n")
    fresh = open_dataset("fashion200k", root)
    assert build_queries(fresh, "test", "all", protocol) == (queries, gallery)
    with pytest.raises(DataError, match=r"dress_train_detect_all\.txt: line 1"):
        fresh.gallery("train")


def test_fashion200k_duplicate_label_lines_give_one_gallery_image_with_the_first_caption(tmp_path):
    root = shutil.copytree(FASHION200K, tmp_path / "f200k")
    twice = "women/skirts/mini_skirts/54000004/54000004_0.jpeg"
    with (root / "labels" / "skirt_test_detect_all.txt").open("a") as f:
        f.write(f"{twice}\t-0.40\tred pleated mini skirt\n")
    dataset = open_dataset("fashion200k", root)
    gallery = dataset.gallery("test")
    assert len(gallery) == 8 and gallery.count(twice) == 1
    assert dataset.image_caption(twice, "test") == "black pleated mini skirt"
    queries, ids = build_queries(dataset, "test", "all", EvalProtocol.default_for("fashion200k"))
    assert sorted(ids[i].split("/")[-1] for i in queries[2].positives) == ["54000005_0.jpeg"]  # not 54000004_0


def test_modification_text_follows_tirg_word_difference():
    assert modification_text("black pleated mini skirt", "red pleated mini skirt") == "replace black with red"
    assert modification_text("blue dress", "blue dress") == "replace dress with dress"  # TIRG's loop fallback


def test_fashion200k_errors(tmp_path, fashion200k):
    with pytest.raises(DataError, match=r"fixed queries only for the test split"):
        fashion200k.triplets("train")
    shutil.copytree(FASHION200K, tmp_path / "f200k")
    root = tmp_path / "f200k"
    with (root / "test_queries.txt").open("a") as f:
        f.write("women/unknown/1.jpeg women/skirts/mini_skirts/54000005/54000005_0.jpeg\n")
    with pytest.raises(DataError, match=r"test_queries\.txt: line 6 \(entry 5\): source image 'women/unknown"):
        open_dataset("fashion200k", root).triplets("test")
    with (root / "labels" / "skirt_test_detect_all.txt").open("a") as f:
        f.write("women/skirts/x.jpeg only-two-fields\n")
    with pytest.raises(DataError, match=r"skirt_test_detect_all\.txt: line 4: expected three tab-separated"):
        open_dataset("fashion200k", root).gallery("test")
    with pytest.raises(DataError, match=r"labels: folder not found \(Fashion200k layout"):
        open_dataset("fashion200k", tmp_path)
