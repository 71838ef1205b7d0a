"""The catalog index: reused when fresh, never used when stale, updated incrementally, exact within a category."""

from __future__ import annotations

import contextlib
import csv
import errno
import hashlib
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import sdfn.index as sdfn_index
import sdfn.index.build as index_build
import sdfn.index.faiss_policy as faiss_policy
import sdfn.index.manifest as manifest_module
from sdfn.catalog import open_catalog
from sdfn.cli import main
from sdfn.errors import ConfigError, DataError
from sdfn.fusion import FusionConfig
from sdfn.index import choose_index_type, embed_items, make_index, open_index, search_index
from sdfn.model import ComposedRetrievalModel, ModelConfig

SMALL_FUSION = FusionConfig(width=32, heads=2, router_hidden=16)


def make_checkpoint(folder: Path, seed: int, fusion: FusionConfig = SMALL_FUSION) -> Path:
    torch.manual_seed(seed)
    ComposedRetrievalModel(ModelConfig(fusion=fusion)).save(folder)
    return folder


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    return make_checkpoint(tmp_path_factory.mktemp("ckpt") / "a", seed=0)


@pytest.fixture(scope="module")
def model(checkpoint) -> ComposedRetrievalModel:
    return ComposedRetrievalModel.load(checkpoint).eval()


@pytest.fixture(scope="module")
def other_model(tmp_path_factory) -> ComposedRetrievalModel:
    """Another model: same architecture, another seed, so another backbone and another fusion head."""
    return ComposedRetrievalModel.load(make_checkpoint(tmp_path_factory.mktemp("ckpt") / "b", seed=1)).eval()


@pytest.fixture(scope="module")
def indexed(small_catalog, tmp_path_factory, model) -> Path:
    """A copy of the small catalog with an index built by `model`; copy it again before changing it."""
    root = tmp_path_factory.mktemp("indexed") / "catalog"
    shutil.copytree(small_catalog, root)
    open_index(open_catalog(root), model, progress=False)
    return root


@pytest.fixture()
def catalog_copy(indexed, tmp_path) -> Path:
    root = tmp_path / "catalog"
    shutil.copytree(indexed, root)
    return root


@pytest.fixture()
def count_encodings(monkeypatch) -> list[int]:
    """Number of images sent to the backbone by each call of extract_image_features."""
    calls: list[int] = []
    real = index_build.extract_image_features

    def counting(model, paths, *args, **kwargs):
        calls.append(len(paths))
        return real(model, paths, *args, **kwargs)

    monkeypatch.setattr(index_build, "extract_image_features", counting)
    return calls


def add_items(root: Path, count: int) -> list[str]:
    """Draw `count` new images and append them to catalog.csv."""
    with (root / "catalog.csv").open(encoding="utf-8", newline="") as handle:
        reader = csv.DictReader(handle)
        columns, rows = reader.fieldnames, list(reader)
    new = []
    for i in range(count):
        item_id = f"extra-{i:03d}"
        Image.new("RGB", (64, 64), (40 * i, 255 - 40 * i, 90)).save(root / "images" / f"{item_id}.png")
        new.append({**rows[0], "id": item_id, "image": f"images/{item_id}.png", "category": "extra"})
    with (root / "catalog.csv").open("a", encoding="utf-8", newline="") as handle:
        csv.DictWriter(handle, fieldnames=columns, lineterminator="\n").writerows(new)
    return [r["id"] for r in new]


def manifest(root: Path) -> dict:
    return json.loads((root / "index" / "manifest.json").read_text())


# ---- index types ---------------------------------------------------------------------------------

def test_auto_choice_follows_the_thresholds():
    assert choose_index_type(10_000) == "flat"
    assert choose_index_type(sdfn_index.FLAT_MAX_ITEMS) == "hnsw"
    assert choose_index_type(sdfn_index.HNSW_MAX_ITEMS) == "ivfpq"
    assert choose_index_type(10, "hnsw") == "hnsw"
    with pytest.raises(ConfigError, match=r"unknown index type 'annoy'"):
        choose_index_type(10, "annoy")


