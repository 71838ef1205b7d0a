"""Explain one query: which words move the route, which garment regions each word is read by, how a static
Combiner on the same backbone answers the same query, and how two phrasings of one change are routed.

Functions return data (dataclasses with `to_json`); sdfn.demo_explain draws them.

    from sdfn import Retriever
    from sdfn.explain import Explainer

    explainer = Explainer(Retriever())
    e = explainer.explain("dress-000041", "is red and has longer sleeves")
    for w in e.words:                       # leave-one-out: how far the route moves without this word
        print(w.word, w.route_points, w.js_bits, w.query_shift)
    e.attention[0].maps                     # layer 1: [words, grid_h, grid_w] word-to-region attention
    explainer.compare_models("dress-000041", "is red and has longer sleeves", k=10)   # SDFN vs Combiner

Units (the same everywhere, stated once in the demo):

- **points of path weight**: path weights lie in [0, 1) (for `msr` the image router's part plus the text
  router's part, each at most 0.5); 1 point = 0.01. A word's effect on a router in a layer is the mean over that
  layer's paths of |weight with the word - weight without it|, in points; `max` is the largest single path's.
- **JS divergence (bits)**: between what each next-layer cell receives (its incoming mix, which sums to 1) with
  and without the word, averaged over the receiving cells; 0 = identical mix, 1 = disjoint.
- **query shift**: 1 - cosine(query with the word, query without it); 0 = the query vector did not move.

Occlusion runs every leave-one-out variant and the full text in ONE batched forward pass (text encoder and
fusion), so explaining a query costs about one batched search, not one per word.
"""

from __future__ import annotations

import json
import logging
import math
import random
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from sdfn.backbone import ImageFeatures, TextFeatures
from sdfn.errors import CheckpointError, ConfigError, DataError
from sdfn.fsio import save_safetensors, staging_folder, tensors_fingerprint
from sdfn.fusion import FusionConfig, FusionModule, RouterTrace, create_fusion
from sdfn.fusion.cells import recording_attention
from sdfn.model import ComposedRetrievalModel
from sdfn.paths import SHIPPED_CHECKPOINT
from sdfn.retrieval import Reference, Retriever
from sdfn.routes import strongest_paths
from sdfn.weights import load_tensors

log = logging.getLogger(__name__)

SHIPPED_COMBINER = SHIPPED_CHECKPOINT / "combiner"
FUSION_FORMAT, FUSION_FORMAT_VERSION = "sdfn-fusion", 1
FUSION_CONFIG, FUSION_WEIGHTS = "fusion_config.json", "fusion"
ROUTERS = ("path", "image", "text")   # the path weight (msr: image + text part) and the two routers' parts
MAX_WORDS = 24                         # leave-one-out variants per query (a longer text: its first MAX_WORDS words)


# ---- words and their tokens --------------------------------------------------------------------------------

def word_spans(backbone, text: str) -> tuple[list[str], list[tuple[int, int]], list[str]]:
    """Whitespace words of `text` and each one's token positions [start, stop) in the tokenised text (position 0
    is the start token). Words past the model's context are dropped (a note says so). A tokenizer without a
    word-piece view (Hugging Face) gets spans of None-width: ([], [], note)."""
    words = text.split()
    notes: list[str] = []
    encode = getattr(backbone.tokenizer, "encode", None)
    if encode is None:
        return words, [], ["this tokenizer has no word-piece view: no word-to-region attention per word"]
    room = backbone.context_length - 2
    spans, position = [], 1
    for word in words:
        n = len(encode(word))
        if position - 1 + n > room:
            notes.append(f"only the first {len(spans)} words fit the model's {backbone.context_length} tokens")
            break
        spans.append((position, position + n))
        position += n
    ids = backbone.tokenize([" ".join(words[:len(spans)])])[0]
    pieces = [t for w in words[:len(spans)] for t in encode(w)]
    if ids[1:1 + len(pieces)].tolist() != pieces:   # the tokenizer joins words differently: positions unknown
        return words[:len(spans)], [], ["the tokenizer splits this text across words: no attention per word"]
    return words[:len(spans)], spans, notes


