"""How fast can one query's routed fusion get on CPU? SDFN's fusion stage against the Combiner's (issue 9 §5).

    python benchmarks/fusion_cost.py                                   # recorded: shipped sdfn-tiny, with torch.compile
    python benchmarks/fusion_cost.py --repeats 30 --no-compile --no-record   # a quick check

benchmarks/latency.py times whole queries through sdfn.Retriever; on sdfn-tiny the routed fusion is most of what
sets an SDFN query apart from a Combiner query. This script times the fusion stage alone (batch 1, one catalog
caption on one image of the checkpoint's input size, `torch.inference_mode`, the Retriever's thread count) in
the ways it could be run, to tell how far inference engineering can take it:

- `compose`: `ComposedRetrievalModel.compose`, the path the Retriever runs (a torch.jit trace for one query);
- `eager`: the plain nn.Module; `trace + freeze`: the trace frozen and optimised for inference;
- `bfloat16 trace`: the weights and inputs cast to bfloat16 (how far its query moves is reported);
- `torch.compile`: inductor (C++ code generated at first use, in an empty cache; the seconds it takes are
  reported);
- fewer image tokens (the 8 x 8 patch grid average-pooled to 4 x 4 or 2 x 2, same weights) and smaller networks
  (random weights: 2 layers, width 64; the text-free cells and the region cells of ours, sdfn.fusion.cells
  TEXT_FREE_CELLS and REGION_CELLS): timings only, what a model built that way would cost (random weights: the
  timing does not depend on them);
- `combiner`: the static baseline's fusion on the same backbone features (its twin with random weights: the
  timing does not depend on them).

The budget line reads benchmarks/RESULTS.md's latency section (latency.py's last run): for SDFN / Combiner
end-to-end p50 <= 1.3, SDFN's fusion may take at most 1.3 x the Combiner's end to end minus SDFN's other stages.
"""

from __future__ import annotations

import argparse
import copy
import os
import re
import sys
import tempfile
import time
import warnings
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.results import RESULTS, markdown_table, shown_path, write_section  # noqa: E402
from sdfn.backbone import ImageFeatures, TextFeatures  # noqa: E402
from sdfn.fusion import FusionConfig, create_fusion  # noqa: E402
from sdfn.fusion.cells import REGION_CELLS, TEXT_FREE_CELLS  # noqa: E402
from sdfn.model import SHIPPED_CHECKPOINT, ComposedRetrievalModel, TensorFusion  # noqa: E402

RATIO_GOAL = 1.3
CAPTION = "is red and has long sleeves"


def timed(run, repeats: int, warmup: int = 20) -> tuple[float, float]:
    """p50 and p95 milliseconds of `run()` over `repeats` calls after `warmup` untimed ones."""
    for _ in range(warmup):
        run()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        times.append(1000 * (time.perf_counter() - start))
    return float(np.percentile(times, 50)), float(np.percentile(times, 95))


def pooled_tokens(tokens: torch.Tensor, side: int) -> torch.Tensor:
    """[1, N, D] patch tokens on a square grid, average-pooled to side x side tokens."""
    grid = int(round(tokens.shape[1] ** 0.5))
    if grid * grid != tokens.shape[1]:
        raise SystemExit(f"the image tokens ({tokens.shape[1]}) are not a square patch grid; leave out --pool")
    maps = tokens.transpose(1, 2).reshape(1, tokens.shape[2], grid, grid)
    return F.adaptive_avg_pool2d(maps, side).flatten(2).transpose(1, 2).contiguous()


def traced(fusion: torch.nn.Module, args: tuple) -> torch.jit.ScriptModule:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")   # the tracer's and freeze's deprecation warnings
        return torch.jit.trace(TensorFusion(fusion).eval(), args, check_trace=False)


