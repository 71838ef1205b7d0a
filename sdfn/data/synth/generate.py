"""`generate_catalog`: sample, write into a staging folder beside the output, publish it whole.

A catalog folder therefore exists complete or not at all. A run stopped part-way (Ctrl-C, kill -9, a
full disk) leaves at most a hidden staging folder, which the next run removes without asking; the
folder an older sdfn left when it was stopped mid-generation (it wrote in place) is recognised by its
contents and replaced as well.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from sdfn.data.attributes import CATEGORIES
from sdfn.data.synth.sampling import (
    DEFAULT_ITEMS_PER_CATEGORY,
    MIN_FAMILY,
    MIN_ITEMS_PER_CATEGORY,
    SPLITS,
    sample_items,
)
from sdfn.data.synth.triplets import sample_triplets
from sdfn.data.synth.writers import write_catalog
from sdfn.errors import ConfigError, DataError
from sdfn.fsio import staging_folder

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class CatalogSummary:
    """What `generate_catalog` wrote."""

    out: Path
    items: int
    triplets: int


def generate_catalog(out: Path | str, seed: int = 0, items_per_category: int = DEFAULT_ITEMS_PER_CATEGORY,
                     workers: int | None = None, progress: bool = True,
                     splits: Sequence[str] = SPLITS) -> CatalogSummary:
    """Generate the synthetic catalog in `out` (created; must be absent or empty). Same seed, same bytes.

    `splits` keeps only those splits: their items, captions and images are exactly those of the full
    catalog (everything is sampled first, every image has its own seed), so e.g. the val split of the
    default catalog can be remade in seconds to check a model against its recorded figures.
    """
    given = Path(out)
    _check_arguments(items_per_category, workers, splits)
    out = _output_folder(given)
    replaces_leftover = out.is_dir() and any(out.iterdir())
    items = sample_items(seed, items_per_category)
    triplets = sample_triplets(items, seed)
    items = [item for item in items if item.split in splits]
    triplets = {key: entries for key, entries in triplets.items() if key[1] in splits}
    try:
        with staging_folder(out) as folder:
            write_catalog(folder, items, triplets, splits, seed, workers or os.cpu_count() or 1, progress)
    except OSError as err:
        where = f" ({err.filename})" if err.filename else ""
        raise DataError(f"cannot write the catalog to {out}: {err.strerror or err}{where}; choose a folder you "
                        f"can write to (--out) or free space there") from err
    if replaces_leftover:
        log.warning("replaced the incomplete catalog an interrupted run left in %s", out)
    return CatalogSummary(given, len(items), sum(len(t) for t in triplets.values()))


def _check_arguments(items_per_category: int, workers: int | None, splits: Sequence[str]) -> None:
    if items_per_category < MIN_ITEMS_PER_CATEGORY:
        raise ConfigError(
            f"--items-per-category {items_per_category} is too small: train, val and test each need at least "
            f"one family of {MIN_FAMILY} near-duplicate items; use {MIN_ITEMS_PER_CATEGORY} or more "
            f"(default {DEFAULT_ITEMS_PER_CATEGORY})")
    if workers is not None and workers < 1:
        raise ConfigError(f"--workers {workers} must be 1 or more (leave it out to use every core)")
    unknown = sorted(set(splits) - set(SPLITS))
    if unknown or not splits:
        raise ConfigError(f"splits {unknown or '(none)'}: choose from {', '.join(SPLITS)}")


def _output_folder(given: Path) -> Path:
    """The folder to publish the catalog as: `given`, or where it points when it is a link to a folder
    (swapping a new folder in would replace the link itself). Refuses what cannot or must not be written."""
    try:
        out = given.resolve() if given.is_symlink() else given
        existing = next(p for p in (out, *out.parents) if p.exists())
        if existing == out and not out.is_dir():
            raise DataError(f"output {out} is a file, not a folder; choose a new folder for the catalog")
        if not existing.is_dir():
            raise DataError(f"cannot create the output folder {out}: {existing} is a file, not a folder; "
                            f"choose another folder for the catalog")
        if out.is_dir() and any(out.iterdir()) and not _left_by_interrupted_run(out):
            hint = "" if (out / "catalog.csv").exists() else " and does not look like an interrupted `sdfn synth`"
            raise DataError(f"output folder {out} is not empty{hint}; delete it or choose a new folder")
    except OSError as err:
        raise DataError(f"cannot use {given} as the output folder: {err.strerror or err}; choose another "
                        f"folder for the catalog") from err
    return out


# What an older sdfn, which generated in place, had written when it was stopped: nothing but these.
_LEFTOVER_FILES: dict[str, re.Pattern[str]] = {
    "images": re.compile(rf"(?:{'|'.join(CATEGORIES)})-\d{{6}}\.png"),
    "image_splits": re.compile(r"split\.\w+\.\w+\.json"),
    "captions": re.compile(r"cap\.\w+\.\w+\.json"),
}


def _left_by_interrupted_run(out: Path) -> bool:
    """Whether `out` holds only a generation stopped part-way (no catalog.csv; only generated names)."""
    for entry in out.iterdir():
        if entry.name == "catalog.csv.partial" and entry.is_file():
            continue
        pattern = _LEFTOVER_FILES.get(entry.name)
        if pattern is None or not entry.is_dir() or entry.is_symlink():
            return False
        if not all(child.is_file() and pattern.fullmatch(child.name) for child in entry.iterdir()):
            return False
    return True
