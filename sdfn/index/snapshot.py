"""An opened catalog index: vector search, optionally within a category, and the cached features.

A `CatalogIndex` holds everything it needs from the moment it is made: the manifest, the FAISS index read
into memory and every feature shard memory-mapped. It never reads the index folder again, so an index
rebuilt and swapped in by another process or thread (`fsio.publish_folder`) does not change what an
opened one answers: it keeps serving its own (model, catalog, index) snapshot, and `fingerprint` says
which model it belongs to.
"""

from __future__ import annotations

import threading
from pathlib import Path

import faiss
import numpy as np

from sdfn.catalog import Catalog
from sdfn.errors import DataError
from sdfn.index.faiss_policy import search_index
from sdfn.index.features import FeatureCache, embed_items, open_shard
from sdfn.index.manifest import DamagedIndex, PinnedFolder
from sdfn.model import ComposedRetrievalModel


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


def read_shard(pin: PinnedFolder, shard: dict) -> dict:
    """One feature shard of a pinned folder, memory-mapped and checked against the manifest."""
    label = str(pin.folder / shard["file"])
    try:
        path = pin.path(shard["file"])
    except FileNotFoundError as err:
        raise DamagedIndex(label, "missing") from err
    return open_shard(path, label, shard["rows"])
