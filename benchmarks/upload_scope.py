"""An uploaded photo's predicted category and out-of-catalog warning (sdfn.scope), measured.

    python benchmarks/upload_scope.py                 # shipped sdfn-tiny on the default catalog (catalogs/synthetic)
    python benchmarks/upload_scope.py --no-record     # print only

In-catalog uploads: the items of a new synthetic catalog (another seed, never indexed), searched as uploads.
Their category is predicted by the Retriever (`predict_category`: the catalog profile's nearest category mean)
and, for comparison, by a vote among the 10 nearest catalog items by retrieval embedding.

Out-of-catalog uploads, in two groups. Calibration: the sources looked at while the profile's features,
shrinkage and quantile were chosen (drawn gradients, noise, solid colours and text pages; gradio's bundled
photos and logos; networkx and sympy test plots). Test: sources left out of that choice (gradio's test images,
playwright's icons, and drawn kinds not used then: checkerboards, cartoon faces, UI screenshots). A source
missing from this environment is left out and the table says so.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from collections import Counter
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.results import markdown_table, shown_path, write_section  # noqa: E402
from sdfn.data.synth import generate_catalog  # noqa: E402
from sdfn.model import SHIPPED_CHECKPOINT  # noqa: E402
from sdfn.retrieval import Retriever  # noqa: E402
from sdfn.scope import MIN_CONFIDENCE, OOD_QUANTILE, SHRINK  # noqa: E402

BENCH_DIR = Path(__file__).resolve().parent.parent / "catalogs" / "bench"
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".gif", ".webp"}


def drawn(kind: str, count: int, seed: int) -> list[Image.Image]:
    """Images no catalog holds, drawn here."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(count):
        colour = tuple(int(c) for c in rng.integers(0, 256, 3))
        if kind == "gradient":   # sunsets, skies
            t = np.linspace(0, 1, 240)[:, None, None]
            pixels = rng.integers(0, 256, 3) * (1 - t) + rng.integers(0, 256, 3) * t
            out.append(Image.fromarray(np.repeat(pixels, 320, axis=1).astype(np.uint8)))
        elif kind == "noise":
            out.append(Image.fromarray(rng.integers(0, 256, (200, 200, 3), dtype=np.uint8)))
        elif kind == "solid":
            out.append(Image.new("RGB", (128, 128), colour))
        elif kind == "text page":
            image = Image.new("RGB", (400, 300), tuple(int(c) for c in rng.integers(200, 256, 3)))
            draw = ImageDraw.Draw(image)
            for line in range(12):
                words = f"line {line} of page {i}: the quick brown fox, error 0"
                draw.text((10, 10 + 23 * line), words, fill=(20, 20, 20))
            out.append(image)
        elif kind == "checkerboard":
            cell = int(rng.integers(8, 40))
            grid = (np.indices((240, 240)) // cell).sum(axis=0) % 2
            out.append(Image.fromarray(np.where(grid[..., None] == 1, colour, (255, 255, 255)).astype(np.uint8)))
        elif kind == "cartoon face":
            image = Image.new("RGB", (240, 240), tuple(int(c) for c in rng.integers(120, 256, 3)))
            draw = ImageDraw.Draw(image)
            draw.ellipse((40, 30, 200, 220), fill=(233, 190, 160))
            for x in (90, 150):
                draw.ellipse((x - 10, 100, x + 10, 120), fill=(40, 30, 30))
            draw.arc((85, 130, 155, 180), 20, 160, fill=(150, 40, 40), width=5)
            out.append(image)
        elif kind == "UI screenshot":
            image = Image.new("RGB", (480, 320), (245, 245, 248))
            draw = ImageDraw.Draw(image)
            draw.rectangle((0, 0, 480, 28), fill=colour)
            for row in range(6):
                y = 44 + 44 * row
                draw.rectangle((16, y, 464, y + 32), outline=(180, 180, 190), fill=(255, 255, 255))
                draw.text((24, y + 10), f"Setting {row}: enabled   [ OK ]  [ Cancel ]", fill=(30, 30, 30))
            out.append(image)
        else:
            raise ValueError(kind)
    return out


def package_images(package: str, *parts: str) -> list[Path]:
    """Image files bundled with an installed package, under `parts` (none when it is not installed)."""
    try:
        module = __import__(package)
    except ImportError:
        return []
    folder = Path(module.__file__).parent.joinpath(*parts)
    return sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.stat().st_size > 2048) \
        if folder.is_dir() else []


