"""Route-shaping sweep: which route option (ours, `routes.*` in the config) makes SDFN's routes depend on the
query and earn their place, at what recall, measured against the paper, the Combiner and its own ablations.

    python benchmarks/route_sweep.py --stage1 runs/tiny-synthetic/stage1 --out runs/route-sweep --workers 12

Every run is stage 2 of the tiny-synthetic recipe on the same frozen stage-1 backbone (cached features), the
same epochs and learning rate (0.001, the rate benchmarks/quality.py's sweep picked for sdfn and combiner),
best epoch by val R@1. Per run (one JSON line of OUT/results.jsonl): best val R@1, test R@K and sat@K
(benchmarks/quality.py's protocol), the route measures of benchmarks/routes.py (per-kind largest module-usage
difference, entropy over uniform, val R@1 cost of uniform routes) and the paraphrase consistency of
`sdfn.routes.paraphrase_consistency` (held-out phrasings, 3 per test query).

Phase 1 screens every option of `--options` with seed 0 (plus the paper, the Combiner and the paper without
SPD at every seed). The option with the most issue-9 route goals met (entropy <= 0.75 of uniform, every kind
>= 10 points, uniform routes cost >= 5 points, val R@1 at most 1 point below the paper's), then the highest
val R@1, is picked; phase 2 runs it at the other seeds and its ablations at every seed: without SPD, with a
shared router, and, with `--final`, the shipped recipe's extra overrides. Workers are processes that share the
feature caches across their runs; the whole sweep stops starting runs after `--budget-s`.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

# Route options (ours): routes.* overrides. Small on purpose: each one is a lever named in issue 9.
OPTIONS: dict[str, list[str]] = {
    "kind_1": ["routes.kind_weight=1.0", "routes.start_epoch=1", "routes.ramp_epochs=1"],
    "kind_3": ["routes.kind_weight=3.0", "routes.start_epoch=1", "routes.ramp_epochs=1"],
    "kind_10": ["routes.kind_weight=10.0", "routes.start_epoch=1", "routes.ramp_epochs=1"],
    "kind_1_sparse": ["routes.kind_weight=1.0", "routes.sparsity_weight=1.0", "routes.budget=0.25",
                      "routes.start_epoch=1", "routes.ramp_epochs=1"],
    "kind_3_sparse": ["routes.kind_weight=3.0", "routes.sparsity_weight=1.0", "routes.budget=0.25",
                      "routes.start_epoch=1", "routes.ramp_epochs=1"],
    "kind_3_text_sparse": ["routes.router=text", "routes.kind_weight=3.0", "routes.sparsity_weight=1.0",
                           "routes.budget=0.25", "routes.start_epoch=1", "routes.ramp_epochs=1"],
    "kind_10_text": ["routes.router=text", "routes.kind_weight=10.0", "routes.start_epoch=1", "routes.ramp_epochs=1"],
    "kind_3_ent_sparse": ["routes.kind_weight=3.0", "routes.entropy_weight=0.5", "routes.sparsity_weight=0.5",
                          "routes.budget=0.3", "routes.start_epoch=1", "routes.ramp_epochs=1"],
}
# Screened in the first sweep (QUALITY.md): none separated the kinds by more than 4.4 points.
UNSUPERVISED: dict[str, list[str]] = {
    "ent_bal_0.5": ["routes.entropy_weight=0.5", "routes.balance_weight=0.5"],
    "ent_bal_1_late": ["routes.entropy_weight=1.0", "routes.balance_weight=1.0", "routes.start_epoch=2",
                       "routes.ramp_epochs=2"],
    "ent_bal_2_late": ["routes.entropy_weight=2.0", "routes.balance_weight=2.0", "routes.start_epoch=3",
                       "routes.ramp_epochs=1"],
    "ent_bal_0.3_T0.5": ["routes.entropy_weight=0.3", "routes.balance_weight=0.3",
                         "model.fusion.router_temperature=0.5"],
    "text_ent_bal_1_late": ["routes.router=text", "routes.entropy_weight=1.0", "routes.balance_weight=1.0",
                            "routes.start_epoch=1", "routes.ramp_epochs=2"],
    "sparse_bal": ["routes.sparsity_weight=1.0", "routes.budget=0.25", "routes.balance_weight=0.5"],
    "sparse_ent_bal": ["routes.sparsity_weight=1.0", "routes.budget=0.25", "routes.entropy_weight=0.3",
                       "routes.balance_weight=0.5"],
    "sparse_ent_bal_late": ["routes.sparsity_weight=1.0", "routes.budget=0.25", "routes.entropy_weight=0.3",
                            "routes.balance_weight=0.5", "routes.start_epoch=1", "routes.ramp_epochs=2"],
    "sparse_ent_bal1": ["routes.sparsity_weight=1.0", "routes.budget=0.25", "routes.entropy_weight=0.3",
                        "routes.balance_weight=1.0"],
    "sparse_strong_late": ["routes.sparsity_weight=2.0", "routes.budget=0.15", "routes.entropy_weight=0.5",
                           "routes.balance_weight=1.0", "routes.start_epoch=1", "routes.ramp_epochs=2"],
}
REFERENCES: dict[str, list[str]] = {
    "paper": [],
    "paper_no_spd": ["spd.enabled=false"],
    "combiner": ["model.fusion.name=combiner"],
}
ABLATIONS: dict[str, list[str]] = {"no_spd": ["spd.enabled=false"], "shared_router": ["model.fusion.router=shared"]}


def route_goals(r: dict, paper_r1: float | None) -> int:
    rm = r.get("routes")
    if not rm:
        return 0
    met = [rm["entropy_ratio"] <= 0.75, min(rm["differences"].values()) >= 10, rm["recall"]["cost"] >= 5,
           paper_r1 is None or r["val_R@1"] >= paper_r1 - 1.0]
    return sum(met)


# -- one worker process: runs queued jobs, keeps the feature caches between them


def run_job(job: dict, args, state: dict) -> dict:
    import pandas as pd

    from benchmarks.quality import split_metrics
    from benchmarks.routes import measure
    from sdfn.config import load_config
    from sdfn.data.base import open_dataset
    from sdfn.encode import extract_image_features
    from sdfn.model import ComposedRetrievalModel
    from sdfn.training import run_training

    if "dataset" not in state:
        state["dataset"] = open_dataset("fashioniq", args.catalog)
        state["catalog"] = pd.read_csv(args.catalog / "catalog.csv", dtype=str,
                                       keep_default_na=False).set_index("id")
        state["caches"], state["table"] = {}, None
    overrides = [f"data.root={args.catalog}", "data.synthesize=false", "pretrain.epochs=0",
                 f"model.backbone.model=local-dir:{args.stage1.resolve()}", f"seed={job['seed']}",
                 f"optim.lr={args.lr}", f"optim.epochs={args.epochs}", *args.overrides,
                 *job["overrides"]]
    cfg = load_config(args.preset, overrides)
    cfg.name = f"sweep-{job['name']}"
    folder = args.out / "runs" / f"{job['name']}-seed{job['seed']}"
    start = time.time()
    data_key = " ".join(sorted(o for o in overrides if o.startswith("data.")))   # texts differ by data options
    result = run_training(cfg, folder, progress=False, caches=state["caches"].get(data_key))
    state["caches"][data_key] = result["caches"]
    record = {**job, "val_R@1": result["best"]["score"], "best_epoch": result["best"]["epoch"],
              "train_seconds": round(time.time() - start, 1)}
    model = ComposedRetrievalModel.load(folder / "best")
    if state["table"] is None:       # every catalog image, once per worker: the backbone is the same frozen one
        paths = sorted({state["dataset"].image_path(i) for i in state["catalog"].index})
        state["table"] = extract_image_features(model, paths, batch_size=256)
    table = state["table"]
    record["test"] = split_metrics(folder / "best", state["dataset"], state["catalog"], "test", table)
    if model.fusion.has_routes:
        record["routes"] = measure(model, state["dataset"], table=table)
        record["paraphrases"] = record["routes"].pop("paraphrases")
    if args.phrasing:
        record["phrasing"] = phrasing_figures(model, state["dataset"], state["catalog"], table)
    record["seconds"] = round(time.time() - start, 1)
    return record


def phrasing_figures(model, dataset, catalog, table) -> dict:
    """benchmarks/phrasing.py's figures (held-out phrasings and annotated captions, val+test, same category)
    for one run, as metrics.json["phrasing"] keeps them, without the fast test's sample."""
    import torch

    from benchmarks.phrasing import HELDOUT, card_metrics, query_records, summarise
    from sdfn.encode import ModelQueryEncoder

    if torch.cuda.is_available():
        model = model.to("cuda")
    summary = summarise(query_records(dataset, catalog, ModelQueryEncoder(model, batch_size=512, table=table),
                                      ("val", "test"), HELDOUT, 0))
    figures = card_metrics(summary, {})
    figures.pop("sample")
    return figures