def leave_one_out(words: Sequence[str]) -> list[str]:
    """The text without word i, for each i (an empty string for a one-word text)."""
    return [" ".join([*words[:i], *words[i + 1:]]) for i in range(len(words))]


# ---- comparing two routes -----------------------------------------------------------------------------------

@dataclass
class RouteChange:
    """How route B differs from route A, per layer (lists of R numbers). points: mean |B - A| over the layer's
    paths in points of path weight, per router (`path`, and `image`/`text` for msr); max_points: the largest
    single path's |B - A|; js_bits: JS divergence of the incoming mixes (mean over receiving cells)."""

    points: dict[str, list[float]]
    max_points: dict[str, list[float]]
    js_bits: list[float]
    largest: dict[str, Any]     # the path whose total weight moved most: layer (1-based), from, to, points (B - A)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def _js_bits(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """[..., K_in, K_out] distributions over K_in (columns) -> [...] mean JS divergence over columns, in bits."""
    p, q = p.clamp_min(1e-12), q.clamp_min(1e-12)
    m = (p + q) / 2
    kl = (p * (p / m).log2()).sum(-2) / 2 + (q * (q / m).log2()).sum(-2) / 2
    return kl.clamp_min(0).mean(-1)


def route_changes(base: RouterTrace, other: RouterTrace) -> list[RouteChange]:
    """For every query b of `other` (batch B), how its route differs from `base` (batch 1): B RouteChanges."""
    parts = {"path": (base.weights, other.weights)}
    if base.image is not None and other.image is not None:
        parts["image"] = (base.image, other.image)
        parts["text"] = (base.text, other.text)
    layers = len(base.weights)
    batch = other.weights[0].shape[0]
    mean = {name: torch.stack([(b2[r] - b1[r]).abs().mean((-2, -1)) * 100 for r in range(layers)], 1)
            for name, (b1, b2) in parts.items()}                           # [B, R]
    top = {name: torch.stack([(b2[r] - b1[r]).abs().amax((-2, -1)) * 100 for r in range(layers)], 1)
           for name, (b1, b2) in parts.items()}
    js = torch.stack([_js_bits(base.incoming[r], other.incoming[r]) for r in range(layers)], 1)
    out = []
    for b in range(batch):
        best = (0, 0, 0, 0.0)
        for r in range(layers):
            delta = (other.weights[r][b] - base.weights[r][0]) * 100
            flat = int(delta.abs().argmax())
            i, j = divmod(flat, delta.shape[1])
            if abs(float(delta[i, j])) > abs(best[3]):
                best = (r, i, j, float(delta[i, j]))
        r, i, j, value = best
        to = base.cells[j] if r < layers - 1 else "output"
        out.append(RouteChange({k: _round(v[b]) for k, v in mean.items()}, {k: _round(v[b]) for k, v in top.items()},
                               _round(js[b], 4),
                               {"layer": r + 1, "from": base.cells[i], "to": to, "points": round(value, 3)}))
    return out


def _round(x: torch.Tensor, digits: int = 3) -> list[float]:
    return [round(float(v), digits) for v in x]


# ---- explaining one query -----------------------------------------------------------------------------------

@dataclass
class WordEffect:
    """What leaving one word out does. route: the change of the route without the word (RouteChange: points of
    path weight per layer and router, JS bits); query_shift: 1 - cos(query, query without the word); None
    fields: a static fusion has no route."""

    index: int
    word: str
    route: RouteChange | None
    query_shift: float

    @property
    def route_points(self) -> float | None:
        """Mean over layers of the path weights' mean change, in points: the word's overall effect on the route."""
        return None if self.route is None else round(float(np.mean(self.route.points["path"])), 3)

    def to_json(self) -> dict[str, Any]:
        return {"index": self.index, "word": self.word, "route_points": self.route_points,
                "route": self.route.to_json() if self.route else None, "query_shift": round(self.query_shift, 5)}