def variants(model: ComposedRetrievalModel, image: ImageFeatures, text: TextFeatures, compile_too: bool):
    """(label, what it is, run, note) per row; `run()` runs one fusion of the query."""
    args = (image.tokens, image.pooled, text.tokens, text.mask, text.pooled)
    fusion, cfg = model.fusion, model.fusion.cfg
    rows = [("compose (what the Retriever runs)", "shipped weights, jit trace", lambda: model.compose(image, text), ""),
            ("eager", "shipped weights, nn.Module", lambda: fusion(image, text), "")]
    trace = traced(fusion, args)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        frozen = torch.jit.optimize_for_inference(torch.jit.freeze(trace))
    rows.append(("trace + freeze", "shipped weights, torch.jit.freeze + optimize_for_inference",
                 lambda: frozen(*args), ""))
    half = copy.deepcopy(TensorFusion(fusion)).to(torch.bfloat16).eval()
    half_args = tuple(a.to(torch.bfloat16) if a.is_floating_point() else a for a in args)
    half_trace = traced(half.fusion, half_args)
    agreement = F.cosine_similarity(half_trace(*half_args)[0].float(), trace(*args)[0]).item()
    rows.append(("bfloat16 trace", "shipped weights cast to bfloat16, jit trace", lambda: half_trace(*half_args),
                 f"query cosine to float32 {agreement:.5f}"))
    tokens = image.tokens.shape[1]
    for side in (4, 2):
        small = (pooled_tokens(image.tokens, side), *args[1:])
        small_trace = traced(fusion, small)
        rows.append((f"{side * side} image tokens", f"shipped weights on {tokens} tokens pooled to {side}x{side}, "
                     "jit trace; timing only", lambda t=small_trace, a=small: t(*a), ""))
    torch.manual_seed(0)
    for label, change in (("2 layers", {"layers": 2}), ("width 64", {"width": 64}),
                          ("2 layers, width 64, 16 tokens", {"layers": 2, "width": 64}),
                          ("text-free cells (ours)", {"cells": list(TEXT_FREE_CELLS)}),
                          ("region cells (ours)", {"cells": list(REGION_CELLS)})):
        other = create_fusion(replace(cfg, **change), model.backbone.embed_dim,
                              model.backbone.image_token_dim, model.backbone.text_token_dim).eval()
        other_args = (pooled_tokens(image.tokens, 4), *args[1:]) if "tokens" in label else args
        other_trace = traced(other, other_args)
        rows.append((label, "random weights, jit trace; timing only", lambda t=other_trace, a=other_args: t(*a), ""))
    combiner = create_fusion(FusionConfig(name="combiner", width=cfg.width), model.backbone.embed_dim,
                             model.backbone.image_token_dim, model.backbone.text_token_dim).eval()
    rows.append(("combiner", "the static baseline (random weights), nn.Module as the Retriever runs it",
                 lambda: combiner(image, text), ""))
    if compile_too:
        with tempfile.TemporaryDirectory() as cache:   # an empty inductor cache: the first call compiles for real
            os.environ["TORCHINDUCTOR_CACHE_DIR"] = cache
            # compile in this process: a pool of compile workers would keep running beside the timings
            os.environ["TORCHINDUCTOR_COMPILE_THREADS"] = "1"
            compiled = torch.compile(TensorFusion(fusion).eval(), dynamic=False)
            start = time.perf_counter()
            compiled(*args)
            seconds = time.perf_counter() - start
        rows.append(("torch.compile", "shipped weights, inductor", lambda: compiled(*args),
                     f"first call compiles: {seconds:.1f} s (empty cache)"))
    return rows


def latency_budget(results_text: str) -> dict[str, float] | None:
    """From latency.py's section of RESULTS.md: p50 end to end and fuse (ms) of sdfn-tiny's catalog-reference
    query, SDFN and Combiner; None when the section or those rows are missing."""
    section = re.search(r"<!-- latency:start -->(.*?)<!-- latency:end -->", results_text, re.S)
    header = section and re.search(r"^\| backbone \|(.*)\|$", section.group(1), re.M)
    if not header:
        return None
    columns = [c.strip() for c in header.group(1).split("|")]
    if "fuse ms p50 / p95" not in columns or "end to end ms p50 / p95" not in columns:
        return None
    found = {}
    for fusion in ("sdfn", "combiner"):
        row = next((r for r in re.findall(r"^\| sdfn-tiny \|(.*)\|$", section.group(1), re.M)
                    if [c.strip() for c in r.split("|")][:2] == [fusion, "catalog reference"]), None)
        if row is None:
            return None
        cells = [c.strip() for c in row.split("|")]
        found[f"{fusion} fuse"] = float(cells[columns.index("fuse ms p50 / p95")].split("/")[0])
        found[f"{fusion} end to end"] = float(cells[columns.index("end to end ms p50 / p95")].split("/")[0])
    return found


