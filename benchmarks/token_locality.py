"""Do a checkpoint's image tokens keep their place? Where in the patch grid a one-attribute change shows.

    python benchmarks/token_locality.py                                  # the shipped sdfn-tiny, recorded
    python benchmarks/token_locality.py --checkpoint runs/x/best --no-record

The region cells of ours (sdfn.fusion.cells REGION_CELLS: upper_edit, middle_edit, lower_edit) each edit one
horizontal band of the image tokens, on the idea that a change to one part of a garment (hem, sleeves, belt)
shows in one band. That holds only if the backbone's final patch tokens still describe their own patch. This
script measures it on the synthetic catalog: pairs of catalog items of one category whose attributes differ in
exactly one (length, sleeve, ...; up to --pairs per category and kind, first in catalog order), both images
encoded by the checkpoint's image tower; per pair, the distance between the two images' tokens at each patch,
averaged per band (the bands of RegionEditCell), then over pairs and categories. A band's figure is its mean
distance over the mean of all patches: 1.00 everywhere = the change shows in every token alike (tokens mixed
across the image); a hem change that shows as lower 1.5 and upper 0.7 = tokens keep their place.
"""

from __future__ import annotations

import argparse
import itertools
import sys
from collections.abc import Sequence
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.results import markdown_table, shown_path, write_section  # noqa: E402
from sdfn.catalog import open_catalog, resolve_image  # noqa: E402
from sdfn.data.attributes import KINDS_OF_CHANGE  # noqa: E402
from sdfn.encode import extract_image_features  # noqa: E402
from sdfn.errors import DataError  # noqa: E402
from sdfn.fusion.cells import RegionEditCell  # noqa: E402
from sdfn.model import ComposedRetrievalModel  # noqa: E402
from sdfn.paths import SHIPPED_CHECKPOINT, default_catalog  # noqa: E402

HERE = Path(__file__).resolve().parent
QUALITY = HERE / "QUALITY.md"
SECTION = "token-locality"


def one_change_pairs(rows: list[dict], per_kind: int) -> dict[str, list[tuple[dict, dict]]]:
    """Per kind of change, pairs of `rows` (one category) whose attributes differ in exactly that kind."""
    first: dict[tuple[str, ...], dict] = {}
    for row in rows:
        first.setdefault(tuple(row[k] for k in KINDS_OF_CHANGE), row)
    pairs: dict[str, list[tuple[dict, dict]]] = {k: [] for k in KINDS_OF_CHANGE}
    for a, b in itertools.combinations(first, 2):
        differ = [i for i in range(len(KINDS_OF_CHANGE)) if a[i] != b[i]]
        if len(differ) == 1 and len(pairs[KINDS_OF_CHANGE[differ[0]]]) < per_kind:
            pairs[KINDS_OF_CHANGE[differ[0]]].append((first[a], first[b]))
    return pairs


def band_spans(patches: int) -> dict[str, tuple[int, int]]:
    return {band: RegionEditCell.token_span(patches, band) for band in RegionEditCell.BANDS}


def measure(model: ComposedRetrievalModel, catalog: Path, per_kind: int) -> dict[str, dict]:
    """{kind: {"pairs": n, band: mean distance over all patches' mean}}, pooled over categories."""
    opened = open_catalog(catalog)
    rows = opened.rows
    categories = sorted({r["category"] for r in rows})
    pairs = {k: [] for k in KINDS_OF_CHANGE}
    for category in categories:
        for kind, found in one_change_pairs([r for r in rows if r["category"] == category], per_kind).items():
            pairs[kind] += found
    def path(row: dict) -> str:
        return str(resolve_image(opened.root, row["image"]))

    paths = sorted({path(r) for found in pairs.values() for pair in found for r in pair})
    features, failed = extract_image_features(model, paths).rows(paths)
    if failed:
        raise DataError(f"{len(failed)} images of catalog {catalog} could not be read, e.g. "
                        f"{next(iter(failed.values()))}; regenerate it (`sdfn synth --out {catalog}`) or pass "
                        f"another --catalog.")
    where = {p: i for i, p in enumerate(paths)}
    spans = band_spans(features.tokens.shape[1])
    result = {}
    for kind, found in pairs.items():
        if not found:
            continue
        per_pair = []
        for a, b in found:
            ta, tb = (features.tokens[where[path(r)]] for r in (a, b))
            distance = (ta - tb).norm(dim=-1)                                   # [patches]
            per_pair.append(torch.stack([distance[s:e].mean() for s, e in spans.values()]) / distance.mean())
        mean = torch.stack(per_pair).mean(dim=0)
        result[kind] = {"pairs": len(found), **{band: float(v) for band, v in zip(spans, mean, strict=True)}}
    return result


def main(argv: Sequence[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", type=Path, default=SHIPPED_CHECKPOINT)
    parser.add_argument("--catalog", type=Path, default=None, help="default: the default synthetic catalog")
    parser.add_argument("--pairs", type=int, default=40, help="pairs per category and kind of change")
    parser.add_argument("--no-record", action="store_true", help="print only; do not write benchmarks/QUALITY.md")
    args = parser.parse_args(argv)
    catalog = args.catalog or default_catalog()
    torch.set_grad_enabled(False)
    model = ComposedRetrievalModel.load(args.checkpoint).eval()
    result = measure(model, catalog, args.pairs)
    bands = list(RegionEditCell.BANDS)
    text = markdown_table(["kind of change", "pairs", *[f"{b} band" for b in bands]],
                          [[kind, r["pairs"], *[f"{r[b]:.2f}" for b in bands]] for kind, r in result.items()])
    print(text)
    if not args.no_record:
        body = "\n".join([
            f"Checkpoint `{shown_path(args.checkpoint)}`, catalog `{shown_path(catalog)}`. Pairs of items of one "
            f"category that differ in one attribute only (up to {args.pairs} per category and kind); per pair the "
            "distance between the two images' final patch tokens, averaged per band of the region cells "
            "(sdfn.fusion.cells.RegionEditCell: rows [0, 3/8), [3/8, 5/8), [5/8, 1) of the patch grid), over the "
            "mean of all patches; mean over pairs. 1.00 in every band: the change shows in every token alike.",
            "",
            text,
        ])
        write_section(SECTION, "Do the image tokens keep their place? (benchmarks/token_locality.py)", body,
                      QUALITY)
    return result


if __name__ == "__main__":
    main()
