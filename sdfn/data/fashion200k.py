"""Fashion200k reader (Han et al., ICCV 2017) with the composed-retrieval queries of TIRG (Vo et al., 2019).

On disk (public release, github.com/xthan/fashion-200k; queries from github.com/google/tirg):
    ROOT/labels/<garment>_<split>_detect_all.txt   one image per line, tab-separated:
                                                   <image path relative to ROOT> <detection score> <caption>
                                                   (e.g. women/dresses/casual_and_day_dresses/
                                                   51727804/51727804_0.jpeg)
    ROOT/test_queries.txt                          one query per line: <source image path> <target image path>
    ROOT/women/...                                 the images, at the paths the label lines give
Image ids are those relative paths. Splits: "train" and "test"; only "test" has published queries
(TIRG samples training pairs on the fly), so `triplets("train")` is refused with that explanation.

As in TIRG: the gallery is every image of the split's label files (all garment kinds together, one
category "all"); a query's text is "replace <source word> with <target word>", the first word of each
caption missing from the other; any image whose caption equals the target caption is a correct answer.
TIRG also rewrites punctuation in captions ("." -> "dotmark", ...) for its word vocabulary; that mapping
is one-to-one, so caption equality is unchanged, and here texts keep the natural spelling.

Captions come from the label files of the split being evaluated only: an image listed in both the train
and the test labels has its test caption in the test gallery, and evaluating test never reads a train file.

Duplicate label lines: TIRG appends every line to its image list, so an image listed twice in a split's
label files is twice in its gallery (only one copy is masked as the query's source, and the query reads
the captions of the last line). Here a gallery holds each image once, with the caption of its first line
in file order (label files sorted by name), so such an image can neither be retrieved twice nor survive
as its own unmasked copy; where the two lines disagree, the first caption is the one compared.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from sdfn.data.base import RetrievalDataset, Triplet, read_lines, register_dataset
from sdfn.errors import DataError

CATEGORY = "all"
QUERIES_FILE = "test_queries.txt"
LAYOUT = ("Fashion200k layout: ROOT/labels/<garment>_<split>_detect_all.txt, ROOT/test_queries.txt, "
          "images at ROOT/<path given in the label files>")


@register_dataset
class Fashion200kDataset(RetrievalDataset):
    """Fashion200k at `root`: one gallery per split, captions per image, TIRG's fixed test queries."""

    name = "fashion200k"
    splits = ("train", "test")
    categories = (CATEGORY,)

    def __init__(self, root: Path, categories: Sequence[str] | None = None) -> None:
        self.root = Path(root)
        self.restrict_categories(categories)
        if not (self.root / "labels").is_dir():
            raise DataError(f"{self.root / 'labels'}: folder not found ({LAYOUT})")
        self._captions: dict[str, dict[str, str]] = {}  # split -> image id -> caption
        self._queries: list[Triplet] | None = None

    def label_files(self, split: str) -> list[Path]:
        self.check_split(split)
        files = sorted((self.root / "labels").glob(f"*_{split}_detect_all.txt"))
        if not files:
            raise DataError(f"{self.root / 'labels'}: no *_{split}_detect_all.txt files ({LAYOUT}); "
                            f"download the labels folder of the Fashion200k release")
        return files

    def triplets(self, split: str, category: str | None = None) -> list[Triplet]:
        self.check_split(split)
        self.selected_categories(category)
        if split != "test":
            raise DataError(f"Fashion200k publishes fixed queries only for the test split ({QUERIES_FILE}); "
                            f"training pairs are sampled on the fly (TIRG) and are not read from disk: "
                            f"use split 'test'")
        if self._queries is None:
            self._queries = self._read_queries()
        return self._queries

    def gallery(self, split: str, category: str | None = None) -> list[str]:
        self.selected_categories(category)
        return list(self._split_captions(split))

    def image_path(self, image_id: str) -> Path:
        return self.root / image_id

    def image_caption(self, image_id: str, split: str) -> str | None:
        self.check_split(split)
        return self._split_captions(split).get(image_id)

    def _split_captions(self, split: str) -> dict[str, str]:
        if split not in self._captions:
            captions: dict[str, str] = {}
            for path in self.label_files(split):
                for image_id, caption in _read_label_file(path):
                    # An image listed twice keeps its first caption, as a gallery holds each image once.
                    captions.setdefault(image_id, caption)
            if not captions:
                raise DataError(f"{self.root / 'labels'}: the {split} label files list no images; "
                                f"re-download the labels folder")
            self._captions[split] = captions
        return self._captions[split]

    def _read_queries(self) -> list[Triplet]:
        path = self.root / QUERIES_FILE
        captions = self._split_captions("test")
        lines = read_lines(path, LAYOUT)
        if not lines:
            raise DataError(f"{path}: no queries; re-download the file from the TIRG repository")
        queries = []
        for index, (number, line) in enumerate(lines):
            fields = line.split()
            if len(fields) != 2:
                raise DataError(f"{path}: line {number} (entry {index}): expected "
                                f"'<source path> <target path>', found {line!r}; re-download the file")
            source, target = fields
            for role, image_id in (("source", source), ("target", target)):
                if image_id not in captions:
                    raise DataError(f"{path}: line {number} (entry {index}): {role} image {image_id!r} is "
                                    f"not in the test label files; use the labels that match this query file")
            queries.append(Triplet(
                reference=source,
                captions=(modification_text(captions[source], captions[target]),),
                target=target,
                category=CATEGORY,
                source=QUERIES_FILE,
                index=index,
                target_caption=captions[target],
            ))
        return queries


def modification_text(source_caption: str, target_caption: str) -> str:
    """TIRG's query text: "replace <first source word not in target> with <first target word not in source>".

    Like TIRG's loop, a caption with no differing word contributes its last word.
    """
    source_words, target_words = source_caption.split(), target_caption.split()
    removed = next((w for w in source_words if w not in target_words), source_words[-1])
    added = next((w for w in target_words if w not in source_words), target_words[-1])
    return f"replace {removed} with {added}"


def _read_label_file(path: Path) -> list[tuple[str, str]]:
    rows = []
    for number, line in read_lines(path, LAYOUT):
        fields = line.split("\t", 2)
        if len(fields) != 3 or not fields[0].strip() or not fields[2].strip():
            raise DataError(f"{path}: line {number}: expected three tab-separated fields "
                            f"(image path, detection score, caption), found {line!r}; "
                            f"re-download the labels folder")
        try:
            float(fields[1])
        except ValueError as err:
            raise DataError(f"{path}: line {number}: detection score {fields[1]!r} is not a number; "
                            f"re-download the labels folder") from err
        rows.append((fields[0].strip(), fields[2].strip()))
    return rows
