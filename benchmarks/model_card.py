"""Ship a trained sdfn-tiny run as sdfn/assets/sdfn-tiny: float16 weights, metrics, route analysis, model card.

    python benchmarks/model_card.py --run runs/tiny-synthetic

1. copies `RUN/best` to `--out` with float16 weights (what the library loads by default), with its reading.json
   (sdfn.reading: the words of the run's training texts and the catalog's colours, so a search reads a colour
   name or a misspelling the model never learnt as one it knows; written by `sdfn train` with data.reading, built
   here the same way for a run from before that option);
2. measures the shipped weights on the synthetic catalog's val and test splits (R@K, attribute
   satisfaction; test protocol of benchmarks/quality.py) and on everyday requests (benchmarks/phrasing.py's
   held-out phrasings and its fast test's sample), and writes `--out/metrics.json` (tests check the val
   figure and the phrasing sample against a fresh copy of the val split);
3. analyses route usage by kind of change on the test split: a table in the card and
   benchmarks/routes_by_change.png;
4. writes the model card `--out/README.md` (data seed, command, training time, metrics, routes).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.quality import PROTOCOL, split_metrics  # noqa: E402
from benchmarks.results import git_commit, machine, markdown_table, stage2_inputs  # noqa: E402
from sdfn.data.base import open_dataset  # noqa: E402
from sdfn.model import SHIPPED_CHECKPOINT, ComposedRetrievalModel  # noqa: E402
from sdfn.paths import default_catalog  # noqa: E402
from sdfn.reading import Reader  # noqa: E402
from sdfn.routes import RouteStatistics, route_statistics  # noqa: E402
from sdfn.training.data import open_training_data, reading_for, training_triplets  # noqa: E402
from sdfn.training.state import config_from_run  # noqa: E402

HERE = Path(__file__).resolve().parent
SHORT = {"rectified_identity": "RI", "intra_modal_reasoning": "IMR", "global_local_guidance": "GLG",
         "cross_modal_refinement": "CMR"}


def training_record(run: Path) -> dict:
    """Stage-1 and stage-2 times and settings from the run folder."""
    records = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    epochs = [r for r in records if r["event"] == "epoch"]
    runs = [r for r in records if r["event"] == "run"]
    stage1 = json.loads((run / "stage1" / "stage1.json").read_text()) if (run / "stage1" / "stage1.json").is_file() \
        else None
    config = json.loads((run / "config.json").read_text())
    return {"config": config, "stage1": stage1, "epochs": epochs,
            "wall_seconds": sum(r["seconds"] for r in runs) if runs else None,
            # "trained" | "reused" | "none" per invocation; logs written before the field: None (unknown)
            "stage1_runs": [r.get("stage1") for r in runs],
            "stage2_epoch_seconds": sum(e["seconds"] for e in epochs)}


def whole_recipe_line(training: dict, trained_on: str) -> str:
    """The card's line on the recipe's wall time: the run's seconds cover both stages only when the run trained
    stage 1 itself; a run that found a finished stage 1 in its folder says so instead of passing its stage-2 time
    off as the whole recipe's."""
    wall, stage1_runs = training["wall_seconds"], training["stage1_runs"]
    if not wall:
        return ""
    where = f" on {trained_on}" if trained_on else ""
    if "trained" in stage1_runs:
        return f"- Whole recipe (catalog generation, both stages, caching, evaluation): {wall / 60:.1f} min{where}."
    if stage1_runs and set(stage1_runs) == {"none"}:
        return f"- Whole command (no stage 1; stage 2 with caching and evaluation): {wall / 60:.1f} min{where}."
    if stage1_runs and set(stage1_runs) == {"reused"}:
        return (f"- This run found a finished stage 1 in its folder and reused it (`sdfn train` skips it; the "
                f"stage-1 line gives that stage's own time): stage 2 with caching and evaluation took "
                f"{wall / 60:.1f} min{where}. The whole recipe is the two times together.")
    return (f"- The run took {wall / 60:.1f} min{where}; its log does not record whether that included stage 1 "
            "(logs before the run record's `stage1` field).")


def usage_table(stats: RouteStatistics) -> tuple[list[str], list[list]]:
    r, k = stats.overall.usage.shape
    headers = ["kind of change", "queries", *(f"L{i + 1} {SHORT.get(c, c)}" for i in range(r) for c in stats.cells),
               "L1 dist. to all", "image share"]
    rows = []
    for s in [stats.overall, *stats.by_kind]:
        distance = float((s.usage - stats.overall.usage).abs().sum())
        rows.append([s.kind, s.queries, *(f"{100 * v:.0f}" for v in s.usage.flatten().tolist()),
                     f"{100 * distance:.1f}", "" if s.image_share is None else f"{100 * s.image_share:.0f}%"])
    return headers, rows


