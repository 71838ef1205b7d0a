"""Can a small model see every synthetic attribute at 64 px? Trains a CNN on the train split and reports
per-attribute test accuracy against chance; writes benchmarks/SYNTH.md.

    python benchmarks/synth_visibility.py                        # generates the default catalog (timed)
    python benchmarks/synth_visibility.py --catalog catalogs/synth --epochs 10

The tiny retrieval model reads 64 px images in 8 px patches. If a classifier trained for a couple of
CPU minutes cannot tell an attribute apart at that size, no caption about it can be learned.
"""

from __future__ import annotations

import argparse
import csv
import datetime
import json
import math
import os
import platform
import random
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import nn

from sdfn.data.attributes import ATTRIBUTES, CATEGORIES, NOT_APPLICABLE, satisfies
from sdfn.data.synth import DEFAULT_ITEMS_PER_CATEGORY, generate_catalog

SIZE = 64
TARGETS: dict[str, tuple[str, ...]] = {"category": CATEGORIES, **ATTRIBUTES}
GOALS = {"color": 0.85}  # every other target aims at 0.90
DEFAULT_GOAL = 0.90


def _cpu_seconds() -> float:
    """CPU time of this process and its finished children (the drawing workers)."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def timed_generation(out: Path, seed: int) -> str:
    """Generate the default catalog; wall and CPU time, and the load others put on the machine meanwhile
    (wall time on a shared machine says little without it)."""
    load = os.getloadavg()[0]
    cpu, start = _cpu_seconds(), time.time()
    generate_catalog(out, seed=seed, progress=False)
    wall, cpu = time.time() - start, _cpu_seconds() - cpu
    return (f"{wall:.1f} s wall, {cpu:.1f} s CPU, {os.cpu_count()} worker processes "
            f"(load average {load:.1f} when it started)")


def load_split(catalog: Path, split: str) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Images of one split at 64 px (uint8, N x 3 x 64 x 64) and per-target label indices (-1 = n/a)."""
    with (catalog / "catalog.csv").open(encoding="utf-8") as handle:
        rows = [row for row in csv.DictReader(handle) if row["split"] == split]
    images = np.stack([
        np.asarray(Image.open(catalog / row["image"]).convert("RGB").resize((SIZE, SIZE), Image.BICUBIC))
        for row in rows])
    labels = {name: torch.tensor([values.index(row[name]) if row[name] != NOT_APPLICABLE else -1
                                  for row in rows]) for name, values in TARGETS.items()}
    return torch.from_numpy(images).permute(0, 3, 1, 2).contiguous(), labels


