"""Which FAISS index a catalog gets, how it is built and how it is searched.

Index types (`choose_index_type`; thresholds from benchmarks/search_scale.py, see RESULTS.md):
- `flat` (exact inner product) below FLAT_MAX_ITEMS = 50,000 items. A query scans every vector: about
  0.7 ms at 10k and 7 ms at 100k on one core (dim 256), so past ~50k it eats the 15 ms query budget;
- `hnsw` (HNSW graph, M=32, efSearch=max(128, k)) below HNSW_MAX_ITEMS = 5,000,000: about 0.2 ms at
  20k-100k with recall@50 >= 0.99 against exact search; ~1.3 KiB a vector (float32) with its graph;
- `ivfpq` (IVF lists of 32-byte PQ codes) from 5,000,000: 32 bytes a vector, but recall@50 only ~0.6
  on clustered data, so it is chosen only where HNSW's memory (6+ GiB at 5M) is the harder limit.
`fp16=True` stores flat and HNSW vectors as float16 (half the memory, scores within ~1e-3).
"""

from __future__ import annotations

import math

import faiss
import numpy as np

from sdfn.errors import ConfigError

INDEX_TYPES = ("auto", "flat", "hnsw", "ivfpq")
FLAT_MAX_ITEMS = 50_000
HNSW_MAX_ITEMS = 5_000_000
HNSW_M = 32                 # graph degree: recall >= 0.95 at 1M needs 32, 16 falls short
HNSW_EF_CONSTRUCTION = 80
HNSW_EF_SEARCH = 128        # raised to k when k is larger
IVFPQ_MIN_ITEMS = 10_000    # 256 PQ centroids per sub-space need that many training vectors
IVFPQ_DIMS_PER_CODE = 8     # 256-d -> 32 one-byte codes
IVF_NPROBE = 64


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
    """How the vectors are stored: 'float32', 'float16' or 'pq' (product-quantised codes)."""
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


def index_params(index: faiss.Index) -> dict:
    """The build and search parameters of `index`, as the manifest records them."""
    if isinstance(index, faiss.IndexHNSW):
        return {"M": HNSW_M, "efConstruction": HNSW_EF_CONSTRUCTION, "efSearch": HNSW_EF_SEARCH}
    if isinstance(index, faiss.IndexIVF):
        return {"nlist": index.nlist, "nprobe": min(IVF_NPROBE, index.nlist),
                "pq_bytes": index.d // IVFPQ_DIMS_PER_CODE}
    return {}


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
