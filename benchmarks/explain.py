"""Explain this query, measured: how long one explanation takes, what the occlusions say over many queries, and
where the shipped SDFN ranks the annotated target better or worse than the Combiner on the same backbone.

    python benchmarks/explain.py                  # shipped model + Combiner, default synthetic catalog, val split
    python benchmarks/explain.py --queries 100 --threads 2

On the split's first N annotated queries (file order, no picking):
- time per call (sdfn.explain.Explainer, in process, after 3 warm-up calls): explain (every leave-one-out variant
  in one batch + attention), compare_models (both models' exact ranking), compare_phrasings;
- occlusion: mean route change (points of path weight, mean over layers and paths) and query shift for words that
  name a change vs filler words; for colour words vs sleeve words, the paths each pushes most on average and the
  cosine between the two groups' mean path effects (1 = they move the same paths the same way);
- SDFN vs Combiner by kind of change: R@1 of each (exact rank of the target among the reference's category, the
  reference left out) and in how many queries each ranks the target higher.
Writes its section into benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import re
import statistics
import sys
import time
from collections import defaultdict
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.results import markdown_table, write_section  # noqa: E402
from sdfn.data.attributes import KINDS_OF_CHANGE  # noqa: E402
from sdfn.data.base import open_dataset  # noqa: E402
from sdfn.evaluate import join_captions  # noqa: E402
from sdfn.explain import Explainer  # noqa: E402
from sdfn.retrieval import Retriever  # noqa: E402
from sdfn.routes import kinds_of_change  # noqa: E402

SECTION = "explain"
FILLER = {"is", "and", "a", "an", "the", "has", "it", "in", "with", "of", "to", "more", "less"}
COLOUR = re.compile(r"^(red|blue|green|black|white|gr[ae]y|pink|purple|yellow|orange|brown|beige|navy|maroon|"
                    r"burgundy|colou?red|darker|lighter)$", re.I)
NECK = re.compile(r"neck|collar|scoop|crew", re.I)
TOP_ROWS = 2   # the top rows of the patch grid: where a garment's neckline is drawn in the synthetic images
SLEEVE = re.compile(r"^(sleeves?|sleeveless|strapless|straps?)$", re.I)
CONTENT = re.compile(r"red|blue|green|black|white|gr[ae]y|pink|purple|yellow|orange|brown|beige|navy|maroon|"
                     r"strip|dot|plaid|check|floral|print|pattern|solid|plain|sleeve|strap|short|long|mini|midi|"
                     r"maxi|neck|collar|scoop|crew|fit|tight|loose|baggy|slim|button|belt", re.I)


def _p(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) if values else float("nan")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--catalog", type=Path, default=None)
    parser.add_argument("--split", default="val")
    parser.add_argument("--queries", type=int, default=300)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--no-write", action="store_true", help="print only; leave RESULTS.md as it is")
    args = parser.parse_args(argv)

    retriever = Retriever(None, args.catalog, progress=False, threads=args.threads)
    explainer = Explainer(retriever)
    triplets = [t for t in open_dataset("fashioniq", retriever.catalog.root).triplets(args.split)
                if t.target is not None and t.reference in retriever.index.row_of][:args.queries]
    category = {t.reference: retriever.catalog.rows[retriever.catalog.row_of[t.reference]]["category"]
                for t in triplets}
    for t in triplets[:3]:   # warm-up: first calls allocate, fill the target caches
        text = join_captions(t.captions)
        explainer.explain(t.reference, text)
        explainer.compare_models(t.reference, text, 10, category[t.reference], t.target)
    times: dict[str, list[float]] = defaultdict(list)
    words_per_query, content, filler, content_shift, filler_shift = [], [], [], [], []
    colour_effects, sleeve_effects = [], []
    top_share: dict[str, list[float]] = {"neckline words": [], "other words naming a change": []}
    by_kind: dict[str, list[tuple[int, int]]] = defaultdict(list)
    labels: list[str] = []
    searched: list[int] = []
    for t in triplets:
        text = join_captions(t.captions)
        clock = time.perf_counter()
        e, _ = explainer.explain(t.reference, text)
        times["explain"].append(1000 * (time.perf_counter() - clock))
        clock = time.perf_counter()
        c = explainer.compare_models(t.reference, text, 10, category[t.reference], t.target)
        times["compare_models"].append(1000 * (time.perf_counter() - clock))
        clock = time.perf_counter()
        explainer.compare_phrasings(t.reference, t.captions[0], t.captions[-1])
        times["compare_phrasings"].append(1000 * (time.perf_counter() - clock))
        words_per_query.append(len(e.words))
        labels = e.path_labels
        for w in e.words:
            bare = w.word.lower().strip(".,!?")
            if bare in FILLER:
                filler.append(w.route_points)
                filler_shift.append(w.query_shift)
            elif CONTENT.search(bare):
                content.append(w.route_points)
                content_shift.append(w.query_shift)
            if CONTENT.search(bare) and e.attention:
                # the share of the word's attention (summed over patches) that the top rows' patches give it
                mass = [float(a.maps[w.index][:TOP_ROWS].sum() / max(a.maps[w.index].sum(), 1e-9))
                        for a in e.attention]
                top_share["neckline words" if NECK.search(bare) else "other words naming a change"].append(
                    float(np.mean(mass)))
            if COLOUR.match(bare):
                colour_effects.append(e.path_effects[w.index])
            elif SLEEVE.match(bare):
                sleeve_effects.append(e.path_effects[w.index])
        ranks = tuple(a.target_rank for a in c.answers)
        searched.append(c.searched)
        for kind in kinds_of_change(t) or ("(none)",):
            by_kind[kind].append(ranks)
        by_kind["all"].append(ranks)

    timing = markdown_table(
        ["call", "p50 ms", "p90 ms", "calls"],
        [[name, f"{_p(v, 50):.0f}", f"{_p(v, 90):.0f}", len(v)] for name, v in times.items()])
    words = markdown_table(
        ["words", "count", "route change, mean points", "query shift, mean"],
        [["naming a change (colour, pattern, sleeve, ...)", len(content), f"{np.mean(content):.2f}",
          f"{np.mean(content_shift):.4f}"],
         [f"filler ({', '.join(sorted(FILLER))})", len(filler), f"{np.mean(filler):.2f}",
          f"{np.mean(filler_shift):.4f}"]])
    paths = ""
    if colour_effects and sleeve_effects:
        colour, sleeve = np.mean(colour_effects, 0), np.mean(sleeve_effects, 0)
        cosine = float(colour @ sleeve / (np.linalg.norm(colour) * np.linalg.norm(sleeve) + 1e-12))

        def top(v: np.ndarray) -> str:
            return ", ".join(f"{labels[i]} {v[i]:+.1f}" for i in np.argsort(-np.abs(v))[:4])

        paths = (f"Colour words ({len(colour_effects)}): paths pushed most on average {top(colour)}.  \n"
                 f"Sleeve words ({len(sleeve_effects)}): {top(sleeve)}.  \n"
                 f"Cosine between the two groups' mean path effects: {cosine:.2f} (1 = same paths, same way).")
    grid_rows = e.grid[0]
    regions = markdown_table(
        ["words", "count", f"attention from the top {TOP_ROWS} of {grid_rows} patch rows, mean share",
         "if spread evenly"],
        [[name, len(v), f"{np.mean(v):.3f}" if v else "-", f"{TOP_ROWS / grid_rows:.3f}"]
         for name, v in top_share.items()])
    kinds = []
    for kind in ["all", *KINDS_OF_CHANGE]:
        pairs = by_kind.get(kind)
        if not pairs:
            continue
        sdfn_better = sum(a < b for a, b in pairs)
        combiner_better = sum(b < a for a, b in pairs)
        kinds.append([kind, len(pairs), f"{100 * np.mean([a == 1 for a, _ in pairs]):.1f}",
                      f"{100 * np.mean([b == 1 for _, b in pairs]):.1f}", sdfn_better, combiner_better,
                      len(pairs) - sdfn_better - combiner_better,
                      f"{statistics.median(a for a, _ in pairs):.0f} / {statistics.median(b for _, b in pairs):.0f}"])
    versus = markdown_table(["kind of change", "queries", "SDFN R@1", "Combiner R@1", "SDFN ranks higher",
                             "Combiner higher", "same rank", "median rank SDFN / Combiner"], kinds)
    body = (f"{len(triplets)} {args.split} queries of catalog {retriever.catalog.root.name} (the split's first, in "
            f"file order), {statistics.mean(words_per_query):.1f} words on average; shipped model "
            f"`{retriever.model.fingerprint()}` and the shipped Combiner on the same backbone; "
            f"{args.threads} torch threads.\n\n"
            f"### Time per call (in process)\n\n{timing}\n\n"
            f"### What leaving a word out does (shipped SDFN)\n\n{words}\n\n{paths}\n\n"
            f"### Where the words are read (cross-modal refinement attention, mean over layers)\n\n{regions}\n\n"
            f"### SDFN vs Combiner by kind of change\n\nExact rank of the annotated target among ALL catalog items of "
            f"the reference's category (every split, the reference left out: "
            f"{statistics.mean(searched):,.0f} items on average), as the demo searches; so R@1 here is lower than "
            f"`sdfn eval`'s, whose gallery is the split's items only. A query counts in every kind it asks for.\n\n"
            f"{versus}\n")
    print(body)
    if not args.no_write:
        write_section(SECTION, "Explain this query (benchmarks/explain.py)", body)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