def worker(args) -> None:
    import torch

    torch.set_num_threads(1)
    queue, claimed = args.out / "queue", args.out / "claimed"
    state: dict = {}
    while True:
        jobs = sorted(queue.glob("*.json"))
        if not jobs:
            if (args.out / "closed").exists():
                return
            time.sleep(1.0)
            continue
        mine = claimed / f"{jobs[0].name}.{os.getpid()}"
        try:
            os.rename(jobs[0], mine)
        except OSError:
            continue
        job = json.loads(mine.read_text())
        try:
            record = run_job(job, args, state)
        except Exception as err:   # a failed run is a result too: the sweep goes on
            record = {**job, "error": repr(err)[:500]}
        with (args.out / "results.jsonl").open("a") as f:
            f.write(json.dumps(record) + "\n")
        print(f"[{time.strftime('%H:%M:%S')}] {job['name']} seed {job['seed']}: "
              + (record.get("error") or f"val R@1 {record['val_R@1']:.2f}, test R@1 {record['test']['R@1']:.2f}"
                 + (f", entropy {record['routes']['entropy_ratio']:.3f}, min kind "
                    f"{min(record['routes']['differences'].values()):.1f}, uniform cost "
                    f"{record['routes']['recall']['cost']:+.2f}, same path "
                    f"{record['paraphrases']['same_strongest_path']:.3f}, JS "
                    f"{record['paraphrases']['js_divergence']:.4f}" if "routes" in record else "")
                 + f" ({record['seconds']:.0f} s)"), flush=True)


