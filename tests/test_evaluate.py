"""Evaluation against a brute-force reference for every protocol option, plus missing-image accounting."""

from __future__ import annotations

import functools
import hashlib
import itertools
import json
import logging
import math
import random
import shutil
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import sdfn.evaluate as evaluation
from sdfn.data.base import Triplet, open_dataset
from sdfn.data.images import load_image
from sdfn.errors import ConfigError, DataError, ImageError
from sdfn.evaluate import (
    EMPTY_CAPTION,
    REFERENCE_FAILED,
    TARGET_FAILED,
    CategoryResult,
    EncodeResult,
    EvalProtocol,
    EvalReport,
    Query,
    QueryRanking,
    build_queries,
    evaluate,
    rank,
)

FIXTURES = Path(__file__).parent / "fixtures"
CATEGORIES = ("dress", "skirt")
IMAGES_PER_CATEGORY = 60
TRIPLETS_PER_CATEGORY = 20
TRIPLET = Triplet("r", ("c",), "t", category="x", source="cap.x.val.json", index=7)  # for rank() unit tests
ALL_PROTOCOLS = [EvalProtocol(gallery=g, captions=c, exclude_reference=e)
                 for g, c, e in itertools.product(("split", "val-subset"), ("joined", "both-orders", "single"),
                                                  (False, True))]


def unit_vector(key: str, dim: int = 16) -> torch.Tensor:
    seed = int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "little")
    vector = torch.randn(dim, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    return vector / vector.norm()


def query_vector(reference: str, text: str) -> torch.Tensor:
    # The reference image pulls its own query towards it, so excluding the reference changes the ranking.
    vector = unit_vector(f"image:{reference}") + unit_vector(f"text:{text}")
    return vector / vector.norm()


class FakeEncoder:
    """Maps file names and texts to fixed random unit vectors; unreadable images fail as a model's would."""

    def encode_gallery(self, image_paths: Sequence[Path]) -> EncodeResult:
        return self._encode([(p, None) for p in image_paths])

    def encode_queries(self, reference_paths: Sequence[Path], texts: Sequence[str]) -> EncodeResult:
        return self._encode(list(zip(reference_paths, texts, strict=True)))

    def _encode(self, items: list[tuple[Path, str | None]]) -> EncodeResult:
        rows, failed = [], {}
        for row, (path, text) in enumerate(items):
            try:
                load_image(path, max_side=8)
            except ImageError as err:
                failed[row] = str(err)
            key = Path(path).name
            rows.append(unit_vector(f"image:{key}") if text is None else query_vector(key, text))
        return EncodeResult(torch.stack(rows).float() if rows else torch.zeros(0, 16), failed)


@functools.cache
def integer_vector(key: str, dim: int = 16, bound: int = 200) -> np.ndarray:
    """|score| <= 16 * 400 * 200 < 2**24 for a query (image + text) against an image: exact in float32."""
    seed = int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "little")
    return np.random.default_rng(seed).integers(-bound, bound + 1, dim).astype(np.float32)


class IntegerEncoder:
    """Reads no file: random integer vectors keyed by image id (file stem) and query text, so every inner
    product is an exact integer in float32 whatever the summation order, and an independent implementation
    sees the very same scores (ties included)."""

    def vector(self, key: str) -> np.ndarray:
        return integer_vector(key)

    def query_vector(self, reference: str, text: str) -> np.ndarray:
        return self.vector(f"image:{reference}") + self.vector(f"text:{text}")

    def encode_gallery(self, image_paths: Sequence[Path]) -> EncodeResult:
        rows = [self.vector(f"image:{Path(p).stem}") for p in image_paths]
        return EncodeResult(torch.from_numpy(np.stack(rows)))

    def encode_queries(self, reference_paths: Sequence[Path], texts: Sequence[str]) -> EncodeResult:
        rows = [self.query_vector(Path(p).stem, t) for p, t in zip(reference_paths, texts, strict=True)]
        return EncodeResult(torch.from_numpy(np.stack(rows)))


