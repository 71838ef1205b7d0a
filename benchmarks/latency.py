"""Query latency per stage through sdfn.Retriever on CPU, SDFN against the Combiner, and indexing throughput.

    python benchmarks/latency.py                      # recorded numbers: a 10k-item catalog (minutes the first time)
    python benchmarks/latency.py --items-per-category 40 --queries 20 --throughput-images 200 --no-record  # check

The catalog is the synthetic one with `--items-per-category` x 5 categories (default 2000: 10,000 real
items, generated once into catalogs/bench/, git-ignored). Every model gets its own catalog folder over the
same images (its own index); SDFN and the Combiner on one backbone share the backbone weights, so the
second reuses the first's cached features. Models: `--checkpoint` (default: the shipped sdfn/assets/sdfn-tiny,
else a random-init sdfn-tiny with sdfn/configs/tiny-synthetic.json's model) and its Combiner twin; ViT-B-32
(random init, no download) with sdfn/configs/fashioniq-vitb32.json's fusion and its Combiner twin. Timings do
not depend on training. Stages are the Retriever's own (`SearchResult.timings_ms`); "end to end" is the
wall time of `Retriever.search`. Queries: the catalog's own FashionIQ-style captions on random references,
once with the reference as a catalog id (features from the index cache) and once as an uploaded image
file (decoded and encoded); a catalog reference searches its own category (the default scope), and once more
the whole catalog (category "all"); an upload its predicted category (sdfn.scope). Goals (sdfn-tiny, 10k
items): p50 <= 15 ms with a catalog reference, <= 20 ms
with an uploaded image; SDFN / Combiner end-to-end p50 <= 1.3.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import io
import json
import random
import sys
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import open_clip
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.results import markdown_table, shown_path, write_section  # noqa: E402
from sdfn.backbone import BackboneConfig  # noqa: E402
from sdfn.config import load_config  # noqa: E402
from sdfn.data.synth import generate_catalog  # noqa: E402
from sdfn.encode import extract_image_features  # noqa: E402
from sdfn.fusion import FusionConfig  # noqa: E402
from sdfn.model import SHIPPED_CHECKPOINT, ComposedRetrievalModel, ModelConfig  # noqa: E402
from sdfn.retrieval import STAGES, Retriever  # noqa: E402

BENCH_DIR = Path(__file__).resolve().parent.parent / "catalogs" / "bench"
GOALS_MS = {"catalog reference": 15.0, "uploaded image": 20.0}  # p50, sdfn-tiny
RATIO_GOAL = 1.3
WARMUP = 5
K = 10


def images_catalog(items_per_category: int, bench_dir: Path) -> Path:
    """The synthetic catalog whose images every model's catalog points at (generated once)."""
    root = bench_dir / f"synthetic-{items_per_category}"
    if not (root / "catalog.csv").is_file():
        print(f"generating {5 * items_per_category} synthetic items in {root} (once)")
        generate_catalog(root, seed=0, items_per_category=items_per_category)
    return root


def model_catalog(images: Path, name: str) -> Path:
    """A catalog folder for one model: the same table with absolute image paths, so it gets its own index."""
    root = images.with_name(f"{images.name}-{name}")
    root.mkdir(parents=True, exist_ok=True)
    with (images / "catalog.csv").open(encoding="utf-8", newline="") as handle:
        reader = csv.DictReader(handle)
        rows = [{**row, "image": str(images / row["image"])} for row in reader]
        columns = reader.fieldnames
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    text, table = buffer.getvalue(), root / "catalog.csv"
    if not table.is_file() or table.read_text(encoding="utf-8") != text:  # unchanged bytes keep the index fresh
        table.write_text(text, encoding="utf-8")
    return root


def checkpoint_for(name: str, cfg: ModelConfig, bench_dir: Path, backbone_of: Path | None = None) -> Path:
    """A random-init checkpoint (seed 0), saved once; `backbone_of` copies another checkpoint's backbone.

    The folder name carries a hash of the config, the architecture file and the source weights, so a
    changed sdfn-tiny.json or a retrained checkpoint gives a new model instead of a stale cached one.
    """
    source = json.loads((backbone_of / "sdfn_config.json").read_text())["fingerprint"] if backbone_of else None
    arch = open_clip.get_model_config(cfg.backbone.model)
    key = hashlib.sha256(json.dumps([asdict(cfg), arch, source], sort_keys=True, default=str).encode()).hexdigest()
    folder = bench_dir / "models" / f"{name}-{key[:8]}"
    if not (folder / "sdfn_config.json").is_file():
        torch.manual_seed(0)
        model = ComposedRetrievalModel(cfg)
        if backbone_of is not None:
            model.backbone.load_state_dict(ComposedRetrievalModel.load(backbone_of).backbone.state_dict())
        model.save(folder)
    return folder