# -- the coordinator


def enqueue(args, priority: int, name: str, seed: int, overrides: list[str]) -> None:
    path = args.out / "queue" / f"{priority:03d}-{name}-seed{seed}.json"
    path.write_text(json.dumps({"name": name, "seed": seed, "overrides": overrides}))


def results(args) -> list[dict]:
    path = args.out / "results.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.is_file() else []


def coordinate(args) -> None:
    for sub in ("queue", "claimed", "runs"):
        (args.out / sub).mkdir(parents=True, exist_ok=True)
    (args.out / "closed").unlink(missing_ok=True)
    if args.plan:      # a fixed list of configurations, each at every seed: no screening
        for priority, (name, spec) in enumerate(json.loads(args.plan.read_text()).items()):
            ov, seeds = (spec, args.seeds.split(",")) if isinstance(spec, list) else (spec["overrides"], spec["seeds"])
            for seed in seeds:
                enqueue(args, priority, name, int(seed), ov)
        (args.out / "closed").touch()
        args.options, args.references, args.final = "none", "", ""
    known = {**OPTIONS, **UNSUPERVISED}
    options = ({} if args.options == "none" else
               {k: known[k] for k in args.options.split(",")} if args.options else OPTIONS)
    seeds = [int(s) for s in args.seeds.split(",")]
    for name, ov in options.items():
        enqueue(args, 10, name, seeds[0], ov)
    final = args.final.split()
    if options:
        enqueue(args, 10, "paper", seeds[0], REFERENCES["paper"])
    for name in args.references.split(",") if args.references else []:
        for seed in seeds[1:] if name == "paper" else seeds:
            enqueue(args, 20, name, seed, REFERENCES[name])
    if final:
        for name in ("combiner", "paper"):
            for seed in seeds:
                enqueue(args, 20, f"{name}+final", seed, [*REFERENCES[name], *final])
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    cmd = [sys.executable, __file__, "--worker", *sys.argv[1:]]
    procs = [subprocess.Popen(cmd, env=env) for _ in range(args.workers)]
    started, picked = time.time(), None
    try:
        while any(p.poll() is None for p in procs):
            time.sleep(2.0)
            done = results(args)
            if picked is None and options:
                screened = {r["name"]: r for r in done if r["seed"] == seeds[0] and "error" not in r}
                if all(n in screened or any(r["name"] == n for r in done) for n in [*options, "paper"]):
                    paper = screened.get("paper", {}).get("val_R@1")
                    ranked = sorted((n for n in options if n in screened),
                                    key=lambda n: (route_goals(screened[n], paper), screened[n]["val_R@1"]),
                                    reverse=True)
                    picked = ranked[0] if ranked else "none"
                    print(f"picked {picked}: " + ", ".join(f"{n} {route_goals(screened[n], paper)} goals "
                                                           f"{screened[n]['val_R@1']:.2f}" for n in ranked),
                          flush=True)
                    (args.out / "picked.json").write_text(json.dumps({"picked": picked, "ranked": ranked}))
                    if ranked:
                        ov = options[picked]
                        for seed in seeds[1:]:
                            enqueue(args, 15, picked, seed, ov)
                        for ab, extra in ABLATIONS.items():
                            base = [o for o in ov if not (ab == "shared_router" and o == "routes.router=text")]
                            for seed in seeds:
                                enqueue(args, 25, f"{picked}+{ab}", seed, [*base, *extra])
                        if final:
                            for seed in seeds:
                                enqueue(args, 12, f"{picked}+final", seed, [*ov, *final])
                                enqueue(args, 26, f"{picked}+final+no_spd", seed,
                                        [*ov, *final, *ABLATIONS["no_spd"]])
                    (args.out / "closed").touch()
            if time.time() - started > args.budget_s:
                for job in (args.out / "queue").glob("*.json"):
                    job.unlink(missing_ok=True)     # no new runs; the ones running finish
                (args.out / "closed").touch()
    finally:
        for p in procs:
            p.wait()
    print(json.dumps({"results": len(results(args)), "seconds": round(time.time() - started)}), flush=True)
    if args.pack:
        pack(args, picked)