def write_catalog(root: Path, seed: int = 0) -> Path:
    """A small FashionIQ-format val split (two categories, 60 PNGs each) with empty captions and asks."""
    rng = random.Random(seed)
    words = ["is red", "is darker", "has long sleeves", "is shorter.", "has stripes", "is blue?", "fitted, "]
    for c, category in enumerate(CATEGORIES):
        ids = [f"{category}{i:03d}" for i in range(IMAGES_PER_CATEGORY)]
        entries = []
        for i in range(TRIPLETS_PER_CATEGORY):
            reference, target = rng.sample(ids[:45], 2)  # the last 15 images are gallery-only distractors
            captions = [rng.choice(words), rng.choice(words)]
            if i % 7 == 3:
                captions[i % 2] = ""
            entry = {"candidate": reference, "target": target, "captions": captions}
            if category == "skirt":
                entry["asks"] = {"colour": ["red"]}
            entries.append(entry)
        for folder, name, data in (("captions", f"cap.{category}.val.json", entries),
                                   ("image_splits", f"split.{category}.val.json", ids)):
            (root / folder).mkdir(parents=True, exist_ok=True)
            (root / folder / name).write_text(json.dumps(data))
        (root / "images").mkdir(exist_ok=True)
        for i, image_id in enumerate(ids):
            Image.new("RGB", (4, 4), (i * 4, c * 100, 50)).save(root / "images" / f"{image_id}.png")
    return root


def brute_texts(captions: list[str], mode: str) -> list[str]:
    """Query texts per triplet: one per caption ("" for an empty one, skipped), two orders, or one joined."""
    cleaned = [c.strip(".?, ") for c in captions]
    if mode == "single":
        return [c.capitalize() for c in cleaned]
    first, second = cleaned
    if not first or not second:
        alone = (first or second).capitalize()
        return [alone] if mode == "joined" else [alone, alone]
    forward, backward = f"{first.capitalize()} and {second}", f"{second.capitalize()} and {first}"
    return [forward] if mode == "joined" else [forward, backward]


def brute_ranks(gallery: list[str], queries: list[tuple[str, str, set[str]]], exclude: bool,
                suffix: str) -> list[tuple[int, list[str]]]:
    """(rank of the first correct image, ranked ids) per (reference, text, correct ids) query, by sorting."""
    vectors = {g: unit_vector(f"image:{g}{suffix}").tolist() for g in gallery}
    results = []
    for reference, text, correct in queries:
        q = query_vector(f"{reference}{suffix}", text).tolist()
        scored = [(-sum(a * b for a, b in zip(q, vectors[g], strict=True)), position, g)
                  for position, g in enumerate(gallery) if not (exclude and g == reference)]
        ranked = [g for _, _, g in sorted(scored)]
        results.append((next(i for i, g in enumerate(ranked, 1) if g in correct), ranked))
    return results


def brute_force_catalog(root: Path, category: str, protocol: EvalProtocol, broken: set[str] = frozenset()):
    entries = json.loads((root / "captions" / f"cap.{category}.val.json").read_text())
    if protocol.gallery == "split":
        gallery = json.loads((root / "image_splits" / f"split.{category}.val.json").read_text())
    else:
        gallery = list(dict.fromkeys(i for e in entries for i in (e["candidate"], e["target"])))
    gallery = [g for g in gallery if g not in broken]
    queries, skipped = [], 0
    for entry in entries:
        for text in brute_texts(entry["captions"], protocol.captions):
            if not text or entry["target"] in broken or entry["candidate"] in broken:
                skipped += 1
            else:
                queries.append((entry["candidate"], text, {entry["target"]}))
    results = brute_ranks(gallery, queries, protocol.exclude_reference, ".png")
    recall = {k: 100.0 * sum(r <= k for r, _ in results) / len(results) for k in protocol.ks}
    return recall, results, skipped


@pytest.fixture(scope="module")
def catalog(tmp_path_factory):
    return write_catalog(tmp_path_factory.mktemp("catalog"))


