"""Catalogs: a folder of images and a `catalog.csv` table, made from any image folder and validated on open.

`catalog.csv` needs the columns `id` (unique), `image` (a path relative to the catalog folder, or absolute)
and `category`; every other column is metadata, returned with search results. The synthetic catalog
(`sdfn synth`) is one; `build_catalog` (`sdfn catalog build`) makes one from any folder of images.
The built index lives beside the table, in CATALOG/index/ (see sdfn.index).
"""

from __future__ import annotations

import contextlib
import csv
import difflib
import hashlib
import io
import logging
import os
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from tqdm.auto import tqdm

from sdfn.data.images import load_image
from sdfn.errors import ConfigError, DataError, ImageError
from sdfn.fsio import atomic_write_text, check_writable_folder

log = logging.getLogger(__name__)

CATALOG_FILE = "catalog.csv"
UNREADABLE_FILE = "unreadable.txt"
REQUIRED_COLUMNS = ("id", "image", "category")
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp")
# Image formats sdfn does not read; named in the skipped-files report so that a user knows to convert them.
OTHER_IMAGE_EXTENSIONS = (".svg", ".gif", ".bmp", ".tif", ".tiff", ".heic", ".heif", ".avif", ".jxl", ".ico")
UNKNOWN_CATEGORY = "unknown"
METADATA_KEYS = ("id", "file", "filename", "image")  # how a metadata CSV may name the image it describes
_SHOWN = 10  # rows named in one error message before "... and N more"
# Decoding for the readability check only needs the file to decode; JPEG draft mode makes this cheap.
_CHECK_SIDE = 256


@dataclass(frozen=True)
class ItemKey:
    """What identifies an item's image for the index: when any of it changes, the item is encoded again."""

    id: str
    image: str
    size: int
    mtime_ns: int

    def as_list(self) -> list:
        return [self.id, self.image, self.size, self.mtime_ns]


class Catalog:
    """A validated catalog table. Rows keep the file's order; every cell is a string."""

    def __init__(self, root: Path, columns: list[str], rows: list[dict[str, str]], keys: list[ItemKey]):
        self.root, self.columns, self.rows, self.keys = root, columns, rows, keys
        self.row_of = {row["id"]: i for i, row in enumerate(rows)}

    def __len__(self) -> int:
        return len(self.rows)

    @property
    def ids(self) -> list[str]:
        return [row["id"] for row in self.rows]

    def image_path(self, row: int) -> Path:
        """The image file as an absolute path (the catalog root is resolved): what a server reads or serves."""
        return resolve_image(self.root, self.rows[row]["image"])

    def image_name(self, row: int) -> str:
        """The image as users and answers see it: relative to the catalog folder ('images/a.png'), or, for an
        image kept outside the catalog, its file name alone; never a folder of the machine that serves it."""
        path = self.image_path(row)
        try:
            return path.relative_to(self.root).as_posix()
        except ValueError:
            return path.name

    def metadata(self, row: int) -> dict[str, str]:
        """Every column but id and image: category, title, attributes, whatever the table holds."""
        return {k: v for k, v in self.rows[row].items() if k not in ("id", "image")}

    def category_counts(self) -> dict[str, int]:
        return dict(sorted(Counter(row["category"] for row in self.rows).items()))

    def category_named(self, name: str) -> str:
        """The catalog's own spelling of a category asked for in any case ("Dress" -> "dress"), when exactly one
        category matches; else `name` as given (rows_in_category then lists the categories)."""
        names = self.__dict__.get("_category_names")
        if names is None:   # the rows are read once and never change: so are their categories
            names = self.__dict__["_category_names"] = frozenset(self.category_counts())
        if name in names:
            return name
        folded = [c for c in names if c.casefold() == name.casefold()]
        return folded[0] if len(folded) == 1 else name

    def rows_in_category(self, category: str) -> list[int]:
        rows = [i for i, row in enumerate(self.rows) if row["category"] == category]
        if not rows:
            listing = ", ".join(f"{c} ({n})" for c, n in self.category_counts().items())
            raise DataError(f"category '{category}' has no items in {self.root / CATALOG_FILE}. "
                            f"Categories (items): {listing}.")
        return rows

    def find(self, item_id: str) -> int:
        """The row of `item_id`, or an error that names it and says where ids come from."""
        if item_id in self.row_of:
            return self.row_of[item_id]
        close = difflib.get_close_matches(item_id, self.row_of, n=3, cutoff=0.6)
        hint = f" Close matches: {', '.join(close)}." if close else ""
        examples = ", ".join(self.ids[:3])
        raise DataError(f"unknown item id '{item_id}' in catalog {self.root}.{hint} Ids are the `id` column of "
                        f"{self.root / CATALOG_FILE} ({len(self)} items, e.g. {examples}); to search with an "
                        "image that is not in the catalog, give the image itself (a file path or an upload).")

    def fingerprint(self) -> str:
        """sha256 of catalog.csv's bytes and each image's size and mtime: cheap for 100k items, no image hashing."""
        h = hashlib.sha256((self.root / CATALOG_FILE).read_bytes())
        for key in self.keys:
            h.update(f"\n{key.image}\t{key.size}\t{key.mtime_ns}".encode())
        return h.hexdigest()[:16]


