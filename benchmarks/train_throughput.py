"""Training throughput (triplets/s) of SDFN against the sum baseline: same backbone, batch and step code.

Each row times `Trainer.train_step` (forward, InfoNCE + SPD, backward, clipping, AdamW, scheduler,
route memory) on random inputs that are already on the device, so data loading is not measured.
Modes:
- `finetune`: images go through the (unfrozen) backbone towers, as in the paper-scale recipe;
- `cached`: frozen backbone, cached image and text features, as in the tiny recipe's stage 2.

    python benchmarks/train_throughput.py                       # CPU: sdfn-tiny, both modes
    python benchmarks/train_throughput.py --gpu                 # GPU: ViT-B-32, batch 256, bf16, random init
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.results import markdown_table, write_section  # noqa: E402
from sdfn.backbone import ImageFeatures, TextFeatures  # noqa: E402
from sdfn.config import load_config  # noqa: E402
from sdfn.data.synth import generate_catalog  # noqa: E402
from sdfn.training import Dist, TrainBatch, Trainer  # noqa: E402

GOAL = 0.8            # SDFN at least 0.8x the sum baseline's throughput on GPU
GPU_ANCHOR = 2100     # measured plain composed step on an H100, triplets/s (issue #3)


def random_batch(trainer: Trainer, batch_size: int, cached: bool, g: torch.Generator) -> TrainBatch:
    """Inputs of the right shapes on the trainer's device: cached features, or images and real captions."""
    device = trainer.device
    backbone = trainer.model.backbone
    keys = torch.arange(batch_size, device=device)
    if cached:
        n_tokens = trainer.table.features.tokens.shape[1]

        def feats():
            return ImageFeatures(torch.randn(batch_size, n_tokens, backbone.image_token_dim, generator=g).to(device),
                                 torch.randn(batch_size, backbone.embed_dim, generator=g).to(device))

        words = trainer.texts.features.tokens.shape[1]
        mask = torch.arange(words)[None, :] < torch.randint(4, words + 1, (batch_size, 1), generator=g)
        text = TextFeatures(torch.randn(batch_size, words, backbone.text_token_dim, generator=g), mask,
                            torch.randn(batch_size, backbone.embed_dim, generator=g)).to(device)
        return TrainBatch(feats(), text, feats(), keys)
    texts = [" and ".join(t.captions) for t in random.Random(0).choices(trainer.triplets, k=batch_size)]
    shape = (batch_size, 3, *backbone.image_size)
    images = torch.randn((2, *shape), generator=g).to(device)
    return TrainBatch(images[0], texts, images[1], keys)


def measure(preset: str, fusion: str, mode: str, catalog: Path, batch_size: int, steps: int, warmup: int,
            device: torch.device, precision: str) -> dict:
    frozen = mode == "cached"
    overrides = [f"data.root={catalog}", "data.synthesize=false", "pretrain.epochs=0", "eval.every=0",
                 f"optim.batch_size={batch_size}", "optim.num_workers=0", "model.backbone.pretrained=null",
                 f"model.fusion.name={fusion}", f"model.backbone.freeze_image={json.dumps(frozen)}",
                 f"model.backbone.freeze_text={json.dumps(frozen)}", f"cache_features={json.dumps(frozen)}",
                 f"optim.precision={precision}", "optim.epochs=2",
                 "optim.negatives=batch"]     # in-batch negatives in every mode: the same loss for every row
    cfg = load_config(preset, overrides)
    with tempfile.TemporaryDirectory() as out:
        trainer = Trainer(cfg, Path(out), Dist(device=device), progress=False)
        trainer.epoch = 1            # SPD active, as in every epoch but the first
        g = torch.Generator().manual_seed(0)
        batch = random_batch(trainer, batch_size, frozen, g)
        ids = random.Random(0).choices(range(len(trainer.triplets)), k=batch_size)
        for _ in range(warmup):
            trainer.train_step(ids, random.Random(0), batch)
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        for _ in range(steps):
            trainer.train_step(ids, random.Random(0), batch)
        if device.type == "cuda":
            torch.cuda.synchronize()
        seconds = time.perf_counter() - start
        peak = torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else None
        backbone = cfg.model.backbone.model
    return {"fusion": fusion, "mode": mode, "backbone": backbone, "batch": batch_size,
            "precision": str(trainer.amp or "fp32").replace("torch.", ""),
            "triplets_per_s": steps * batch_size / seconds, "ms_per_step": 1000 * seconds / steps,
            "peak_gib": peak}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--gpu", action="store_true", help="GPU run: ViT-B-32 (fashioniq-vitb32 preset), bf16")
    parser.add_argument("--batch", type=int, default=None, help="default: 256 on GPU, 128 on CPU")
    parser.add_argument("--steps", type=int, default=None, help="timed steps (default: 30 GPU, 5 CPU)")
    parser.add_argument("--warmup", type=int, default=None, help="untimed steps first (default: 5 GPU, 1 CPU)")
    parser.add_argument("--modes", default=None,
                        help="comma list of finetune,cached (default: finetune on GPU, both on CPU)")
    parser.add_argument("--fusions", default="sdfn,sum")
    parser.add_argument("--catalog", type=Path, default=None,
                        help="a FashionIQ-format folder (default: a small synthetic one)")
    parser.add_argument("--no-record", action="store_true", help="print only; leave benchmarks/RESULTS.md alone")
    parser.add_argument("--json", type=Path, default=None, help="also write the rows as JSON here")
    args = parser.parse_args()
    gpu = args.gpu
    if gpu and not torch.cuda.is_available():
        parser.error("--gpu given but no CUDA device is visible")
    device = torch.device("cuda" if gpu else "cpu")
    preset, precision = ("fashioniq-vitb32", "bf16") if gpu else ("tiny-synthetic", "fp32")
    batch = args.batch or (256 if gpu else 128)
    steps, warmup = args.steps or (30 if gpu else 5), args.warmup if args.warmup is not None else (5 if gpu else 1)
    modes = (args.modes or ("finetune" if gpu else "finetune,cached")).split(",")
    with tempfile.TemporaryDirectory() as tmp:
        catalog = args.catalog
        if catalog is None:
            catalog = Path(tmp) / "catalog"
            generate_catalog(catalog, seed=0, items_per_category=40, workers=1, progress=False)
        rows = [measure(preset, fusion, mode, catalog, batch, steps, warmup, device, precision)
                for mode in modes for fusion in args.fusions.split(",")]
    table_rows = []
    for r in rows:
        base = next(x for x in rows if x["mode"] == r["mode"] and x["fusion"] == "sum")
        table_rows.append([r["fusion"], r["mode"], r["backbone"], r["batch"], r["precision"],
                           f"{r['triplets_per_s']:.0f}", f"{r['ms_per_step']:.0f}",
                           f"{r['triplets_per_s'] / base['triplets_per_s']:.2f}",
                           "" if r["peak_gib"] is None else f"{r['peak_gib']:.1f}"])
    table = markdown_table(["fusion", "mode", "backbone", "batch", "precision", "triplets/s", "ms/step",
                            "vs sum", "peak GiB"], table_rows)
    print(table)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))
    if not args.no_record:
        where = "gpu" if gpu else "cpu"
        note = (f"Goal: SDFN >= {GOAL}x the sum baseline on GPU (anchor for the plain composed step on an H100: "
                f"~{GPU_ANCHOR} triplets/s)." if gpu else
                "`cached` is the tiny recipe's stage 2 (frozen backbone, cached image features).")
        write_section(f"train-throughput-{where}", f"Training throughput ({where.upper()})", table + "\n\n" + note)


if __name__ == "__main__":
    main()