@pytest.mark.parametrize("protocol", ALL_PROTOCOLS, ids=lambda p: f"{p.gallery}-{p.captions}-{p.exclude_reference}")
def test_recall_matches_brute_force_for_every_protocol(catalog, protocol):
    dataset = open_dataset("fashioniq", catalog)
    report = evaluate(dataset, "val", FakeEncoder(), protocol, return_rankings=True)
    for result in report.categories:
        expected, ranked, empty = brute_force_catalog(catalog, result.category, protocol)
        assert result.recall == pytest.approx(expected, abs=1e-9)
        assert result.evaluated == len(ranked) == result.queries - empty
        assert [s.kind for s in result.skipped] == [EMPTY_CAPTION] * empty
        assert result.queries == TRIPLETS_PER_CATEGORY * (1 if protocol.captions == "joined" else 2)
        assert (empty > 0) == (protocol.captions == "single")
        assert [r.rank for r in result.rankings] == [r for r, _ in ranked]
        assert [list(r.top_ids) for r in result.rankings] == [ids[:50] for _, ids in ranked]
    mean = {k: sum(c.recall[k] for c in report.categories) / 2 for k in protocol.ks}
    assert report.mean_recall() == pytest.approx(mean)
    assert report.score() == pytest.approx((mean[10] + mean[50]) / 2)


def test_protocol_changes_the_numbers(catalog):
    dataset = open_dataset("fashioniq", catalog)
    scores = {(p.gallery, p.captions, p.exclude_reference): evaluate(dataset, "val", FakeEncoder(), p).score()
              for p in ALL_PROTOCOLS}
    assert len(set(scores.values())) > 6  # the options are not silently ignored


def test_missing_and_corrupt_images_are_accounted_for(tmp_path):
    root = write_catalog(tmp_path / "catalog")
    entries = json.loads((root / "captions" / "cap.dress.val.json").read_text())
    deleted, corrupt = entries[0]["target"], entries[1]["candidate"]
    assert deleted != corrupt
    (root / "images" / f"{deleted}.png").unlink()
    (root / "images" / f"{corrupt}.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    protocol = EvalProtocol(gallery="split", captions="joined", exclude_reference=True)
    report = evaluate(open_dataset("fashioniq", root), "val", FakeEncoder(), protocol)

    dress = report.categories[0]
    expected, ranked, skipped = brute_force_catalog(root, "dress", protocol, broken={deleted, corrupt})
    assert dress.recall == pytest.approx(expected, abs=1e-9)
    assert dress.queries == TRIPLETS_PER_CATEGORY and dress.evaluated == len(ranked)
    assert len(dress.skipped) == skipped > 0
    assert dress.gallery_size == IMAGES_PER_CATEGORY - 2
    by_reason = {s.kind for s in dress.skipped}
    assert by_reason <= {TARGET_FAILED, REFERENCE_FAILED} and TARGET_FAILED in by_reason

    summary = report.to_json()["categories"]["dress"]
    assert summary["gallery"]["failed"]["count"] == 2
    assert {f["image_id"] for f in summary["gallery"]["failed"]["examples"]} == {deleted, corrupt}
    assert summary["skipped"]["count"] == skipped and summary["evaluated"] == len(ranked)
    assert sum(summary["skipped"]["by_reason"].values()) == skipped
    assert any("image file not found" in f["reason"] for f in summary["gallery"]["failed"]["examples"])
    assert any("not an image" in f["reason"] for f in summary["gallery"]["failed"]["examples"])
    table = report.to_table()
    assert f"{deleted}: " in table and f"{corrupt}: " in table
    assert f"dress: {skipped} of {TRIPLETS_PER_CATEGORY} queries skipped" in table
    assert report.categories[1].gallery_failed == [] and not report.categories[1].skipped


def test_fashion200k_caption_equality_positives_match_brute_force(tmp_path):
    root = shutil.copytree(FIXTURES / "fashion200k", tmp_path / "f200k")
    dataset = open_dataset("fashion200k", root)
    gallery = dataset.gallery("test")
    for i, image_id in enumerate(gallery):
        (root / image_id).parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (4, 4), (i * 20, 0, 0)).save(root / image_id, "JPEG")
    protocol = EvalProtocol.default_for("fashion200k")
    report = evaluate(dataset, "test", FakeEncoder(), protocol, return_rankings=True)

    by_caption = {}
    for image_id in gallery:
        by_caption.setdefault(dataset.image_caption(image_id, "test"), set()).add(image_id)
    # File names are unique in this fixture, so the fake encoder's name keys stand in for the ids.
    names = [g.split("/")[-1] for g in gallery]
    queries = [(t.reference.split("/")[-1], t.captions[0].strip(".?, ").capitalize(),
                {g.split("/")[-1] for g in by_caption[t.target_caption]}) for t in dataset.triplets("test")]
    ranks = [r for r, _ in brute_ranks(names, queries, exclude=True, suffix="")]
    assert [r.rank for r in report.categories[0].rankings] == ranks
    assert report.categories[0].recall == pytest.approx(
        {k: 100.0 * sum(r <= k for r in ranks) / len(ranks) for k in protocol.ks})
    assert all(r.reference not in r.top_ids for r in report.categories[0].rankings)