def pack(args, picked: str | None) -> None:
    """The picked option's final run with the best val R@1 (its best/ checkpoint, config, log) as one tar."""
    import tarfile

    finals = [r for r in results(args) if r["name"] == f"{picked}+final" and "error" not in r]
    if not finals:
        return
    best = max(finals, key=lambda r: r["val_R@1"])
    folder = args.out / "runs" / f"{best['name']}-seed{best['seed']}"
    with tarfile.open(args.pack, "w") as tar:
        for path in [*sorted((folder / "best").iterdir()), folder / "config.json", folder / "log.jsonl"]:
            tar.add(path, arcname=f"{folder.name}/{path.relative_to(folder)}")
    print(f"packed {folder.name} (val R@1 {best['val_R@1']:.2f}) into {args.pack}", flush=True)


ROW_ORDER = ("paper", "paper_no_spd", "combiner", *UNSUPERVISED, *OPTIONS)
SECTION = "route-options"


def _mean_std(values: list[float], digits: int = 1) -> str:
    import statistics

    if len(values) == 1:
        return f"{values[0]:.{digits}f}"
    return f"{statistics.mean(values):.{digits}f} ± {statistics.stdev(values):.{digits}f}"


def _group(rows: list[dict]) -> dict[str, list[dict]]:
    seen, groups = set(), {}
    for r in rows:
        if "error" in r or (r["name"], r["seed"]) in seen:
            continue
        seen.add((r["name"], r["seed"]))
        groups.setdefault(r["name"], []).append(r)
    return groups


def _kind_of(name: str) -> str:
    base = name.split("+")[0]
    if base in ("paper", "paper_no_spd"):
        return "paper"
    if base == "combiner":
        return "static"
    return "supervised by kind labels" if base in OPTIONS else "unsupervised"


