"""The catalog index: every item's vector in FAISS, a cache of every item's backbone features, and a manifest
that says which model and which catalog files they came from, so that a stale index is never used.

CATALOG/index/ holds:

    manifest.json               what built the index (format below)
    vectors.faiss               the FAISS index; its row i is manifest item i
    features-NNNNN.safetensors  backbone features of the items, row-aligned with the manifest, float16:
                                `tokens` [n, N, D] and `pooled` [n, E]; read through memory maps, so using a
                                catalog item as a query reference costs one row read and no image encoding
    unreadable.txt              catalog images that could not be decoded ("id<TAB>reason"), not searchable

manifest.json: format/version, sdfn_version, created/updated (UTC ISO), `model` (fingerprint of all
weights, fingerprint of the backbone alone, backbone and fusion names), `catalog` (fingerprint: catalog.csv
bytes + every image's size and mtime), `index` (file, type, requested type, storage dtype, count, dim,
search parameters), `features` (dtype, shards with their row counts), `items` (per row: id, image,
size, mtime_ns: the per-item fingerprints) and `unreadable` (the same plus the reason).

Staleness rules (`open_index`), checked on every open:
- same model, same catalog fingerprint, same index type and storage: reused as it is;
- items only added (every indexed item unchanged, same model and index type): only the new items
  are encoded; their features and vectors are appended;
- otherwise rebuilt. Cached features are reused for every item whose image file is unchanged while the
  backbone is the same (a retrained fusion head re-encodes nothing); another backbone re-encodes all.
Every open returns a message that says which of these happened.

Index types (`choose_index_type`; thresholds from benchmarks/search_scale.py, see RESULTS.md):
- `flat` (exact inner product) below FLAT_MAX_ITEMS = 50,000 items. A query scans every vector: about
  0.7 ms at 10k and 7 ms at 100k on one core (dim 256), so past ~50k it eats the 15 ms query budget;
- `hnsw` (HNSW graph, M=32, efSearch=max(128, k)) below HNSW_MAX_ITEMS = 5,000,000: about 0.2 ms at
  20k-100k with recall@50 >= 0.99 against exact search; ~1.3 KiB a vector (float32) with its graph;
- `ivfpq` (IVF lists of 32-byte PQ codes) from 5,000,000: 32 bytes a vector, but recall@50 only ~0.6
  on clustered data, so it is chosen only where HNSW's memory (6+ GiB at 5M) is the harder limit.
`fp16=True` stores flat and HNSW vectors as float16 (half the memory, scores within ~1e-3).
Category-filtered searches are exact for every index type: the category's vectors are computed once
from the feature cache and searched by brute force, so an approximate index never returns fewer than
k items of a category that has k.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import math
import os
import shutil
import struct
import tempfile
import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import faiss
import numpy as np
import torch
from safetensors.torch import save_file

from sdfn import __version__
from sdfn.backbone import ImageFeatures
from sdfn.catalog import Catalog, ItemKey
from sdfn.encode import extract_image_features
from sdfn.errors import ConfigError, DataError
from sdfn.model import ComposedRetrievalModel, replace_folder

INDEX_DIR = "index"
MANIFEST_FILE = "manifest.json"
INDEX_FILE = "vectors.faiss"
UNREADABLE_FILE = "unreadable.txt"
FORMAT, FORMAT_VERSION = "sdfn-index", 1

INDEX_TYPES = ("auto", "flat", "hnsw", "ivfpq")
FLAT_MAX_ITEMS = 50_000
HNSW_MAX_ITEMS = 5_000_000
HNSW_M = 32                 # graph degree: recall >= 0.95 at 1M needs 32, 16 falls short
HNSW_EF_CONSTRUCTION = 80
HNSW_EF_SEARCH = 128        # raised to k when k is larger
IVFPQ_MIN_ITEMS = 10_000    # 256 PQ centroids per sub-space need that many training vectors
IVFPQ_DIMS_PER_CODE = 8     # 256-d -> 32 one-byte codes
IVF_NPROBE = 64
SHARD_ROWS = 8192           # items per feature shard; also the encoding chunk, which bounds memory
EMBED_CHUNK = 16384


def choose_index_type(count: int, requested: str = "auto") -> str:
    """The index type for `count` items: `requested` unless it is 'auto' (thresholds in the module docstring)."""
    if requested not in INDEX_TYPES:
        raise ConfigError(f"unknown index type '{requested}'; choose one of {', '.join(INDEX_TYPES)}.")
    if requested != "auto":
        return requested
    if count < FLAT_MAX_ITEMS:
        return "flat"
    return "hnsw" if count < HNSW_MAX_ITEMS else "ivfpq"


def storage_of(index_type: str, fp16: bool) -> str:
    if index_type == "ivfpq":
        if fp16:
            raise ConfigError("--fp16 does not apply to ivfpq, which already stores 1-byte PQ codes; "
                              "drop --fp16 or choose flat or hnsw.")
        return "pq"
    return "float16" if fp16 else "float32"


def make_index(vectors: np.ndarray, index_type: str, fp16: bool = False) -> faiss.Index:
    """An inner-product FAISS index of `index_type` ('flat', 'hnsw' or 'ivfpq') holding `vectors` [n, d]."""
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    n, d = vectors.shape
    storage = storage_of(index_type, fp16)
    ip = faiss.METRIC_INNER_PRODUCT
    if index_type == "flat":
        index = faiss.IndexScalarQuantizer(d, faiss.ScalarQuantizer.QT_fp16, ip) if fp16 else faiss.IndexFlatIP(d)
    elif index_type == "hnsw":
        index = (faiss.IndexHNSWSQ(d, faiss.ScalarQuantizer.QT_fp16, HNSW_M, ip) if storage == "float16"
                 else faiss.IndexHNSWFlat(d, HNSW_M, ip))
        index.hnsw.efConstruction = HNSW_EF_CONSTRUCTION
    elif index_type == "ivfpq":
        index = _make_ivfpq(vectors)
    else:
        raise ConfigError(f"unknown index type '{index_type}'; choose one of {', '.join(INDEX_TYPES[1:])}.")
    if not index.is_trained:
        index.train(vectors)
    index.add(vectors)
    return index


def _make_ivfpq(vectors: np.ndarray) -> faiss.Index:
    n, d = vectors.shape
    if n < IVFPQ_MIN_ITEMS:
        raise ConfigError(f"ivfpq needs at least {IVFPQ_MIN_ITEMS:,} items to train its codebooks (the catalog has "
                          f"{n:,}); use --index-type flat or hnsw.")
    if d % IVFPQ_DIMS_PER_CODE:
        raise ConfigError(f"ivfpq needs a dimension divisible by {IVFPQ_DIMS_PER_CODE} (this model's is {d}); "
                          "use --index-type hnsw.")
    # ~4 sqrt(n) lists keeps both the coarse search and each list short; 39 training points per list minimum.
    nlist = max(16, min(1 << int(math.log2(4 * math.sqrt(n))), n // 39, 8192))
    index = faiss.IndexIVFPQ(faiss.IndexFlatIP(d), d, nlist, d // IVFPQ_DIMS_PER_CODE, 8, faiss.METRIC_INNER_PRODUCT)
    # k-means and PQ training cost grows with the sample; 40 points per list is what k-means needs.
    sample = vectors[np.random.default_rng(0).choice(n, min(n, max(40 * nlist, 50_000)), replace=False)]
    index.train(sample)
    return index


def search_parameters(index: faiss.Index, k: int) -> faiss.SearchParameters | None:
    """Per-call parameters (never set on the shared index, so concurrent searches do not race)."""
    if isinstance(index, faiss.IndexHNSW):
        return faiss.SearchParametersHNSW(efSearch=max(HNSW_EF_SEARCH, k))
    if isinstance(index, faiss.IndexIVF):
        return faiss.SearchParametersIVF(nprobe=min(IVF_NPROBE, index.nlist))
    return None


def search_index(index: faiss.Index, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Top-k (scores, rows) per query, [Q, k]; rows are -1 where the index returned fewer than k."""
    queries = np.ascontiguousarray(queries, dtype=np.float32)
    return index.search(queries, k, params=search_parameters(index, k))