def combiner_twin(checkpoint: Path, bench_dir: Path) -> Path:
    """The Combiner baseline on exactly the backbone of `checkpoint`, fusion width as its SDFN."""
    meta = json.loads((checkpoint / "sdfn_config.json").read_text())
    cfg = ModelConfig.from_dict(meta["model"])
    cfg.fusion = FusionConfig(name="combiner", width=cfg.fusion.width)
    cfg.backbone.pretrained = None  # the weights come from `checkpoint`, never from a download
    return checkpoint_for(f"{cfg.backbone.model}-combiner", cfg, bench_dir, backbone_of=checkpoint)


def caption_queries(catalog: Path, count: int, seed: int) -> list[tuple[str, str]]:
    """(reference id, "c1 and c2") pairs from the catalog's own captions, sampled with a fixed seed."""
    pairs = []
    for path in sorted((catalog / "captions").glob("cap.*.json")):
        for entry in json.loads(path.read_text(encoding="utf-8")):
            pairs.append((entry["candidate"], " and ".join(c.strip(".?, ") for c in entry["captions"])))
    return random.Random(seed).sample(pairs, min(count, len(pairs)))


def time_variant(label: str, checkpoint: Path, catalog: Path, queries: list[tuple[str, str]],
                 threads: int | None) -> dict:
    """Per query kind: {stage: [ms per query]}."""
    start = time.perf_counter()
    retriever = Retriever(checkpoint, catalog, progress=True, threads=threads)   # opens everything
    print(f"{label}: ready in {time.perf_counter() - start:.1f} s ({retriever.index_status.message})")
    images = retriever.catalog
    kinds = {"catalog reference": (lambda ref: ref, None),
             "catalog reference, all categories": (lambda ref: ref, "all"),
             "uploaded image": (lambda ref: images.image_path(images.row_of[ref]), None)}
    first_of_category = {images.rows[images.row_of[ref]]["category"]: (ref, text) for ref, text in queries}
    out = {}
    for kind, (reference, category) in kinds.items():
        # warm-up: one query per category first (a category's exact sub-index is built on its first search, and
        # an upload's catalog profile on the first upload: once per retriever), then WARMUP more
        for ref, text in [*first_of_category.values(), *queries[:WARMUP]]:
            retriever.search(reference(ref), text, k=K, category=category)
        stages: dict[str, list[float]] = {s: [] for s in (*STAGES, "end to end")}
        for ref, text in queries:
            start = time.perf_counter()
            result = retriever.search(reference(ref), text, k=K, category=category)
            stages["end to end"].append(1000 * (time.perf_counter() - start))
            for s in STAGES:
                stages[s].append(result.timings_ms[s])
        out[kind] = stages
    return out


def indexing_throughput(checkpoint: Path, catalog: Path, count: int, workers: int) -> float:
    """Images per second through decode + preprocess + backbone encode (sdfn.encode, batch 128)."""
    model = ComposedRetrievalModel.load(checkpoint).eval()
    with (catalog / "catalog.csv").open(encoding="utf-8", newline="") as handle:
        paths = [catalog / row["image"] for row in csv.DictReader(handle)][:count]
    extract_image_features(model, paths[:32], num_workers=0)  # warm-up
    start = time.perf_counter()
    extract_image_features(model, paths, batch_size=128, num_workers=workers, progress=True)
    return len(paths) / (time.perf_counter() - start)


def p(values: list[float], q: int) -> float:
    return float(np.percentile(values, q))


def table_rows(results: dict[tuple[str, str], dict]) -> list[list]:
    rows = []
    for (backbone, fusion), kinds in results.items():
        for kind, stages in kinds.items():
            rows.append([backbone, fusion, kind,
                         *(f"{p(stages[s], 50):.2f} / {p(stages[s], 95):.2f}" for s in (*STAGES, "end to end"))])
    return rows