def resolve_image(root: Path, image: str) -> Path:
    """A row's `image` (absolute, or relative to the catalog folder `root`) as one path with no '..' left in:
    '../photos/a.png' is the file in the photos folder beside the catalog folder (normalised lexically)."""
    return Path(os.path.normpath(root / image))


def open_catalog(root: Path | str) -> Catalog:
    """Read and validate CATALOG/catalog.csv: required columns, unique non-empty ids, existing image files."""
    root = Path(root).resolve()  # result image paths then mean the same file from any working directory
    table = root / CATALOG_FILE
    if not table.is_file():
        what = "does not exist" if not root.exists() else f"has no {CATALOG_FILE}"
        raise DataError(f"catalog folder {root} {what}. Make a catalog with `sdfn catalog build --images DIR "
                        f"--out {root}` or `sdfn synth --out {root}`.")
    columns, rows = _read_table(table)
    _check_columns(table, columns)
    _check_ids(table, rows)
    keys = _item_keys(root, table, rows)
    return Catalog(root, columns, rows, keys)


def _read_table(table: Path) -> tuple[list[str], list[dict[str, str]]]:
    try:
        with table.open(encoding="utf-8", newline="") as handle:
            reader = csv.DictReader(handle)
            rows = [{k: (v or "") for k, v in row.items() if k is not None} for row in reader]
            columns = list(reader.fieldnames or [])
    except (UnicodeDecodeError, csv.Error) as err:
        raise DataError(f"{table} is not a readable UTF-8 CSV file ({err}); re-save it as UTF-8 CSV.") from err
    if not rows:
        raise DataError(f"{table} has no items; add rows (id, image, category) or rebuild the catalog.")
    return columns, rows


def _check_columns(table: Path, columns: list[str]) -> None:
    missing = [c for c in REQUIRED_COLUMNS if c not in columns]
    if missing:
        raise DataError(f"{table} lacks the column(s) {', '.join(missing)} (it has: {', '.join(columns)}). "
                        f"A catalog table needs {', '.join(REQUIRED_COLUMNS)}; other columns are kept as metadata.")


def _lines(rows: list[int]) -> str:
    """CSV line numbers (the header is line 1) of table rows, the first few."""
    shown = ", ".join(str(r + 2) for r in rows[:_SHOWN])
    return shown + (f" and {len(rows) - _SHOWN} more" if len(rows) > _SHOWN else "")


def _check_ids(table: Path, rows: list[dict[str, str]]) -> None:
    empty = [i for i, row in enumerate(rows) if not row["id"].strip() or not row["image"].strip()]
    if empty:
        raise DataError(f"{table}: empty id or image on line(s) {_lines(empty)}; fill them in or remove the rows.")
    where: dict[str, list[int]] = {}
    for i, row in enumerate(rows):
        where.setdefault(row["id"], []).append(i)
    duplicates = [(item_id, found) for item_id, found in where.items() if len(found) > 1]
    if duplicates:
        listing = "; ".join(f"'{item_id}' on lines {_lines(found)}" for item_id, found in duplicates[:_SHOWN])
        more = f" and {len(duplicates) - _SHOWN} more ids" if len(duplicates) > _SHOWN else ""
        raise DataError(f"{table}: duplicate ids: {listing}{more}. Ids must be unique; rename or remove the rows.")


