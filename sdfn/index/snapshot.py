"""An opened catalog index: vector search, optionally within a category, and the cached features.

A `CatalogIndex` holds everything it needs from the moment it is made: the manifest, the FAISS index read
into memory and every feature shard opened (a file descriptor each, header checked; rows are read with
`os.pread` when a catalog item is used as a reference). It never opens a file of the index folder again, so an
index rebuilt and swapped in by another process or thread (`fsio.publish_folder`) does not change what an
opened one answers: it keeps serving its own (model, catalog, index) snapshot, and `fingerprint` says
which model it belongs to. A shard truncated in place under it, or a vectors.faiss whose scores cannot come
from unit-norm item vectors, is reported as `DamagedIndex` with the command that rebuilds the index.
"""

from __future__ import annotations

import threading
from pathlib import Path

import faiss
import numpy as np

from sdfn.catalog import Catalog
from sdfn.errors import DataError
from sdfn.index.faiss_policy import search_index
from sdfn.index.features import FeatureCache, Shard, embed_items, open_shard
from sdfn.index.manifest import DamagedIndex, PinnedFolder
from sdfn.model import ComposedRetrievalModel

SCORE_SLACK = 1.01   # |score| <= SCORE_SLACK * |query|: item vectors are unit-norm (float32 or float16)
PQ_SCORE_SLACK = 1.25  # product-quantised codes reconstruct vectors only roughly


class CatalogIndex:
    """An opened, fresh index of a catalog: vector search, optionally within a category, and cached features."""

    def __init__(self, folder: Path, manifest: dict, catalog: Catalog, model: ComposedRetrievalModel,
                 vectors: faiss.Index, cache: FeatureCache):
        self.folder, self.manifest, self.catalog, self.model = folder, manifest, catalog, model
        self.index, self.cache = vectors, cache
        self.ids = [item[0] for item in manifest["items"]]
        self.row_of = {item_id: i for i, item_id in enumerate(self.ids)}
        self.unreadable = {item[0]: item[4] for item in manifest["unreadable"]}
        if self.index.ntotal != len(self.ids) or len(self.cache) != len(self.ids):
            raise DataError(f"{folder} is damaged: {self.index.ntotal} vectors and {len(self.cache)} cached rows for "
                            f"{len(self.ids)} items. Run `sdfn index --catalog {catalog.root}` to rebuild it.")
        self.rebuild_advice = (f"run `sdfn index --catalog {catalog.root}` to rebuild the index, then open it "
                               f"again (restart the server)")
        self.cache.set_advice(self.rebuild_advice)
        self._category_indexes: dict[str, tuple[faiss.Index, np.ndarray]] = {}
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def index_type(self) -> str:
        return self.manifest["index"]["type"]

    @property
    def fingerprint(self) -> str:
        """Fingerprint of the model whose vectors this index holds."""
        return self.manifest["model"]["fingerprint"]

    @property
    def backbone_fingerprint(self) -> str:
        """Fingerprint of the backbone whose features the cache holds."""
        return self.manifest["model"]["backbone_fingerprint"]

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
            scores, rows = search_index(self.index, queries, k)
        else:
            sub, sub_rows = self._category_index(category)
            scores, local = sub.search(np.ascontiguousarray(queries, dtype=np.float32), k)
            rows = np.where(local >= 0, sub_rows[np.maximum(local, 0)], -1)
        self._check_scores(queries, scores, rows)
        return scores, rows

    def _check_scores(self, queries: np.ndarray, scores: np.ndarray, rows: np.ndarray) -> None:
        """Item vectors are unit-norm, so a score is at most the query's norm in size (1 for the model's unit
        queries; the slack allows float16 and PQ rounding); anything else, or NaN, comes from a damaged
        vectors.faiss (e.g. a bit flipped in place, which a size check cannot see)."""
        slack = PQ_SCORE_SLACK if self.manifest["index"].get("storage") == "pq" else SCORE_SLACK
        limit = slack * np.linalg.norm(np.asarray(queries, dtype=np.float32), axis=1, keepdims=True) + 1e-3
        found = rows >= 0
        bad = found & ~(np.abs(scores) <= limit)   # also NaN
        if bad.any():
            q, j = np.argwhere(bad)[0]
            raise DamagedIndex(str(self.folder / self.manifest["index"]["file"]),
                               f"a search scored {scores[q, j]:g} for item {self.ids[rows[q, j]]!r}, impossible for "
                               f"unit-norm item vectors (|score| <= {limit[q, 0]:.3f})", self.rebuild_advice)


def read_vectors(pin: PinnedFolder, manifest: dict) -> faiss.Index:
    """The FAISS index file of a pinned folder, read into memory and checked against the manifest."""
    name = manifest["index"]["file"]
    label = str(pin.folder / name)
    try:
        index = faiss.read_index(pin.path(name))
    except FileNotFoundError as err:
        raise DamagedIndex(label, "missing") from err
    except RuntimeError as err:  # FAISS's own reader: truncated or not an index
        raise DamagedIndex(label, f"FAISS cannot read it: {str(err).strip().splitlines()[0][:200]}") from err
    expected = manifest["index"]["count"], manifest["index"]["dim"]
    if (index.ntotal, index.d) != tuple(expected):
        raise DamagedIndex(label, f"{index.ntotal} vectors of dimension {index.d}, the manifest says "
                                  f"{expected[0]} of dimension {expected[1]}")
    return index


def read_shard(pin: PinnedFolder, shard: dict) -> Shard:
    """One feature shard of a pinned folder, opened (its own descriptor) and checked against the manifest."""
    label = str(pin.folder / shard["file"])
    try:
        path = pin.path(shard["file"])
    except FileNotFoundError as err:
        raise DamagedIndex(label, "missing") from err
    return open_shard(path, label, shard["rows"])
