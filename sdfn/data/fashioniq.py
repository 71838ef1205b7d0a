"""FashionIQ reader (Wu et al., CVPR 2021); also reads the synthetic catalogs, which share its format.

On disk (public release, github.com/XiaoxiaoGuo/fashion-iq):
    ROOT/captions/cap.<category>.<split>.json       list of {"candidate", "target", "captions": [c1, c2]}
                                                    (the test split has no "target")
    ROOT/image_splits/split.<category>.<split>.json  list of image ids
    ROOT/images/<id>.<ext>                           .jpg in the release, .png in most mirrors and in
                                                    our synthetic catalogs: the extension is looked up
The annotation files may also sit directly in ROOT (the "flat" layout of ../shared/datasets/fashioniq).
Synthetic entries may carry "asks": {attribute: [accepted values]}; categories are discovered from the
files present (dress, shirt, toptee for FashionIQ; skirt, trousers, ... for synthetic catalogs).
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from sdfn.data.base import (
    RetrievalDataset,
    Triplet,
    index_images,
    load_json,
    register_dataset,
    require_entry,
    require_list,
    require_str,
    unique,
)
from sdfn.errors import DataError

SPLITS = ("train", "val", "test")
_FILE_NAME = re.compile(r"^(cap|split)\.([^.]+)\.(train|val|test)\.json$")
_LAYOUTS = {
    "nested": "ROOT/captions/cap.<category>.<split>.json and ROOT/image_splits/split.<category>.<split>.json",
    "flat": "ROOT/cap.<category>.<split>.json and ROOT/split.<category>.<split>.json",
}


@register_dataset
class FashionIQDataset(RetrievalDataset):
    """FashionIQ-format data set at `root`; `categories` restricts (and orders) the ones discovered."""

    name = "fashioniq"
    splits = SPLITS

    def __init__(self, root: Path, categories: Sequence[str] | None = None) -> None:
        self.root = Path(root)
        self.layout = _detect_layout(self.root)
        self.categories = _discover_categories(self.root, self.layout)
        self.restrict_categories(categories)
        self._triplets: dict[tuple[str, str], list[Triplet]] = {}
        self._galleries: dict[tuple[str, str], list[str]] = {}
        self._images: dict[str, Path] | None = None
        self._fallback_suffix = ".jpg"

    def caption_file(self, category: str, split: str) -> Path:
        folder = self.root / "captions" if self.layout == "nested" else self.root
        return folder / f"cap.{category}.{split}.json"

    def split_file(self, category: str, split: str) -> Path:
        folder = self.root / "image_splits" if self.layout == "nested" else self.root
        return folder / f"split.{category}.{split}.json"

    def triplets(self, split: str, category: str | None = None) -> list[Triplet]:
        self.check_split(split)
        return [t for c in self.selected_categories(category) for t in self._category_triplets(split, c)]

    def gallery(self, split: str, category: str | None = None) -> list[str]:
        self.check_split(split)
        categories = self.selected_categories(category)
        return unique([i for c in categories for i in self._category_gallery(split, c)])

    def image_path(self, image_id: str) -> Path:
        images = self._image_index()
        if image_id in images:
            return images[image_id]
        return self.root / "images" / f"{image_id}{self._fallback_suffix}"

    def _category_triplets(self, split: str, category: str) -> list[Triplet]:
        key = (split, category)
        if key not in self._triplets:
            path = self.caption_file(category, split)
            entries = require_list(load_json(path, self._layout_text()), path, "triplet entries")
            source = path.relative_to(self.root).as_posix()
            self._triplets[key] = [_parse_entry(entry, path, index, category, split, source)
                                   for index, entry in enumerate(entries)]
        return self._triplets[key]

    def _category_gallery(self, split: str, category: str) -> list[str]:
        key = (split, category)
        if key not in self._galleries:
            path = self.split_file(category, split)
            ids = require_list(load_json(path, self._layout_text()), path, "image ids")
            for index, image_id in enumerate(ids):
                if not isinstance(image_id, str) or not image_id.strip():
                    raise DataError(f"{path}: entry {index}: expected a non-empty image id string, "
                                    f"found {image_id!r}; fix or regenerate the file")
            self._galleries[key] = unique([i.strip() for i in ids])
        return self._galleries[key]

    def _image_index(self) -> dict[str, Path]:
        if self._images is None:
            self._images = index_images(self.root / "images", recursive=False)
            self._fallback_suffix = _usual_suffix(self._images)
        return self._images

    def _layout_text(self) -> str:
        return f"FashionIQ {self.layout} layout, {_LAYOUTS[self.layout]}"


def _detect_layout(root: Path) -> str:
    if not root.is_dir():
        raise DataError(f"{root}: FashionIQ folder not found; expected {_LAYOUTS['nested']} "
                        f"(or {_LAYOUTS['flat']})")
    if (root / "captions").is_dir() or (root / "image_splits").is_dir():
        return "nested"
    if any(_FILE_NAME.match(p.name) for p in root.glob("*.json")):
        return "flat"
    raise DataError(f"{root}: no FashionIQ annotation files; expected {_LAYOUTS['nested']} "
                    f"(or {_LAYOUTS['flat']}); download them or run `sdfn synth`")


def _discover_categories(root: Path, layout: str) -> tuple[str, ...]:
    folders = [root / "captions", root / "image_splits"] if layout == "nested" else [root]
    names = [p.name for folder in folders if folder.is_dir() for p in folder.glob("*.json")]
    found = sorted({m.group(2) for m in map(_FILE_NAME.match, names) if m})
    if not found:
        raise DataError(f"{root}: no cap.<category>.<split>.json or split.<category>.<split>.json files "
                        f"(FashionIQ {layout} layout, {_LAYOUTS[layout]}); download them or run `sdfn synth`")
    return tuple(found)


def _parse_entry(entry: Any, path: Path, index: int, category: str, split: str, source: str) -> Triplet:
    entry = require_entry(entry, path, index)
    # The test split publishes no targets; a test file that does carry them is read as it is.
    has_target = split != "test" or entry.get("target") is not None
    return Triplet(
        reference=require_str(entry, "candidate", path, index),
        captions=_parse_captions(entry, path, index),
        target=require_str(entry, "target", path, index) if has_target else None,
        category=category,
        source=source,
        index=index,
        asks=_parse_asks(entry.get("asks"), path, index),
    )


def _parse_captions(entry: Mapping[str, Any], path: Path, index: int) -> tuple[str, ...]:
    if "captions" not in entry:
        raise DataError(f"{path}: entry {index}: missing key 'captions' (keys present: {', '.join(entry)}); "
                        f"fix or regenerate the file")
    captions = entry["captions"]
    if not isinstance(captions, list) or not captions or not all(isinstance(c, str) for c in captions):
        raise DataError(f"{path}: entry {index}: key 'captions' must be a non-empty list of strings, "
                        f"found {captions!r}; fix or regenerate the file")
    # A few real captions are empty strings (the other one still describes the change); all empty is not.
    if not any(c.strip() for c in captions):
        raise DataError(f"{path}: entry {index}: key 'captions' holds only empty captions; "
                        f"fix or remove the entry")
    return tuple(c.strip() for c in captions)


def _parse_asks(asks: Any, path: Path, index: int) -> dict[str, tuple[str, ...]] | None:
    if asks is None:
        return None
    valid = isinstance(asks, dict) and all(
        isinstance(values, list) and all(isinstance(v, str) for v in values) for values in asks.values())
    if not valid:
        raise DataError(f"{path}: entry {index}: key 'asks' must map attribute names to lists of accepted "
                        f"values, found {asks!r}; regenerate the catalog")
    return {attribute: tuple(values) for attribute, values in asks.items()}


def _usual_suffix(images: dict[str, Path]) -> str:
    """The folder's most common image suffix, for ids whose image is absent (so errors show a likely path)."""
    counts = Counter(p.suffix for p in images.values())
    return counts.most_common(1)[0][0] if counts else ".jpg"