@dataclass
class AttentionLayer:
    """The cross-modal refinement cell of one layer: which image regions read which word.

    maps [W, gh, gw]: per word, the share of each patch's attention that goes to that word's tokens (a patch's
    shares over all tokens, start and end token included, sum to 1); global_token [W]: the same for the global
    image token; start_end [gh, gw]: the share left to the start and end tokens."""

    layer: int
    maps: np.ndarray
    global_token: np.ndarray
    start_end: np.ndarray

    def to_json(self) -> dict[str, Any]:
        return {"layer": self.layer, "maps": np.round(self.maps, 4).tolist(),
                "global_token": np.round(self.global_token, 4).tolist(),
                "start_end": np.round(self.start_end, 4).tolist()}


@dataclass
class Explanation:
    reference: str
    text: str                          # the text the model read (whitespace collapsed, cut to the context)
    words: list[WordEffect]
    trace: RouterTrace | None          # the full query's route, batch 1
    attention: list[AttentionLayer]    # one per layer with a cross-modal refinement cell; [] if none / no spans
    grid: tuple[int, int]              # the image patch grid the attention maps are drawn on
    notes: list[str] = field(default_factory=list)
    timings_ms: dict[str, float] = field(default_factory=dict)
    path_labels: list[str] = field(default_factory=list)     # every path of every layer, e.g. "L2 GLG→CMR"
    path_effects: np.ndarray | None = None   # [W, paths]: path weight with the word - without it, in points

    def to_json(self) -> dict[str, Any]:
        from sdfn.retrieval import trace_to_json

        return {"reference": self.reference, "text": self.text,
                "units": {"points": "points of path weight (1 point = 0.01; weights in [0, 1), each router's part "
                                    "at most 0.5)",
                          "js_bits": "Jensen-Shannon divergence of each cell's incoming mix, bits (0 same, 1 disjoint)",
                          "query_shift": "1 - cosine between the query with and without the word",
                          "attention": "share of an image patch's attention going to the word (a patch's shares "
                                       "over all tokens sum to 1)"},
                "words": [w.to_json() for w in self.words], "routing": trace_to_json(self.trace),
                "path_effects": None if self.path_effects is None else
                {"paths": self.path_labels, "points": np.round(self.path_effects, 3).tolist()},
                "grid": list(self.grid), "attention": [a.to_json() for a in self.attention],
                "notes": self.notes, "timings_ms": {k: round(v, 1) for k, v in self.timings_ms.items()}}


def _grid(backbone, tokens: int) -> tuple[int, int]:
    size = getattr(getattr(backbone.clip, "visual", None), "grid_size", None)
    if size is not None and size[0] * size[1] == tokens:
        return int(size[0]), int(size[1])
    side = math.isqrt(tokens)
    if side * side != tokens:
        raise ConfigError(f"the image tokens ({tokens}) do not form a square patch grid; no region map to draw")
    return side, side


