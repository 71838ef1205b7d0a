"""What opening a catalog index costs, and what each integrity check adds (sdfn.index.manifest).

An index folder of N items is made with synthetic float16 features of sdfn-tiny's shape (tokens [64, 256],
pooled [256]: 33,280 bytes an item) in shards of 8,192 rows, and a flat FAISS index of N x 256 vectors.
Timed, each the median of --repeats runs, on warm page cache (the files were just written):
- sizes: every data file's size against the manifest (the check made on every open);
- changed: sizes, plus sha256 of files whose mtime differs from the manifest's (none here: what a
  normal open costs, the default of `open_index`);
- full: sha256 of every file (what `sdfn index` checks);
- open: open every shard and check its header (sdfn.index.features.Shard) and read vectors.faiss into memory.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import faiss
import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.results import markdown_table, write_section  # noqa: E402
from sdfn.backbone import ImageFeatures  # noqa: E402
from sdfn.index.features import SHARD_ROWS, FeatureCache, write_shard  # noqa: E402
from sdfn.index.manifest import INDEX_FILE, PinnedFolder, check_files, file_record  # noqa: E402
from sdfn.index.snapshot import read_shard, read_vectors  # noqa: E402

TOKENS, DIM = 64, 256
HEADERS = ["items", "files MiB", "sizes ms", "changed ms", "full (sha256) ms", "open ms"]


def make_folder(folder: Path, n: int) -> dict:
    """A synthetic index folder of `n` items and the parts of its manifest the checks read."""
    rng = np.random.default_rng(0)
    shards = []
    for start in range(0, n, SHARD_ROWS):
        rows = min(SHARD_ROWS, n - start)
        tokens = torch.from_numpy(rng.standard_normal((rows, TOKENS, DIM), dtype=np.float32)).half()
        pooled = torch.from_numpy(rng.standard_normal((rows, DIM), dtype=np.float32)).half()
        shards.append(write_shard(folder, len(shards), ImageFeatures(tokens, pooled)))
    vectors = rng.standard_normal((n, DIM), dtype=np.float32)
    index = faiss.IndexFlatIP(DIM)
    index.add(vectors / np.linalg.norm(vectors, axis=1, keepdims=True))
    faiss.write_index(index, str(folder / INDEX_FILE))
    files = {name: file_record(folder / name) for name in [INDEX_FILE, *(s["file"] for s in shards)]}
    return {"index": {"file": INDEX_FILE, "count": n, "dim": DIM}, "features": {"shards": shards}, "files": files}


def median_ms(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return 1000 * float(np.median(times))


def bench(n: int, repeats: int) -> list:
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        manifest = make_folder(folder, n)
        mib = sum(r["size"] for r in manifest["files"].values()) / 2**20

        def check(level: str):
            with PinnedFolder(folder) as pin:
                assert check_files(pin, manifest, level) == ({}, {})

        def open_all():
            with PinnedFolder(folder) as pin:
                cache = FeatureCache([read_shard(pin, s) for s in manifest["features"]["shards"]])
                vectors = read_vectors(pin, manifest)
            assert len(cache) == vectors.ntotal == n

        return [f"{n:,}", f"{mib:,.0f}", f"{median_ms(lambda: check('sizes'), repeats):.2f}",
                f"{median_ms(lambda: check('changed'), repeats):.2f}",
                f"{median_ms(lambda: check('full'), repeats):,.0f}", f"{median_ms(open_all, repeats):.1f}"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="6000,100000", help="comma-separated numbers of items")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--no-record", action="store_true", help="print only; leave benchmarks/RESULTS.md alone")
    args = parser.parse_args()
    rows = []
    for n in (int(s) for s in args.sizes.split(",")):
        rows.append(bench(n, args.repeats))
        print(" | ".join(rows[-1]), flush=True)
    body = (f"Synthetic index folders of sdfn-tiny's feature shape (33,280 bytes an item) and a flat index; median of "
            f"{args.repeats} runs, warm page cache. `sizes` runs on every open; `changed` (the default of "
            f"`open_index`) adds the sha256 of files whose mtime differs from the manifest's (none here); `full` "
            f"is what `sdfn index` checks; `open` opens every shard (header checked) and reads vectors.faiss.\n\n"
            f"{markdown_table(HEADERS, rows)}\n")
    print(body)
    if not args.no_record:
        write_section("index_open", "Index open and integrity checks (benchmarks/index_open.py)", body)


if __name__ == "__main__":
    main()