def goal_lines(results: dict[tuple[str, str], dict], tiny: str, items: int) -> list[str]:
    lines = []
    for kind, goal in GOALS_MS.items():
        got = p(results[(tiny, "sdfn")][kind]["end to end"], 50)
        lines.append(f"- {tiny} SDFN, {kind}, {items:,} items: end-to-end p50 {got:.2f} ms "
                     f"(goal <= {goal:.0f} ms: {'met' if got <= goal else '**not met**'})")
    for backbone in dict.fromkeys(b for b, _ in results):
        for kind in (*GOALS_MS, "catalog reference, all categories"):
            ratio = (p(results[(backbone, "sdfn")][kind]["end to end"], 50)
                     / p(results[(backbone, "combiner")][kind]["end to end"], 50))
            lines.append(f"- {backbone}, {kind}: SDFN / Combiner end-to-end p50 = {ratio:.2f} "
                         f"(goal <= {RATIO_GOAL}: {'met' if ratio <= RATIO_GOAL else '**not met**'})")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", help="sdfn-tiny checkpoint (default: the shipped sdfn/assets/sdfn-tiny, else "
                                             "a random-init one with sdfn/configs/tiny-synthetic.json's model)")
    parser.add_argument("--items-per-category", type=int, default=2000, help="catalog size / 5 (default 2000)")
    parser.add_argument("--queries", type=int, default=200, help="timed queries per model and query kind")
    parser.add_argument("--throughput-images", type=int, default=2000, help="images for the indexing throughput")
    parser.add_argument("--workers", type=int, default=0, help="decoding processes for the throughput run")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch threads for the queries (default: the Retriever's, torch's capped at the cores)")
    parser.add_argument("--skip-vit", action="store_true", help="leave out ViT-B-32 (its indexing takes minutes)")
    parser.add_argument("--bench-dir", type=Path, default=BENCH_DIR, help="where catalogs and models are cached")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-record", action="store_true", help="print only; leave benchmarks/RESULTS.md alone")
    parser.add_argument("--note", default="", help="a paragraph recorded after the results (conditions, other runs)")
    args = parser.parse_args()

    images = images_catalog(args.items_per_category, args.bench_dir)
    items = 5 * args.items_per_category
    queries = caption_queries(images, args.queries, args.seed)
    if args.checkpoint:
        tiny = Path(args.checkpoint)
    elif (SHIPPED_CHECKPOINT / "sdfn_config.json").is_file():
        tiny = SHIPPED_CHECKPOINT
    else:
        tiny = checkpoint_for("tiny-random", load_config("tiny-synthetic").model, args.bench_dir)
    variants = [("sdfn-tiny", "sdfn", tiny), ("sdfn-tiny", "combiner", combiner_twin(tiny, args.bench_dir))]
    if not args.skip_vit:
        vit_cfg = ModelConfig(BackboneConfig(model="ViT-B-32", pretrained=None),
                              load_config("fashioniq-vitb32").model.fusion)
        vit = checkpoint_for("vitb32-random", vit_cfg, args.bench_dir)
        variants += [("ViT-B-32", "sdfn", vit), ("ViT-B-32", "combiner", combiner_twin(vit, args.bench_dir))]

    results = {}
    for backbone, fusion, checkpoint in variants:
        catalog = model_catalog(images, backbone.lower())  # SDFN and Combiner twins share backbone and cache
        results[(backbone, fusion)] = time_variant(f"{backbone} {fusion}", checkpoint, catalog, queries, args.threads)
    throughput = indexing_throughput(tiny, images, args.throughput_images, args.workers)

    headers = ["backbone", "fusion", "reference", *(f"{s} ms p50 / p95" for s in STAGES), "end to end ms p50 / p95"]
    table = markdown_table(headers, table_rows(results))
    goals = goal_lines(results, "sdfn-tiny", items)
    summary = (f"Catalog: {items:,} real synthetic items (flat index), k={K}, {len(queries)} queries per row "
               f"(captions of the catalog), torch threads {torch.get_num_threads()}, "
               f"checkpoint {shown_path(tiny)}.\n\n{table}\n\n"
               + "\n".join(goals) +
               f"\n\nIndexing throughput (sdfn-tiny, decode + preprocess + encode, batch 128, {args.workers} "
               f"decoding workers): **{throughput:.0f} images/s** over {min(args.throughput_images, items)} images."
               + (f"\n\n{args.note.strip()}" if args.note.strip() else ""))
    print()
    print(summary)
    if not args.no_record:
        write_section("latency", "Query latency per stage and indexing throughput (benchmarks/latency.py)", summary)


if __name__ == "__main__":
    main()