def budget_lines(budget: dict[str, float] | None, rows: list[tuple[str, float]]) -> list[str]:
    """What the 1.3 goal leaves for SDFN's fusion, against the fastest row with the shipped weights and tokens."""
    if budget is None:
        return ["- No budget: benchmarks/RESULTS.md has no latency section with sdfn-tiny catalog-reference rows "
                "(run `python benchmarks/latency.py --skip-vit` first)."]
    other = budget["sdfn end to end"] - budget["sdfn fuse"]
    allowed = RATIO_GOAL * budget["combiner end to end"] - other
    floor = min(rows, key=lambda r: r[1])
    lines = [f"- Latency section (latency.py): SDFN catalog reference end to end p50 "
             f"{budget['sdfn end to end']:.2f} ms, "
             f"of which fuse {budget['sdfn fuse']:.2f} ms (other stages {other:.2f} ms); Combiner end to end "
             f"{budget['combiner end to end']:.2f} ms, fuse {budget['combiner fuse']:.2f} ms.",
             f"- For SDFN / Combiner <= {RATIO_GOAL}, SDFN's fusion may take at most {RATIO_GOAL} x "
             f"{budget['combiner end to end']:.2f} - {other:.2f} = **{allowed:.2f} ms**."]
    if floor[1] <= allowed:
        state = "within the budget"
    elif allowed <= 0:
        state = "no fusion time is left: SDFN's other stages alone pass the goal"
    else:
        state = f"{floor[1] / allowed:.1f} x the budget"
    lines.append(f"- Fastest way to run the shipped model here: {floor[0]}, p50 {floor[1]:.2f} ms ({state}).")
    lines.append("- The budget takes latency.py's fuse stage, the same `compose` call timed inside whole queries "
                 "(the other stages run between two fusions); the rows above time the fusion on its own.")
    return lines


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", default=str(SHIPPED_CHECKPOINT), help="a routed (sdfn) checkpoint folder")
    parser.add_argument("--repeats", type=int, default=400, help="timed calls per row (default 400)")
    parser.add_argument("--threads", type=int, default=min(2, torch.get_num_threads()),
                        help="torch threads (default 2, the Retriever's on this project's 2-core machine)")
    parser.add_argument("--no-compile", action="store_true", help="leave out the torch.compile row (needs a C++ "
                                                                  "compiler and ~30 s)")
    parser.add_argument("--no-record", action="store_true", help="print only; leave benchmarks/RESULTS.md alone")
    parser.add_argument("--note", default="", help="a paragraph recorded after the results")
    args = parser.parse_args(argv)

    checkpoint = Path(args.checkpoint)
    if not (checkpoint / "sdfn_config.json").is_file():
        raise SystemExit(f"--checkpoint {checkpoint}: no sdfn_config.json there; give a checkpoint folder "
                         "(sdfn train writes RUN/best).")
    torch.set_num_threads(args.threads)
    model = ComposedRetrievalModel.load(checkpoint).eval()
    if not model.fusion.has_routes:
        raise SystemExit(f"--checkpoint {checkpoint}: its fusion is '{model.fusion.cfg.name}', not a routed one; "
                         "give an SDFN checkpoint.")
    with torch.inference_mode():
        torch.manual_seed(0)
        image = model.encode_images(torch.rand(1, 3, *model.backbone.image_size))
        text = model.encode_texts([CAPTION])
        measured = []
        for label, what, run, note in variants(model, image, text, not args.no_compile):
            p50, p95 = timed(run, args.repeats)
            measured.append((label, what, p50, p95, note))
            print(f"{label:34s} p50 {p50:6.2f} ms  p95 {p95:6.2f} ms  {note}", flush=True)
    combiner = next(m for m in measured if m[0] == "combiner")[2]
    table = markdown_table(["fusion run as", "what", "p50 ms", "p95 ms", "x Combiner's fusion", "note"],
                           [[label, what, f"{p50:.2f}", f"{p95:.2f}", f"{p50 / combiner:.1f}", note or "-"]
                            for label, what, p50, p95, note in measured])
    shipped = [(label, p50) for label, what, p50, _, _ in measured if what.startswith("shipped weights")
               and "timing only" not in what]
    budget = latency_budget(RESULTS.read_text()) if RESULTS.is_file() else None
    body = (f"Checkpoint {shown_path(checkpoint)}, batch 1, caption \"{CAPTION}\" ({text.tokens.shape[1]} text "
            f"tokens), {image.tokens.shape[1]} image tokens, torch threads {torch.get_num_threads()}, "
            f"{args.repeats} timed calls per row after 20 untimed.\n\n{table}\n\n"
            + "\n".join(budget_lines(budget, shipped))
            + (f"\n\n{args.note.strip()}" if args.note.strip() else ""))
    print()
    print(body)
    if not args.no_record:
        write_section("fusion-cost", "The routed fusion of one query: how fast can it run? (benchmarks/fusion_cost.py)",
                      body)


if __name__ == "__main__":
    main()