def report_table(rows: list[dict]) -> str:
    """One row per configuration (mean ± std over its seeds): recall, and the route and paraphrase measures."""
    from benchmarks.results import markdown_table

    groups = _group(rows)
    order = [n for n in ROW_ORDER if n in groups] + sorted(n for n in groups if n not in ROW_ORDER)
    headers = ["configuration", "route term", "seeds", "val R@1", "test R@1", "test sat@1", "entropy / uniform",
               "smallest kind (points)", "other kinds (points)", "uniform routes cost", "same strongest path",
               "JS"]
    out = []
    for name in order:
        g = groups[name]
        line = [name, _kind_of(name), len(g), _mean_std([r["val_R@1"] for r in g]),
                _mean_std([r["test"]["R@1"] for r in g]), _mean_std([r["test"]["sat@1"] for r in g])]
        if "routes" in g[0]:
            mins = [min(r["routes"]["differences"].items(), key=lambda kv: kv[1]) for r in g]
            others = [sorted(v for k, v in r["routes"]["differences"].items()) for r in g]
            line += [_mean_std([r["routes"]["entropy_ratio"] for r in g], 2),
                     ", ".join(f"{k} {v:.1f}" for k, v in mins),
                     "; ".join(f"{o[1]:.0f}-{o[-1]:.0f}" for o in others),
                     _mean_std([r["routes"]["recall"]["cost"] for r in g]),
                     _mean_std([r["paraphrases"]["same_strongest_path"] for r in g], 2),
                     _mean_std([1000 * r["paraphrases"]["js_divergence"] for r in g]) + " m"]
        else:
            line += ["-"] * 6
        out.append(line)
    return markdown_table(headers, out)


def report(path: Path, quality: Path) -> None:
    from benchmarks.results import write_section

    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    table = report_table(rows)
    print(table)
    body = "\n".join([
        "Route options are ours (`routes.*` in the config, all 0 = the paper's loss; sdfn/config.py "
        "RouteShapingConfig): `entropy` (per-query route entropy), `balance` (minus the batch's usage entropy), "
        "`sparsity` (open path weight above a budget), `router=text` (shape the text router only), a warm-up "
        "start and ramp; and `kind_weight`, which is SUPERVISED by the synthetic catalog's change labels "
        "(what each training request asks to change): it pushes each kind's module usage away from the batch's, "
        "i.e. it optimises the very per-kind measure the issue reports, so its per-kind figures are asked for, "
        "not discovered; on FashionIQ or Shoes it would need kinds parsed from the captions (sdfn.routes' "
        "keywords). `+no_spd`, `+shared_router`: the ablations of an option. `+final`: with the phrasing "
        "training of issue 9 §1 (`data.phrasing_variants=4 data.phrasing_share=0.5`, frozen text tower).",
        "",
        f"Runs: `{path.as_posix().split('/')[-1]}` (one JSON line per run), made by `python benchmarks/route_sweep.py "
        "--stage1 sdfn/assets/sdfn-tiny --workers 14|15 optim.precision=fp32` at commit 7cc6eb2, whose shipped "
        "model was stage 1 plus a frozen stage 2 (to reproduce on v2: `--stage1 RUN/stage1` of `sdfn train --config "
        "tiny-synthetic` and `model.backbone.freeze_text=true optim.lr_backbone=0 data.phrasing_variants=0`) "
        "in two calls on one NVIDIA H200 "
        "(16 CPU cores, torch 2.11, fp32; 14-15 runs at once), the second with `--final \"data.phrasing_variants=4 "
        "data.phrasing_share=0.5\"` and the kind options. Every run: stage 2 of the tiny-synthetic recipe on the "
        "stage-1 backbone shipped before v2 (frozen), 8 epochs, lr 0.001 for every method (the rate the quality "
        "table's sweep picked for sdfn and combiner), best epoch by val R@1; options were screened on seed 0 and "
        "only the picked one (the most route goals met, then val R@1) was run at seeds 1 and 2 with its ablations.",
        "",
        "Columns: val R@1 (best epoch); test R@1 and sat@1 (benchmarks/quality.py's protocol); route measures of "
        "benchmarks/routes.py on the test split (entropy over uniform; per kind of change the largest "
        "module-usage difference from all queries, in points: the smallest kind per seed, then the range of the "
        "other seven; val R@1 lost when every path weight is set to 1 at inference); paraphrase consistency "
        "(`sdfn.routes.paraphrase_consistency`: 3 held-out phrasings of each test request on the same reference, "
        "pairs with different texts: share with the same strongest path, mean JS divergence of the routes in "
        "milli-nats). Mean ± std over seeds.",
        "",
        table,
        "",
        "Reading (issue 9 §3 goals: every kind >= 10 points, entropy <= 0.75, uniform cost >= 5, SDFN R@1 >= "
        "the best static baseline):",
        "- No configuration meets the route goals together with recall. The unsupervised terms leave most kinds "
        "under 10 points unless they also cost 5-9 val R@1 points (ent_bal_0.5, ent_bal_2_late, sparse_ent_bal1) "
        "against the paper's 48.2; the kind term separates every kind but fit by 8-50 points with entropy "
        "0.58-0.78, at 0.7-5.6 val R@1 points, and the "
        "uniform-route cost never passes 5.3 points (kind_10 seed 0); kind_10's seed 2 and its shared-router "
        "ablation's seeds 0 and 2 closed every path (ReLU(tanh) routers at 0: entropy 1.0, the uniform "
        "fallback).",
        "- Fit is the kind no option separates (3-9 points at most).",
        "- With the phrasing training (+final) every SDFN and the Combiner lose about 3 val R@1 points on the "
        "annotated captions, and kind_10 with it collapses (36.9).",
        "- Paper SDFN vs Combiner on this backbone (8 epochs, lr 0.001, fp32 GPU): test R@1 48.0 vs 48.3, val "
        "48.2 vs 48.0: a tie within the seeds' spread, as in the quality table above.",
        "",
        "SPD (issue 9 §4): with SPD the paper model's routes are nearly uniform (entropy 0.97 vs 0.76 without), "
        "so paraphrases have routes 8x closer in JS divergence (3.8 vs 33 milli-nats) but no more often the same "
        "strongest path (0.33 vs 0.39): SPD keeps every query's route near its start (all paths open), which is "
        "stability of a route that carries nothing (uniform routes cost 0.2 points with SPD, 2.2 without); "
        "recall is the same (val R@1 48.2 both). On the kind-shaped model SPD is mixed: kind_10 vs "
        "kind_10+no_spd JS 65 vs 58 milli-nats and same strongest path 0.60 vs 0.70 (less consistent), val R@1 "
        "44.2 vs 42.4; with the phrasing training JS 32 vs 41 and same path 0.49 vs 0.78, val R@1 36.9 vs 38.3. "
        "Goal 'SPD measurably more consistent, recall not lower': met on the JS divergence only, and only "
        "because SPD keeps routes uniform.",
        "",
        "Decision: no route option is shipped; every option stays in the config (default off) with its row here. "
        "The shipped sdfn-tiny v2 is the paper's SDFN with its text tower trained in stage 2 and the "
        "everyday-request option (section recipe-v2 below), where the route options were tried again "
        "(kind_3_sparse+T, kind_10+T5+P, sparse_ent_bal+T) with the same outcome.",
    ])
    write_section(SECTION, "Route options: do they make routes depend on the query and earn their place? "
                  "(benchmarks/route_sweep.py)", body, quality)


