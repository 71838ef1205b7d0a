"""Shoes reader (Guo et al., NeurIPS 2018, "Dialog-based Interactive Image Retrieval").

On disk (public release, github.com/XiaoxiaoGuo/fashion-retrieval, dataset/):
    ROOT/relative_captions_shoes.json   list of {"ImageName": target file name,
                                                 "ReferenceImageName": reference file name,
                                                 "RelativeCaption": one relative caption}
    ROOT/train_im_names.txt             one image file name per line (the training images)
    ROOT/eval_im_names.txt              one image file name per line (the evaluation images)
    images anywhere below ROOT, found by file name: the Attribute Discovery zip unpacks to
    ROOT/womens_<kind>/<n>/img_womens_<kind>_<k>.jpg (some set-ups add an attributedata/ or images/ level)
Image ids are the file names ("img_womens_clogs_851.jpg"). Split names are the list files' stems:
"train", "eval" (the one the literature reports), and "test" where test_im_names.txt exists.

Which triplets belong to a split follows VAL's published preprocessing (copied by CosMo, CLVC-Net and
others): an entry belongs to the split when its target *or* its reference is in the split's image list.
That code appends an entry twice when both images are in the list; here each entry counts once. The
gallery is the split's image list plus, appended, any image of the split's triplets that the list lacks
(VAL does the same), so every target can be retrieved.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from sdfn.data.base import (
    RetrievalDataset,
    Triplet,
    index_images,
    load_json,
    read_lines,
    register_dataset,
    require_entry,
    require_list,
    require_str,
    unique,
)
from sdfn.errors import DataError

CAPTIONS_FILE = "relative_captions_shoes.json"
CATEGORY = "shoes"
LAYOUT = ("Shoes layout: ROOT/relative_captions_shoes.json, ROOT/<split>_im_names.txt, "
          "images below ROOT (e.g. ROOT/womens_boots/1/img_womens_boots_1.jpg)")


@register_dataset
class ShoesDataset(RetrievalDataset):
    """Shoes at `root`: one category ("shoes"), one relative caption per triplet."""

    name = "shoes"
    splits = ("train", "eval", "test")
    categories = (CATEGORY,)

    def __init__(self, root: Path, categories: Sequence[str] | None = None) -> None:
        self.root = Path(root)
        self.restrict_categories(categories)
        if not self.root.is_dir():
            raise DataError(f"{self.root}: Shoes folder not found ({LAYOUT})")
        self._entries: list[Triplet] | None = None
        self._split_images: dict[str, list[str]] = {}
        self._images: dict[str, Path] | None = None

    def split_file(self, split: str) -> Path:
        return self.root / f"{split}_im_names.txt"

    def triplets(self, split: str, category: str | None = None) -> list[Triplet]:
        self.check_split(split)
        self.selected_categories(category)
        in_split = set(self._listed_images(split))
        return [t for t in self._all_triplets() if t.target in in_split or t.reference in in_split]

    def gallery(self, split: str, category: str | None = None) -> list[str]:
        self.check_split(split)
        self.selected_categories(category)
        extra = [i for t in self.triplets(split) for i in (t.reference, t.target)]
        return unique(self._listed_images(split) + extra)

    def image_path(self, image_id: str) -> Path:
        if self._images is None:
            self._images = index_images(self.root, recursive=True)
        # An image missing from the tree gets a path that names it, so the evaluation report is clear.
        return self._images.get(image_id, self.root / image_id)

    def _all_triplets(self) -> list[Triplet]:
        if self._entries is None:
            path = self.root / CAPTIONS_FILE
            entries = require_list(load_json(path, LAYOUT), path, "relative-caption entries")
            self._entries = [_parse_entry(e, path, i) for i, e in enumerate(entries)]
        return self._entries

    def _listed_images(self, split: str) -> list[str]:
        if split not in self._split_images:
            path = self.split_file(split)
            lines = read_lines(path, LAYOUT)
            if not lines:
                raise DataError(f"{path}: the split is empty (no image names); re-download the file "
                                f"or pick another split")
            self._split_images[split] = unique([name for _, name in lines])
        return self._split_images[split]


def _parse_entry(entry: Any, path: Path, index: int) -> Triplet:
    entry = require_entry(entry, path, index)
    return Triplet(
        reference=require_str(entry, "ReferenceImageName", path, index),
        captions=(require_str(entry, "RelativeCaption", path, index),),
        target=require_str(entry, "ImageName", path, index),
        category=CATEGORY,
        source=CAPTIONS_FILE,
        index=index,
    )
