"""Quality table on the synthetic catalog: SDFN against every baseline and ablation, 3 seeds.

Every method trains with the tiny-synthetic recipe's stage 2 (frozen stage-1 backbone, cached features)
on the same stage-1 backbone, for the same epochs, with the same tuning budget: one learning-rate
sweep (seed 0, picked on the *val* split), then the remaining seeds at the picked rate. The best
checkpoint of each run (by val R@1) is scored on the *test* split:
- R@1/5/10/50 (whole category split as gallery, joined captions, reference excluded);
- attribute satisfaction sat@1 / sat@5 (sdfn.evaluate's sat@k: per query, the share of the top-1 (top-5)
  items that keep the reference's category and have an accepted value for every attribute the captions
  ask for; averaged over each category's queries, then over categories like R@K).

Writes benchmarks/QUALITY.md and benchmarks/quality.json (figures in percent, mean over seeds, std).
Each finished run is a line of OUT/results.jsonl (the ledger); a rerun skips what the ledger holds, so
the sweep can stop and restart, and a part of it run elsewhere can be merged by concatenating ledgers:

    python benchmarks/quality.py --stage1 runs/tiny-synthetic/stage1
    # e.g. the routed methods on a GPU machine (fp32, as on the CPU), then the rest here:
    python benchmarks/quality.py --stage1 S --methods sdfn,sdfn_no_spd --ledger gpu.jsonl optim.precision=fp32
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import time
from pathlib import Path

import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.results import command, git_commit, machine, markdown_table, stage2_inputs  # noqa: E402
from sdfn.config import load_config  # noqa: E402
from sdfn.data.attributes import APPLIES, satisfies  # noqa: E402
from sdfn.data.base import open_dataset  # noqa: E402
from sdfn.encode import ModelQueryEncoder  # noqa: E402
from sdfn.evaluate import Answers, EvalProtocol, QueryRanking, evaluate  # noqa: E402
from sdfn.model import ComposedRetrievalModel  # noqa: E402
from sdfn.training import run_training  # noqa: E402

HERE = Path(__file__).resolve().parent
METHODS: dict[str, list[str]] = {
    "sdfn": [],
    "image_only": ["model.fusion.name=image_only"],
    "text_only": ["model.fusion.name=text_only"],
    "sum": ["model.fusion.name=sum"],
    "concat_mlp": ["model.fusion.name=concat_mlp"],
    "tirg": ["model.fusion.name=tirg"],
    "combiner": ["model.fusion.name=combiner"],
    "sdfn_shared_router": ["model.fusion.router=shared"],
    "sdfn_fixed_route": ["model.fusion.router=fixed"],
    "sdfn_no_spd": ["spd.enabled=false"],
}
BASELINES = ("image_only", "text_only", "sum", "concat_mlp", "tirg", "combiner")
METRICS = ("R@1", "R@5", "R@10", "R@50", "sat@1", "sat@5")


def run_folder(out: Path, method: str, lr: float, seed: int) -> Path:
    return out / method / f"lr{lr:g}-seed{seed}"


class Ledger:
    """One JSON line per finished run (method, lr, seed, val score, test metrics), in `out/results.jsonl`.

    The table is computed from the ledger alone, so a sweep can stop and restart, and parts of it run on
    other machines (e.g. the routed methods on a GPU) can be merged by concatenating their ledgers.
    """

    def __init__(self, path: Path):
        self.path = path
        self.runs: dict[tuple[str, str, int], dict] = {}
        if path.is_file():
            for line in path.read_text().splitlines():
                if line.strip():
                    r = json.loads(line)
                    self.runs[(r["method"], f"{r['lr']:g}", r["seed"])] = r

    def get(self, method: str, lr: float, seed: int) -> dict | None:
        return self.runs.get((method, f"{lr:g}", seed))

    def add(self, record: dict) -> None:
        self.runs[(record["method"], f"{record['lr']:g}", record["seed"])] = record
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a") as f:
            f.write(json.dumps(record) + "\n")


def train_one(method: str, lr: float, seed: int, args, caches, ledger: Ledger, dataset, catalog):
    """Train one run (unless the ledger has it); record its best checkpoint's val score and test metrics.

    Every run is scored on test (seconds), but only the val score picks the learning rate.
    """
    known = ledger.get(method, lr, seed)
    if known is not None:
        return known, caches
    folder = run_folder(args.out, method, lr, seed)
    overrides = [f"data.root={args.catalog}", "data.synthesize=false", "pretrain.epochs=0",
                 f"model.backbone.model=local-dir:{args.stage1.resolve()}", f"seed={seed}", f"optim.lr={lr}",
                 f"optim.epochs={args.epochs}", *args.overrides, *METHODS[method]]
    cfg = load_config(args.preset, overrides)
    cfg.name = f"quality-{method}"
    if folder.exists():
        shutil.rmtree(folder)           # an unfinished run (the ledger is written last): start it again
    start = time.time()
    result = run_training(cfg, folder, progress=not args.quiet, caches=caches)
    record = {"method": method, "lr": lr, "seed": seed, "epochs": args.epochs, "val": result["best"],
              "train_seconds": round(time.time() - start, 1), "machine": machine()}
    record["test"] = split_metrics(folder / "best", dataset, catalog, "test", result["caches"][0])
    ledger.add(record)
    print(f"  {method} lr={lr:g} seed={seed}: best val {result['best']['metric']} = {result['best']['score']:.2f}, "
          "test " + ", ".join(f"{m} {record['test'][m]:.1f}" for m in METRICS)
          + f" ({record['train_seconds']:.0f} s)", flush=True)
    return record, result["caches"]


PROTOCOL = EvalProtocol(gallery="split", captions="joined", exclude_reference=True)


def split_metrics(checkpoint: Path, dataset, catalog: pd.DataFrame, split: str = "test",
                  table=None) -> dict[str, float]:
    """R@1/5/10/50 and sat@1/5 of a checkpoint on a split of the synthetic catalog (PROTOCOL)."""
    model = ComposedRetrievalModel.load(checkpoint)
    encoder = ModelQueryEncoder(model, batch_size=256, table=table)
    report = evaluate(dataset, split, encoder, PROTOCOL, return_rankings=True)
    metrics = {f"R@{k}": v for k, v in report.mean_recall().items()}
    metrics |= {f"sat@{k}": v for k, v in report.mean_satisfaction(catalog_answers(catalog), (1, 5)).items()}
    metrics["queries"] = sum(c.evaluated for c in report.categories)
    return metrics


def catalog_answers(catalog: pd.DataFrame) -> Answers:
    """sat@k's test on the synthetic catalog: the item keeps the reference's category and has an accepted
    value for every attribute the query's captions ask for."""
    def answers(ranking: QueryRanking, item: str) -> bool:
        row = catalog.loc[item]
        attrs = {a: row[a] for a in APPLIES[row["category"]]}
        return satisfies(attrs, row["category"], ranking.triplet.asks, catalog.at[ranking.reference, "category"])
    return answers


