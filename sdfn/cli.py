"""The `sdfn` command line: one sub-command per task, each a thin wrapper over the library."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

from sdfn.errors import CheckpointError, ConfigError, SdfnError


def _cmd_synth(args: argparse.Namespace) -> None:
    from sdfn.data.synth import SPLITS, generate_catalog

    check_writable(Path(args.out))
    splits = tuple(args.splits.split(",")) if args.splits else SPLITS
    summary = generate_catalog(Path(args.out), seed=args.seed, items_per_category=args.items_per_category,
                               workers=args.workers, progress=not args.quiet, splits=splits)
    print(f"sdfn synth: {summary.items} items and {summary.triplets} triplets in {summary.out} "
          f"(seed {args.seed}, splits {','.join(splits)})")


def _add_synth(sub: argparse._SubParsersAction) -> None:
    from sdfn.data.synth import DEFAULT_ITEMS_PER_CATEGORY

    p = sub.add_parser("synth", help="generate the synthetic FashionIQ-format catalog",
                       description="Draw a deterministic synthetic garment catalog in FashionIQ's on-disk format.")
    p.add_argument("--out", required=True, help="output folder (created; must be empty or absent)")
    p.add_argument("--seed", type=int, default=0, help="random seed; the same seed gives byte-identical files")
    p.add_argument("--items-per-category", type=int, default=DEFAULT_ITEMS_PER_CATEGORY,
                   help=f"items per category over train+val+test (default {DEFAULT_ITEMS_PER_CATEGORY})")
    p.add_argument("--workers", type=int, default=None, help="drawing processes (default: all cores)")
    p.add_argument("--splits", default=None,
                   help="comma-separated subset of train,val,test to write (identical to the full catalog's)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_cmd_synth)


def _cmd_train(args: argparse.Namespace) -> None:
    from sdfn.config import load_config
    from sdfn.training import config_from_run, run_training

    if args.config is None and args.resume is None:
        raise ConfigError(f"give --config PRESET_OR_FILE (presets: {', '.join(list_presets())}) or --resume DIR")
    if args.config is not None:
        cfg = load_config(args.config, args.overrides)
    else:
        cfg = config_from_run(_run_to_resume(Path(args.resume)))
        if args.overrides:
            from dataclasses import asdict

            from sdfn.config import TrainConfig, apply_override, from_dict

            data = asdict(cfg)
            for item in args.overrides:
                apply_override(data, item)
            cfg = from_dict(TrainConfig, data)
    out = Path(args.out) if args.out else Path("runs") / cfg.name
    if args.resume:
        try:
            check_writable(Path(args.resume))
        except OSError as err:
            raise CheckpointError(f"cannot resume {args.resume}: its folder cannot be written ({err.strerror or err}"
                                  f": {err.filename}); a resumed run writes into its own folder. Make it writable, "
                                  "or copy the run folder somewhere writable and resume the copy.") from err
    else:
        check_writable(out)
    result = run_training(cfg, out, resume=Path(args.resume) if args.resume else None,
                          stop_after=args.stop_after, progress=not args.quiet)
    if int(os.environ.get("RANK", "0")) == 0:
        best = result.get("best")
        print(f"sdfn train: done, {result['epoch']} epochs in {result['out']}"
              + (f"; best {best['metric']} = {best['score']:.2f} at epoch {best['epoch']} ({result['out']}/best)"
                 if best else ""))


def _run_to_resume(path: Path) -> Path:
    """The last/ checkpoint of a run folder (or the folder itself when it is one), with a clear error otherwise."""
    from sdfn.training.state import stopped_before_first_checkpoint, stopped_early_message

    if stopped_before_first_checkpoint(path):
        raise CheckpointError(stopped_early_message(path))
    folder = path / "last" if (path / "last").is_dir() else path
    if not (folder / "train_config.json").is_file():
        why = ("does not exist" if not path.exists()
               else "is not a training run (no train_config.json in it or in last/)")
        raise CheckpointError(f"cannot resume {path}: it {why}. Give the folder a run wrote (`sdfn train --out`, "
                              "default runs/CONFIG_NAME), or start a new run with --config.")
    return folder


def _add_train(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="train SDFN or a baseline",
                       description="Train a composed-retrieval model. Multi-GPU: torchrun --nproc-per-node N "
                                   "-m sdfn train ...",
                       epilog="overrides: dotted keys of the config, e.g. optim.epochs=5 model.fusion.name=combiner "
                              "model.fusion.router=shared spd.enabled=false data.root=/data/fashioniq")
    p.add_argument("--config", help=f"preset ({', '.join(list_presets())}) or a JSON config file")
    p.add_argument("--out", help="run folder (default: runs/<config name>)")
    p.add_argument("--resume", help="continue the run in this folder (or its last/ checkpoint)")
    p.add_argument("--stop-after", type=int, default=None, metavar="EPOCHS",
                   help="stop after this many epochs in this invocation (resume later with --resume)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.add_argument("overrides", nargs="*", metavar="key=value")
    p.set_defaults(func=_cmd_train)


def _cmd_eval(args: argparse.Namespace) -> None:
    import json

    import torch

    from sdfn.data.base import open_dataset
    from sdfn.encode import ModelQueryEncoder
    from sdfn.evaluate import EvalProtocol, evaluate
    from sdfn.model import ComposedRetrievalModel

    kwargs = {"categories": args.categories.split(",")} if args.categories else {}
    dataset = open_dataset(args.dataset, Path(args.data), **kwargs)
    base = EvalProtocol.default_for(args.dataset)
    protocol = EvalProtocol(gallery=args.gallery or base.gallery, captions=args.captions or base.captions,
                            exclude_reference=base.exclude_reference if args.exclude_reference is None
                            else args.exclude_reference,
                            ks=tuple(int(k) for k in args.ks.split(",")) if args.ks else base.ks)
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    model = ComposedRetrievalModel.load(Path(args.checkpoint) if args.checkpoint else None, device=device)
    encoder = ModelQueryEncoder(model, batch_size=args.batch_size, num_workers=args.workers, progress=not args.quiet)
    report = evaluate(dataset, args.split, encoder, protocol)
    print(json.dumps(report.to_json(), indent=2) if args.json else report.to_table())


def _add_eval(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("eval", help="evaluate a checkpoint: Recall@K under an explicit protocol",
                       description="Evaluate a checkpoint on FashionIQ, Shoes or Fashion200k (or a synthetic "
                                   "catalog, which is FashionIQ-format).")
    p.add_argument("--checkpoint", help="checkpoint folder (default: the shipped sdfn-tiny)")
    p.add_argument("--dataset", required=True, choices=["fashioniq", "shoes", "fashion200k"])
    p.add_argument("--data", required=True, help="data set root folder")
    p.add_argument("--split", default="val")
    p.add_argument("--categories", help="comma-separated categories (default: all found)")
    p.add_argument("--gallery", choices=["split", "val-subset"],
                   help="whole category split (default) or only the split's candidates and targets (VAL protocol)")
    p.add_argument("--captions", choices=["joined", "both-orders", "single"],
                   help='"c1 and c2" (default), both orders averaged, or each caption alone')
    ref = p.add_mutually_exclusive_group()
    ref.add_argument("--exclude-reference", dest="exclude_reference", action="store_true", default=None,
                     help="mask the reference image out of its own ranking")
    ref.add_argument("--keep-reference", dest="exclude_reference", action="store_false",
                     help="leave the reference in the ranking (CLIP4Cir's FashionIQ protocol)")
    p.add_argument("--ks", help="comma-separated K values (default 1,5,10,50)")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--workers", type=int, default=2, help="image decoding processes")
    p.add_argument("--device", help="cpu or cuda (default: cuda when available)")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=_cmd_eval)


def _cmd_catalog_build(args: argparse.Namespace) -> None:
    from sdfn.catalog import build_catalog

    check_writable(Path(args.out))      # before decoding every image, not after
    report = build_catalog(Path(args.images), Path(args.out), metadata=Path(args.metadata) if args.metadata else None,
                           replace=args.replace, progress=not args.quiet)
    for line in report.lines():  # items; unreadable, skipped (an SVG, a text file) and outside images; metadata
        print(f"sdfn catalog build: {line}")


def _add_catalog(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("catalog", help="make a catalog from a folder of images",
                       description="Catalogs: a folder with catalog.csv (id, image, category, metadata columns).")
    actions = p.add_subparsers(dest="action", required=True, metavar="ACTION")
    b = actions.add_parser("build", help="make a catalog from any folder of jpg/jpeg/png/webp images",
                           description="Every image under --images (recursive) becomes an item: id = its path "
                                       "relative to --images; category from --metadata, else its first sub-folder, "
                                       "else 'unknown'. Unreadable images are reported by name and left out.")
    b.add_argument("--images", required=True, help="folder of images (searched recursively)")
    b.add_argument("--out", required=True, help="catalog folder to write catalog.csv into")
    b.add_argument("--metadata", help="CSV with an id/file/filename/image column (joined on id or file name), "
                                      "optionally category and any other columns")
    b.add_argument("--replace", action="store_true", help="rewrite an existing catalog.csv (the index is kept)")
    b.add_argument("--quiet", action="store_true", help="no progress bar")
    b.set_defaults(func=_cmd_catalog_build)


def _cmd_index(args: argparse.Namespace) -> None:
    from sdfn.catalog import open_catalog
    from sdfn.index import open_index
    from sdfn.model import ComposedRetrievalModel

    model = ComposedRetrievalModel.load(Path(args.checkpoint) if args.checkpoint else None, device=args.device).eval()
    _, status = open_index(open_catalog(Path(args.catalog)), model, args.index_type, args.fp16,
                           batch_size=args.batch_size, workers=args.workers, progress=not args.quiet,
                           verify="full")  # every file's sha256 checked, not only those whose mtime changed
    print(f"sdfn index: {status.message}")


def _add_index(sub: argparse._SubParsersAction) -> None:
    from sdfn.index import FLAT_MAX_ITEMS, HNSW_MAX_ITEMS, INDEX_TYPES

    p = sub.add_parser("index", help="embed a catalog and build (or update) its FAISS index",
                       description="Embed every catalog item and write CATALOG/index/. A fresh index is reused; "
                                   "a stale one (catalog or model changed) is rebuilt, incrementally when items "
                                   "were only added.")
    p.add_argument("--catalog", required=True, help="catalog folder (with catalog.csv)")
    p.add_argument("--checkpoint", help="checkpoint folder (default: the shipped sdfn-tiny)")
    p.add_argument("--index-type", choices=INDEX_TYPES,
                   help=f"auto: flat below {FLAT_MAX_ITEMS:,} items, hnsw below {HNSW_MAX_ITEMS:,}, ivfpq above "
                        "(default: what the index was built with, else auto)")
    p.add_argument("--fp16", action=argparse.BooleanOptionalAction, default=None,
                   help="store vectors as float16 (flat, hnsw; default: as built before, else float32)")
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--workers", type=int, default=0, help="image decoding processes")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_cmd_index)


def _cmd_search(args: argparse.Namespace) -> None:
    import json

    from sdfn.retrieval import Retriever

    retriever = Retriever(args.checkpoint, args.catalog, device=args.device, progress=not args.quiet)
    if args.ref is not None:
        retriever.catalog.find(args.ref)  # --ref is always an id: never read it as a file name
    reference = args.ref if args.ref is not None else Path(args.ref_image)
    result = retriever.search(reference, args.text, k=args.k, category=args.category,
                              exclude_reference=not args.keep_reference)
    print(json.dumps(result.to_json(), indent=2, ensure_ascii=False) if args.json else result.to_table())
    if args.json and result.query.warning:   # the table says it too; JSON readers get it in query.warning
        print(f"warning: {result.query.warning}", file=sys.stderr)


def _add_search(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("search", help="search a catalog: reference garment + modification text",
                       description="Rank catalog items for a reference (catalog item or image file) changed by a "
                                   "text. The index is built or updated first when needed.")
    p.add_argument("--catalog", help="catalog folder: catalog.csv (columns id, image, category, any metadata) and its "
                                     "images, as `sdfn catalog build` makes it (README section 'Command line'). "
                                     "Default: SDFN_HOME/catalogs/synthetic, generated when missing; SDFN_HOME is "
                                     "$SDFN_HOME, else a source checkout's root, else ~/.cache/sdfn")
    ref = p.add_mutually_exclusive_group(required=True)
    ref.add_argument("--ref", metavar="ID", help="reference: a catalog item id (the id column of catalog.csv)")
    ref.add_argument("--ref-image", metavar="PATH", help="reference: an image file")
    p.add_argument("--text", required=True, help='modification text; "" searches with the reference alone')
    p.add_argument("-k", type=int, default=10, help="number of results (default 10)")
    p.add_argument("--category", help="where to search: a category name, or 'all' for the whole catalog. Default: the "
                                      "reference's own category (an image file: its predicted category, or the "
                                      "whole catalog when that is uncertain or the image is unlike the catalog)")
    p.add_argument("--keep-reference", action="store_true", help="let the reference item appear in the results")
    p.add_argument("--checkpoint", help="checkpoint folder (default: the shipped sdfn-tiny)")
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--json", action="store_true", help='print {"query", "results", "routing"} as JSON')
    p.add_argument("--quiet", action="store_true", help="no progress bars or index messages")
    p.set_defaults(func=_cmd_search)


def list_presets() -> list[str]:
    from sdfn.config import list_presets as presets

    return presets()


def check_writable(folder: Path) -> None:
    """Fail before any work when `folder` (to be created, or written into) cannot be written; nothing is made."""
    from sdfn.fsio import check_writable_folder

    check_writable_folder(folder)


_WHAT_TO_DO = {
    "search": "Searching builds or updates CATALOG/index when it is stale, so the catalog folder must be writable: "
              "run `sdfn index --catalog CATALOG` where it is writable, or copy the catalog to a writable folder",
    "index": "The index is written into the catalog folder (CATALOG/index): make it writable, or copy the catalog "
             "to a writable folder",
    "synth": "Choose an --out folder you can write to",
    "train": "Choose an --out folder you can write to (default runs/CONFIG_NAME in the working folder)",
    "catalog": "Choose an --out folder you can write to",
    "eval": "Check the path",
}


def os_error_message(err: OSError, command: str) -> str:
    """One line for a file system error: what failed, on which path, and what to do."""
    path = err.filename if err.filename is not None else ""
    where = f"{path}: " if path else ""
    if isinstance(err, FileNotFoundError):
        return f"{where}no such file or folder. Check the path (relative paths are from the working folder)."
    return f"{where}{err.strerror or err}. {_WHAT_TO_DO.get(command, 'Check the path and its permissions')}."


def configure_logging(quiet: bool = False) -> None:
    """sdfn's own messages (named loggers under 'sdfn') to stderr; other libraries' only from warnings up."""
    logging.basicConfig(level=logging.WARNING, format="%(name)s: %(levelname)s: %(message)s")
    logging.getLogger("sdfn").setLevel(logging.WARNING if quiet else logging.INFO)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sdfn", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_synth(sub)
    _add_train(sub)
    _add_eval(sub)
    _add_catalog(sub)
    _add_index(sub)
    _add_search(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run one command. Every error a user can fix (SdfnError, and OSError: a missing file, a read-only or
    full folder) ends with one `sdfn COMMAND: error: ...` line on stderr and exit code 2, never a traceback."""
    args = build_parser().parse_args(argv)
    configure_logging(quiet=getattr(args, "quiet", False))
    try:
        args.func(args)
    except SdfnError as err:
        print(f"sdfn {args.command}: error: {_one_line(str(err))}", file=sys.stderr)
        return 2
    except OSError as err:
        print(f"sdfn {args.command}: error: {_one_line(os_error_message(err, args.command))}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"sdfn {args.command}: interrupted", file=sys.stderr)
        return 130
    return 0


def _one_line(text: str) -> str:
    return " ".join(text.split())


if __name__ == "__main__":
    sys.exit(main())
