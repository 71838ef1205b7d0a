"""Do a checkpoint's image tokens keep their place? Where in the patch grid a one-attribute change shows, block by
block of the image tower.

    python benchmarks/token_locality.py                                  # the shipped sdfn-tiny, recorded
    python benchmarks/token_locality.py --checkpoint runs/x/best --no-record

The region cells of ours (sdfn.fusion.cells REGION_CELLS: upper_edit, middle_edit, lower_edit) each edit one
horizontal band of the image tokens, on the idea that a change to one part of a garment (hem, neckline, belt)
shows in one band; `model.backbone.image_token_layer` (ours) lets the fusion read an earlier block's tokens. Both
help only where the tokens still describe their own patch. This script measures it with controlled pairs: per
kind of change, up to --pairs items of the synthetic catalog (seed 0) are drawn twice by the catalog's own
drawing code (sdfn.data.synth.drawing.render_item) with one random stream, so placement, lighting and background
are the same and the two pictures differ in that one attribute only (a pattern change also redraws the fabric's
lighting; a colour change may move the background's level). Both pictures go through the checkpoint's
preprocessing and image tower. Per pair and per patch, the distance between the two pictures' tokens (pixels:
the patch's preprocessed pixels; block L: the tokens after block L through the tower's final norm and
projection, what the fusion reads with image_token_layer=L; the last block is what it reads by default) is
divided by its mean over the patches, then averaged over pairs: a kind's map.

Two readings per kind and depth: the map's mean in each band of the region cells (1.00 in every band: the change
shows in every token alike), and `nearest kind`: the largest cosine between the kind's map and another kind's
(both taken as deviations from their mean). Below ~0.6 the kinds change different places of the grid; near 1.0
they look alike in where they show, whatever the bands say.

Pairs of catalog items that differ in one attribute (the first version of this script) differ in placement,
lighting and drawing noise too, everywhere: with them every kind showed within 0.96-1.06 in every band at the
last block, and even raw pixels looked alike for every kind (nearest-kind cosines 0.95-0.99). Those figures
measured the noise between pictures, not where the change is.
"""

from __future__ import annotations

import argparse
import random
import sys
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.results import markdown_table, shown_path, write_section  # noqa: E402
from sdfn.backbone import _apply_projection  # noqa: E402
from sdfn.catalog import open_catalog  # noqa: E402
from sdfn.data.attributes import APPLIES, ATTRIBUTES, KINDS_OF_CHANGE  # noqa: E402
from sdfn.data.images import load_model_image  # noqa: E402
from sdfn.data.synth.drawing import render_item  # noqa: E402
from sdfn.errors import DataError  # noqa: E402
from sdfn.fusion.cells import RegionEditCell  # noqa: E402
from sdfn.model import ComposedRetrievalModel  # noqa: E402
from sdfn.paths import SHIPPED_CHECKPOINT, default_catalog  # noqa: E402

HERE = Path(__file__).resolve().parent
QUALITY = HERE / "QUALITY.md"
SECTION = "token-locality"
SEED = 0
BATCH = 64


def controlled_pairs(rows: list[dict], per_kind: int, seed: int = SEED) -> list[tuple[str, str, dict, dict, str]]:
    """(kind, random-stream name, attributes, the same with `kind` changed, category) for up to `per_kind` rows
    per kind of change, among the rows whose category has that kind; the new value is drawn among the others."""
    missing = [k for k in ATTRIBUTES if rows and k not in rows[0]]
    if missing or "category" not in (rows[0] if rows else {}):
        raise DataError(f"the catalog's rows lack attribute columns {missing or ['category']}: token_locality draws "
                        "its pairs with the synthetic catalog's drawing code, so give a catalog made by `sdfn synth`.")
    rng = random.Random(seed)
    pairs = []
    for kind in KINDS_OF_CHANGE:
        candidates = [r for r in rows if kind in APPLIES.get(r["category"], ())]
        for row in rng.sample(candidates, min(per_kind, len(candidates))):
            attrs = {k: row[k] for k in ATTRIBUTES}
            changed = dict(attrs, **{kind: rng.choice([v for v in ATTRIBUTES[kind] if v != attrs[kind]])})
            pairs.append((kind, f"token-locality/{seed}/{row['image']}", attrs, changed, row["category"]))
    return pairs


def band_spans(patches: int) -> dict[str, tuple[int, int]]:
    return {band: RegionEditCell.token_span(patches, band) for band in RegionEditCell.BANDS}


def depth_features(model: ComposedRetrievalModel, images: torch.Tensor) -> dict[str, torch.Tensor]:
    """{depth: [B, patches, D]}: the preprocessed pixels of each patch, then the tokens after each block of the
    image tower through its final norm and projection (what the fusion reads with image_token_layer = that
    block)."""
    visual = model.backbone.clip.visual
    out = visual.forward_intermediates(images, indices=None, normalize_intermediates=True, output_fmt="NLC",
                                       intermediates_only=True)
    ph, pw = visual.patch_size if isinstance(visual.patch_size, tuple) else (visual.patch_size,) * 2
    b = images.shape[0]
    pixels = images.unfold(2, ph, ph).unfold(3, pw, pw)                        # [B, C, rows, cols, ph, pw]
    pixels = pixels.permute(0, 2, 3, 1, 4, 5).reshape(b, pixels.shape[2] * pixels.shape[3], -1)
    layers = out["image_intermediates"]
    depths = {"pixels": pixels}
    for i, tokens in enumerate(layers):
        name = f"block {i + 1}" + (" (last, default)" if i == len(layers) - 1 else "")
        depths[name] = _apply_projection(tokens, getattr(visual, "proj", None))   # as Backbone.encode_image
    return depths


