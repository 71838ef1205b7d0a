"""What every retrieval data set reader provides: triplets, galleries and image paths, by split and category.

A reader parses lazily, validates as it parses, and caches what it parsed. A missing *image* is never a
reader error (annotation files are fine without images); evaluation accounts for it.
"""

from __future__ import annotations

import json
import os
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sdfn.errors import ConfigError, DataError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif")

# Readers register themselves with @register_dataset when their module is imported; sdfn/data/__init__.py imports
# every reader module, so the registry is complete as soon as anything in sdfn.data is imported.
_READERS: dict[str, type[RetrievalDataset]] = {}


@dataclass(frozen=True)
class Triplet:
    """One annotated query: reference image + relative caption(s) -> target image."""

    reference: str  # image id of the reference (FashionIQ "candidate")
    captions: tuple[str, ...]  # relative captions (FashionIQ 2, Shoes 1, Fashion200k 1)
    target: str | None  # None where the split publishes no target (FashionIQ test)
    category: str
    source: str  # annotation file the entry came from
    index: int  # entry index in that file
    # synthetic catalogs only: attribute -> accepted values; left out of hashing (a dict is unhashable)
    asks: Mapping[str, tuple[str, ...]] | None = field(default=None, hash=False)
    target_caption: str | None = None  # Fashion200k: any image with this caption is correct


class RetrievalDataset(ABC):
    """A composed-retrieval data set on disk. Subclasses set `name` and `splits` and read their format."""

    name: str
    splits: tuple[str, ...]
    root: Path
    categories: tuple[str, ...]

    @abstractmethod
    def triplets(self, split: str, category: str | None = None) -> list[Triplet]:
        """The split's triplets, in file order; all categories (in `categories` order) when None."""

    @abstractmethod
    def gallery(self, split: str, category: str | None = None) -> list[str]:
        """The split's gallery image ids, unique, in file order; all categories when None."""

    @abstractmethod
    def image_path(self, image_id: str) -> Path:
        """Where the image should be; the file may be missing (evaluation reports it)."""

    def image_caption(self, image_id: str, split: str) -> str | None:
        """The image's own product caption in `split`'s annotations (Fashion200k); None for data sets without
        one, or when the split does not list the image."""
        return None

    def check_split(self, split: str) -> None:
        if split not in self.splits:
            raise DataError(f"unknown split {split!r} for {self.name} at {self.root}; "
                            f"known splits: {', '.join(self.splits)}")

    def check_category(self, category: str) -> None:
        if category not in self.categories:
            raise DataError(f"unknown category {category!r} for {self.name} at {self.root}; "
                            f"known categories: {', '.join(self.categories)}")

    def restrict_categories(self, categories: Sequence[str] | None) -> None:
        """Keep only `categories` (in that order); each must be one the data set has."""
        if categories is not None:
            for category in categories:
                self.check_category(category)
            self.categories = tuple(categories)

    def selected_categories(self, category: str | None) -> tuple[str, ...]:
        if category is None:
            return self.categories
        self.check_category(category)
        return (category,)


def register_dataset(cls: type[RetrievalDataset]) -> type[RetrievalDataset]:
    """Class decorator: make a reader available to `open_dataset` under its `name`. A name already taken by
    another class is refused, never silently replaced."""
    taken = _READERS.get(cls.name)
    if taken is not None and _qualified(taken) != _qualified(cls):
        raise ConfigError(f"data set name {cls.name!r} is already registered by {_qualified(taken)}; "
                          f"{_qualified(cls)} needs another name (taken: {', '.join(sorted(_READERS))}).")
    _READERS[cls.name] = cls
    return cls


def _qualified(cls: type) -> str:
    # a module imported again (importlib.reload) registers its own class anew: that is not a clash
    return f"{cls.__module__}.{cls.__qualname__}"


def open_dataset(name: str, root: Path | str, **kwargs: Any) -> RetrievalDataset:
    """Open the data set `name` ("fashioniq", "shoes", "fashion200k") stored at `root`."""
    if name not in _READERS:
        raise ConfigError(f"unknown data set {name!r}; known data sets: {', '.join(sorted(_READERS))}")
    return _READERS[name](Path(root), **kwargs)


def load_json(path: Path, layout: str) -> Any:
    """Parse a JSON annotation file; errors name the file, the layout looked for, and line/column."""
    if not path.is_file():
        raise DataError(f"{path}: file not found (layout: {layout}); check the data set root or download "
                        f"the annotation files")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise DataError(f"{path}: malformed JSON at line {err.lineno}, column {err.colno}: {err.msg}; "
                        f"re-download or regenerate the file") from err
    except UnicodeDecodeError as err:
        raise DataError(f"{path}: not UTF-8 text ({err.reason} at byte {err.start}); "
                        f"re-download or regenerate the file") from err


def read_lines(path: Path, layout: str) -> list[tuple[int, str]]:
    """Non-blank lines of a text annotation file as (1-based line number, stripped text)."""
    if not path.is_file():
        raise DataError(f"{path}: file not found (layout: {layout}); check the data set root or download "
                        f"the annotation files")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise DataError(f"{path}: not UTF-8 text ({err.reason} at byte {err.start}); "
                        f"re-download the file") from err
    return [(number, line.strip()) for number, line in enumerate(text.splitlines(), 1) if line.strip()]


def require_list(data: Any, path: Path, what: str) -> list[Any]:
    if not isinstance(data, list):
        raise DataError(f"{path}: expected a JSON list of {what}, found {type(data).__name__}; "
                        f"re-download or regenerate the file")
    if not data:
        raise DataError(f"{path}: the split is empty (no {what}); regenerate the file or pick another split")
    return data


def require_str(entry: Mapping[str, Any], key: str, path: Path, index: int) -> str:
    """entry[key] as a non-empty string, or a DataError naming file, entry index and key."""
    if key not in entry:
        raise DataError(f"{path}: entry {index}: missing key {key!r} (keys present: {', '.join(entry)}); "
                        f"fix or regenerate the file")
    value = entry[key]
    if not isinstance(value, str) or not value.strip():
        raise DataError(f"{path}: entry {index}: key {key!r} must be a non-empty string, "
                        f"found {value!r}; fix or regenerate the file")
    return value.strip()


def require_entry(entry: Any, path: Path, index: int) -> Mapping[str, Any]:
    if not isinstance(entry, dict):
        raise DataError(f"{path}: entry {index}: expected a JSON object, found {type(entry).__name__}; "
                        f"fix or regenerate the file")
    return entry


def unique(ids: list[str]) -> list[str]:
    """Ids in first-seen order without repeats (a gallery holds each image once)."""
    return list(dict.fromkeys(ids))


def index_images(folder: Path, recursive: bool) -> dict[str, Path]:
    """Map image file stem (flat FashionIQ folder) or name (recursive Shoes tree) to its path.

    Scanned once per reader: stat-ing 70k files per lookup would dominate evaluation start-up.
    """
    if not folder.is_dir():
        return {}
    if recursive:
        found = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
        return {p.name: p for p in reversed(found)}  # reversed: the first path in sorted order wins
    with os.scandir(folder) as entries:
        found = sorted(Path(e.path) for e in entries if Path(e.name).suffix.lower() in IMAGE_SUFFIXES)
    index: dict[str, Path] = {}
    for path in found:
        index.setdefault(path.stem, path)
    return index
