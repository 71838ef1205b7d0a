"""How vector search scales with the catalog: exact (flat) against HNSW and IVF-PQ, built by sdfn.index.

    python benchmarks/search_scale.py                                  # 10k, 100k and the goal size 1M
    python benchmarks/search_scale.py --sizes 10000,50000 --queries 100 --no-record   # a quick check

Vectors are clustered and L2-normalised like sdfn-tiny's (dim 256): clusters of ~200 items whose members
have cosine ~0.7 with their centre, queries drawn the same way. Per index and search setting: build
time, serialised size, p50/p95 of one query at a time (k=50) and recall@50 against exact search.
Goal at 1M: p50 <= 10 ms at recall@50 >= 0.95. sdfn.index's automatic choice (FLAT_MAX_ITEMS,
HNSW_MAX_ITEMS) and search settings (HNSW_EF_SEARCH, IVF_NPROBE) follow these numbers.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import faiss
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.results import markdown_table, write_section  # noqa: E402
from sdfn import index as sdfn_index  # noqa: E402

K = 50
DIM = 256
CLUSTER_SIZE = 200
SPREAD = 1.0  # noise norm relative to the unit centre: cosine to the centre ~ 1/sqrt(1 + SPREAD^2)
GOAL_SIZE, GOAL_P50_MS, GOAL_RECALL = 1_000_000, 10.0, 0.95
HNSW_EF = (64, 128, 256)
IVF_NPROBE = (16, 32, 64, 128)


def clustered_vectors(n: int, centres: np.ndarray, rng: np.random.Generator, chunk: int = 100_000) -> np.ndarray:
    """n unit vectors, each a random centre plus isotropic noise."""
    out = np.empty((n, centres.shape[1]), dtype=np.float32)
    for start in range(0, n, chunk):
        m = min(chunk, n - start)
        x = centres[rng.integers(0, len(centres), m)] + rng.standard_normal((m, centres.shape[1]),
                                                                           dtype=np.float32) * (SPREAD / DIM ** 0.5)
        out[start:start + m] = x / np.linalg.norm(x, axis=1, keepdims=True)
    return out


def make_data(n: int, queries: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((max(1, n // CLUSTER_SIZE), DIM), dtype=np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    return clustered_vectors(n, centres, rng), clustered_vectors(queries, centres, rng)


def time_queries(index: faiss.Index, queries: np.ndarray, params) -> tuple[np.ndarray, float, float]:
    """Rows found per query and p50/p95 milliseconds, one query per call on one OpenMP thread: the cost of the
    search itself, without fork/join over threads (which for one vector mostly adds noise)."""
    found, times = np.empty((len(queries), K), dtype=np.int64), []
    threads = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    for i in range(len(queries)):
        t = time.perf_counter()
        _, rows = index.search(queries[i:i + 1], K, params=params)
        times.append(time.perf_counter() - t)
        found[i] = rows[0]
    faiss.omp_set_num_threads(threads)
    return found, 1000 * float(np.percentile(times, 50)), 1000 * float(np.percentile(times, 95))


def recall(found: np.ndarray, truth: np.ndarray) -> float:
    return float(np.mean([len(set(f) & set(t)) / K for f, t in zip(found, truth, strict=True)]))


def settings(kind: str, index: faiss.Index) -> list[tuple[str, object]]:
    """The search settings to sweep for an index: (label, faiss SearchParameters or None)."""
    if kind.startswith("hnsw"):
        return [(f"efSearch={ef}", faiss.SearchParametersHNSW(efSearch=ef)) for ef in HNSW_EF]
    if kind == "ivfpq":
        return [(f"nlist={index.nlist} nprobe={p}", faiss.SearchParametersIVF(nprobe=p))
                for p in IVF_NPROBE if p <= index.nlist]
    return [("exact", None)]


def bench_size(n: int, methods: list[str], n_queries: int, seed: int) -> list[list]:
    data, queries = make_data(n, n_queries, seed)
    _, truth = faiss.knn(queries, data, K, metric=faiss.METRIC_INNER_PRODUCT)  # exact answers, batched
    rows = []
    for method in methods:
        kind, fp16 = method.removesuffix("-fp16"), method.endswith("-fp16")
        if kind == "ivfpq" and n < sdfn_index.IVFPQ_MIN_ITEMS:
            continue
        t = time.perf_counter()
        index = sdfn_index.make_index(data, kind, fp16=fp16)
        build = time.perf_counter() - t
        memory = sdfn_index.index_bytes(index) / 2**20
        for label, params in settings(kind, index):
            found, p50, p95 = time_queries(index, queries, params)
            rows.append([f"{n:,}", method, label, f"{build:.1f}", f"{memory:.0f}", f"{p50:.2f}", f"{p95:.2f}",
                         f"{recall(found, truth):.3f}"])
            print(" | ".join(rows[-1]), flush=True)
        del index
    return rows


HEADERS = ["vectors", "index", "search setting", "build s", "MiB", "p50 ms", "p95 ms", "recall@50"]


def goal_line(rows: list[list]) -> str:
    goal = f"Goal at {GOAL_SIZE:,} (p50 <= {GOAL_P50_MS} ms at recall@50 >= {GOAL_RECALL})"
    at_goal = [r for r in rows if int(r[0].replace(",", "")) == GOAL_SIZE]
    if not at_goal:
        return f"{goal}: not measured in this run."
    meeting = [r for r in at_goal if float(r[5]) <= GOAL_P50_MS and float(r[7]) >= GOAL_RECALL]
    if not meeting:
        return f"{goal}: **not met**."
    best = min(meeting, key=lambda r: float(r[5]))
    return f"{goal}: **met** by {best[1]} {best[2]}: p50 {best[5]} ms, recall@50 {best[7]}."


def section_body(rows: list[list], queries: int, build_threads: int) -> str:
    """The RESULTS.md section: set-up, the table of `rows` (HEADERS), the goal verdict, the automatic choice."""
    return (f"dim {DIM}, clustered unit vectors (clusters of {CLUSTER_SIZE}), {queries} single queries per "
            f"setting on one OpenMP thread (builds on {build_threads}), k={K}; recall@50 against exact search.\n\n"
            f"{markdown_table(HEADERS, rows)}\n\n{goal_line(rows)}\n\n"
            f"Automatic choice in sdfn/index: flat below {sdfn_index.FLAT_MAX_ITEMS:,} items, HNSW "
            f"(M={sdfn_index.HNSW_M}, efSearch={sdfn_index.HNSW_EF_SEARCH}) below "
            f"{sdfn_index.HNSW_MAX_ITEMS:,}, IVF-PQ (nprobe={sdfn_index.IVF_NPROBE}) above.")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="10000,100000,1000000", help="comma-separated numbers of vectors")
    parser.add_argument("--methods", default="flat,flat-fp16,hnsw,hnsw-fp16,ivfpq",
                        help="index types of sdfn.index (flat, hnsw, ivfpq), '-fp16' for float16 storage")
    parser.add_argument("--queries", type=int, default=500, help="timed queries per setting")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-record", action="store_true", help="print only; leave benchmarks/RESULTS.md alone")
    args = parser.parse_args()
    methods = args.methods.split(",")
    print(f"faiss {faiss.__version__}: builds on {faiss.omp_get_max_threads()} OpenMP threads, queries on 1")
    print(" | ".join(HEADERS))
    rows = [r for n in (int(s) for s in args.sizes.split(",")) for r in bench_size(n, methods, args.queries, args.seed)]
    body = section_body(rows, args.queries, faiss.omp_get_max_threads())
    print()
    print(body)
    if not args.no_record:
        write_section("search_scale", "Search scaling: exact vs approximate (benchmarks/search_scale.py)", body)


if __name__ == "__main__":
    main()