def explain_features(model: ComposedRetrievalModel, image: ImageFeatures, text: str,
                     reference: str = "") -> Explanation:
    """Explain the query (reference features `image`, batch 1) + `text` on `model` (see the module docstring)."""
    clock = time.perf_counter()
    backbone = model.backbone
    used, rewrites = model.read_text(text)
    words, spans, notes = word_spans(backbone, used)
    notes = [r.note() for r in rewrites] + notes
    if not words:
        raise ConfigError("give a change text to explain: an image-only search reads no words")
    if len(words) > MAX_WORDS:
        notes.append(f"only the first {MAX_WORDS} of {len(words)} words are left out one by one")
    spans = spans[:MAX_WORDS]
    shown = words[:MAX_WORDS]
    used = " ".join(words)
    texts = [used, *leave_one_out(words)[:MAX_WORDS]]
    timings: dict[str, float] = {}
    with torch.inference_mode():
        tick = time.perf_counter()
        text_features: TextFeatures = model.encode_texts(texts)
        timings["encode_text"] = _ms(tick)
        tick = time.perf_counter()
        batch = len(texts)
        repeated = ImageFeatures(image.tokens.to(model.device).expand(batch, -1, -1),
                                 image.pooled.to(model.device).expand(batch, -1))
        with recording_attention() as records:
            out = model.fusion(repeated, text_features)
        timings["fuse"] = _ms(tick)
    query = out.query.float().cpu()
    shifts = (1 - (query[1:] @ query[0])).tolist()
    trace = out.trace.detach() if out.trace is not None else None
    changes = route_changes(trace[0:1], trace[1:]) if trace is not None else [None] * (batch - 1)
    effects = [WordEffect(i, w, changes[i], float(shifts[i])) for i, w in enumerate(shown)]
    grid = _grid(backbone, image.tokens.shape[1])
    attention = _attention_layers(model, records, spans, grid) if spans else []
    labels, path_effects = [], None
    if trace is not None:
        labels = path_labels(trace)
        path_effects = torch.cat([(w[0:1] - w[1:]).flatten(1) for w in trace.weights], 1).numpy() * 100
    timings["total"] = _ms(clock)
    return Explanation(reference, used, effects, trace[0:1] if trace is not None else None, attention, grid,
                       notes, timings, labels, path_effects)


def cell_abbreviation(name: str) -> str:
    """'cross_modal_refinement' -> 'CMR'."""
    return "".join(part[0] for part in name.split("_")).upper()


def path_labels(trace: RouterTrace) -> list[str]:
    """'L{layer} FROM→TO' for every path, in the order of the layers' [K_in, K_out] weights flattened."""
    cells = [cell_abbreviation(c) for c in trace.cells]
    out = []
    for r, w in enumerate(trace.weights):
        targets = cells if w.shape[-1] == len(cells) else ["out"]
        out += [f"L{r + 1} {a}→{b}" for a in cells for b in targets]
    return out


def _attention_layers(model: ComposedRetrievalModel, records, spans: list[tuple[int, int]],
                      grid: tuple[int, int]) -> list[AttentionLayer]:
    layer_of = {}
    for r, cells in enumerate(getattr(model.fusion, "layers", [])):
        for cell in cells:
            layer_of[id(cell)] = r
    out = []
    for cell, weights in records:
        w = weights[0].float().cpu()                       # the full text's query: [1 + N, L]
        per_word = torch.stack([w[:, a:b].sum(1) for a, b in spans], 0)   # [W, 1 + N]
        special = w.sum(1) - per_word.sum(0)               # start, end (and nothing else: padding gets 0)
        gh, gw = grid
        out.append(AttentionLayer(layer_of.get(id(cell), len(out)) + 1, per_word[:, 1:].reshape(-1, gh, gw).numpy(),
                                  per_word[:, 0].numpy(), special[1:].reshape(gh, gw).numpy()))
    return out


def _ms(since: float) -> float:
    return 1000 * (time.perf_counter() - since)


# ---- drawing an attention map over the image ----------------------------------------------------------------

ATTENTION_RANGE = (0.0, 1.0)   # fixed colour range of the overlays: share of a patch's attention


def model_view(model: ComposedRetrievalModel, pixels: torch.Tensor) -> Image.Image:
    """The reference as the model saw it: its preprocessed pixels [3, H, W], normalisation undone."""
    cfg = model.backbone.preprocess_cfg
    mean = torch.tensor(cfg.get("mean", (0.0, 0.0, 0.0)))[:, None, None]
    std = torch.tensor(cfg.get("std", (1.0, 1.0, 1.0)))[:, None, None]
    array = ((pixels.float().cpu() * std + mean).clamp(0, 1) * 255).round().byte().permute(1, 2, 0).numpy()
    return Image.fromarray(array, "RGB")