def _item_keys(root: Path, table: Path, rows: list[dict[str, str]]) -> list[ItemKey]:
    keys, missing = [], []
    for i, row in enumerate(rows):
        try:
            stat = resolve_image(root, row["image"]).stat()
        except OSError:
            missing.append(i)
            continue
        keys.append(ItemKey(row["id"], row["image"], stat.st_size, stat.st_mtime_ns))
    if missing:
        listing = "; ".join(f"line {r + 2} ('{rows[r]['id']}'): {rows[r]['image']}" for r in missing[:_SHOWN])
        more = f"; and {len(missing) - _SHOWN} more" if len(missing) > _SHOWN else ""
        raise DataError(f"{table}: {len(missing)} image file(s) not found: {listing}{more}. Paths are relative to "
                        f"{root} or absolute; fix them or remove the rows.")
    return keys


# ---- building a catalog from a folder of images ---------------------------------------------------

@dataclass
class BuildReport:
    """What `build_catalog` wrote: the catalog, how many items, each unreadable file and each skipped file or
    folder with its reason, metadata rows that matched no image, and whether the images stay outside the catalog
    folder (catalog.csv then names them by absolute path)."""

    catalog: Path
    items: int
    unreadable: list[tuple[Path, str]]
    unmatched_metadata: list[str]
    skipped: list[tuple[Path, str]] = field(default_factory=list)
    images: Path | None = None
    outside: int = 0

    def lines(self, examples: int = 5) -> list[str]:
        """What to tell the user, one line per kind of news."""
        lines = [f"{self.items} items in {self.catalog / CATALOG_FILE}"]
        if self.unreadable:
            shown = ", ".join(p.name for p, _ in self.unreadable[:examples])
            lines.append(f"{len(self.unreadable)} unreadable image(s) left out ({shown}"
                         f"{', ...' if len(self.unreadable) > examples else ''}), listed with the reasons in "
                         f"{self.catalog / UNREADABLE_FILE}")
        if self.skipped:
            lines.append(summarize_skipped(self.skipped, self.images or self.catalog, examples))
        if self.outside:
            lines.append(f"{self.outside} image(s) stay in {self.images}, outside the catalog folder: catalog.csv "
                         "names them by absolute path, so moving them breaks the catalog; the demo serves them "
                         "from there")
        if self.unmatched_metadata:
            shown = ", ".join(self.unmatched_metadata[:examples])
            lines.append(f"{len(self.unmatched_metadata)} metadata row(s) match no image: {shown}"
                         + (", ..." if len(self.unmatched_metadata) > examples else ""))
        return lines


def find_images(images: Path, catalog: Path | None = None) -> tuple[list[Path], list[tuple[Path, str]]]:
    """Image files under `images` (recursive, sorted) and every file or folder left out, with the reason.

    The files of `catalog` (its table, unreadable.txt, its index and staging folders), when it lies under
    `images`, are neither images nor news: they are passed over without a word."""
    own = {catalog / CATALOG_FILE, catalog / UNREADABLE_FILE, catalog / "index"} if catalog is not None else set()
    found, skipped = [], []
    for dirpath, dirnames, filenames in os.walk(images):
        here = Path(dirpath)
        if here == catalog:
            dirnames[:] = [d for d in dirnames if not d.startswith(".index.") and here / d not in own]
        skipped += [(here / d, "hidden folder, not searched") for d in sorted(dirnames) if d.startswith(".")]
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in sorted(filenames):
            if here / name in own or (here == catalog and name.startswith(f".{CATALOG_FILE}.")):
                continue
            why = _skip_reason(name)
            if why:
                skipped.append((here / name, why))
            else:
                found.append(here / name)
    return sorted(found), sorted(skipped)