def index_bytes(index: faiss.Index) -> int:
    """Serialised size: what the index occupies on disk and, to within a few percent, in memory."""
    return int(faiss.serialize_index(index).size)


# ---- the feature cache ---------------------------------------------------------------------------

def memmap_safetensors(path: Path) -> dict[str, np.ndarray]:
    """The tensors of a safetensors file as read-only memory maps (its format: u64 header size, JSON header, data)."""
    dtypes = {"F16": np.float16, "F32": np.float32}
    with path.open("rb") as handle:
        (size,) = struct.unpack("<Q", handle.read(8))
        header = json.loads(handle.read(size))
    arrays = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        start, _ = info["data_offsets"]
        arrays[name] = np.memmap(path, dtype=dtypes[info["dtype"]], mode="r", offset=8 + size + start,
                                 shape=tuple(info["shape"]))
    return arrays


class FeatureCache:
    """Backbone features of the indexed items, row-aligned with the index, read lazily from shard files."""

    def __init__(self, folder: Path, shards: Sequence[dict]):
        self.files = [folder / s["file"] for s in shards]
        self.starts = np.cumsum([0] + [s["rows"] for s in shards])
        self._maps: list[dict[str, np.ndarray]] | None = None
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return int(self.starts[-1])

    @property
    def maps(self) -> list[dict[str, np.ndarray]]:
        with self._lock:
            if self._maps is None:
                self._maps = [memmap_safetensors(f) for f in self.files]
            return self._maps

    def _gather(self, name: str, rows: Sequence[int]) -> np.ndarray:
        """float32 copies of `rows` of tensor `name`; only those rows are read from disk."""
        rows = np.asarray(rows, dtype=np.int64)
        maps = self.maps
        out = np.empty((len(rows), *maps[0][name].shape[1:]), dtype=np.float32)
        shard = np.searchsorted(self.starts, rows, side="right") - 1
        for s in np.unique(shard):
            here = shard == s
            out[here] = maps[s][name][rows[here] - self.starts[s]]
        return out

    def features(self, rows: Sequence[int]) -> ImageFeatures:
        """float32 backbone features of `rows`."""
        return ImageFeatures(torch.from_numpy(self._gather("tokens", rows)), torch.from_numpy(self.pooled(rows)))

    def pooled(self, rows: Sequence[int]) -> np.ndarray:
        """float32 pooled embeddings [len(rows), E]."""
        return self._gather("pooled", rows)

    def pooled_chunks(self) -> Iterable[np.ndarray]:
        """The pooled embeddings of all rows, shard by shard (as float32)."""
        for arrays in self.maps:
            yield np.asarray(arrays["pooled"], dtype=np.float32)