def overlay(image: Image.Image, heat: np.ndarray, size: int = 192, vmax: float = ATTENTION_RANGE[1]) -> Image.Image:
    """`heat` [gh, gw] (the patch grid over the whole model input) drawn over `image` (the model's view) at
    `size` px: each patch tinted red in proportion to heat / vmax (fixed range 0..vmax, saturating above)."""
    base = image.convert("RGB").resize((size, size), Image.Resampling.BICUBIC)
    strength = np.clip(np.asarray(heat, dtype=np.float32) / vmax, 0, 1)
    alpha = Image.fromarray((strength * 200).astype(np.uint8), "L").resize((size, size), Image.Resampling.NEAREST)
    grey = base.convert("L").convert("RGB")            # greyed, so the red tint reads on any garment colour
    red = Image.new("RGB", (size, size), (220, 20, 60))
    return Image.composite(red, grey, alpha)


# ---- the Combiner on the same backbone ----------------------------------------------------------------------

def save_fusion(model: ComposedRetrievalModel, folder: Path | str, extra: dict | None = None) -> None:
    """Write `model`'s fusion module alone (safetensors + JSON with its fingerprint and its backbone's), to be
    loaded by `load_fusion` beside a model with the same backbone (the shipped Combiner, for instance)."""
    tensors = {k: v.detach().float().cpu().contiguous() for k, v in model.fusion.state_dict().items()}
    meta = {"format": FUSION_FORMAT, "version": FUSION_FORMAT_VERSION, "fusion": asdict(model.cfg.fusion),
            "dims": {"embed": model.backbone.embed_dim, "image_token": model.backbone.image_token_dim,
                     "text_token": model.backbone.text_token_dim},
            "fingerprint": tensors_fingerprint(tensors.items()),
            "backbone_fingerprint": model.backbone_fingerprint(), **(extra or {})}
    card = Path(folder) / "README.md"
    with staging_folder(Path(folder)) as tmp:
        save_safetensors(tensors, str(tmp / f"{FUSION_WEIGHTS}.safetensors"))
        (tmp / FUSION_CONFIG).write_text(json.dumps(meta, indent=2))
        if card.is_file():        # the folder's hand-written card stays; only the weights and config are replaced
            (tmp / card.name).write_bytes(card.read_bytes())


def export_fusion(checkpoint: Path | str, folder: Path | str, same_backbone_as: Path | str | None = None,
                  extra: dict | None = None) -> dict:
    """Write a trained checkpoint's fusion alone into `folder` (see save_fusion), refusing it when its backbone
    differs from the model in `same_backbone_as` (default: the shipped sdfn-tiny). Returns the written meta."""
    model = ComposedRetrievalModel.load(checkpoint)
    other = ComposedRetrievalModel.load(same_backbone_as)
    if model.backbone_fingerprint() != other.backbone_fingerprint():
        raise CheckpointError(f"{checkpoint} was trained on another backbone than {same_backbone_as or 'sdfn-tiny'} "
                              f"({model.backbone_fingerprint()} vs {other.backbone_fingerprint()}); train it on "
                              "that backbone (model.backbone.model=local-dir:FOLDER, pretrain.epochs=0).")
    provenance = {k: model.provenance[k] for k in ("train", "val", "selected_by") if k in model.provenance}
    save_fusion(model, folder, {**provenance, **(extra or {})})
    return json.loads((Path(folder) / FUSION_CONFIG).read_text())


@dataclass
class LoadedFusion:
    fusion: FusionModule
    meta: dict

    @property
    def name(self) -> str:
        return self.fusion.cfg.name