class AttributeCNN(nn.Module):
    """A 4x4 patch embedding (like a small ViT's stem) and three 3x3 convs down to 4x4, then one linear
    head per target: cheap enough for a dozen epochs in a couple of CPU minutes."""

    def __init__(self) -> None:
        super().__init__()

        def conv(c_in: int, c_out: int, kernel: int = 3, stride: int = 1) -> list[nn.Module]:
            return [nn.Conv2d(c_in, c_out, kernel, stride, padding=kernel // 2 if stride == 1 else 0),
                    nn.BatchNorm2d(c_out), nn.ReLU()]

        self.body = nn.Sequential(*conv(3, 64, 4, 4), *conv(64, 96), nn.MaxPool2d(2), *conv(96, 128),
                                  nn.MaxPool2d(2), *conv(128, 128))
        # Keep a coarse 2x2 layout: where a detail sits (neck, hem, waist) is part of what it means.
        self.pool = nn.AdaptiveAvgPool2d(2)
        self.heads = nn.ModuleDict({name: nn.Linear(4 * 128, len(values)) for name, values in TARGETS.items()})

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        x = (images.float() / 255 - 0.5) / 0.25
        features = self.pool(self.body(x)).flatten(1)
        return {name: head(features) for name, head in self.heads.items()}


def multi_task_loss(logits: dict[str, torch.Tensor], labels: dict[str, torch.Tensor]) -> torch.Tensor:
    return sum(nn.functional.cross_entropy(logits[n], labels[n], ignore_index=-1) for n in TARGETS)


def train(model: AttributeCNN, images: torch.Tensor, labels: dict[str, torch.Tensor], epochs: int,
          batch: int = 64, peak_lr: float = 3e-3) -> float:
    """AdamW with a cosine learning rate over a fixed number of epochs (not a time budget: the result
    must not depend on how busy the machine is); returns the seconds it took."""
    optimiser = torch.optim.AdamW(model.parameters(), lr=peak_lr, weight_decay=1e-4)
    steps_per_epoch = math.ceil(len(images) / batch)
    total, step, start = epochs * steps_per_epoch, 0, time.time()
    model.train()
    for _ in range(epochs):
        for order in torch.randperm(len(images)).split(batch):
            for group in optimiser.param_groups:
                group["lr"] = peak_lr * 0.5 * (1 + math.cos(math.pi * step / total))
            loss = multi_task_loss(model(images[order]), {n: v[order] for n, v in labels.items()})
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
            step += 1
    return time.time() - start


@torch.no_grad()
def accuracies(model: AttributeCNN, images: torch.Tensor,
               labels: dict[str, torch.Tensor]) -> dict[str, tuple[float, float, int]]:
    """Per target: (accuracy, majority-class chance, items it applies to)."""
    model.eval()
    logits = [model(chunk) for chunk in images.split(256)]
    result = {}
    for name in TARGETS:
        predicted = torch.cat([out[name] for out in logits]).argmax(1)
        known = labels[name] >= 0
        truth = labels[name][known]
        chance = torch.bincount(truth).max().item() / len(truth)
        result[name] = ((predicted[known] == truth).float().mean().item(), chance, len(truth))
    return result


def caption_stats(catalog: Path) -> dict[str, float]:
    """How pinned-down the queries are: shares of single-value asks and the mean number of items in the
    query's gallery (category + split) that satisfy its asks (1 = the target alone)."""
    with (catalog / "catalog.csv").open(encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    by_gallery: dict[tuple[str, str], list[dict[str, str]]] = {}
    for row in rows:
        by_gallery.setdefault((row["category"], row["split"]), []).append(row)
    counts = {split: sum(len(json.loads(p.read_text(encoding="utf-8")))
                         for p in (catalog / "captions").glob(f"cap.*.{split}.json"))
              for split in ("train", "val", "test")}
    asks_single = asks_total = pinned = queries = 0
    matches: list[int] = []
    for path in sorted((catalog / "captions").glob("cap.*.test.json")):
        category = path.name.split(".")[1]
        gallery = by_gallery[category, "test"]
        for entry in json.loads(path.read_text(encoding="utf-8")):
            queries += 1
            asks_total += len(entry["asks"])
            asks_single += sum(len(v) == 1 for v in entry["asks"].values())
            pinned += all(len(v) == 1 for v in entry["asks"].values())
            matches.append(sum(satisfies(r, category, entry["asks"], category) for r in gallery))
    return {"items": len(rows), **{f"{split} triplets": n for split, n in counts.items()},
            "asks with one accepted value": asks_single / asks_total,
            "queries fully pinned (every ask one value)": pinned / queries,
            "mean gallery items satisfying a test query": float(np.mean(matches))}


def caption_examples(catalog: Path, count: int, seed: int) -> list[tuple[str, list[str], dict]]:
    entries = []
    for path in sorted((catalog / "captions").glob("cap.*.json")):
        category = path.name.split(".")[1]
        entries += [(category, e["captions"], e["asks"]) for e in json.loads(path.read_text(encoding="utf-8"))]
    return random.Random(seed).sample(entries, count)


def markdown(command: str, generation: str, results: dict[str, tuple[float, float, int]], epochs: int,
             seconds: float, stats: dict[str, float], examples: list, catalog_note: str) -> str:
    lines = [
        "# Synthetic catalog: attribute visibility at 64 px",
        "",
        f"- date: {datetime.date.today().isoformat()}",
        f"- machine: {platform.platform()}, {os.cpu_count()} CPU cores, Python {platform.python_version()}, "
        f"torch {torch.__version__} (CPU)",
        f"- command: `{command}`",
        f"- catalog: {catalog_note}",
        f"- generation of the default catalog (`sdfn synth`, {DEFAULT_ITEMS_PER_CATEGORY} items per category): "
        f"{generation}",
        f"- classifier: small CNN (4x4 patch stem, three 3x3 convs, 64-128 channels), one head per target, "
        f"trained on the train split for {epochs} epochs ({seconds:.0f} s) on images downscaled to {SIZE} px "
        "(bicubic); scored on the test split (families it never saw).",
        "",
        "| target | test accuracy | chance (majority) | goal | test items |",
        "|---|---:|---:|---:|---:|",
    ]
    for name, (accuracy, chance, n) in results.items():
        goal = GOALS.get(name, DEFAULT_GOAL)
        mark = "" if accuracy >= goal else " (below goal)"
        lines.append(f"| {name} | {accuracy:.3f}{mark} | {chance:.3f} | {goal:.2f} | {n} |")
    lines += ["", "## Captions", ""]
    lines += [f"- {k}: {v:.3f}" if isinstance(v, float) else f"- {k}: {v}" for k, v in stats.items()]
    lines += ["", "Relative wording (\"darker\", \"longer sleeves\") accepts every value in its direction, so some "
              "asks hold several values. Asks cover only the changed attributes: a one-change query "
              "(\"has a belt\") is met by every test item of its category with that value, which is what the last "
              "figure counts."]
    lines += ["", "Random examples (category: captions -> asks):", ""]
    lines += [f"- {category}: \"{c[0]}\" / \"{c[1]}\" -> `{json.dumps(asks)}`" for category, c, asks in examples]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--catalog", type=Path, help="an existing synthetic catalog (default: generate one)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--epochs", type=int, default=10, help="training epochs (about 15-25 s each on 2 cores)")
    parser.add_argument("--write", type=Path, default=Path(__file__).with_name("SYNTH.md"),
                        help="markdown report to write")
    args = parser.parse_args(argv)
    torch.manual_seed(args.seed)
    with tempfile.TemporaryDirectory() as scratch:
        catalog = args.catalog
        generation = "not measured (an existing catalog was given)"
        catalog_note = str(catalog)
        if catalog is None:
            catalog = Path(scratch) / "synth"
            generation = timed_generation(catalog, args.seed)
            catalog_note = f"generated with seed {args.seed}, default size"
            print(f"generated the default catalog: {generation}", flush=True)
        train_images, train_labels = load_split(catalog, "train")
        test_images, test_labels = load_split(catalog, "test")
        print(f"{len(train_images)} train / {len(test_images)} test images at {SIZE} px", flush=True)
        model = AttributeCNN()
        seconds = train(model, train_images, train_labels, args.epochs)
        epochs = args.epochs
        results = accuracies(model, test_images, test_labels)
        stats = caption_stats(catalog)
        examples = caption_examples(catalog, 20, args.seed)
    command = "python " + " ".join([Path(sys.argv[0]).as_posix(), *(argv if argv is not None else sys.argv[1:])])
    report = markdown(command, generation, results, epochs, seconds, stats, examples, catalog_note)
    args.write.write_text(report, encoding="utf-8")
    print(report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