def test_shoes_exact_target_with_reference_excluded(tmp_path):
    root = shutil.copytree(FIXTURES / "shoes", tmp_path / "shoes")
    dataset = open_dataset("shoes", root)
    gallery = dataset.gallery("eval")
    for i, name in enumerate(gallery):
        path = root / f"womens_{name.split('_')[2]}" / "0" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (4, 4), (0, i * 20, 0)).save(path, "JPEG")
    report = evaluate(open_dataset("shoes", root), "eval", FakeEncoder())
    assert report.protocol == EvalProtocol(exclude_reference=True)
    queries = [(t.reference, t.captions[0].strip(".?, ").capitalize(), {t.target}) for t in dataset.triplets("eval")]
    ranks = [r for r, _ in brute_ranks(gallery, queries, exclude=True, suffix="")]
    assert report.categories[0].recall == pytest.approx(
        {k: 100.0 * sum(r <= k for r in ranks) / len(ranks) for k in (1, 5, 10, 50)})
    assert report.categories[0].evaluated == 5 and report.categories[0].gallery_size == 8


def test_real_fashioniq_annotations_with_a_few_placeholder_images(tmp_path):
    for name in ("cap.dress.val.json", "split.dress.val.json"):
        shutil.copy(FIXTURES / "fashioniq" / name, tmp_path)
    entries = json.loads((tmp_path / "cap.dress.val.json").read_text())
    present = list(dict.fromkeys(i for e in entries[:20] for i in (e["candidate"], e["target"])))
    (tmp_path / "images").mkdir()
    for i, image_id in enumerate(present):
        Image.new("RGB", (4, 4), (i, i, i)).save(tmp_path / "images" / f"{image_id}.png")
    report = evaluate(open_dataset("fashioniq", tmp_path), "val", FakeEncoder())

    dress = report.categories[0]
    assert dress.queries == 2017 and dress.gallery_size == len(present)
    assert len(dress.gallery_failed) == 3817 - len(present)
    answerable = [e for e in entries if e["candidate"] in present and e["target"] in present]
    assert dress.evaluated == len(answerable) >= 20
    assert dress.evaluated + len(dress.skipped) == 2017
    queries = [(e["candidate"], brute_texts(e["captions"], "joined")[0], {e["target"]}) for e in answerable]
    ranks = [r for r, _ in brute_ranks(present, queries, exclude=False, suffix=".png")]
    assert dress.recall == pytest.approx({k: 100.0 * sum(r <= k for r in ranks) / len(ranks) for k in (1, 5, 10, 50)})
    summary = report.to_json(max_examples=3)
    assert summary["categories"]["dress"]["gallery"]["failed"]["count"] == 3817 - len(present)
    assert len(summary["categories"]["dress"]["gallery"]["failed"]["examples"]) == 3
    json.dumps(summary, allow_nan=False)