def unit_vectors(n: int, d: int = 64, seed: int = 0) -> np.ndarray:
    x = np.random.default_rng(seed).standard_normal((n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


@pytest.mark.parametrize("index_type,fp16", [("flat", False), ("flat", True), ("hnsw", False), ("hnsw", True)])
def test_indexes_find_the_exact_neighbours_on_small_data(index_type, fp16):
    data, queries = unit_vectors(2000), unit_vectors(20, seed=1)
    _, truth = search_index(make_index(data, "flat"), queries, 10)
    _, found = search_index(make_index(data, index_type, fp16=fp16), queries, 10)
    overlap = np.mean([len(set(f) & set(t)) / 10 for f, t in zip(found, truth, strict=True)])
    assert overlap >= (1.0 if index_type == "flat" and not fp16 else 0.95)


def test_ivfpq_needs_enough_items_and_takes_no_fp16():
    with pytest.raises(ConfigError, match=r"ivfpq needs at least 10,000 items"):
        make_index(unit_vectors(500), "ivfpq")
    with pytest.raises(ConfigError, match=r"--fp16 does not apply to ivfpq"):
        make_index(unit_vectors(500), "ivfpq", fp16=True)


def test_ivfpq_builds_and_searches(monkeypatch):
    monkeypatch.setattr(faiss_policy, "IVFPQ_MIN_ITEMS", 2000)  # small codebooks train fast enough for a test
    data = unit_vectors(3000, d=32)
    _, rows = search_index(make_index(data, "ivfpq"), data[:5], 5)
    assert (rows[:, 0] == np.arange(5)).mean() >= 0.8


# ---- building, reusing, updating -----------------------------------------------------------------

def test_index_folder_layout_and_manifest(indexed, model):
    folder = indexed / "index"
    m = manifest(indexed)
    assert (folder / "vectors.faiss").is_file()
    assert [s["file"] for s in m["features"]["shards"]] == ["features-00000.safetensors"]
    assert m["model"]["fingerprint"] == model.fingerprint()
    assert m["catalog"]["fingerprint"] == open_catalog(indexed).fingerprint()
    assert m["index"] | {"params": {}} == {"file": "vectors.faiss", "type": "flat", "requested": "auto",
                                           "storage": "float32", "count": 200, "dim": 256, "params": {}}
    assert len(m["items"]) == 200 and m["unreadable"] == []
    assert {"created", "updated", "sdfn_version"} <= set(m)


def test_fresh_index_is_reused_without_encoding(indexed, model, count_encodings):
    index, status = open_index(open_catalog(indexed), model, progress=False)
    assert status.action == "reused" and status.encoded == 0 and count_encodings == []
    assert "up to date" in status.message
    assert len(index) == 200


def test_cached_features_match_encoding_the_image(indexed, model):
    index, _ = open_index(open_catalog(indexed), model, progress=False)
    row = 7
    from sdfn.encode import extract_image_features

    fresh = extract_image_features(model, [index.catalog.image_path(index.catalog.row_of[index.ids[row]])])
    cached = index.cache.features([row])
    assert torch.allclose(cached.pooled, fresh.features.pooled, atol=2e-2, rtol=1e-2)
    assert cached.tokens.shape == fresh.features.tokens.shape


def test_added_items_only_are_encoded_and_appended(catalog_copy, model, count_encodings):
    new = add_items(catalog_copy, 3)
    index, status = open_index(open_catalog(catalog_copy), model, progress=False)
    assert status.action == "appended" and status.encoded == 3 and count_encodings == [3]
    assert "gained 3 item(s)" in status.message
    assert len(index) == 203 and index.ids[-3:] == new
    assert len(manifest(catalog_copy)["features"]["shards"]) == 2
    _, rows = index.search(_vector(index, "extra-001"), 1)
    assert index.ids[rows[0, 0]] == "extra-001"
    again, status = open_index(open_catalog(catalog_copy), model, progress=False)
    assert status.action == "reused" and len(again) == 203


def _vector(index, item_id: str) -> np.ndarray:
    return embed_items(index.model, index.cache.pooled([index.row_of[item_id]]))


def test_index_of_another_model_is_rebuilt_not_used(catalog_copy, other_model, count_encodings):
    other = other_model
    index, status = open_index(open_catalog(catalog_copy), other, progress=False)
    assert status.action == "rebuilt" and status.encoded == 200
    assert "built by another model" in status.message
    assert manifest(catalog_copy)["model"]["fingerprint"] == other.fingerprint()


def test_new_fusion_head_on_the_same_backbone_reuses_cached_features(catalog_copy, model, count_encodings):
    other = ComposedRetrievalModel(ModelConfig(fusion=FusionConfig(name="combiner", width=32))).eval()
    other.backbone.load_state_dict(model.backbone.state_dict())
    index, status = open_index(open_catalog(catalog_copy), other, progress=False)
    assert status.action == "rebuilt" and status.encoded == 0 and count_encodings == []
    assert "cached features are reused" in status.message
    _, rows = index.search(_vector(index, "shirt-000003"), 1)
    assert index.ids[rows[0, 0]] == "shirt-000003"


def test_removed_and_changed_items_rebuild_from_the_cache(catalog_copy, model, count_encodings):
    table = catalog_copy / "catalog.csv"
    lines = table.read_text().splitlines(keepends=True)
    table.write_text("".join(lines[:3] + lines[4:]))            # dress-000002 removed
    Image.new("RGB", (64, 64), (0, 0, 0)).save(catalog_copy / "images" / "dress-000005.png")  # changed
    index, status = open_index(open_catalog(catalog_copy), model, progress=False)
    assert status.action == "rebuilt" and status.encoded == 1 and count_encodings == [1]
    assert "1 images changed, 1 items removed" in status.message
    assert len(index) == 199 and "dress-000002" not in index.row_of


def test_changing_the_index_type_rebuilds_without_encoding(catalog_copy, model, count_encodings):
    index, status = open_index(open_catalog(catalog_copy), model, index_type="hnsw", fp16=True, progress=False)
    assert status.action == "rebuilt" and status.encoded == 0
    assert "from flat (float32) to hnsw (float16)" in status.message
    _, status = open_index(open_catalog(catalog_copy), model, progress=False)  # None: keep what was built
    assert status.action == "reused"


def test_unreadable_catalog_image_is_reported_and_left_out(catalog_copy, model):
    (catalog_copy / "images" / "skirt-000004.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    index, status = open_index(open_catalog(catalog_copy), model, progress=False)
    assert "1 image(s) could not be read" in status.message
    assert "skirt-000004" not in index.row_of and "skirt-000004" in index.unreadable
    assert "skirt-000004" in (catalog_copy / "index" / "unreadable.txt").read_text()
    _, status = open_index(open_catalog(catalog_copy), model, progress=False)
    assert status.action == "reused" and "1 image(s) could not be read" not in status.message


def test_damaged_index_folder_is_rebuilt(catalog_copy, model):
    (catalog_copy / "index" / "vectors.faiss").unlink()
    _, status = open_index(open_catalog(catalog_copy), model, progress=False)
    assert status.action == "rebuilt" and "index/vectors.faiss is damaged (missing)" in status.message
    assert status.encoded == 0  # the feature shard is intact: nothing is encoded again


@pytest.mark.parametrize("index_type", ["flat", "hnsw"])
def test_category_search_is_exact_and_complete(catalog_copy, model, index_type):
    index, _ = open_index(open_catalog(catalog_copy), model, index_type=index_type, progress=False)
    query = _vector(index, "toptee-000010")
    scores, rows = index.search(query, 40, category="toptee")
    assert (rows >= 0).all() and len(set(rows[0])) == 40
    assert {index.catalog.rows[index.catalog.row_of[index.ids[r]]]["category"] for r in rows[0]} == {"toptee"}
    toptee = [index.row_of[i] for i in index.ids if i.startswith("toptee")]
    exact = (np.stack([_vector(index, index.ids[r])[0] for r in toptee]) @ query[0])
    np.testing.assert_allclose(np.sort(scores[0])[::-1], np.sort(exact)[::-1], atol=1e-5)


def test_cli_index_prints_what_happened(indexed, checkpoint, capsys):
    assert main(["index", "--catalog", str(indexed), "--checkpoint", str(checkpoint), "--quiet"]) == 0
    assert "sdfn index: index is up to date (200 items, flat, float32); no images encoded" in capsys.readouterr().out


# ---- snapshots, integrity, leftovers ---------------------------------------------------------------

def test_opened_index_is_a_snapshot_that_a_rebuild_does_not_change(catalog_copy, model, other_model):
    old, _ = open_index(open_catalog(catalog_copy), model, progress=False)
    query = _vector(old, "dress-000000")
    scores, rows = old.search(query, 10)
    features = old.cache.features([0, 57, 199])
    all_vectors = embed_items(model, old.cache.pooled(range(len(old))))

    def rebuild():  # another thread rebuilds the same folder with another model, as a training run's "use it" does
        open_index(open_catalog(catalog_copy), other_model, progress=False)

    worker = threading.Thread(target=rebuild)
    worker.start()
    worker.join()
    assert manifest(catalog_copy)["model"]["fingerprint"] == other_model.fingerprint() != model.fingerprint()

    again_scores, again_rows = old.search(query, 10)
    np.testing.assert_array_equal(again_rows, rows)
    np.testing.assert_array_equal(again_scores, scores)
    assert old.fingerprint == model.fingerprint() and old.backbone_fingerprint == model.backbone_fingerprint()
    assert torch.equal(old.cache.features([0, 57, 199]).pooled, features.pooled)
    assert torch.equal(old.cache.features([0, 57, 199]).tokens, features.tokens)
    # A category index made after the rebuild still comes from the old snapshot's features.
    cat_scores, cat_rows = old.search(query, 5, category="shirt")
    shirts = np.array([r for r, i in enumerate(old.ids) if i.startswith("shirt")])
    exact = all_vectors[shirts] @ query[0]
    np.testing.assert_allclose(cat_scores[0], np.sort(exact)[::-1][:5], atol=1e-5)

    fresh, status = open_index(open_catalog(catalog_copy), other_model, progress=False)
    assert status.action == "reused" and fresh.fingerprint == other_model.fingerprint()
    assert not torch.equal(fresh.cache.features([0]).pooled, features.pooled[:1])  # the files on disk are new ones


def test_manifest_records_size_and_checksum_of_every_file(indexed):
    m = manifest(indexed)
    assert set(m["files"]) == {"vectors.faiss", "features-00000.safetensors"}
    for name, record in m["files"].items():
        path = indexed / "index" / name
        assert record["size"] == path.stat().st_size and record["mtime_ns"] == path.stat().st_mtime_ns
        assert record["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _garble(path: Path) -> None:
    """Same size, some bytes in the middle overwritten (the mtime changes, as any write does)."""
    data = bytearray(path.read_bytes())
    middle = len(data) // 2
    data[middle:middle + 64] = bytes(range(64))
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("name,encoded", [("features-00000.safetensors", 200), ("vectors.faiss", 0),
                                          ("manifest.json", 200)])
@pytest.mark.parametrize("damage", [_truncate, _garble, Path.unlink], ids=["truncated", "garbled", "missing"])
def test_damaged_file_is_named_and_rebuilt_when_opened(catalog_copy, model, name, encoded, damage):
    damage(catalog_copy / "index" / name)
    index, status = open_index(open_catalog(catalog_copy), model, progress=False)
    said = "is missing" if damage is Path.unlink and name == "manifest.json" else "is damaged"
    assert status.action == "rebuilt" and f"index rebuilt because index/{name} {said}" in status.message
    assert status.encoded == encoded  # a damaged vectors.faiss keeps the intact feature cache
    _, rows = index.search(_vector(index, "skirt-000011"), 1)
    assert index.ids[rows[0, 0]] == "skirt-000011"
    _, status = open_index(open_catalog(catalog_copy), model, progress=False)
    assert status.action == "reused"


@pytest.mark.parametrize("name", ["features-00000.safetensors", "vectors.faiss"])
def test_cli_index_says_a_truncated_file_is_damaged_and_rebuilds(catalog_copy, checkpoint, capsys, name):
    _truncate(catalog_copy / "index" / name)
    assert main(["index", "--catalog", str(catalog_copy), "--checkpoint", str(checkpoint), "--quiet"]) == 0
    out = capsys.readouterr().out
    assert f"index rebuilt because index/{name} is damaged" in out and "up to date" not in out
    assert main(["index", "--catalog", str(catalog_copy), "--checkpoint", str(checkpoint), "--quiet"]) == 0
    assert "index is up to date" in capsys.readouterr().out


def test_cli_index_checks_every_checksum(catalog_copy, checkpoint, model, capsys):
    """An altered shard whose size and mtime look untouched: a plain open trusts them, `sdfn index` does not."""
    path = catalog_copy / "index" / "features-00000.safetensors"
    stat = path.stat()
    _garble(path)
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert main(["index", "--catalog", str(catalog_copy), "--checkpoint", str(checkpoint), "--quiet"]) == 0
    assert "features-00000.safetensors is damaged (its sha256 checksum differs" in capsys.readouterr().out


def test_damaged_index_of_an_unwritable_catalog_is_one_clear_error(catalog_copy, model, monkeypatch):
    """Tests may run as root, whom file modes do not stop: the refused write is simulated where it happens."""
    _truncate(catalog_copy / "index" / "vectors.faiss")

    @contextlib.contextmanager
    def refused(dst, publish=True):
        raise PermissionError(errno.EACCES, "Permission denied", str(Path(dst).parent))
        yield

    monkeypatch.setattr(index_build, "staging_folder", refused)
    with pytest.raises(DataError) as err:
        open_index(open_catalog(catalog_copy), model, progress=False)
    message = str(err.value)
    assert "\n" not in message and "index/vectors.faiss is damaged" in message
    assert "Permission denied" in message and f"run `sdfn index --catalog {catalog_copy}`" in message


def test_leftover_staging_folders_of_dead_builds_are_removed(catalog_copy, model):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead_pid = int(dead.stdout)
    abandoned = catalog_copy / f".index.tmp-{dead_pid}-0badc0de"
    abandoned.mkdir()
    (abandoned / "features-00000.safetensors").write_bytes(b"half")
    legacy = catalog_copy / ".index.k2j4_x9q"  # tempfile.mkdtemp's name, from sdfn before fsio
    legacy.mkdir()
    os.utime(legacy, (time.time() - 7200, time.time() - 7200))
    live = catalog_copy / f".index.tmp-{os.getpid()}-0123abcd"  # a build still running in this process
    live.mkdir()
    _, status = open_index(open_catalog(catalog_copy), model, progress=False)
    assert status.action == "reused"
    assert "removed 2 temporary folder(s) left by an interrupted index build" in status.message
    assert not abandoned.exists() and not legacy.exists() and live.exists()


def test_encoded_and_unreadable_images_are_counted_apart(catalog_copy, model):
    new = add_items(catalog_copy, 4)
    for item_id in new[:3]:
        (catalog_copy / "images" / f"{item_id}.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    index, status = open_index(open_catalog(catalog_copy), model, progress=False)
    assert status.action == "appended" and status.encoded == 1 and status.failed == 3
    assert "catalog gained 4 item(s): 1 image(s) encoded, 3 could not be read" in status.message
    assert len(index) == 201
    (catalog_copy / "images" / "dress-000001.png").write_bytes(b"not an image")  # changed: rebuilt from the cache
    index, status = open_index(open_catalog(catalog_copy), model, progress=False)
    assert status.action == "rebuilt" and status.encoded == 0 and status.failed == 1
    assert "0 image(s) encoded, 1 could not be read" in status.message
    assert "4 image(s) could not be read and are not searchable" in status.message


def test_catalog_table_edit_without_image_changes_keeps_the_index(catalog_copy, model, count_encodings):
    shard = catalog_copy / "index" / "features-00000.safetensors"
    inode = shard.stat().st_ino
    table = catalog_copy / "catalog.csv"
    with table.open(encoding="utf-8", newline="") as handle:
        rows = list(csv.DictReader(handle))
    rows[3]["title"] = "a new title, and no new image"
    with table.open("w", encoding="utf-8", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]), lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
    index, status = open_index(open_catalog(catalog_copy), model, progress=False)
    assert status.action == "reused" and count_encodings == []
    assert "catalog.csv changed but no image did: index kept" in status.message
    assert manifest(catalog_copy)["catalog"]["fingerprint"] == open_catalog(catalog_copy).fingerprint()
    assert shard.stat().st_ino == inode  # republished with hard links: nothing copied or rewritten
    _, status = open_index(open_catalog(catalog_copy), model, progress=False)
    assert "index is up to date" in status.message


def test_a_copy_that_did_not_keep_mtimes_is_checked_once(catalog_copy, model, monkeypatch):
    for path in (catalog_copy / "index").iterdir():  # `cp -r` without -a: same bytes, new mtimes
        os.utime(path, ns=(path.stat().st_atime_ns, path.stat().st_mtime_ns + 10**9))
    hashed = []
    real = manifest_module.file_sha256
    monkeypatch.setattr(manifest_module, "file_sha256", lambda path: hashed.append(path) or real(path))
    _, status = open_index(open_catalog(catalog_copy), model, progress=False)
    assert status.action == "reused" and len(hashed) == 2  # checked, found intact, recorded
    _, status = open_index(open_catalog(catalog_copy), model, progress=False)
    assert status.action == "reused" and len(hashed) == 2  # the next open trusts the recorded mtimes


def test_index_of_an_older_sdfn_without_checksums_is_rebuilt_from_its_features(catalog_copy, model, count_encodings):
    path = catalog_copy / "index" / "manifest.json"
    old = manifest(catalog_copy)
    del old["files"]
    old["version"] = 1
    path.write_text(json.dumps(old))
    _, status = open_index(open_catalog(catalog_copy), model, progress=False)
    assert status.action == "rebuilt" and "written by an older sdfn and records no file sizes" in status.message
    assert status.encoded == 0 and count_encodings == []  # its shards open cleanly: their features are kept
    assert set(manifest(catalog_copy)["files"]) == {"vectors.faiss", "features-00000.safetensors"}


# ---- damage under an opened index (no SIGBUS, no silent garbage) ------------------------------------

def test_shard_truncated_in_place_under_an_opened_index_is_a_clear_error(catalog_copy, model):
    """`cp backup/index/* CAT/index/` rewrites files in place: rows are read with pread, never a memory map, so a
    shard cut short under a serving index gives a DataError naming the file and the command, not a SIGBUS."""
    index, _ = open_index(open_catalog(catalog_copy), model, progress=False)
    row = index.row_of["dress-000000"]
    expected = index.cache.features([row])
    shard = catalog_copy / "index" / "features-00000.safetensors"
    with open(shard, "r+b") as handle:   # in place: same inode, as cp onto an existing file does
        handle.truncate(shard.stat().st_size // 2)
    with pytest.raises(DataError) as err:
        index.cache.features([len(index) - 1])   # a row past the cut
    message = str(err.value)
    assert str(shard) in message and "truncated" in message
    assert f"sdfn index --catalog {catalog_copy}" in message
    assert torch.equal(index.cache.features([row]).pooled, expected.pooled)  # rows before the cut still read


def test_a_shard_cut_in_place_fails_a_catalog_reference_search_with_the_command_to_run(catalog_copy, checkpoint):
    from sdfn.retrieval import Retriever
    retriever = Retriever(checkpoint, catalog_copy, progress=False)
    before = retriever.search("dress-000000", "is red", k=3)
    shard = catalog_copy / "index" / "features-00000.safetensors"
    with open(shard, "r+b") as handle:
        handle.truncate(100)
    with pytest.raises(DataError, match=r"features-00000.safetensors is damaged .*sdfn index --catalog"):
        retriever.search("dress-000000", "is red", k=3)
    # A fresh open finds the damage by size and rebuilds; the same query answers as before.
    again = Retriever(checkpoint, catalog_copy, progress=False)
    assert again.index_status.action == "rebuilt"
    assert [r.id for r in again.search("dress-000000", "is red", k=3).items] == [r.id for r in before.items]


def _flip_in_place_keeping_mtime(path: Path, offset: int) -> None:
    stat = path.stat()
    with open(path, "r+b") as handle:
        handle.seek(offset)
        byte = handle.read(1)[0]
        handle.seek(offset)
        handle.write(bytes([byte ^ 0x40]))
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))


def _damage_vectors(folder: Path) -> None:
    """A bit flipped in an exponent of many stored floats of vectors.faiss, same size, mtime restored: no size or
    mtime check can see it."""
    path = folder / "index" / "vectors.faiss"
    size = path.stat().st_size
    for offset in range(size - 4 * 64 * 50 + 3, size - 64, 4 * 64):   # the high byte of floats near the end
        _flip_in_place_keeping_mtime(path, offset)


def test_scores_impossible_for_unit_vectors_are_a_damaged_index_error(catalog_copy, model):
    _damage_vectors(catalog_copy)
    index, status = open_index(open_catalog(catalog_copy), model, progress=False)   # default: sizes + mtimes
    assert status.action == "reused"   # the damage is invisible to the cheap checks...
    queries = embed_items(model, index.cache.pooled(range(len(index))))
    with pytest.raises(DataError) as err:   # ...but not to the results
        index.search(queries, 5)
    message = str(err.value)
    assert "vectors.faiss is damaged" in message and "impossible for unit-norm item vectors" in message
    assert f"sdfn index --catalog {catalog_copy}" in message


def test_full_verification_at_open_finds_a_same_size_same_mtime_change(catalog_copy, checkpoint):
    """What a server opens with (Retriever(verify='full')): every checksum, so the damage is found and rebuilt."""
    from sdfn.retrieval import Retriever
    _damage_vectors(catalog_copy)
    retriever = Retriever(checkpoint, catalog_copy, progress=False, verify="full")
    status, index = retriever.index_status, retriever.index
    assert status.action == "rebuilt" and "index/vectors.faiss is damaged (its sha256" in status.message
    queries = embed_items(index.model, index.cache.pooled(range(len(index))))
    scores, rows = index.search(queries, 1)
    np.testing.assert_array_equal(rows[:, 0], np.arange(len(index)))
    assert np.all(np.abs(scores) <= 1.01)



def test_bytes_that_are_no_image_are_described_as_bytes_not_as_a_file(indexed, checkpoint):
    from sdfn.errors import ImageError
    from sdfn.retrieval import Retriever
    retriever = Retriever(checkpoint, indexed, progress=False)
    for data, said in ((b"", "no image data (empty bytes)"), (b"not an image at all", "not an image")):
        with pytest.raises(ImageError) as err:
            retriever.search(data, "is red", k=3)
        message = str(err.value)
        assert said in message and "bytes in memory" in message and "bytes of an image file" in message, message
        assert "replace or remove the file" not in message, message


def test_a_missing_feature_shard_is_one_clean_error_and_nothing_on_stderr(tmp_path, capfd, monkeypatch):
    """A shard that cannot be opened raises DamagedIndex naming it; the half-made Shard is collected silently
    (no 'Exception ignored in __del__' printed by the interpreter, caught here through sys.unraisablehook)."""
    import gc

    from sdfn.index.features import Shard
    from sdfn.index.manifest import DamagedIndex

    unraisable = []
    monkeypatch.setattr(sys, "unraisablehook", unraisable.append)
    with pytest.raises(DamagedIndex, match=r"features-00000\.safetensors.*cannot be opened"):
        Shard(tmp_path / "features-00000.safetensors", "features-00000.safetensors")
    gc.collect()
    err = capfd.readouterr().err
    assert "Exception ignored" not in err and "AttributeError" not in err
    assert [str(u.exc_value) for u in unraisable] == []