def _skip_reason(name: str) -> str:
    suffix = Path(name).suffix.lower()
    if name.startswith("."):
        return "hidden file"
    if suffix in IMAGE_EXTENSIONS:
        return ""
    if suffix == ".svg":
        return "SVG is a vector format sdfn does not read (convert it to png)"
    if suffix in OTHER_IMAGE_EXTENSIONS:
        return f"{suffix[1:].upper()} is an image format sdfn does not read (convert it to png or jpg)"
    return f"not an image file sdfn reads ({', '.join(e[1:] for e in IMAGE_EXTENSIONS)})"


def summarize_skipped(skipped: list[tuple[Path, str]], root: Path, examples: int = 3) -> str:
    """'N file(s) skipped: reason (count, e.g. a, b); ...', naming files relative to `root`."""
    by_reason: dict[str, list[Path]] = {}
    for path, why in skipped:
        by_reason.setdefault(why, []).append(path)
    parts = []
    for why, paths in sorted(by_reason.items(), key=lambda kv: -len(kv[1])):
        shown = ", ".join(p.relative_to(root).as_posix() for p in paths[:examples])
        parts.append(f"{why}: {len(paths)} ({shown}{', ...' if len(paths) > examples else ''})")
    return f"{len(skipped)} file(s) or folder(s) skipped: " + "; ".join(parts)


def read_metadata(path: Path) -> tuple[str, list[dict[str, str]]]:
    """A metadata CSV: (the column naming each image, its rows). The key column is the first of METADATA_KEYS."""
    if not path.is_file():
        raise DataError(f"metadata file {path} not found; give a CSV with an id or file column.")
    columns, rows = _read_table(path)
    key = next((c for c in METADATA_KEYS if c in columns), None)
    if key is None:
        raise DataError(f"{path} has no column naming the image (one of {', '.join(METADATA_KEYS)}); "
                        f"its columns are: {', '.join(columns)}.")
    return key, rows


def _match_metadata(ids: list[str], key: str, rows: list[dict[str, str]]) -> tuple[dict[str, dict], list[str]]:
    """Join metadata rows to image ids by full relative path, else by file name where that is unambiguous."""
    by_name: dict[str, list[str]] = {}
    for item_id in ids:
        by_name.setdefault(Path(item_id).name, []).append(item_id)
    known = set(ids)
    joined, unmatched = {}, []
    for row in rows:
        value = row[key].strip().replace("\\", "/")
        if value in known:
            target = value
        elif len(by_name.get(Path(value).name, [])) == 1:
            target = by_name[Path(value).name][0]
        else:
            unmatched.append(value)
            continue
        joined[target] = {k: v for k, v in row.items() if k != key and k not in ("id", "image")}
    return joined, unmatched


def _category_from_folder(item_id: str) -> str:
    parts = Path(item_id).parts
    return parts[0] if len(parts) > 1 else UNKNOWN_CATEGORY


def _check_readable(path: Path) -> str:
    try:
        load_image(path, max_side=_CHECK_SIDE)
    except ImageError as err:
        return str(err)
    return ""


def check_images(paths: list[Path], progress: bool, workers: int | None = None) -> list[str]:
    """Decode every image (threads: Pillow releases the GIL while decoding); '' or the reason it failed."""
    workers = workers or min(8, os.cpu_count() or 1)
    with ThreadPoolExecutor(workers) as pool:
        return list(tqdm(pool.map(_check_readable, paths), total=len(paths), desc="checking images",
                         unit="img", disable=not progress, leave=False))


def build_catalog(images: Path | str, out: Path | str, metadata: Path | str | None = None, replace: bool = False,
                  progress: bool = True, report: Callable[[str], None] | None = None) -> BuildReport:
    """Make a catalog in `out` from every jpg/jpeg/png/webp under `images` (recursive).

    Ids are the images' paths relative to `images` (unique and stable while files keep their names).
    Category: the metadata CSV's `category` column (joined on id or file name), else the first
    sub-folder, else "unknown". Images that cannot be decoded are left out, passed to `report` (default: a
    logged warning) by name and listed in OUT/unreadable.txt; files that are not jpg/jpeg/png/webp (an SVG, a
    text file) and hidden ones are skipped and reported by reason with examples (`BuildReport.skipped`).
    Image paths are stored relative to `out` when the images are inside it, absolute otherwise (the catalog
    then depends on them staying where they are). An `out` that cannot be written fails before any image is
    decoded; catalog.csv and unreadable.txt are written atomically.
    """
    images, out = Path(images).resolve(), Path(out).resolve()
    _check_build_arguments(images, out, replace)
    created = _check_writable(out)
    try:
        return _build(images, out, metadata, progress, report or log.warning)
    except BaseException:
        if created:
            _remove_if_empty(out)
        raise