def test_single_captions_skip_real_empty_captions_and_say_so(caplog):
    protocol = EvalProtocol(captions="single")
    with caplog.at_level(logging.WARNING, logger="sdfn.evaluate"):
        report = evaluate(open_dataset("fashioniq", FIXTURES / "fashioniq"), "val", IntegerEncoder(), protocol)
    empty = {"dress": 0, "shirt": 1, "toptee": 2}  # real val entries with an empty caption
    for result in report.categories:
        triplets = len(open_dataset("fashioniq", FIXTURES / "fashioniq").triplets("val", result.category))
        assert result.queries == 2 * triplets
        assert [s.kind for s in result.skipped] == [EMPTY_CAPTION] * empty[result.category]
        assert result.evaluated == 2 * triplets - empty[result.category]
    summary = report.to_json()
    assert summary["categories"]["toptee"]["skipped"]["by_reason"] == {EMPTY_CAPTION: 2}
    assert summary["skipped"] == 3
    assert "toptee: 2 of 3922 queries skipped (empty caption: 2); recall is over the other 3920" in report.to_table()
    warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warned == ["fashioniq val shirt: 1 of 4076 queries skipped (empty caption: 1); recall is over the "
                      "other 4075",
                      "fashioniq val toptee: 2 of 3922 queries skipped (empty caption: 2); recall is over the "
                      "other 3920"]


def clip4cir_fashioniq_val(category: str, encoder: IntegerEncoder) -> tuple[np.ndarray, dict[int, float]]:
    """Ranks and R@10/R@50 of one category, written from CLIP4Cir's published FashionIQ validation
    (compute_fiq_val_metrics) in numpy, independently of sdfn.evaluate: the gallery is every image of the
    category's val split in file order, the reference stays in it, one query per triplet with the text
    "<c1 stripped of '.?, ', capitalised> and <c2 stripped>", distances 1 - q.g sorted ascending, recall the
    share of queries whose target is among the first K names. Where CLIP4Cir leaves two choices open, this
    follows what sdfn documents: ties in gallery order (a stable sort) and an empty caption left out of the
    text (CLIP4Cir's f-string would give " and c2")."""
    entries = json.loads((FIXTURES / "fashioniq" / f"cap.{category}.val.json").read_text())
    names = json.loads((FIXTURES / "fashioniq" / f"split.{category}.val.json").read_text())
    gallery = np.stack([encoder.vector(f"image:{name}") for name in names])
    texts = []
    for entry in entries:
        first, second = (c.strip(".?, ") for c in entry["captions"])
        texts.append(f"{first.capitalize()} and {second}" if first and second else (first or second).capitalize())
    queries = np.stack([encoder.query_vector(e["candidate"], t) for e, t in zip(entries, texts, strict=True)])
    distances = 1 - queries @ gallery.T
    position = {name: i for i, name in enumerate(names)}
    assert len(position) == len(names)  # so comparing gallery positions is comparing CLIP4Cir's names
    sorted_indices = np.argsort(distances, axis=1, kind="stable")
    labels = sorted_indices == np.array([position[e["target"]] for e in entries])[:, None]
    assert (labels.sum(axis=1) == 1).all()  # as CLIP4Cir asserts: every target is in the gallery once
    ranks = labels.argmax(axis=1) + 1
    return ranks, {k: 100.0 * float(np.mean(ranks <= k)) for k in (10, 50)}


def test_fashioniq_recall_equals_an_independent_clip4cir_implementation():
    encoder = IntegerEncoder()
    report = evaluate(open_dataset("fashioniq", FIXTURES / "fashioniq"), "val", encoder,
                      EvalProtocol.default_for("fashioniq"), return_rankings=True)
    expected_recall = {}
    for result in report.categories:
        ranks, expected_recall[result.category] = clip4cir_fashioniq_val(result.category, encoder)
        assert result.evaluated == result.queries == len(ranks) and not result.skipped
        assert [r.rank for r in result.rankings] == ranks.tolist()
        assert {k: result.recall[k] for k in (10, 50)} == expected_recall[result.category]
    assert sum(len(c.rankings) for c in report.categories) == 6016
    mean = {k: sum(r[k] for r in expected_recall.values()) / 3 for k in (10, 50)}
    assert {k: report.mean_recall()[k] for k in (10, 50)} == mean
    assert report.score() == (mean[10] + mean[50]) / 2
    assert 0 < mean[10] < mean[50] < 100  # the random features leave room to get ranks wrong