def summarise(per_seed: dict[str, list[dict]]) -> dict:
    out = {}
    for method, runs in per_seed.items():
        entry = {m: round(statistics.mean(r[m] for r in runs), 2) for m in METRICS}
        entry["std"] = {m: round(statistics.stdev(r[m] for r in runs), 2) if len(runs) > 1 else 0.0 for m in METRICS}
        entry["seeds"] = len(runs)
        entry["lr"] = runs[0]["lr"]
        out[method] = entry
    return out


def machines_used(ledger: Ledger) -> dict[str, list[str]]:
    used: dict[str, set[str]] = {}
    for r in ledger.runs.values():
        used.setdefault(r["machine"], set()).add(r["method"])
    return {m: sorted(methods) for m, methods in used.items()}


def write_report(summary: dict, args, ledger: Ledger) -> None:
    (HERE / "quality.json").write_text(json.dumps(summary, indent=2) + "\n")
    rows = [[m, *(f"{s[k]:.1f} ± {s['std'][k]:.1f}" for k in METRICS), f"{s['lr']:g}"] for m, s in summary.items()]
    best_static = max(BASELINES, key=lambda m: summary[m]["R@1"])
    sdfn, static = summary["sdfn"], summary[best_static]
    stage2 = stage2_inputs(load_config(args.preset, list(args.overrides)).to_dict())   # the preset changed in v2
    lines = [
        "# Quality on the synthetic catalog (test split)",
        "",
        f"_{time.strftime('%Y-%m-%d')} · commit {git_commit()} · {len(ledger.runs)} runs, "
        f"{sum(r['train_seconds'] for r in ledger.runs.values()) / 60:.0f} min of training_  ",
        f"Command: `{command()}`  ",
        "Machines: " + "; ".join(f"{m} ({', '.join(methods)})" for m, methods in machines_used(ledger).items()),
        "",
        f"Same stage-1 backbone (`{args.stage1}`) for every method; stage 2 on {stage2}, "
        f"{args.epochs} epochs, learning rate picked per method from {{{', '.join(f'{x:g}' for x in args.lrs)}}} "
        f"on val R@1 (seed 0), then seeds {', '.join(map(str, args.seeds))} at that rate; best checkpoint by val "
        "R@1. Test protocol: whole category split as gallery, joined captions, reference excluded. sat@k "
        "(sdfn.evaluate): per query, the share of the top-k items with the reference's category and every asked "
        "attribute value, averaged per category, then over categories like R@K. Mean ± std over seeds, in percent.",
        "",
        markdown_table(["method", *METRICS, "lr"], rows),
        "",
        "## Goals",
        "",
        f"- SDFN R@1 {sdfn['R@1']:.1f} vs best static baseline ({best_static}) {static['R@1']:.1f}: "
        f"{sdfn['R@1'] - static['R@1']:+.1f} points (goal >= +3).",
        f"- R@10 {sdfn['R@10']:.1f} vs {static['R@10']:.1f}; sat@1 {sdfn['sat@1']:.1f} vs {static['sat@1']:.1f} "
        "(goal: not below).",
        f"- MSR: SDFN R@1 {sdfn['R@1']:.1f} vs shared router {summary['sdfn_shared_router']['R@1']:.1f}; "
        f"SPD: vs no SPD {summary['sdfn_no_spd']['R@1']:.1f}; fixed route {summary['sdfn_fixed_route']['R@1']:.1f}.",
        f"- SDFN sat@1 {sdfn['sat@1']:.1f} (goal >= 80).",
    ]
    path = HERE / "QUALITY.md"
    # Other scripts (benchmarks/phrasing.py, benchmarks/routes.py) keep their own sections after this table,
    # delimited by <!-- name:start/end --> comments (results.write_section): keep them.
    old = path.read_text() if path.is_file() else ""
    sections = old[old.index("<!-- "):] if "<!-- " in old else ""
    path.write_text("\n".join(lines) + "\n" + ("\n" + sections if sections else ""))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--stage1", type=Path, required=True, help="stage-1 backbone folder (from sdfn train)")
    parser.add_argument("--catalog", type=Path, default=Path("catalogs/synthetic"))
    parser.add_argument("--preset", default="tiny-synthetic")
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--lrs", default="0.0005,0.002", help="learning rates tried for every method (seed 0)")
    parser.add_argument("--epochs", type=int, default=None, help="default: the preset's optim.epochs")
    parser.add_argument("--out", type=Path, default=Path("runs/quality"))
    parser.add_argument("--ledger", type=Path, default=None, help="results file (default: OUT/results.jsonl)")
    parser.add_argument("--quiet", action="store_true")
    parser.add_argument("overrides", nargs="*", metavar="key=value",
                        help="applied to every method's config (e.g. optim.precision=fp32 on a GPU)")
    args = parser.parse_args()
    args.seeds = [int(s) for s in args.seeds.split(",")]
    args.lrs = [float(x) for x in args.lrs.split(",")]
    args.epochs = args.epochs or load_config(args.preset).optim.epochs
    methods = args.methods.split(",")
    dataset = open_dataset("fashioniq", args.catalog)
    catalog = pd.read_csv(args.catalog / "catalog.csv", dtype=str, keep_default_na=False).set_index("id")
    ledger = Ledger(args.ledger or args.out / "results.jsonl")
    caches, per_seed = None, {}
    for method in methods:
        print(f"{method}:", flush=True)
        sweep = {}
        for lr in args.lrs:
            record, caches = train_one(method, lr, args.seeds[0], args, caches, ledger, dataset, catalog)
            sweep[lr] = record["val"]["score"]
        lr = max(args.lrs, key=lambda x: sweep[x])
        per_seed[method] = []
        for seed in args.seeds:
            record, caches = train_one(method, lr, seed, args, caches, ledger, dataset, catalog)
            per_seed[method].append({**record["test"], "lr": lr, "seed": seed})
    summary = summarise(per_seed)
    print(json.dumps(summary, indent=1))
    if set(METHODS) <= set(summary):
        write_report(summary, args, ledger)


if __name__ == "__main__":
    main()
