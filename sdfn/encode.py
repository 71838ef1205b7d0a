"""Batched feature extraction and query composition: images -> backbone features (failures reported per file,
never dropped), and (reference features, texts) -> composed query vectors and router traces, in batches.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from sdfn.backbone import ImageFeatures
from sdfn.data.images import load_model_image
from sdfn.errors import ImageError
from sdfn.evaluate import EncodeResult
from sdfn.fusion import RouterTrace
from sdfn.model import ComposedRetrievalModel


class ImageFiles(Dataset):
    """Decodes and preprocesses images; a file that fails yields its error message instead of a tensor."""

    def __init__(self, paths: Sequence[Path], preprocess, image_size: tuple[int, int]):
        self.paths, self.preprocess, self.image_size = list(paths), preprocess, image_size

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int):
        try:
            image = load_model_image(self.paths[i], self.image_size)
            return i, self.preprocess(image), ""
        except ImageError as err:
            return i, torch.zeros(3, *self.image_size), str(err)


def _collate(batch):
    index, images, errors = zip(*batch, strict=True)
    return torch.tensor(index), torch.stack(images), list(errors)


@dataclass
class ImageFeatureTable:
    """Backbone features of a list of images, row-aligned with the paths; `failed` rows are zeros."""

    paths: list[Path]
    features: ImageFeatures
    failed: dict[int, str]

    def rows(self, paths: Sequence[Path]) -> tuple[ImageFeatures, dict[int, str]]:
        lookup = self.lookup
        index = torch.tensor([lookup[Path(p)] for p in paths], dtype=torch.long)
        failed = {i: self.failed[j] for i, j in enumerate(index.tolist()) if j in self.failed}
        return self.features[index], failed

    @property
    def lookup(self) -> dict[Path, int]:
        if not hasattr(self, "_lookup"):
            self._lookup = {p: i for i, p in enumerate(self.paths)}
        return self._lookup


@torch.no_grad()
def extract_image_features(model: ComposedRetrievalModel, paths: Sequence[Path], batch_size: int = 128,
                           num_workers: int = 0, progress: bool = False, dtype: torch.dtype = torch.float32,
                           desc: str = "encoding images") -> ImageFeatureTable:
    """Encode `paths` through the backbone (eval mode), keeping rows aligned with `paths`."""
    paths = [Path(p) for p in paths]
    files = ImageFiles(paths, model.backbone.preprocess, model.backbone.image_size)
    loader = DataLoader(files, batch_size=batch_size, num_workers=num_workers, collate_fn=_collate)
    was_training = model.training
    model.eval()
    parts, failed = [], {}
    for index, images, errors in tqdm(loader, desc=desc, unit="batch", disable=not progress, leave=False):
        feats = model.encode_images(images)
        parts.append(feats.to(device="cpu", dtype=dtype))
        failed.update({int(i): e for i, e in zip(index.tolist(), errors, strict=True) if e})
    model.train(was_training)
    if not parts:
        features = ImageFeatures(torch.zeros(0, 0, 0, dtype=dtype), torch.zeros(0, model.backbone.embed_dim))
    else:
        features = ImageFeatures.cat(parts)
    return ImageFeatureTable(paths, features, failed)


class ModelQueryEncoder:
    """Implements `sdfn.evaluate.QueryEncoder` for a model; image features are computed once per path."""

    def __init__(self, model: ComposedRetrievalModel, batch_size: int = 128, num_workers: int = 0,
                 table: ImageFeatureTable | None = None, progress: bool = False):
        self.model, self.batch_size, self.num_workers, self.progress = model, batch_size, num_workers, progress
        self.table = table

    def _features(self, paths: Sequence[Path]) -> tuple[ImageFeatures, dict[int, str]]:
        paths = [Path(p) for p in paths]
        known = self.table.lookup if self.table is not None else {}
        missing = list(dict.fromkeys(p for p in paths if p not in known))
        if missing:
            new = extract_image_features(self.model, missing, self.batch_size, self.num_workers, self.progress)
            self.table = new if self.table is None else _merge(self.table, new)
        return self.table.rows(paths)

    @torch.no_grad()
    def encode_gallery(self, image_paths: Sequence[Path]) -> EncodeResult:
        feats, failed = self._features(image_paths)
        out = [self.model.embed_target(chunk.to(self.model.device).float()).cpu()
               for chunk in feats.pooled.split(4096)]
        return EncodeResult(torch.cat(out) if out else torch.zeros(0, self.model.backbone.embed_dim), failed)

    def encode_queries(self, reference_paths: Sequence[Path], texts: Sequence[str]) -> EncodeResult:
        feats, failed = self._features(reference_paths)
        queries, _ = compose_queries(self.model, feats, texts, self.batch_size)
        return EncodeResult(queries, failed)


@torch.no_grad()
def compose_queries(model: ComposedRetrievalModel, references: ImageFeatures, texts: Sequence[str] | torch.Tensor,
                    batch_size: int = 128,
                    timings: dict[str, float] | None = None) -> tuple[torch.Tensor, RouterTrace | None]:
    """Composed query vectors [Q, E] (float32, on the CPU) of `references[i]` changed by `texts[i]`, and their
    router traces concatenated (None for a static fusion), computed `batch_size` queries at a time in eval mode.

    The one batch loop over the fusion: evaluation, search and route statistics all compose through it.
    `texts` are strings, or token ids [Q, L] already made by `model.backbone.tokenize` (so a caller that
    tokenised to inspect the text does not tokenise again). `timings`, when given, gains the milliseconds
    spent encoding texts ("encode_text") and fusing ("fuse").
    """
    if references.pooled.shape[0] != len(texts):
        raise ValueError(f"compose_queries: {references.pooled.shape[0]} references for {len(texts)} texts")
    # A served model is already in eval mode and shared (route statistics may compose beside a search): it is
    # never switched. Only a model being trained goes to eval for these queries and back to training after.
    was_training = model.training
    if was_training:
        model.eval()
    queries, traces = [], []
    spent = {"encode_text": 0.0, "fuse": 0.0}
    try:
        for start in range(0, len(texts), batch_size):
            clock = time.perf_counter()
            chunk = texts[start:start + batch_size]
            if isinstance(chunk, torch.Tensor):
                text = model.backbone.encode_text(chunk.to(model.device))
            else:
                text = model.encode_texts(list(chunk))
            middle = time.perf_counter()
            image = references[start:start + batch_size].to(model.device, dtype=torch.float32)
            out = model.compose(image, text)
            queries.append(out.query.float().cpu())
            if out.trace is not None:
                traces.append(out.trace)
            spent["encode_text"] += 1000 * (middle - clock)
            spent["fuse"] += 1000 * (time.perf_counter() - middle)
    finally:
        if was_training:
            model.train()
    if timings is not None:
        for stage, ms in spent.items():
            timings[stage] = timings.get(stage, 0.0) + ms
    vectors = torch.cat(queries) if queries else torch.zeros(0, model.backbone.embed_dim)
    return vectors, (_cat_traces(traces) if traces else None)


def _cat_traces(traces: list[RouterTrace]) -> RouterTrace:
    def cat(get):
        parts = [get(t) for t in traces]
        return None if parts[0] is None else [torch.cat(layer) for layer in zip(*parts, strict=True)]

    first = traces[0]
    return RouterTrace(first.mode, first.cells, cat(lambda t: t.weights), cat(lambda t: t.incoming),
                       cat(lambda t: t.image), cat(lambda t: t.text))


def _merge(a: ImageFeatureTable, b: ImageFeatureTable) -> ImageFeatureTable:
    offset = len(a.paths)
    failed = dict(a.failed)
    failed.update({i + offset: e for i, e in b.failed.items()})
    return ImageFeatureTable(a.paths + b.paths, ImageFeatures.cat([a.features, b.features.to(a.features.pooled.dtype)]),
                             failed)