RECIPE_SECTION = "recipe-v2"


def recipe_table(rows: list[dict]) -> str:
    """One row per configuration of a `--plan --phrasing` sweep (mean ± std over its seeds): recall, sat@1 on
    the annotated test captions and on held-out everyday phrasings, and the route measures."""
    from benchmarks.results import markdown_table

    groups = _group(rows)
    headers = ["configuration", "seeds", "val R@1", "test R@1", "test captions sat@1", "held-out sat@1",
               "held-out, two changes", "seen words", "unseen words", "entropy / uniform", "smallest kind (points)",
               "uniform routes cost", "same strongest path", "JS"]
    out = []
    for name, g in groups.items():
        held = [r["phrasing"]["held_out"] for r in g]
        line = [name, len(g), _mean_std([r["val_R@1"] for r in g]), _mean_std([r["test"]["R@1"] for r in g]),
                _mean_std([r["test"]["sat@1"] for r in g]), _mean_std([h["all"]["sat@1"] for h in held]),
                _mean_std([h["two_changes"]["sat@1"] for h in held]),
                _mean_std([h["seen_words"]["sat@1"] for h in held]),
                _mean_std([h["unseen_words"]["sat@1"] for h in held])]
        if "routes" in g[0]:
            line += [_mean_std([r["routes"]["entropy_ratio"] for r in g], 2),
                     _mean_std([min(r["routes"]["differences"].values()) for r in g]),
                     _mean_std([r["routes"]["recall"]["cost"] for r in g]),
                     _mean_std([r["paraphrases"]["same_strongest_path"] for r in g], 2),
                     _mean_std([1000 * r["paraphrases"]["js_divergence"] for r in g]) + " m"]
        else:
            line += ["-"] * 5
        out.append(line)
    return markdown_table(headers, out)