def measure(model: ComposedRetrievalModel, catalog: Path, per_kind: int) -> dict[str, dict[str, dict]]:
    """{depth: {kind: {"pairs": n, band: mean of the kind's map in the band, "nearest": (kind, cosine)}}}."""
    pairs = controlled_pairs(open_catalog(catalog).rows, per_kind)
    backbone = model.backbone
    maps: dict[str, dict[str, list[torch.Tensor]]] = {}
    for start in range(0, len(pairs), BATCH):
        chunk = pairs[start:start + BATCH]
        pictures = []
        for _, stream, attrs, changed, category in chunk:
            for a in (attrs, changed):
                picture = render_item(category, a, random.Random(stream))
                pictures.append(backbone.preprocess(load_model_image(picture, backbone.image_size)))
        with torch.inference_mode():
            depths = depth_features(model, torch.stack(pictures))
        for depth, feats in depths.items():
            distance = (feats[0::2] - feats[1::2]).norm(dim=-1)               # [pairs, patches]
            distance = distance / distance.mean(dim=1, keepdim=True).clamp_min(1e-8)
            for (kind, *_), row in zip(chunk, distance, strict=True):
                maps.setdefault(depth, {}).setdefault(kind, []).append(row)
    result = {}
    for depth, by_kind in maps.items():
        kinds = list(by_kind)
        mean = torch.stack([torch.stack(by_kind[k]).mean(dim=0) for k in kinds])      # [kinds, patches]
        spans = band_spans(mean.shape[1])
        shape = F.normalize(mean - mean.mean(dim=1, keepdim=True), dim=1)
        cosine = shape @ shape.T
        result[depth] = {}
        for i, kind in enumerate(kinds):
            others = [(kinds[j], float(cosine[i, j])) for j in range(len(kinds)) if j != i]
            result[depth][kind] = {"pairs": len(by_kind[kind]),
                                   **{band: float(mean[i, s:e].mean()) for band, (s, e) in spans.items()},
                                   "nearest": max(others, key=lambda o: o[1]) if others else None}
    return result


def table(result: dict[str, dict[str, dict]]) -> str:
    bands = list(RegionEditCell.BANDS)
    rows = []
    for depth, by_kind in result.items():
        for kind, r in by_kind.items():
            nearest = "-" if r["nearest"] is None else f"{r['nearest'][1]:.2f} ({r['nearest'][0]})"
            rows.append([depth, kind, r["pairs"], *[f"{r[b]:.2f}" for b in bands], nearest])
    return markdown_table(["depth", "kind of change", "pairs", *[f"{b} band" for b in bands], "nearest kind (cosine)"],
                          rows)


def main(argv: Sequence[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", type=Path, default=SHIPPED_CHECKPOINT)
    parser.add_argument("--catalog", type=Path, default=None,
                        help="a synthetic catalog (sdfn synth) whose items are drawn again; default: the default one")
    parser.add_argument("--pairs", type=int, default=100, help="controlled pairs per kind of change")
    parser.add_argument("--no-record", action="store_true", help="print only; do not write benchmarks/QUALITY.md")
    args = parser.parse_args(argv)
    if args.pairs < 1:
        parser.error(f"--pairs {args.pairs}: give at least 1")
    catalog = args.catalog or default_catalog()
    model = ComposedRetrievalModel.load(args.checkpoint).eval()
    result = measure(model, catalog, args.pairs)
    text = table(result)
    print(text)
    if not args.no_record:
        body = "\n".join([
            f"Checkpoint `{shown_path(args.checkpoint)}`, catalog `{shown_path(catalog)}` (items' attributes). Per "
            f"kind of change, {args.pairs} items (seed {SEED}) drawn twice by sdfn.data.synth.drawing.render_item "
            "with one random stream, the second time with that one attribute changed; per pair and patch, the "
            "distance between the two pictures' features over its mean over the patches; mean over pairs. Depth: "
            "the patch's preprocessed pixels, then the tokens after each block of the image tower (final norm and "
            "projection applied: what the fusion reads with model.backbone.image_token_layer at that block). "
            "Bands: the region cells' (sdfn.fusion.cells.RegionEditCell: rows [0, 3/8), [3/8, 5/8), [5/8, 1) of "
            "the patch grid); 1.00 in every band = the change shows in every token alike. Nearest kind: the "
            "largest cosine between the kind's map and another kind's, both as deviations from their mean (near "
            "1: the two show in the same places).",
            "",
            text,
        ])
        write_section(SECTION, "Do the image tokens keep their place? (benchmarks/token_locality.py)", body,
                      QUALITY)
    return result


if __name__ == "__main__":
    main()