def _build(images: Path, out: Path, metadata: Path | str | None, progress: bool,
           report: Callable[[str], None]) -> BuildReport:
    paths, skipped = find_images(images, catalog=out)
    if skipped:
        report(summarize_skipped(skipped, images))
    if not paths:
        raise DataError(f"no images (*{', *'.join(IMAGE_EXTENSIONS)}) found under {images}"
                        + (f"; {summarize_skipped(skipped, images)}." if skipped else "."))
    ids = [p.relative_to(images).as_posix() for p in paths]
    key, meta_rows = read_metadata(Path(metadata)) if metadata is not None else ("id", [])
    joined, unmatched = _match_metadata(ids, key, meta_rows)
    problems = check_images(paths, progress)
    unreadable = [(p, why) for p, why in zip(paths, problems, strict=True) if why]
    for _, why in unreadable:  # each reason starts with the file's path
        report(f"unreadable, left out: {why}")
    extra = sorted({c for row in joined.values() for c in row if c != "category"})
    rows = [_catalog_row(item_id, path, out, joined.get(item_id, {}), extra)
            for item_id, path, why in zip(ids, paths, problems, strict=True) if not why]
    if not rows:
        raise DataError(f"none of the {len(paths)} images under {images} could be read; see the messages above.")
    _write_unreadable(out / UNREADABLE_FILE, unreadable)
    _write_table(out / CATALOG_FILE, [*REQUIRED_COLUMNS, *extra], rows)
    outside = sum(Path(row["image"]).is_absolute() for row in rows)
    return BuildReport(out, len(rows), unreadable, unmatched, skipped, images, outside)


def _check_writable(out: Path) -> bool:
    """Create `out` if needed and check, before any image is decoded, that files can be written in it.
    Whether `out` was created here."""
    try:
        return check_writable_folder(out, create=True)
    except OSError as err:
        raise DataError(f"cannot write the catalog into {out} ({err.strerror}); choose a folder you can write "
                        "with --out.") from err


def _remove_if_empty(folder: Path) -> None:
    with contextlib.suppress(OSError):  # not empty, or already gone
        folder.rmdir()


def _check_build_arguments(images: Path, out: Path, replace: bool) -> None:
    if not images.is_dir():
        raise DataError(f"images folder {images} not found; give a folder of jpg/jpeg/png/webp images.")
    if out.exists() and not out.is_dir():
        raise DataError(f"output {out} is a file, not a folder; choose a folder for the catalog.")
    if (out / CATALOG_FILE).exists() and not replace:
        raise ConfigError(f"{out / CATALOG_FILE} already exists; choose another --out, or pass --replace to rebuild "
                          "the table (its index is kept and updated incrementally on the next `sdfn index`).")


def _catalog_row(item_id: str, path: Path, out: Path, meta: dict[str, str], extra: list[str]) -> dict[str, str]:
    image = path.relative_to(out).as_posix() if path.is_relative_to(out) else str(path)
    category = meta.get("category", "").strip() or _category_from_folder(item_id)
    return {"id": item_id, "image": image, "category": category, **{c: meta.get(c, "") for c in extra}}


def _write_unreadable(path: Path, unreadable: list[tuple[Path, str]]) -> None:
    if unreadable:
        atomic_write_text(path, "".join(f"{p}\t{why}\n" for p, why in unreadable))
    else:
        path.unlink(missing_ok=True)


def _write_table(path: Path, columns: list[str], rows: list[dict[str, str]]) -> None:
    """Written atomically (fsio), so a reader never sees half a table."""
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(path, text.getvalue())