def plot_usage(stats: RouteStatistics, path: Path) -> None:
    """Heatmap: rows = kinds of change, columns = cells per layer, colour = usage minus the overall mean."""
    import matplotlib.pyplot as plt  # benchmarks/requirements.txt: only the plot needs it, not the rest

    plt.switch_backend("Agg")
    kinds = stats.by_kind
    diff = torch.stack([s.usage - stats.overall.usage for s in kinds]).flatten(1) * 100     # [kinds, R*K]
    r, k = stats.overall.usage.shape
    fig, axes = plt.subplots(1, 2, figsize=(14, 0.45 * len(kinds) + 2.2),
                             gridspec_kw={"width_ratios": [r * k, r * k]})
    usage = torch.stack([s.usage for s in kinds]).flatten(1) * 100
    labels = [f"L{i + 1}\n{SHORT.get(c, c)}" for i in range(r) for c in stats.cells]
    for ax, data, title, cmap, center in ((axes[0], usage, "module usage (% of the layer's routed output)",
                                          "Blues", None),
                                         (axes[1], diff, "difference from all queries (points)", "RdBu_r", 0)):
        limit = float(data.abs().max()) if center is not None else None
        image = ax.imshow(data.numpy(), cmap=cmap, aspect="auto",
                          vmin=-limit if limit else None, vmax=limit if limit else None)
        ax.set_xticks(range(len(labels)), labels, fontsize=8)
        ax.set_yticks(range(len(kinds)), [f"{s.kind} ({s.queries})" for s in kinds], fontsize=9)
        for x in range(1, r):
            ax.axvline(x * k - 0.5, color="black", linewidth=1)
        for (y, x), v in zip(((y, x) for y in range(data.shape[0]) for x in range(data.shape[1])),
                             data.flatten().tolist(), strict=True):
            ax.text(x, y, f"{v:.0f}" if center is None else f"{v:+.1f}", ha="center", va="center", fontsize=7)
        ax.set_title(title, fontsize=10)
        fig.colorbar(image, ax=ax, fraction=0.03)
    fig.suptitle(f"sdfn-tiny routes by kind of change ({stats.split} split; "
                 "a query asking for several changes counts in each)", fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def backbone_line(model_cfg: dict) -> str:
    v, t = model_cfg["vision_cfg"], model_cfg["text_cfg"]
    tokens = (v["image_size"] // v["patch_size"]) ** 2
    return (f"- Backbone `sdfn-tiny` (sdfn/model_configs/sdfn-tiny.json): ViT {v['image_size']} px, patch "
            f"{v['patch_size']} ({tokens} tokens), width {v['width']}, {v['layers']} layers; text transformer width "
            f"{t['width']}, {t['layers']} layers, CLIP BPE tokenizer, context {t['context_length']}; embeddings "
            f"{model_cfg['embed_dim']}-d.")


def catalog_items_per_category(rows: pd.DataFrame) -> int:
    return len(rows) // rows["category"].nunique()


def catalog_summary(rows: pd.DataFrame, dataset) -> str:
    return (f"{catalog_items_per_category(rows):,} items per category, {rows['category'].nunique()} categories; "
            f"train split {int((rows['split'] == 'train').sum()):,} items and "
            f"{len(dataset.triplets('train')):,} triplets")


def stage1_data(pretrain: dict) -> str:
    if not pretrain["catalog"]:
        return "- Stage 1 pre-trained the backbone on the same catalog's train split."
    return (f"- Stage 1 pre-trained the backbone on a separate synthetic catalog (seed {pretrain['synth_seed']}, "
            f"{pretrain['synth_items_per_category']} items per category, train split).")


def understands(cfg: dict) -> list[str]:
    """What the text side was trained on, so what the model understands and what it does not."""
    trained_text = not cfg["model"]["backbone"].get("freeze_text", True) and cfg["optim"].get("lr_backbone", 0) > 0
    phrasing = cfg["data"].get("phrasing_variants", 0) > 0
    stage2 = "annotator-style captions such as \"is red and has long sleeves\"" + (
        " and everyday requests from the TRAIN part of sdfn/data/synth/phrasing.py (wishes, questions, "
        "imperatives, \"like this but ...\", politeness, relative changes, negations, fashion words such as "
        "crimson, charcoal, gingham, slouchy, scoop neck, lower case and typos)" if phrasing else "")
    return [
        "The text tower was trained from scratch on this project's generated texts only (stage 1: absolute "
        f"descriptions; stage 2{', fine-tuned with the fusion' if trained_text else ', frozen; the fusion only'}: "
        f"{stage2}). It knows the catalog's vocabulary and these sentence shapes, not English at large.",
        "",
        "- **Understood**: the eight attributes the catalog has (colour, pattern, sleeve, length, neckline, fit, "
        "buttons, belt) in the words its captions, descriptions" + (" and training requests" if phrasing else "")
        + " use (sdfn/data/attributes.py, sdfn/data/synth/phrasing.py): 14 colours with their common names "
        "(burgundy, navy, cream, charcoal, ...); plain/solid, striped, polka dots, plaid/checked/gingham, floral, "
        "graphic; sleeveless, short, long sleeves; mini, midi, maxi/ankle-length; round/crew/scoop, v-neck, "
        "collar; fitted/tight, loose/oversized/roomy; relative changes (darker, lighter, longer, shorter, looser, "
        "tighter, \"not so tight\", \"make the sleeves longer\") and negations (\"not red\", \"no print\", "
        "\"lose the belt\", \"without sleeves\").",
        "- **Partly**: sentence shapes and fashion words it was never taught (the held-out phrasings below); two "
        "or three changes in one request (each change is followed less often than one alone).",
        "- **Read for it** (reading.json, sdfn.reading; ours): a colour name it never learnt, from the XKCD colour "
        "survey's 949 names and the CSS colours (scarlet, teal, aubergine, slate), is read as the catalog colour "
        "nearest to it (CIEDE2000), and a misspelt word one letter from a word it knows as that word (sleves -> "
        "sleeves), and a refusal its training texts never used (\"i don't want a belt\", \"i'd rather not have "
        "buttons\", \"not a fan of the print\") as the one they use (\"without a belt\"), shorthands as words (w/o -> "
        "without), an unknown plural or \"-less\" word as the word it knows (florals -> floral, buttonless -> without "
        "buttons), and a shopper's word or phrase from a glossary written without sight of any test request "
        "(sdfn/data/shopper_glossary.json: 499 words it never learnt, such as mid-calf -> midi, halter -> sleeveless, "
        "clingy -> tight, baggier -> looser, minus -> without, pls and thx left out; 807 ways of asking for more or "
        "less in shapes it was not taught, such as not so pale -> darker, let the hem down -> make it longer, not as "
        "busy -> plainer; 318 ways of saying what to leave out around it, such as with the {n} taken away -> with "
        "the {n} removed) as the words it knows, a misspelling of such a word first (mius -> "
        "minus); the answer's notes name every such "
        "rewrite, and every word it was never taught (cheaper, zara). The nearest colour is not always the one a "
        "person means (sapphire is read as navy, coffee as beige).",
        "- **Not understood**: other words that never occurred in its training texts (a brand, a material such "
        "as denim or silk, an occasion, a fashion word the glossary lacks); attributes the catalog does not have "
        "(material, heels, 3/4 "
        "sleeves); counts; a refused description is followed poorly (\"i don't want it patterned\", read as "
        "\"not patterned\", returns a plain item 1 time of 12). An unknown word is not refused: it is read as "
        "noise (the answer's notes name it) and the answer may ignore it. Requests typed by hand, per request: "
        "benchmarks/QUALITY.md, section own-requests.",
        "- Scores do not say whether a request was met: a top-1 item that misses an asked change scores about as "
        "high as one that meets them all.",
    ]


def phrasing_lines(metrics: dict, cfg: dict) -> list[str]:
    """The card's 'what it understands' section, with the held-out phrasing figures of metrics.json."""
    lines = ["## What it understands, and what it does not", "", *understands(cfg)]
    figures = metrics.get("phrasing")
    if figures:
        held, notes = figures["held_out"], figures["annotated"]
        lines += [
            "",
            f"Everyday requests phrased in ways the training part never uses (benchmarks/phrasing.py, "
            f"{figures['splits']}, gallery: {figures['gallery']}): top-1 has every asked change "
            f"{held['all']['sat@1']:.1f}% of the time (two changes {held['two_changes']['sat@1']:.1f}%; "
            f"only words it has seen {held['seen_words']['sat@1']:.1f}%, with a fashion word it never saw "
            f"{held['unseen_words']['sat@1']:.1f}%), against {notes['all']['sat@1']:.1f}% for the annotated "
            f"captions of the same queries"
            + (f"; read without reading.json (the model alone) {figures['held_out_model_alone']['all']['sat@1']:.1f}% "
               f"(two changes {figures['held_out_model_alone']['two_changes']['sat@1']:.1f}%)."
               if "held_out_model_alone" in figures else "."),
        ]
    return lines


def reading_of(run: Path, catalog_root: Path) -> Reader:
    """The reading.json (sdfn.reading) of a run that trained before `data.reading` wrote one into its checkpoints:
    built as the trainer builds it (sdfn.training.data.reading_for), from the run's config."""
    cfg = config_from_run(run)
    cfg.data.root = str(catalog_root)
    dataset = open_training_data(cfg)
    return reading_for(dataset, training_triplets(dataset, cfg, None), cfg)


def phrasing_metrics(model: ComposedRetrievalModel, dataset, catalog: pd.DataFrame) -> dict:
    """benchmarks/phrasing.py's figures of the shipped model (val+test, and the fast test's sample; texts read
    with its reading.json, and the held-out ones also as typed)."""
    from benchmarks.phrasing import ALONE, HELDOUT, card_metrics, held_out_sample, model_alone, query_records, summarise
    from sdfn.encode import ModelQueryEncoder

    encoder = ModelQueryEncoder(model, batch_size=256)
    summary = summarise(query_records(dataset, catalog, encoder, ("val", "test"), HELDOUT, 0))
    if model.reader is not None:
        summary[ALONE] = model_alone(dataset, catalog, model, ("val", "test"), 0)
    return card_metrics(summary, held_out_sample(dataset, catalog, encoder))


def write_card(out: Path, run: Path, metrics: dict, training: dict, stats: RouteStatistics, args,
               catalog_line: str) -> None:
    cfg = training["config"]
    stage1, epochs = training["stage1"], training["epochs"]
    fusion = cfg["model"]["fusion"]
    params = sum(t.numel() for t in ComposedRetrievalModel.load(out).state_dict().values())
    size = sum(f.stat().st_size for f in out.glob("*.safetensors")) / 2**20
    rows = [[split, *(f"{metrics[split][m]:.1f}" for m in ("R@1", "R@5", "R@10", "R@50", "sat@1", "sat@5")),
             metrics[split]["queries"]] for split in ("val", "test")]
    headers, usage_rows = usage_table(stats)
    best = json.loads((run / "best" / "sdfn_config.json").read_text())["selected_by"]
    lines = [
        "# sdfn-tiny: the shipped SDFN model",
        "",
        "The model `python demo.py` and `Retriever()` load when no checkpoint is given: an SDFN (dynamic fusion",
        "network with modality-specific routers, trained with self path distillation) on the `sdfn-tiny` open_clip",
        "backbone, trained by this project on its synthetic catalog. It knows synthetic garments only; for real",
        "photos train your own (README: Train on FashionIQ).",
        "",
        "## Architecture",
        "",
        backbone_line(json.loads((out / "open_clip_config.json").read_text())["model_cfg"]),
        f"- Fusion `{fusion['name']}`: {fusion['layers']} layers x {len(fusion['cells'])} cells "
        f"({', '.join(fusion['cells'])}), width {fusion['width']}, router `{fusion['router']}`.",
        f"- {params / 1e6:.1f} M parameters, stored as float16 safetensors ({size:.1f} MiB); loads as float32.",
        "",
        "## Data",
        "",
        f"- Trained on the synthetic catalog `sdfn synth --seed {cfg['data']['synth_seed']}` "
        f"({catalog_line}).",
        stage1_data(cfg["pretrain"]),
        "- Val and test splits were never trained on; the val split picked the checkpoint.",
        "",
        "## Recipe",
        "",
        "```bash",
        f"sdfn train --config {cfg['name']} --out {run}",
        f"python benchmarks/model_card.py --run {run}",
        "```",
        "",
        f"- Stage 1: {cfg['pretrain']['epochs']} epochs of image-text contrastive training on generated absolute "
        "descriptions, with one auxiliary classifier per attribute on each embedding"
        + (f"; {stage1['seconds'] / 60:.1f} min at {stage1['images_per_s']:.0f} images/s." if stage1 else "."),
        f"- Stage 2: {len(epochs)} epochs of SDFN on {stage2_inputs(cfg)} (batch {cfg['optim']['batch_size']}, "
        f"lr {cfg['optim']['lr']:g}, SPD weight {cfg['spd']['weight']:g}, alpha {cfg['spd']['alpha']:g}); "
        f"{training['stage2_epoch_seconds'] / 60:.1f} min of training steps; best val {best['metric']} at epoch "
        f"{best['epoch']}.",
        whole_recipe_line(training, args.trained_on),
        "",
        "## Metrics (this float16 checkpoint)",
        "",
        "Protocol: whole category split as gallery, captions joined \"c1 and c2\", reference excluded. sat@k "
        "(sdfn.evaluate): per query, the share of the top-k items that keep the reference's category and have every "
        "attribute value the captions ask for, averaged per category, then over categories like R@K.",
        "",
        markdown_table(["split", "R@1", "R@5", "R@10", "R@50", "sat@1", "sat@5", "queries"], rows),
        "",
        "Against the baselines and ablations (same stage-1 backbone, 3 seeds): benchmarks/QUALITY.md.",
        "",
        *phrasing_lines(metrics, cfg),
        "",
        "## Routes by kind of change (test split)",
        "",
        "Module usage per layer (the share of the layer's routed output that leaves through each cell, %), for "
        "queries grouped by what they ask to change; `L1 dist. to all`: how far the group's usage is from all "
        "queries' (sum over cells, points); `image share`: the image router's part of the path weights.",
        "",
        markdown_table(headers, usage_rows),
        "",
        f"{stats.distinct_strongest_paths} distinct strongest paths over {stats.overall.queries} queries; the most "
        f"common one is taken by {100 * stats.top_path_share:.0f}% of them. Mean route entropy "
        f"{stats.overall.entropy:.2f} nats (uniform: {torch.log(torch.tensor(float(len(stats.cells)))):.2f}).",
        "",
        "![routes by kind of change](../../../benchmarks/routes_by_change.png)",
        "",
        f"_Measured {time.strftime('%Y-%m-%d')} on {machine()}, commit {git_commit()}._",
    ]
    (out / "README.md").write_text("\n".join(line for line in lines if line is not None) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", type=Path, required=True, help="a finished `sdfn train --config tiny-synthetic` run")
    parser.add_argument("--out", type=Path, default=SHIPPED_CHECKPOINT)
    parser.add_argument("--catalog", type=Path, default=default_catalog(),
                        help="the synthetic catalog the run trained on (default: sdfn.paths.default_catalog(), the one "
                             "Retriever() opens; give the run's data.root when it trained on another)")
    parser.add_argument("--trained-on", default="this machine's 2 CPU cores",
                        help="where the recipe ran, for the card")
    args = parser.parse_args()
    source = ComposedRetrievalModel.load(args.run / "best")
    with tempfile.TemporaryDirectory() as keep:
        # save() swaps the whole folder in: folders shipped beside the weights (the shipped Combiner's
        # combiner/, tested against this backbone) are carried over, not lost
        kept = [shutil.copytree(d, Path(keep) / d.name) for d in args.out.iterdir() if d.is_dir()] \
            if args.out.is_dir() else []
        if source.reader is None:   # a run from before data.reading: built the same way
            source.reader = reading_of(args.run, args.catalog)
        source.save(args.out, half=True, extra={"shipped_from": str(args.run / "best")})
        for folder in kept:
            shutil.copytree(folder, args.out / Path(folder).name, dirs_exist_ok=True)
    dataset = open_dataset("fashioniq", args.catalog)
    catalog = pd.read_csv(args.catalog / "catalog.csv", dtype=str, keep_default_na=False).set_index("id")
    metrics = {split: split_metrics(args.out, dataset, catalog, split) for split in ("val", "test")}
    metrics["protocol"] = {"gallery": PROTOCOL.gallery, "captions": PROTOCOL.captions,
                           "exclude_reference": PROTOCOL.exclude_reference}
    training = training_record(args.run)
    metrics["catalog"] = {"seed": training["config"]["data"]["synth_seed"],
                          "items_per_category": catalog_items_per_category(catalog)}
    model = ComposedRetrievalModel.load(args.out)
    metrics["phrasing"] = phrasing_metrics(model, dataset, catalog)
    (args.out / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    stats = route_statistics(model, dataset, "test")
    (args.out / "routes.json").write_text(json.dumps(stats.to_json(), indent=1) + "\n")
    plot_usage(stats, HERE / "routes_by_change.png")
    write_card(args.out, args.run, metrics, training, stats, args, catalog_summary(catalog, dataset))
    print(json.dumps({k: metrics[k] for k in ("val", "test")}, indent=1))


if __name__ == "__main__":
    main()
