"""The `sdfn` command line: one sub-command per task, each a thin wrapper over the library."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from sdfn.errors import SdfnError


def _cmd_synth(args: argparse.Namespace) -> None:
    from sdfn.data.synth import generate_catalog

    generate_catalog(Path(args.out), seed=args.seed, items_per_category=args.items_per_category,
                     workers=args.workers, progress=not args.quiet)


def _add_synth(sub: argparse._SubParsersAction) -> None:
    from sdfn.data.synth import DEFAULT_ITEMS_PER_CATEGORY

    p = sub.add_parser("synth", help="generate the synthetic FashionIQ-format catalog",
                       description="Draw a deterministic synthetic garment catalog in FashionIQ's on-disk format.")
    p.add_argument("--out", required=True, help="output folder (created; must be empty or absent)")
    p.add_argument("--seed", type=int, default=0, help="random seed; the same seed gives byte-identical files")
    p.add_argument("--items-per-category", type=int, default=DEFAULT_ITEMS_PER_CATEGORY,
                   help=f"items per category over train+val+test (default {DEFAULT_ITEMS_PER_CATEGORY})")
    p.add_argument("--workers", type=int, default=None, help="drawing processes (default: all cores)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_cmd_synth)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sdfn", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_synth(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except SdfnError as err:
        print(f"sdfn {args.command}: error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