def recipe_report(path: Path, quality: Path, note: Path | None) -> None:
    from benchmarks.results import write_section

    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    table = recipe_table(rows)
    print(table)
    body = "\n".join([
        f"Runs: `{path.name}` (one JSON line per run), made by `python benchmarks/route_sweep.py --stage1 "
        "sdfn/assets/sdfn-tiny --plan PLAN --phrasing --workers 16 optim.precision=fp32` at commit 7cc6eb2 (its "
        "shipped backbone was the stage-1 one, frozen; on v2 use `--stage1 RUN/stage1` of `sdfn train --config "
        "tiny-synthetic`; PLAN: a JSON object that maps each configuration name below to its overrides and seeds) "
        "in two calls on one "
        "NVIDIA H200 (16 CPU cores, torch 2.11, fp32, 16 runs at once). Every run: stage 2 of the tiny-synthetic "
        "recipe on the same stage-1 backbone (the one shipped before v2), 8 epochs, fusion lr 0.001, best epoch "
        "by val R@1. Names: `T` = the text tower trained in stage 2 (`model.backbone.freeze_text=false`) at "
        "`optim.lr_backbone` 2e-4 (`T`), 5e-4 (`T5`) or 1e-3 (`T10`); `P` = the phrasing option (ours, "
        "`data.phrasing_variants=4 data.phrasing_share=0.5`; `P8`: 8 and 0.7); `no_spd`, `shared_router`: the "
        "SPD and MSR ablations; `kind_*`, `sparse_*`: the route options of the section below; `paper` = SDFN as "
        "the paper has it; `combiner` = the static baseline, trained exactly the same way.",
        "",
        "Columns: test R@1 and sat@1 with the annotated test captions (benchmarks/quality.py's protocol); "
        "held-out sat@1: benchmarks/phrasing.py's held-out everyday requests (val+test, same-category gallery; "
        "`unseen words`: requests with a fashion word no training text contains); route measures as in the "
        "route-options section (test split). Mean ± std over seeds.",
        "",
        table,
        *(["", note.read_text().strip()] if note else []),
    ])
    write_section(RECIPE_SECTION, "Shipped model v2: training the text tower, with and without everyday requests "
                  "(benchmarks/route_sweep.py --plan)", body, quality)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--stage1", type=Path, default=None, help="stage-1 backbone folder (e.g. the shipped model)")
    parser.add_argument("--report", type=Path, default=None,
                        help="only write the QUALITY.md section from this results file (JSON lines)")
    parser.add_argument("--catalog", type=Path, default=Path("catalogs/synthetic"))
    parser.add_argument("--preset", default="tiny-synthetic")
    parser.add_argument("--options", default="", help="comma-separated names of OPTIONS (default: all)")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--lr", type=float, default=0.001)
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--budget-s", type=float, default=480.0, help="no run starts after this many seconds")
    parser.add_argument("--references", default="",
                        help="comma-separated REFERENCES run at every seed (paper seed 0 always runs)")
    parser.add_argument("--final", default="", help="space-separated overrides: the picked option with them too")
    parser.add_argument("--out", type=Path, default=Path("runs/route-sweep"))
    parser.add_argument("--pack", type=Path, default=None, help="tar the picked option's best final run here")
    parser.add_argument("--report-recipe", type=Path, default=None,
                        help="only write the QUALITY.md recipe section from this --plan --phrasing results file")
    parser.add_argument("--note", type=Path, default=None, help="markdown appended to the recipe section")
    parser.add_argument("--plan", type=Path, default=None,
                        help="JSON {name: [overrides] or {overrides, seeds}}: run exactly these (no screening)")
    parser.add_argument("--phrasing", action="store_true",
                        help="also measure benchmarks/phrasing.py's figures per run (slower)")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="applied to every run")
    args = parser.parse_args()
    if args.report:
        report(args.report, Path(__file__).resolve().parent / "QUALITY.md")
        return
    if args.report_recipe:
        recipe_report(args.report_recipe, Path(__file__).resolve().parent / "QUALITY.md", args.note)
        return
    if args.stage1 is None:
        parser.error("--stage1 is required to run the sweep")
    args.out = args.out.resolve()
    args.catalog = args.catalog.resolve()
    if args.worker:
        worker(args)
    else:
        coordinate(args)


if __name__ == "__main__":
    main()
