"""The catalog index: every item's vector in FAISS, a cache of every item's backbone features, and a manifest
that says which model and which catalog files they came from and what every file must contain, so that a
stale or damaged index is never used.

CATALOG/index/ holds:

    manifest.json               what built the index (format below)
    vectors.faiss               the FAISS index; its row i is manifest item i
    features-NNNNN.safetensors  backbone features of the items, row-aligned with the manifest, float16:
                                `tokens` [n, N, D] and `pooled` [n, E]; rows read with pread, so using a
                                catalog item as a query reference costs one row read and no image encoding
    unreadable.txt              catalog images that could not be decoded ("id<TAB>reason"), not searchable

manifest.json (format 2): format/version, sdfn_version, created/updated (UTC ISO), `model` (fingerprint of all
weights, fingerprint of the backbone alone, backbone and fusion names), `catalog` (fingerprint: catalog.csv
bytes + every image's size and mtime), `index` (file, type, requested type, storage dtype, count, dim,
search parameters), `features` (dtype, shards with their row counts), `files` (size, mtime_ns and sha256 of
vectors.faiss and of every shard), `items` (per row: id, image, size, mtime_ns: the per-item fingerprints)
and `unreadable` (the same plus the reason).

The modules, one concept each:
- `faiss_policy`: which FAISS index a catalog gets (flat, HNSW, IVF-PQ) and how it is searched;
- `features`: the feature shards (safetensors, read row by row with pread, never mapped) and item vectors;
- `manifest`: the manifest, file sizes and checksums, reading a folder as one snapshot;
- `plan`: staleness rules: reuse, append or rebuild, and what cached features a rebuild keeps;
- `build`: `open_index`, which applies the plan in a staging folder and swaps it in atomically;
- `snapshot`: `CatalogIndex`, the opened index, which never opens a file of its folder again.
Category-filtered searches are exact for every index type: the category's vectors are computed once from
the feature cache and searched by brute force, so an approximate index never returns fewer than k items
of a category that has k.
"""

from sdfn.index.build import IndexStatus, model_fingerprints, open_index, remove_leftovers
from sdfn.index.faiss_policy import (
                                     FLAT_MAX_ITEMS,
                                     HNSW_EF_CONSTRUCTION,
                                     HNSW_EF_SEARCH,
                                     HNSW_M,
                                     HNSW_MAX_ITEMS,
                                     INDEX_TYPES,
                                     IVF_NPROBE,
                                     IVFPQ_DIMS_PER_CODE,
                                     IVFPQ_MIN_ITEMS,
                                     choose_index_type,
                                     index_bytes,
                                     make_index,
                                     search_index,
                                     search_parameters,
                                     storage_of,
)
from sdfn.index.features import SHARD_ROWS, FeatureCache, embed_items
from sdfn.index.manifest import (
                                     FORMAT,
                                     FORMAT_VERSION,
                                     INDEX_DIR,
                                     INDEX_FILE,
                                     MANIFEST_FILE,
                                     UNREADABLE_FILE,
                                     VERIFY_LEVELS,
                                     DamagedIndex,
)
from sdfn.index.snapshot import CatalogIndex

__all__ = [
    "FLAT_MAX_ITEMS", "FORMAT", "FORMAT_VERSION", "HNSW_EF_CONSTRUCTION", "HNSW_EF_SEARCH", "HNSW_M",
    "HNSW_MAX_ITEMS", "INDEX_DIR", "INDEX_FILE", "INDEX_TYPES", "IVFPQ_DIMS_PER_CODE", "IVFPQ_MIN_ITEMS",
    "IVF_NPROBE", "MANIFEST_FILE", "SHARD_ROWS", "UNREADABLE_FILE", "VERIFY_LEVELS", "CatalogIndex",
    "DamagedIndex", "FeatureCache", "IndexStatus", "choose_index_type", "embed_items", "index_bytes",
    "make_index", "model_fingerprints", "open_index", "remove_leftovers", "search_index", "search_parameters",
    "storage_of",
]