def load_fusion(folder: Path | str = SHIPPED_COMBINER, backbone: ComposedRetrievalModel | None = None) -> LoadedFusion:
    """Load a fusion module written by `save_fusion`, checking its weights against the stored fingerprint, and,
    when `backbone` (a model) is given, that it was trained on that model's backbone."""
    folder = Path(folder)
    path = folder / FUSION_CONFIG
    if not path.is_file():
        raise CheckpointError(f"{path} is missing: {folder} is not a fusion folder (sdfn.explain.save_fusion "
                              "writes one); copy it again whole.")
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
        cfg = FusionConfig(**meta["fusion"])
        dims = meta["dims"]
    except (json.JSONDecodeError, KeyError, TypeError) as err:
        raise CheckpointError(f"{path} is damaged ({err}); copy the folder again whole.") from err
    if meta.get("format") != FUSION_FORMAT:
        raise CheckpointError(f"{path} is not an {FUSION_FORMAT} file (format {meta.get('format')!r}).")
    tensors = load_tensors(folder, FUSION_WEIGHTS)
    actual = tensors_fingerprint(tensors.items())
    if actual != meta.get("fingerprint"):
        raise CheckpointError(f"the weights in {folder} do not match the fingerprint in its {FUSION_CONFIG} "
                              f"(stored {meta.get('fingerprint')}, weights {actual}): files were altered or mixed. "
                              "Copy the folder again whole.")
    if backbone is not None and meta.get("backbone_fingerprint") != backbone.backbone_fingerprint():
        raise CheckpointError(f"the fusion in {folder.name} was trained on backbone {meta.get('backbone_fingerprint')}"
                              f", but the served model's backbone is {backbone.backbone_fingerprint()}: a "
                              "comparison needs both on the same backbone. Train one on this backbone "
                              "(README: SDFN vs Combiner).")
    fusion = create_fusion(cfg, dims["embed"], dims["image_token"], dims["text_token"])
    try:
        fusion.load_state_dict(tensors, strict=True)
    except RuntimeError as err:
        raise CheckpointError(f"{folder / 'fusion.safetensors'} does not match its {FUSION_CONFIG} "
                              f"({err.args[0].splitlines()[0]}); copy the folder again whole.") from err
    return LoadedFusion(fusion.float().eval(), meta)


@dataclass
class ModelAnswer:
    """One model's answer to a query: its top-k and, when the query is an annotated pair, the target's rank among
    every item searched (1 = first; exact, not limited to the top-k)."""

    model: str
    items: list[dict[str, Any]]     # rank, id, score, image (relative to the catalog)
    target_rank: int | None
    route: dict | None               # the strongest path (a routed fusion), else None

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class ModelComparison:
    reference: str
    text: str
    category: str | None
    searched: int                    # items ranked (the scope, the reference left out)
    target: str | None
    answers: list[ModelAnswer]
    overlap: int                     # items in both top-k lists

    def summary(self) -> str:
        a, b = self.answers
        parts = [f"{len(a.items)} results each; {self.overlap} in both."]
        if self.target is not None:
            def rank(x: ModelAnswer) -> str:
                return f"rank {x.target_rank}"
            verdict = ("same rank" if a.target_rank == b.target_rank else
                       f"{a.model if a.target_rank < b.target_rank else b.model} ranks it higher")
            parts.append(f"Annotated target {self.target}: {a.model} {rank(a)}, {b.model} {rank(b)} of "
                         f"{self.searched} ({verdict}).")
        return " ".join(parts)

    def to_json(self) -> dict[str, Any]:
        return {"reference": self.reference, "text": self.text, "category": self.category, "searched": self.searched,
                "target": self.target, "overlap": self.overlap, "summary": self.summary(),
                "answers": [a.to_json() for a in self.answers]}


@dataclass
class PhrasingComparison:
    """Two phrasings of one change on one reference: both routes, and how far apart they are (B against A)."""

    texts: tuple[str, str]
    traces: tuple[RouterTrace, RouterTrace]
    change: RouteChange
    query_cosine: float
    contrast: str | None = None               # a different change on the same garment, for scale
    contrast_change: RouteChange | None = None   # how far its route is from A's

    def to_json(self) -> dict[str, Any]:
        from sdfn.retrieval import trace_to_json

        return {"texts": list(self.texts), "routing": [trace_to_json(t) for t in self.traces],
                "change": self.change.to_json(), "query_cosine": round(self.query_cosine, 5),
                "contrast": self.contrast,
                "contrast_change": self.contrast_change.to_json() if self.contrast_change else None}