def test_nothing_evaluable_is_reported_not_hidden(tmp_path):
    for name in ("cap.dress.val.json", "split.dress.val.json"):
        shutil.copy(FIXTURES / "fashioniq" / name, tmp_path)
    report = evaluate(open_dataset("fashioniq", tmp_path), "val", FakeEncoder())
    dress = report.to_json()["categories"]["dress"]
    assert dress["evaluated"] == 0 and dress["skipped"]["count"] == 2017
    assert dress["R@10"] is None and report.to_json()["mean"]["(R@10+R@50)/2"] is None
    assert "n/a" in report.to_table()
    json.dumps(report.to_json(), allow_nan=False)


def test_table_and_json_layout(catalog):
    report = evaluate(open_dataset("fashioniq", catalog), "val", FakeEncoder(), return_rankings=True)
    lines = report.to_table().splitlines()
    assert lines[0].startswith("fashioniq val: gallery=split, captions=joined, exclude_reference=False")
    assert lines[1].split() == ["category", "R@1", "R@5", "R@10", "R@50", "(R@10+R@50)/2", "queries", "skipped"]
    assert [line.split()[0] for line in lines[2:5]] == ["dress", "skirt", "mean"]
    assert lines[4].split()[-2:] == [str(2 * TRIPLETS_PER_CATEGORY), "0"]
    summary = report.to_json()
    assert set(summary["categories"]) == set(CATEGORIES) and summary["queries"] == 2 * TRIPLETS_PER_CATEGORY
    mean = report.mean_recall()
    assert summary["mean"] == pytest.approx({"R@1": mean[1], "R@5": mean[5], "R@10": mean[10], "R@50": mean[50],
                                             "(R@10+R@50)/2": report.score()}, abs=1e-4)
    assert summary["categories"]["dress"]["R@10"] == pytest.approx(report.categories[0].recall[10], abs=1e-4)
    assert summary["protocol"] == {"gallery": "split", "captions": "joined", "exclude_reference": False,
                                   "ks": (1, 5, 10, 50)}
    rankings = summary["rankings"]
    assert len(rankings) == 2 * TRIPLETS_PER_CATEGORY and len(rankings[0]["top"]) == 50
    assert rankings[-1]["asks"] == {"colour": ["red"]} and rankings[0]["asks"] is None


def test_rank_is_the_same_in_small_chunks(monkeypatch):
    generator = torch.Generator().manual_seed(1)
    queries_features = torch.nn.functional.normalize(torch.randn(30, 8, generator=generator), dim=1)
    gallery_features = torch.nn.functional.normalize(torch.randn(40, 8, generator=generator), dim=1)
    queries = [Query(TRIPLET, text="", positives=frozenset({i, (3 * i) % 40}), reference_index=(i + 1) % 40)
               for i in range(30)]
    protocol = EvalProtocol(exclude_reference=True)
    whole = rank(queries_features, gallery_features, queries, protocol)
    monkeypatch.setattr(evaluation, "_CHUNK_ELEMENTS", 50)  # one query per chunk
    chunked = rank(queries_features, gallery_features, queries, protocol)
    assert torch.equal(whole.first_positive_rank, chunked.first_positive_rank)
    assert torch.equal(whole.top, chunked.top)
    assert all((whole.top[i] != q.reference_index).all() for i, q in enumerate(queries))


def test_rank_breaks_ties_by_gallery_order_and_masks_the_reference():
    gallery = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    query = torch.tensor([[1.0, 0.0]])
    positives = Query(TRIPLET, text="", positives=frozenset({1}), reference_index=0)
    kept = rank(query, gallery, [positives], EvalProtocol(exclude_reference=False), top=3)
    assert kept.first_positive_rank.tolist() == [2] and kept.top.tolist() == [[0, 1, 2]]
    masked = rank(query, gallery, [positives], EvalProtocol(exclude_reference=True), top=3)
    assert masked.first_positive_rank.tolist() == [1] and masked.top.tolist() == [[1, 2, -1]]
    only_reference = Query(TRIPLET, text="", positives=frozenset({0}), reference_index=0)
    with pytest.raises(ValueError, match=r"query 0 \(cap\.x\.val\.json entry 7\) has no rankable positive"):
        rank(query, gallery, [only_reference], EvalProtocol(exclude_reference=True))