def write_shard(path: Path, features: ImageFeatures) -> None:
    save_file({"tokens": features.tokens.half().contiguous(), "pooled": features.pooled.half().contiguous()},
              str(path))


# ---- the opened index ------------------------------------------------------------------------------

@torch.no_grad()
def embed_items(model: ComposedRetrievalModel, pooled: np.ndarray) -> np.ndarray:
    """Backbone pooled embeddings [n, E] -> L2-normalised index vectors [n, E] float32."""
    out = [model.embed_target(torch.from_numpy(np.asarray(pooled[i:i + EMBED_CHUNK], dtype=np.float32))
                              .to(model.device)).cpu().numpy()
           for i in range(0, len(pooled), EMBED_CHUNK)]
    return np.concatenate(out) if out else np.zeros((0, model.backbone.embed_dim), np.float32)


class CatalogIndex:
    """An opened, fresh index of a catalog: vector search, optionally within a category, and cached features."""

    def __init__(self, folder: Path, manifest: dict, catalog: Catalog, model: ComposedRetrievalModel):
        self.folder, self.manifest, self.catalog, self.model = folder, manifest, catalog, model
        self.index = faiss.read_index(str(folder / manifest["index"]["file"]))
        self.cache = FeatureCache(folder, manifest["features"]["shards"])
        self.ids = [item[0] for item in manifest["items"]]
        self.row_of = {item_id: i for i, item_id in enumerate(self.ids)}
        self.unreadable = {item[0]: item[4] for item in manifest["unreadable"]}
        if self.index.ntotal != len(self.ids) or len(self.cache) != len(self.ids):
            raise DataError(f"{folder} is damaged: {self.index.ntotal} vectors and {len(self.cache)} cached rows for "
                            f"{len(self.ids)} items. Delete the folder and run `sdfn index --catalog {catalog.root}`.")
        self._category_indexes: dict[str, tuple[faiss.Index, np.ndarray]] = {}
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def index_type(self) -> str:
        return self.manifest["index"]["type"]

    def category_count(self, category: str) -> int:
        return len(self._category_rows(category))

    def _category_rows(self, category: str) -> np.ndarray:
        rows = self.catalog.rows_in_category(category)  # raises, listing the categories, when empty
        ids = self.catalog.ids
        return np.array(sorted(self.row_of[ids[r]] for r in rows if ids[r] in self.row_of), dtype=np.int64)

    def _category_index(self, category: str) -> tuple[faiss.Index, np.ndarray]:
        """An exact index of one category's vectors (built once, from the feature cache) and its rows."""
        with self._lock:
            if category not in self._category_indexes:
                rows = self._category_rows(category)
                sub = faiss.IndexFlatIP(self.index.d)
                if len(rows):
                    sub.add(embed_items(self.model, self.cache.pooled(rows)))
                self._category_indexes[category] = (sub, rows)
            return self._category_indexes[category]

    def search(self, queries: np.ndarray, k: int, category: str | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Top-k (scores, index rows) for each query [Q, E]; exact within `category` when one is given."""
        if category is None:
            return search_index(self.index, queries, k)
        sub, rows = self._category_index(category)
        scores, local = sub.search(np.ascontiguousarray(queries, dtype=np.float32), k)
        return scores, np.where(local >= 0, rows[np.maximum(local, 0)], -1)


# ---- building, checking and updating ---------------------------------------------------------------

@dataclass
class IndexStatus:
    """What `open_index` did: 'reused', 'appended', 'built' or 'rebuilt'; how many images it encoded; why."""

    action: str
    encoded: int
    message: str


def backbone_fingerprint(model: ComposedRetrievalModel) -> str:
    """sha256 of the backbone's weights alone: cached features stay valid while it is unchanged."""
    h = hashlib.sha256()
    for name, t in sorted(model.backbone.clip.state_dict().items()):
        h.update(name.encode())
        h.update(t.detach().float().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def read_manifest(folder: Path) -> tuple[dict | None, str]:
    """(manifest, '') when the folder holds a complete index of this format; else (None, why not)."""
    path = folder / MANIFEST_FILE
    if not path.is_file():
        return None, "there was no index yet"
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        return None, f"{path} is unreadable ({err})"
    if manifest.get("format") != FORMAT or manifest.get("version", 0) > FORMAT_VERSION:
        return None, f"{path} is not an index manifest this sdfn reads (format {manifest.get('format')!r})"
    try:
        files = [manifest["index"]["file"], *(s["file"] for s in manifest["features"]["shards"])]
    except (KeyError, TypeError):
        return None, f"{path} is incomplete"
    missing = [f for f in files if not (folder / f).is_file()]
    if missing:
        return None, f"index files missing in {folder} ({', '.join(missing)})"
    return manifest, ""


@dataclass
class _Plan:
    action: str                      # reuse | append | rebuild
    reason: str
    reuse: dict[str, int]            # item id -> row in the old feature cache
    known_unreadable: dict[str, str]  # item id -> reason, for images unchanged since they failed
    encode: list[int]                # catalog rows to encode
    index_type: str


def _plan(old: dict | None, why_none: str, catalog: Catalog, fingerprints: dict, requested: str, fp16: bool) -> _Plan:
    keys = {k.id: k for k in catalog.keys}
    reuse: dict[str, int] = {}
    unreadable: dict[str, str] = {}
    if old is not None and old["model"]["backbone_fingerprint"] == fingerprints["backbone_fingerprint"]:
        reuse = {item[0]: row for row, item in enumerate(old["items"]) if keys.get(item[0]) == ItemKey(*item)}
        unreadable = {item[0]: item[4] for item in old["unreadable"] if keys.get(item[0]) == ItemKey(*item[:4])}
    encode = [r for r, key in enumerate(catalog.keys) if key.id not in reuse and key.id not in unreadable]
    index_type = choose_index_type(len(reuse) + len(encode), requested)
    if old is None:
        return _Plan("rebuild", why_none, {}, {}, encode, index_type)
    reason = _staleness(old, catalog, fingerprints, index_type, storage_of(index_type, fp16), reuse, unreadable)
    if reason is not None:
        return _Plan("rebuild", reason, reuse, unreadable, encode, index_type)
    return _Plan("append" if encode else "reuse", "", reuse, unreadable, encode, index_type)


def _staleness(old: dict, catalog: Catalog, fingerprints: dict, index_type: str, storage: str,
               reuse: dict[str, int], unreadable: dict[str, str]) -> str | None:
    """Why the old index cannot be kept or appended to, or None when it can."""
    was = old["model"]
    if was["backbone_fingerprint"] != fingerprints["backbone_fingerprint"]:
        return (f"it was built by another model (fingerprint {was['fingerprint']}, backbone "
                f"{was['backbone_fingerprint']}; this model: {fingerprints['fingerprint']}, backbone "
                f"{fingerprints['backbone_fingerprint']}), so every image is encoded again")
    if was["fingerprint"] != fingerprints["fingerprint"]:
        return (f"it was built by another model (fingerprint {was['fingerprint']}, this one "
                f"{fingerprints['fingerprint']}) with the same backbone, so cached features are reused")
    if (old["index"]["type"], old["index"]["storage"]) != (index_type, storage):
        return (f"the index type changes from {old['index']['type']} ({old['index']['storage']}) to "
                f"{index_type} ({storage})")
    if len(reuse) < len(old["items"]) or len(unreadable) < len(old["unreadable"]):
        old_ids = [item[0] for item in old["items"]] + [item[0] for item in old["unreadable"]]
        ids = set(catalog.row_of)
        removed = sum(i not in ids for i in old_ids)
        changed = sum(i in ids and i not in reuse and i not in unreadable for i in old_ids)
        return f"the catalog changed ({changed} images changed, {removed} items removed)"
    return None


def open_index(catalog: Catalog, model: ComposedRetrievalModel, index_type: str | None = None,
               fp16: bool | None = None, batch_size: int = 128, workers: int = 0,
               progress: bool = True) -> tuple[CatalogIndex, IndexStatus]:
    """Open CATALOG/index/ for `model`, building, appending to or rebuilding it first when it is stale.

    index_type and fp16 left as None keep what the existing index was built with (else: auto, float32).
    """
    folder = catalog.root / INDEX_DIR
    fingerprints = {"fingerprint": model.fingerprint(), "backbone_fingerprint": backbone_fingerprint(model),
                    "backbone": model.cfg.backbone.model, "fusion": model.cfg.fusion.name}
    old, why_none = read_manifest(folder)
    if index_type is None:
        index_type = old["index"]["requested"] if old is not None else "auto"
    if fp16 is None:
        fp16 = old is not None and old["index"]["storage"] == "float16"
    plan = _plan(old, why_none, catalog, fingerprints, index_type, fp16)
    settings = {"requested": index_type, "fp16": fp16, "batch_size": batch_size, "workers": workers,
                "progress": progress, "fingerprints": fingerprints}
    if plan.action == "reuse":
        if old["catalog"]["fingerprint"] != catalog.fingerprint():
            _write_manifest(folder, _manifest(old["created"], catalog, fingerprints, old["items"], old["unreadable"],
                                              old["features"]["shards"], old["index"]))
            old, _ = read_manifest(folder)
            message = "catalog.csv changed but no image did: index kept"
        else:
            message = "index is up to date"
        status = IndexStatus("reused", 0, f"{message} ({_describe(old)}); no images encoded")
    else:
        status = _update(folder, old, plan, catalog, model, settings)
    manifest, _ = read_manifest(folder)
    return CatalogIndex(folder, manifest, catalog, model), status


def _describe(manifest: dict) -> str:
    index = manifest["index"]
    return f"{index['count']} items, {index['type']}, {index['storage']}"


def _update(folder: Path, old: dict | None, plan: _Plan, catalog: Catalog, model: ComposedRetrievalModel,
            settings: dict) -> IndexStatus:
    """Write the appended or rebuilt index into a new folder and swap it in, so readers never see half of one."""
    tmp = Path(tempfile.mkdtemp(prefix=".index.", dir=catalog.root))
    try:
        if plan.action == "append":
            items, unreadable, shards, encoded = _append_features(tmp, folder, old, plan, catalog, model, settings)
            index = faiss.read_index(str(folder / old["index"]["file"]))
            new_rows = range(len(old["items"]), len(items))
            if len(new_rows):
                index.add(embed_items(model, FeatureCache(tmp, shards).pooled(new_rows)))
        else:
            items, unreadable, shards, encoded = _rebuild_features(tmp, folder, old, plan, catalog, model, settings)
            if not items:
                raise DataError(f"no image of catalog {catalog.root} could be read; see {folder / UNREADABLE_FILE} "
                                "and fix or remove the files.")
            vectors = np.concatenate([embed_items(model, p) for p in FeatureCache(tmp, shards).pooled_chunks()])
            index = make_index(vectors, plan.index_type, settings["fp16"])
        faiss.write_index(index, str(tmp / INDEX_FILE))
        index_info = {"file": INDEX_FILE, "type": plan.index_type, "requested": settings["requested"],
                      "storage": storage_of(plan.index_type, settings["fp16"]), "count": len(items),
                      "dim": index.d, "params": _params(index)}
        created = old["created"] if plan.action == "append" else None
        manifest = _manifest(created, catalog, settings["fingerprints"], items, unreadable, shards, index_info)
        _write_manifest(tmp, manifest)
        _write_unreadable(tmp, unreadable)
        replace_folder(tmp, folder)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return IndexStatus(*_summary(plan, old, encoded, manifest, folder))


def _summary(plan: _Plan, old: dict | None, encoded: int, manifest: dict, folder: Path) -> tuple[str, int, str]:
    failed = len(manifest["unreadable"])
    tail = (f"; {failed} image(s) could not be read and are not searchable (listed in {folder / UNREADABLE_FILE})"
            if failed else "")
    if plan.action == "append":
        added = len(manifest["items"]) - len(old["items"])
        return "appended", encoded, (f"catalog gained {len(plan.encode)} item(s): {encoded} image(s) encoded, "
                                     f"{added} appended ({_describe(manifest)}){tail}")
    verb = "built" if old is None else "rebuilt"
    return verb, encoded, (f"index {verb} because {plan.reason} ({_describe(manifest)}); "
                           f"{encoded} image(s) encoded{tail}")


def _params(index: faiss.Index) -> dict:
    if isinstance(index, faiss.IndexHNSW):
        return {"M": HNSW_M, "efConstruction": HNSW_EF_CONSTRUCTION, "efSearch": HNSW_EF_SEARCH}
    if isinstance(index, faiss.IndexIVF):
        return {"nlist": index.nlist, "nprobe": min(IVF_NPROBE, index.nlist),
                "pq_bytes": index.d // IVFPQ_DIMS_PER_CODE}
    return {}


def _encode_rows(catalog: Catalog, model: ComposedRetrievalModel, rows: list[int], settings: dict):
    """Backbone features of catalog `rows` (float16) and {row: reason} for images that failed to decode."""
    table = extract_image_features(model, [catalog.image_path(r) for r in rows], batch_size=settings["batch_size"],
                                   num_workers=settings["workers"], progress=settings["progress"],
                                   dtype=torch.float16, desc="encoding catalog images")
    return table.features, {rows[i]: why for i, why in table.failed.items()}


def _append_features(tmp: Path, folder: Path, old: dict, plan: _Plan, catalog: Catalog,
                     model: ComposedRetrievalModel, settings: dict):
    """Old shards linked (not copied) into `tmp`, new items encoded into new shards after them."""
    shards = []
    for shard in old["features"]["shards"]:
        _link_or_copy(folder / shard["file"], tmp / shard["file"])
        shards.append(shard)
    items, unreadable = list(old["items"]), list(old["unreadable"])  # appending means both are unchanged
    encoded = 0
    for start in range(0, len(plan.encode), SHARD_ROWS):
        rows = plan.encode[start:start + SHARD_ROWS]
        features, failed = _encode_rows(catalog, model, rows, settings)
        encoded += len(rows)
        keep = [i for i, r in enumerate(rows) if r not in failed]
        if keep:
            shards.append(_new_shard(tmp, len(shards), features[torch.tensor(keep)]))
        items += [catalog.keys[rows[i]].as_list() for i in keep]
        unreadable += [[*catalog.keys[r].as_list(), why] for r, why in failed.items()]
    return items, unreadable, shards, encoded


def _rebuild_features(tmp: Path, folder: Path, old: dict | None, plan: _Plan, catalog: Catalog,
                      model: ComposedRetrievalModel, settings: dict):
    """New shards in catalog order: cached rows copied over from the old shards, the rest encoded."""
    old_cache = FeatureCache(folder, old["features"]["shards"]) if plan.reuse else None
    todo = [r for r, key in enumerate(catalog.keys) if key.id not in plan.known_unreadable]
    items, shards, encoded = [], [], 0
    unreadable = [[*catalog.keys[catalog.row_of[i]].as_list(), why] for i, why in plan.known_unreadable.items()]
    for start in range(0, len(todo), SHARD_ROWS):
        rows = todo[start:start + SHARD_ROWS]
        reused = [r for r in rows if catalog.keys[r].id in plan.reuse]
        fresh = [r for r in rows if catalog.keys[r].id not in plan.reuse]
        features, failed = _encode_rows(catalog, model, fresh, settings) if fresh else (None, {})
        encoded += len(fresh)
        unreadable += [[*catalog.keys[r].as_list(), why] for r, why in failed.items()]
        parts, order = [], []
        if reused:
            parts.append(old_cache.features([plan.reuse[catalog.keys[r].id] for r in reused]))
            order += reused
        decoded = [i for i, r in enumerate(fresh) if r not in failed]
        if decoded:
            parts.append(features[torch.tensor(decoded)])
            order += [fresh[i] for i in decoded]
        if parts:
            catalog_order = torch.tensor(np.argsort(order, kind="stable"))
            merged = ImageFeatures.cat([p.to(dtype=torch.float16) for p in parts])[catalog_order]
            shards.append(_new_shard(tmp, len(shards), merged))
            items += [catalog.keys[order[i]].as_list() for i in catalog_order.tolist()]
    return items, unreadable, shards, encoded


def _new_shard(tmp: Path, number: int, features: ImageFeatures) -> dict:
    name = f"features-{number:05d}.safetensors"
    while (tmp / name).exists():  # appended shards follow linked ones, whose numbering may have gaps
        number += 1
        name = f"features-{number:05d}.safetensors"
    write_shard(tmp / name, features)
    return {"file": name, "rows": len(features.pooled)}


def _link_or_copy(src: Path, dst: Path) -> None:
    try:
        os.link(src, dst)
    except OSError:  # a file system without hard links
        shutil.copy2(src, dst)


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def _manifest(created: str | None, catalog: Catalog, fingerprints: dict, items: list, unreadable: list,
              shards: list[dict], index_info: dict) -> dict:
    return {
        "format": FORMAT, "version": FORMAT_VERSION, "sdfn_version": __version__,
        "created": created or _now(),
        "updated": _now(),
        "model": dict(fingerprints),
        "catalog": {"fingerprint": catalog.fingerprint(), "items": len(catalog)},
        "index": index_info,
        "features": {"dtype": "float16", "shards": shards},
        "item_fields": ["id", "image", "size", "mtime_ns"],
        "items": items,
        "unreadable": unreadable,
    }


def _write_manifest(folder: Path, manifest: dict) -> None:
    partial = folder / (MANIFEST_FILE + ".partial")
    partial.write_text(json.dumps(manifest, indent=1), encoding="utf-8")
    os.replace(partial, folder / MANIFEST_FILE)


def _write_unreadable(folder: Path, unreadable: list) -> None:
    if unreadable:
        (folder / UNREADABLE_FILE).write_text("".join(f"{u[0]}\t{u[4]}\n" for u in unreadable), encoding="utf-8")
