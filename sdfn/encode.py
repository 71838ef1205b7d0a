"""Batched feature extraction and query composition: images -> backbone features (failures reported per file,
never dropped), and (reference features, texts) -> composed query vectors and router traces, in batches.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from open_clip.transformer import text_global_pool
from torch import nn
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from sdfn.backbone import ImageFeatures, TextFeatures, _text_projection, text_mask
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
                 table: ImageFeatureTable | None = None, progress: bool = False, read: bool = True):
        self.model, self.batch_size, self.num_workers, self.progress = model, batch_size, num_workers, progress
        self.table = table
        self.read = read   # texts as the model reads them (`model.read_text`, as a search does); False: as given

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
        if self.read:
            texts = [self.model.read_text(t)[0] for t in texts]
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
                text = encode_token_ids(model, chunk.to(model.device))
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


TEXT_BUCKET = 8   # trimmed token ids keep a multiple of this many places (few shapes, so few traces)


class ShortText(nn.Module):
    """CLIP's causal text tower run on the first L token places only, as `Backbone.encode_text` computes them.

    Every place attends only to itself and the places before it (the causal mask), so the places up to the end
    token, and the sentence vector read at the end token, do not depend on the padding after it: cutting the
    padding leaves them as they were (up to float rounding of a shorter sum) and saves the tower's work on it.
    The fusion reads word tokens under their mask, so it never sees the places cut. open_clip's own
    forward does not slice its causal mask to a shorter input; this does. Only for towers without a class token
    or padding mask (`ShortText.supports`).
    """

    def __init__(self, clip: nn.Module, projection):
        super().__init__()
        self.clip, self.projection = clip, projection

    @staticmethod
    def supports(clip: nn.Module) -> bool:
        return (getattr(clip, "transformer", None) is not None and getattr(clip, "attn_mask", None) is not None
                and getattr(clip, "text_pool_type", None) in ("argmax", "eos", "first")
                and hasattr(clip, "token_embedding") and hasattr(clip, "ln_final"))

    def forward(self, token_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        clip, length = self.clip, token_ids.shape[1]
        cast = clip.transformer.get_cast_dtype()
        x = clip.token_embedding(token_ids).to(cast) + clip.positional_embedding[:length].to(cast)
        x, intermediates = clip.transformer.forward_intermediates(x, attn_mask=clip.attn_mask[:length, :length],
                                                                  indices=1)
        tokens = clip.ln_final(intermediates[-1])
        pooled = text_global_pool(clip.ln_final(x), token_ids, pool_type=clip.text_pool_type,
                                  eos_token_id=getattr(clip, "text_eos_id", None))
        projection = clip.text_projection
        pooled = projection(pooled) if isinstance(projection, nn.Linear) else pooled @ projection
        if self.projection is not None:
            tokens = self.projection(tokens) if isinstance(self.projection, nn.Module) else tokens @ self.projection
        return tokens, text_mask(token_ids), pooled


def encode_token_ids(model: ComposedRetrievalModel, token_ids: torch.Tensor) -> TextFeatures:
    """`model.backbone.encode_text(token_ids)` for answering queries (eval mode, no autograd): the padding after
    the longest text's end token is cut first (to a multiple of TEXT_BUCKET places, see `ShortText`), and a single
    query runs a torch.jit trace of the text tower recorded once per length. Training, or a tower `ShortText` does
    not support, takes `encode_text` itself. Word tokens come back as long as the trimmed ids; the mask says
    which are real."""
    backbone = model.backbone
    text_tower = backbone.clip
    if model.training or torch.is_grad_enabled() or not ShortText.supports(text_tower):
        return backbone.encode_text(token_ids)
    used = int(token_ids.argmax(dim=-1).max()) + 1        # the end token has the highest id (text_mask)
    length = min(token_ids.shape[1], -(-used // TEXT_BUCKET) * TEXT_BUCKET)
    token_ids = token_ids[:, :length].contiguous()
    short = ShortText(text_tower, _text_projection(text_tower))
    if token_ids.shape[0] != 1:
        return TextFeatures(*short(token_ids))
    traces = model.__dict__.setdefault("_fusion_traces", {})   # model.train() drops them with the fusion's
    key = ("text", tuple(token_ids.shape), token_ids.device)
    if key not in traces:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")                  # torch.jit's tracer warnings
            traces[key] = torch.jit.trace(short, (token_ids,), check_trace=False)
    return TextFeatures(*traces[key](token_ids))


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