def sources() -> dict[str, dict[str, list]]:
    return {
        "calibration": {
            "drawn gradients (sunsets)": drawn("gradient", 12, 1), "drawn noise": drawn("noise", 8, 2),
            "drawn solid colours": drawn("solid", 6, 3), "drawn text pages": drawn("text page", 10, 4),
            "gradio photos and logos": package_images("gradio", "media_assets", "images"),
            "networkx and sympy test plots": package_images("networkx", "drawing", "tests", "baseline")
            + package_images("sympy", "plotting", "tests"),
        },
        "test": {
            "gradio test images": package_images("gradio", "test_data"),
            "playwright icons": package_images("playwright", "driver"),
            "drawn checkerboards": drawn("checkerboard", 8, 5), "drawn cartoon faces": drawn("cartoon face", 8, 6),
            "drawn UI screenshots": drawn("UI screenshot", 8, 7),
        },
    }


def knn_vote(retriever: Retriever, reference, k: int = 10) -> str:
    """The majority category among the k nearest catalog items by retrieval embedding (the alternative)."""
    result = retriever.search(reference, "", k=k, category="all")
    return Counter(item.metadata["category"] for item in result.items).most_common(1)[0][0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", default=str(SHIPPED_CHECKPOINT))
    parser.add_argument("--catalog", default=None, help="catalog searched (default: the default synthetic catalog)")
    parser.add_argument("--held-out-per-category", type=int, default=40, help="new items per category (seed 123)")
    parser.add_argument("--no-record", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(1)

    retriever = Retriever(args.checkpoint, args.catalog, progress=False, threads=1)
    held = BENCH_DIR / f"held-out-seed123-{args.held_out_per_category}"
    if not (held / "catalog.csv").is_file():
        generate_catalog(held, seed=123, items_per_category=args.held_out_per_category, progress=False)
    from sdfn.catalog import open_catalog

    new = open_catalog(held)
    truth = [row["category"] for row in new.rows]
    files = [new.image_path(i) for i in range(len(new))]
    predictions = [retriever.predict_category(f) for f in files]
    right = np.array([p.category == t for p, t in zip(predictions, truth, strict=True)])
    confident = np.array([p.confidence >= MIN_CONFIDENCE for p in predictions])
    vote = np.mean([knn_vote(retriever, f) == t for f, t in zip(files, truth, strict=True)])
    flagged_in = np.mean([bool(p.out_of_catalog) for p in predictions])
    profile = retriever.category_profile()

    rows = [["in catalog", f"new synthetic items (seed 123), {len(files)}", len(files), f"{flagged_in:.1%}"]]
    with tempfile.TemporaryDirectory() as tmp:
        for group, named in sources().items():
            for name, images in named.items():
                if not images:
                    rows.append([group, name + " (not installed here)", 0, "-"])
                    continue
                flags = []
                for n, image in enumerate(images):
                    if isinstance(image, Image.Image):
                        image.save(Path(tmp) / f"{n}.png")
                        image = Path(tmp) / f"{n}.png"
                    flags.append(bool(retriever.predict_category(image).out_of_catalog))
                rows.append([group, name, len(flags), f"{np.mean(flags):.0%}"])
    pooled = {g: [r for r in rows if r[0] == g and r[2]] for g in ("calibration", "test")}
    totals = {g: sum(r[2] * float(r[3].rstrip("%")) / 100 for r in rs) / max(1, sum(r[2] for r in rs))
              for g, rs in pooled.items()}

    table = markdown_table(["group", "uploads", "images", "flagged out of catalog"], rows)
    summary = (
        f"Retriever on {shown_path(retriever.catalog.root)} ({len(retriever.index):,} items), checkpoint "
        f"{shown_path(Path(args.checkpoint))}. Profile: {profile.items:,} catalog items read, features [pooled, "
        f"token mean, token std], covariance shrinkage {SHRINK}, threshold = the {OOD_QUANTILE:.0%} quantile of "
        f"the distances of catalog items left out of the fit ({profile.threshold:.1f}).\n\n"
        f"Predicted category of {len(files)} new items uploaded: **{right.mean():.1%}** right (profile's nearest "
        f"category mean; a vote among the 10 nearest items by retrieval embedding: {vote:.1%}); "
        f"{confident.mean():.0%} are at least {MIN_CONFIDENCE:.0%} sure (their default scope is the predicted "
        f"category), and of those {right[confident].mean():.1%} are right.\n\n{table}\n\n"
        f"- out of catalog flagged: in-catalog uploads {flagged_in:.1%}; calibration sources "
        f"{totals['calibration']:.0%}; test sources (left out of the choice) {totals['test']:.0%} of images.")
    print(summary)
    if not args.no_record:
        write_section("upload-scope", "Upload scope: predicted category and out-of-catalog warning "
                                      "(benchmarks/upload_scope.py)", summary)


if __name__ == "__main__":
    main()