class Explainer:
    """Explanations for one Retriever snapshot (its model, catalog and index). `combiner`: a fusion folder
    (default: the shipped Combiner next to sdfn-tiny), loaded on first use and refused when it was trained on
    another backbone. Thread-safe for reading: nothing is changed after the caches are filled."""

    def __init__(self, retriever: Retriever, combiner: Path | str | None = SHIPPED_COMBINER):
        self.retriever = retriever
        self.combiner_folder = Path(combiner) if combiner is not None else None
        self._combiner: LoadedFusion | None = None
        self._targets: dict[str, np.ndarray] = {}

    # references ------------------------------------------------------------------------------------------
    def reference(self, reference: Reference, pixels: bool = True) -> tuple[str, ImageFeatures, torch.Tensor | None]:
        """(name, features [1], model input pixels [3, H, W]) of a catalog id or an image; a catalog item's pixels
        (decoded from its file) only when `pixels`, else None."""
        r = self.retriever
        q = r.prepare(reference, "", 1, "all")   # scope does not matter here: no prediction for an upload
        if q.index_row is not None:
            features = r.index.cache.features([q.index_row])
            image = r.catalog.image_path(r.catalog.row_of[reference])
            return q.info.reference, features, r.model.backbone.preprocess(r.decode_image(image)) if pixels else None
        with torch.inference_mode():
            features = r.model.encode_images(q.pixels[None]).to("cpu", dtype=torch.float32)
        return q.info.reference, features, q.pixels

    def explain(self, reference: Reference, text: str, view: bool = True) -> tuple[Explanation, Image.Image | None]:
        """The explanation of reference + text, and (when `view`) the reference as the model saw it, for the
        overlays."""
        name, features, pixels = self.reference(reference, pixels=view)
        shown = model_view(self.retriever.model, pixels) if view else None
        return explain_features(self.retriever.model, features, text, name), shown

    # SDFN vs Combiner ----------------------------------------------------------------------------------------
    def combiner(self) -> LoadedFusion:
        if self._combiner is None:
            if self.combiner_folder is None:
                raise ConfigError("no Combiner to compare with: give Explainer(combiner=FOLDER).")
            self._combiner = load_fusion(self.combiner_folder, self.retriever.model)
        return self._combiner

    def _target_vectors(self, key: str, fusion: FusionModule) -> np.ndarray:
        if key not in self._targets:
            pooled = np.concatenate(list(self.retriever.index.cache.pooled_chunks()))
            with torch.inference_mode():
                self._targets[key] = fusion.embed_target(torch.from_numpy(pooled).float()).numpy()
        return self._targets[key]

    def compare_models(self, reference: Reference, text: str, k: int = 10, category: str | None = None,
                       target: str | None = None) -> ModelComparison:
        """The served model and the Combiner answer reference + text over the same items (category; None or
        "all": the whole catalog; the reference left out), ranked exactly over the same backbone features. `target`: the
        annotated answer, whose rank each model gives."""
        r = self.retriever
        text, _ = r.model.read_text(text or "")
        if not text:
            raise ConfigError("give a change text: with no text both models search by the image alone.")
        combiner = self.combiner()
        name, features, _ = self.reference(reference, pixels=False)
        index = r.index
        if category is not None and category.strip().lower() == "all":
            category = None
        categories = np.array([r.catalog.rows[r.catalog.row_of[i]]["category"] for i in index.ids])
        scope = np.ones(len(index.ids), bool) if category is None else categories == category
        if category is not None and not scope.any():
            r.catalog.rows_in_category(category)   # raises with the categories there are
        if name in index.row_of:
            scope[index.row_of[name]] = False
        if target is not None and target not in index.row_of:
            raise DataError(f"target {target!r} is not in the served catalog's index.")
        rows = np.flatnonzero(scope)
        k = min(int(k), len(rows))
        with torch.inference_mode():
            text_features = r.model.encode_texts([text])
            routed = r.model.fusion(features, text_features)
            static = combiner.fusion(features, text_features)
        served_name = r.model.cfg.fusion.name.upper() if r.model.cfg.fusion.name == "sdfn" else r.model.cfg.fusion.name
        answers = []
        combiner_key = "combiner:" + combiner.meta["fingerprint"]
        for label, fusion, out, key in ((served_name, r.model.fusion, routed, r.model.fingerprint()),
                                        ("Combiner", combiner.fusion, static, combiner_key)):
            vectors = self._target_vectors(key, fusion)[rows]
            scores = vectors @ out.query[0].float().numpy()
            order = np.argsort(-scores, kind="stable")[:k]
            items = [{"rank": n + 1, "id": index.ids[rows[i]], "score": round(float(scores[i]), 6),
                      "image": r.catalog.image_name(r.catalog.row_of[index.ids[rows[i]]])}
                     for n, i in enumerate(order)]
            rank = None
            if target is not None and scope[index.row_of[target]]:
                at = int(np.flatnonzero(rows == index.row_of[target])[0])
                rank = int((scores > scores[at]).sum()) + 1
            route = None
            if out.trace is not None:
                route = {"strongest_path": [out.trace.cells[i] for i in strongest_paths(out.trace)[0]]}
            answers.append(ModelAnswer(label, items, rank, route))
        overlap = len({i["id"] for i in answers[0].items} & {i["id"] for i in answers[1].items})
        return ModelComparison(name, text, category, len(rows), target, answers, overlap)

    # paraphrases -----------------------------------------------------------------------------------------
    def compare_phrasings(self, reference: Reference, text_a: str, text_b: str,
                          contrast: str | None = None) -> PhrasingComparison:
        """Routes of two phrasings on one reference, in one batch, and how far apart they are; `contrast` (a
        different change, optional) gives the scale: how far a change that asks for something else moves A's
        route."""
        texts = (" ".join((text_a or "").split()), " ".join((text_b or "").split()))
        missing = [name for name, text in zip(("A (the change)", "B"), texts, strict=True) if not text]
        if missing:
            raise ConfigError(f"phrasing {' and '.join(missing)} is empty: give two phrasings to compare.")
        model = self.retriever.model
        if not model.fusion.has_routes:
            raise ConfigError("the served fusion is static: every phrasing takes the same path, nothing to compare.")
        _, features, _ = self.reference(reference, pixels=False)
        batch = [*texts, *([" ".join(contrast.split())] if contrast and contrast.strip() else [])]
        with torch.inference_mode():
            tf = model.encode_texts(batch)
            n = len(batch)
            out = model.fusion(ImageFeatures(features.tokens.expand(n, -1, -1), features.pooled.expand(n, -1)), tf)
        trace = out.trace.detach()
        changes = route_changes(trace[0:1], trace[1:])
        cosine = float(F.cosine_similarity(out.query[0:1], out.query[1:2]).item())
        return PhrasingComparison(texts, (trace[0:1], trace[1:2]), changes[0], cosine,
                                  batch[2] if n == 3 else None, changes[1] if n == 3 else None)

    def paraphrases(self, reference: str, target: str, n: int = 2, seed: int = 0) -> list[str]:
        """`n` everyday phrasings (sdfn.data.synth.phrasing, training part's words) of the change from
        `reference` to `target`, two catalog items of one category with attributes (a synthetic catalog)."""
        from sdfn.data.synth.phrasing import TRAIN, catalog_attributes, phrase_request

        attributes = self._attributes(catalog_attributes)
        for item in (reference, target):
            if item not in attributes:
                raise DataError(f"no attributes for {item!r} in the served catalog: paraphrases need a synthetic "
                                "catalog's items (sdfn synth).")
        category = self.retriever.catalog.rows[self.retriever.catalog.row_of[reference]]["category"]
        rng = random.Random(f"sdfn-explain/{seed}/{reference}/{target}")
        found: list[str] = []
        for _ in range(8 * n):
            text = phrase_request(attributes[reference], attributes[target], category, TRAIN, rng).text
            if text not in found:
                found.append(text)
            if len(found) == n:
                break
        return found

    def _attributes(self, read) -> dict:
        cached = self.__dict__.get("_catalog_attributes")
        if cached is None:
            cached = self.__dict__["_catalog_attributes"] = read(self.retriever.catalog.root)
        return cached