def test_top_list_breaks_ties_by_gallery_order():
    gallery = torch.ones(4, 3) / 3 ** 0.5  # four identical images
    query = Query(TRIPLET, text="", positives=frozenset({3}), reference_index=None)
    ranking = rank(gallery[:1], gallery, [query], EvalProtocol(), top=2)
    assert ranking.top.tolist() == [[0, 1]] and ranking.first_positive_rank.tolist() == [4]


def test_top_list_agrees_with_the_ranks_under_many_ties():
    # 200 queries over a gallery of 400 images that repeat 8 distinct vectors: every score is a tie of 50.
    generator = torch.Generator().manual_seed(3)
    distinct = torch.nn.functional.normalize(torch.randn(8, 6, generator=generator), dim=1)
    gallery = distinct[torch.randint(0, 8, (400,), generator=generator)]
    query_features = distinct[torch.randint(0, 8, (200,), generator=generator)]
    queries = [Query(TRIPLET, text="", positives=frozenset({(7 * i) % 400}), reference_index=(7 * i + 1) % 400)
               for i in range(200)]
    for protocol in (EvalProtocol(exclude_reference=False), EvalProtocol(exclude_reference=True)):
        ranking = rank(query_features, gallery, queries, protocol, top=50)
        scores = query_features @ gallery.T
        if protocol.exclude_reference:
            scores[range(200), [q.reference_index for q in queries]] = float("-inf")
        expected = scores.argsort(dim=1, descending=True, stable=True)[:, :50]
        assert torch.equal(ranking.top, expected.masked_fill(scores.gather(1, expected) == float("-inf"), -1))
        for q, r, top in zip(queries, ranking.first_positive_rank.tolist(), ranking.top.tolist(), strict=True):
            (positive,) = q.positives
            assert (top.index(positive) + 1 if positive in top else None) == (r if r <= 50 else None)


def ranking(category: str, top_ids: tuple[str, ...]) -> QueryRanking:
    return QueryRanking(category, "r", "", "t", rank=1, top_ids=top_ids, triplet=TRIPLET)


def satisfaction_report(categories: dict[str, list[tuple[str, ...]]]) -> EvalReport:
    results = [CategoryResult(name, {1: 0.0}, len(tops), len(tops), [], 10, [], [ranking(name, t) for t in tops])
               for name, tops in categories.items()]
    return EvalReport("fashioniq", "val", EvalProtocol(ks=(1,)), results)


def test_satisfaction_is_a_category_mean_over_the_items_returned():
    answers = lambda ranking, item: item.startswith("ok")  # noqa: E731
    report = satisfaction_report({
        "dress": [("ok1", "no1")],  # a gallery of 3 less the excluded reference: 2 items returned
        "shirt": [("no1", "ok1", "ok2", "ok3", "ok4", "no2"), ("ok1", "no1", "no2", "no3", "no4", "ok2"),
                  ("ok1", "ok2", "ok3", "ok4", "ok5", "ok6")],
    })
    per_category = report.category_satisfaction(answers, (1, 5))
    assert per_category["dress"] == pytest.approx({1: 100.0, 5: 50.0})  # 1 of the 2 returned, not 1 of 5
    assert per_category["shirt"] == pytest.approx({1: 200 / 3, 5: 100 * (4 / 5 + 1 / 5 + 1) / 3})
    assert report.mean_satisfaction(answers, (1, 5)) == pytest.approx(
        {k: (per_category["dress"][k] + per_category["shirt"][k]) / 2 for k in (1, 5)})  # not pooled (75 at k=1)
    with pytest.raises(ValueError, match=r"sat@51: k must be 1\.\.50"):
        report.mean_satisfaction(answers, (51,))
    empty = satisfaction_report({"dress": [("ok1",)], "shirt": []})
    assert math.isnan(empty.mean_satisfaction(answers, (1,))[1])


def test_satisfaction_needs_rankings_and_reads_the_tie_consistent_top_list(catalog):
    dataset = open_dataset("fashioniq", catalog)
    with pytest.raises(ValueError, match=r"return_rankings=True \(missing for dress, skirt\)"):
        evaluate(dataset, "val", FakeEncoder()).mean_satisfaction(lambda r, i: True)

    class TiedEncoder(FakeEncoder):  # every image the same vector: the top list is the gallery order
        def encode_gallery(self, image_paths):
            return EncodeResult(torch.ones(len(image_paths), 16) / 4)

    report = evaluate(dataset, "val", TiedEncoder(), EvalProtocol(exclude_reference=True), return_rankings=True)
    gallery = {c: dataset.gallery("val", c) for c in CATEGORIES}
    for result in report.categories:
        assert all(r.top_ids == tuple(i for i in gallery[result.category] if i != r.reference)[:50]
                   for r in result.rankings)
    # Only each category's first gallery image answers: sat@1 counts the queries whose reference is not it.
    sat = report.category_satisfaction(lambda r, item: item == gallery[r.category][0], (1,))
    for result in report.categories:
        expected = sum(r.reference != gallery[result.category][0] for r in result.rankings) / len(result.rankings)
        assert sat[result.category][1] == pytest.approx(100 * expected)


@pytest.mark.parametrize(("options", "message"), [
    ({"gallery": "all"}, r"gallery='all'; use one of split, val-subset"),
    ({"captions": "first"}, r"captions='first'; use one of joined, both-orders, single"),
    ({"exclude_reference": "yes"}, r"exclude_reference='yes'"),
    ({"ks": (10, 10)}, r"ks=\(10, 10\); give distinct positive integers"),
    ({"ks": (0, 5)}, r"ks=\(0, 5\)"),
    ({"ks": ()}, r"ks=\(\)"),
])
def test_protocol_options_are_validated(options, message):
    with pytest.raises(ConfigError, match=message):
        EvalProtocol(**options)


def test_protocol_defaults_per_dataset():
    assert EvalProtocol.default_for("fashioniq") == EvalProtocol("split", "joined", False)
    assert EvalProtocol.default_for("shoes").exclude_reference is True
    assert EvalProtocol.default_for("fashion200k").exclude_reference is True
    assert EvalProtocol(ks=[50, 1]).ks == (1, 50)
    with pytest.raises(ConfigError, match=r"no default evaluation protocol for data set 'cirr'"):
        EvalProtocol.default_for("cirr")


def test_split_without_targets_cannot_be_evaluated(tmp_path):
    (tmp_path / "cap.dress.test.json").write_text(json.dumps([{"candidate": "a", "captions": ["x", "y"]}]))
    (tmp_path / "split.dress.test.json").write_text(json.dumps(["a", "b"]))
    with pytest.raises(DataError, match=r"cap\.dress\.test\.json: entry 0: no target.*evaluate on a split with"):
        evaluate(open_dataset("fashioniq", tmp_path), "test", FakeEncoder())


def test_unknown_category_and_broken_encoder_are_refused(catalog):
    dataset = open_dataset("fashioniq", catalog)
    with pytest.raises(DataError, match=r"unknown category 'shirt'.*known categories: dress, skirt"):
        evaluate(dataset, "val", FakeEncoder(), categories=["shirt"])

    class ShortEncoder(FakeEncoder):
        def encode_gallery(self, image_paths):
            return EncodeResult(super().encode_gallery(image_paths).features[:-1], {})

    with pytest.raises(ValueError, match=r"encode_gallery returned features \(59, 16\) for 60 items"):
        evaluate(dataset, "val", ShortEncoder(), categories=["dress"])
    queries, gallery = build_queries(dataset, "val", "dress", EvalProtocol())
    assert len(gallery) == IMAGES_PER_CATEGORY and len(queries) == TRIPLETS_PER_CATEGORY
