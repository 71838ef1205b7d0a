"""The retrieval engine: a reference garment (catalog item or image) + a modification text -> ranked catalog items.

    from sdfn import Retriever

    retriever = Retriever()                  # shipped sdfn-tiny + the default catalog (generated if missing)
    result = retriever.search("dress-000012", "is red and has long sleeves", k=10)   # among dresses (its category)
    everywhere = retriever.search("dress-000012", "is red", k=10, category="all")
    upload = retriever.search("my_photo.jpg", "is darker")   # its predicted category (query.prediction, .warning)
    for item in result.items:
        print(item.rank, item.id, item.score, item.metadata["title"])
    result.to_json()                         # {"query": ..., "results": [...], "routing": ...}

The path through it is the one training and evaluation take: reference features (from the index's feature cache
for a catalog item, else decoded by `sdfn.data.images.load_model_image` and encoded) and text features -> fusion
network (router trace, `sdfn.encode.compose_queries`) -> query vector -> FAISS -> catalog rows, within the
reference's own category unless told otherwise (sdfn.scope). A `Retriever` opens its (model, catalog, index)
snapshot at construction and never reads the index folder again. One `Retriever` may serve many threads: it runs
the model in eval mode under `torch.inference_mode` and searches with per-call FAISS parameters, so concurrent
searches answer exactly as sequential ones. Results name images relative to the catalog folder
(`ResultItem.image`); the file itself is `ResultItem.file`, which JSON answers leave out.
"""

from __future__ import annotations

import logging
import math
import os
import threading
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from sdfn.backbone import ImageFeatures
from sdfn.catalog import IMAGE_EXTENSIONS, Catalog, open_catalog
from sdfn.data.images import load_model_image
from sdfn.encode import compose_queries
from sdfn.errors import ConfigError, DataError
from sdfn.fusion import RouterTrace
from sdfn.index import CatalogIndex, IndexStatus, open_index
from sdfn.model import ComposedRetrievalModel
from sdfn.paths import default_catalog
from sdfn.reading import MAX_TEXT_CHARS, valid_text
from sdfn.routes import strongest_paths
from sdfn.scope import ALL, MAX_FIT_ITEMS, SEED, CatalogProfile, CategoryPrediction, image_summary

log = logging.getLogger(__name__)
UPLOADED = "uploaded image"
STAGES = ("preprocess", "encode_image", "encode_text", "fuse", "search")
Reference = str | Path | Image.Image | bytes


# ---- results -------------------------------------------------------------------------------------

@dataclass
class ResultItem:
    rank: int
    id: str
    score: float
    image: str                 # relative to the catalog folder (posix); the file name for one kept outside it
    file: Path                 # the image file itself, for this process (not part of the JSON answer)
    metadata: dict[str, str]   # every catalog column but id and image (category, title, attributes, ...)

    def to_json(self) -> dict[str, Any]:
        fixed = {"rank": self.rank, "id": self.id, "score": round(self.score, 6), "image": str(self.image)}
        return {**fixed, **{k: v for k, v in self.metadata.items() if k not in fixed}}


@dataclass
class QueryInfo:
    """What was asked and what was actually searched, with notes wherever the two differ."""

    reference: str                 # the catalog item id, or "uploaded image"
    reference_image: str | None    # catalog item: its image relative to the catalog; a file: its name; else None
    text: str                      # as given (past sdfn.reading.MAX_TEXT_CHARS: its start and "...")
    text_used: str                 # what the model read: stripped, truncated to its context; '' for image-only
    mode: str                      # "composed" or "image-only"
    k: int                         # as asked; `results` may be fewer (see notes)
    category: str | None           # the category searched; None: the whole catalog
    exclude_reference: bool
    notes: list[str] = field(default_factory=list)
    # why `category` was searched: "asked" (a category or "all" was given), "reference" (a catalog reference's own
    # category), "predicted" (an upload's predicted category), "uncertain" (an upload whose category could not
    # be told or that is out of catalog: the whole catalog)
    category_source: str = "asked"
    prediction: dict | None = None  # an upload's CategoryPrediction.to_json(); None for a catalog reference
    warning: str | None = None      # said to the user before the results (an upload unlike every catalog item)
    # words the model never learnt, read as ones it knows (sdfn.reading; the checkpoint's reading.json):
    # [{"original", "read", "kind": "colour" | "spelling" | "negation" | "shorthand" | "form" | "glossary" |
    # "relative" | "removal" | "cut"}]; each also
    # gets a note ("cut": a text over sdfn.reading.MAX_TEXT_CHARS, "read" the characters kept, "original" what
    # was left out, shortened)
    rewrites: list[dict] = field(default_factory=list)
    # words of text_used that the model's training texts never taught it (sdfn.reading.Reader.unknown_words): it
    # cannot search by them (a price, a brand, a material the catalog lacks, filler); said in a note. Empty
    # without a reading.json (a pretrained text tower knows English)
    unknown_words: list[str] = field(default_factory=list)


@dataclass
class SearchResult:
    query: QueryInfo
    items: list[ResultItem]
    trace: RouterTrace | None             # this query's router trace, tensors [1, K_in, K_out]; None if static
    timings_ms: dict[str, float] = field(default_factory=dict)  # per stage; for search_batch, the whole batch's

    def routing(self) -> dict | None:
        return trace_to_json(self.trace)

    def to_json(self) -> dict[str, Any]:
        """{"query": {...}, "results": [{"rank", "id", "score", "image", <catalog columns>}], "routing": ...}
        (routing: see `trace_to_json`)."""
        return {"query": vars(self.query).copy(), "results": [item.to_json() for item in self.items],
                "routing": self.routing()}

    def to_table(self) -> str:
        q = self.query
        head = f"query: reference {q.reference}" + (f' + text "{q.text_used}"' if q.text_used else " (image only)")
        head += f"; k={q.k}, " + (f"category {q.category}" if q.category else "all categories")
        head += f" ({_SOURCE_WORDS[q.category_source]})"
        lines = [head] + ([f"warning: {q.warning}"] if q.warning else []) + [f"note: {n}" for n in q.notes]
        routing = self.routing()
        if routing is not None:
            lines.append("routing (strongest path): " + " -> ".join(routing["strongest_path"]))
        columns = ["rank", "score", "id", "category"] + (["title"] if any("title" in i.metadata for i in self.items)
                                                         else ["image"])
        rows = [[str(i.rank), f"{i.score:.4f}", i.id, i.metadata.get("category", ""),
                 i.metadata.get("title", "") if columns[-1] == "title" else i.image] for i in self.items]
        widths = [max(len(c), *(len(r[j]) for r in rows)) if rows else len(c) for j, c in enumerate(columns)]
        lines.append("  ".join(c.ljust(w) for c, w in zip(columns, widths, strict=True)).rstrip())
        lines += ["  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)).rstrip() for r in rows]
        return "\n".join(lines)


def trace_to_json(trace: RouterTrace | None) -> dict | None:
    """A one-query router trace as JSON (None stays None: static fusions and image-only searches route nothing).

    {"mode": "msr" | "shared" | "fixed",
     "cells": [cell names, the K of every layer],
     "layers": [{"layer": r (1-based), "from": [K cell names], "to": [K cell names] or ["output"] for the last,
                 "weights":  K_in x K_out path weights in [0, 1) (msr: image part + text part),
                 "incoming": K_in x K_out, each column the mix cell j receives (sums to 1),
                 "image": K_in x K_out image-router part or null, "text": the text-router part or null}],
     "strongest_path": one cell per layer, following the largest incoming share back from the output}
    Numbers are rounded to 4 decimals.
    """
    if trace is None:
        return None

    def matrix(xs: list[torch.Tensor] | None, r: int) -> list | None:
        return None if xs is None else np.round(xs[r][0].double().cpu().numpy(), 4).tolist()

    cells = list(trace.cells)
    layers = [{"layer": r + 1, "from": cells, "to": cells if r < len(trace.weights) - 1 else ["output"],
               "weights": matrix(trace.weights, r), "incoming": matrix(trace.incoming, r),
               "image": matrix(trace.image, r), "text": matrix(trace.text, r)} for r in range(len(trace.weights))]
    return {"mode": trace.mode, "cells": cells, "layers": layers, "strongest_path": strongest_path(trace)}


def strongest_path(trace: RouterTrace) -> list[str]:
    """The first query's strongest path (sdfn.routes.strongest_paths) as cell names."""
    return [trace.cells[i] for i in strongest_paths(trace)[0]]


# ---- the engine ------------------------------------------------------------------------------------

MAX_K = 1000  # results one search may return (the demo's API allows the same)


def whole_number(name: str, value: Any, low: int, high: int) -> int:
    """`value` as an int when it is a whole number from `low` to `high` (2.0 and numpy numbers too; 2.5, 1e300,
    NaN, True and text are refused with a message naming `name` and the range)."""
    ok = not isinstance(value, bool | np.bool_) and isinstance(value, int | float | np.integer | np.floating) \
        and math.isfinite(value) and float(value).is_integer() and low <= value <= high
    if not ok:
        raise ConfigError(f"{name} must be a whole number from {low:,} to {high:,}, got {value!r}.")
    return int(value)


def check_k(k: Any) -> int:
    """`k` as an int when it is a whole number from 1 to MAX_K (see whole_number)."""
    return whole_number("k", k, 1, MAX_K)


@dataclass
class PreparedQuery:
    """One validated query, its reference resolved: a catalog item (row in the index) or preprocessed pixels.

    Made by `Retriever.prepare` and run by that same retriever's `run_batch` (an index row belongs to the
    snapshot it was prepared against)."""

    info: QueryInfo
    index_row: int | None = None        # catalog reference: its row in the index / feature cache
    pixels: torch.Tensor | None = None  # uploaded reference: [3, H, W] preprocessed
    tokens: torch.Tensor | None = None  # composed query: the text's token ids [L], tokenised once
    k: int = 0                          # after clamping
    scope_pending: bool = False         # an upload searching its predicted category: decided once it is encoded
    preprocess_ms: float = 0.0          # time `prepare` took (decoding an upload, tokenising)


class Retriever:
    """Composed retrieval over a catalog: one (model, catalog, index) snapshot, opened at construction.

    checkpoint: a checkpoint folder (default: the shipped sdfn-tiny);
    catalog: a catalog folder (default: sdfn.paths.default_catalog(), i.e. SDFN_HOME/catalogs/synthetic, the
    checkout's catalogs/synthetic, or ~/.cache/sdfn/catalogs/synthetic; generated with seed 0 when missing);
    index_type: auto | flat | hnsw | ivfpq (sdfn.index); fp16: float16 vector storage; both left as None keep
    what the catalog's index was built with (a new index: auto, float32);
    threads: torch threads (default: torch's, capped at the cores this process may use). torch and FAISS share
    one OpenMP runtime, so this also sets FAISS's threads. On a busy machine, 1 thread gives steadier
    latency for small models (see benchmarks/latency.py --threads);
    verify: how the index files are checked at open (sdfn.index.open_index): 'changed' (sizes, and the sha256 of
    files whose mtime changed) or 'full' (every file's sha256: ~0.4 s at 6k items; what a server should use).

    Construction loads the model and the catalog and opens the index (building or updating it first when it is
    missing or stale): everything a search reads is in memory or in files opened then, so an index that
    another process rebuilds later (another model, say) does not change what this retriever answers. An index
    built by another model is rebuilt for this one at construction (sdfn.index.open_index), so a retriever
    always serves its own model's index. To serve another model, make a new Retriever.
    """

    def __init__(self, checkpoint: Path | str | None = None, catalog: Path | str | None = None,
                 device: str = "cpu", index_type: str | None = None, progress: bool = True, fp16: bool | None = None,
                 threads: int | None = None, verify: str = "changed"):
        self.checkpoint = Path(checkpoint) if checkpoint is not None else None
        self.catalog_path = Path(catalog).resolve() if catalog is not None else default_catalog()
        self.device, self.index_type, self.fp16 = device, index_type, fp16
        self.progress, self.threads = progress, threads
        _set_threads(threads)
        model = ComposedRetrievalModel.load(self.checkpoint, device=device).eval()
        catalog_ = _open_or_generate(self.catalog_path, progress)
        index, status = open_index(catalog_, model, index_type, fp16, progress=progress, verify=verify)
        self.index_status: IndexStatus = status
        log.info("%s", status.message)
        self.model: ComposedRetrievalModel = model
        self.index: CatalogIndex = index
        self.catalog: Catalog = catalog_
        # Index row -> catalog row, and the searchable items per category, once (not per query or result).
        self._catalog_row = np.array([catalog_.row_of[i] for i in index.ids], dtype=np.int64)
        self._category_size = Counter(catalog_.rows[r]["category"] for r in self._catalog_row.tolist())
        self._profile: CatalogProfile | None = None     # fitted on the first upload (see category_profile)
        self._shown: dict[int, tuple[str, Path, dict[str, str]]] = {}  # index row -> image name, file, metadata
        self._profile_lock = threading.Lock()

    @property
    def fingerprint(self) -> str:
        """Fingerprint of the model whose index this retriever searches (the snapshot it serves)."""
        return self.index.manifest["model"]["fingerprint"]

    def category_profile(self) -> CatalogProfile:
        """The catalog's image profile (sdfn.scope.CatalogProfile) that predicts an upload's category and says when
        it is out of catalog; fitted from the index's feature cache on first use (about a second at 10k items)."""
        with self._profile_lock:
            if self._profile is None:
                clock = time.perf_counter()
                rows = np.arange(len(self.index))
                if len(rows) > MAX_FIT_ITEMS:
                    rows = np.sort(np.random.default_rng(SEED).choice(rows, MAX_FIT_ITEMS, replace=False))
                summaries = torch.cat([image_summary(self.index.cache.features(rows[a:a + 256].tolist()))
                                       for a in range(0, len(rows), 256)])
                categories = [self.catalog.rows[r]["category"] for r in self._catalog_row[rows].tolist()]
                self._profile = CatalogProfile.fit(summaries, categories)
                log.info("catalog image profile: %d items, %d categories, out-of-catalog threshold %s (%.0f ms)",
                         len(rows), len(self._profile.categories), self._profile.threshold, _ms_since(clock))
            return self._profile

    def predict_category(self, reference: Reference) -> CategoryPrediction:
        """The predicted category of a reference (an image file, PIL image or bytes; a catalog item id works too),
        with its confidence and whether the image is out of catalog (sdfn.scope). A search of an upload without a
        category asked searches the predicted one (when confident; the result's `query.prediction` holds this)."""
        q = self._resolve_reference(reference)
        with torch.inference_mode():
            features = self._reference_features([q])
        return self.category_profile().predict(image_summary(features))[0]

    def decode_image(self, source: str | Path | bytes | Image.Image) -> Image.Image:
        """An image decoded as a search decodes an uploaded reference (sdfn.data.images.load_model_image at
        this model's input size): a bounded RGB PIL image, or an ImageError naming the file and the problem."""
        return load_model_image(source, self.model.backbone.image_size)

    # searching -------------------------------------------------------------------------------------

    def search(self, reference: Reference, text: str = "", k: int = 10, category: str | None = None,
               exclude_reference: bool = True) -> SearchResult:
        """Rank catalog items for `reference` (item id, image path, PIL image or image bytes) changed by `text`.

        Empty or whitespace text searches with the reference alone ("more like this"). k is a whole number
        from 1 to MAX_K; k larger than the catalog (or category) returns all of it; the result's notes say so,
        and when text was truncated.

        category: None (default) searches the reference's own category: a catalog item's, or an uploaded image's
        predicted category (sdfn.scope: when the prediction is at least MIN_CONFIDENCE sure and the image is not
        out of catalog; else the whole catalog). "all" searches the whole catalog; a name searches that category.
        The result's `query` says which (`category`, `category_source`), an upload's prediction
        (`query.prediction`) and, for an image unlike every catalog item, a `warning`.
        """
        return self.run_batch([self.prepare(reference, text, k, category, exclude_reference)])[0]

    def search_batch(self, queries: Sequence[dict[str, Any]]) -> list[SearchResult]:
        """Many searches at once (keys as `search`'s arguments); images and texts are encoded in batches.
        One bad query fails the whole call (ConfigError/DataError/ImageError naming its position's problem);
        to keep the good ones, `prepare` each query yourself and `run_batch` those that prepared."""
        prepared = []
        for position, query in enumerate(queries):
            unknown = set(query) - _QUERY_KEYS
            if unknown or "reference" not in query:
                raise ConfigError(f"query {position}: give 'reference' and optionally text, k, category, "
                                  f"exclude_reference (unknown keys: {', '.join(sorted(unknown)) or 'none'})")
            prepared.append(self.prepare(**query))
        return self.run_batch(prepared)

    def prepare(self, reference: Reference, text: str | None = "", k: int = 10, category: str | None = None,
                exclude_reference: bool = True) -> PreparedQuery:
        """Check one query and resolve its reference (arguments as `search`'s): a catalog item becomes its index
        row, an upload is decoded and preprocessed here (on the caller's thread), the text is tokenised. A bad
        query raises here (ConfigError, DataError or ImageError), so it never joins a batch. Run the result with
        this retriever's `run_batch`."""
        clock = time.perf_counter()
        text = text or ""
        if not isinstance(text, str):
            raise ConfigError(f"text must be a string, got {type(text).__name__}")
        text = valid_text(text)
        k = check_k(k)
        q = self._resolve_reference(reference)
        # as given; past MAX_TEXT_CHARS (where the model's reading cuts it, and says so) not echoed back whole
        q.info.text = text if len(text) <= MAX_TEXT_CHARS else text[:MAX_TEXT_CHARS] + "..."
        q.info.k = k
        q.info.exclude_reference = bool(exclude_reference)
        self._resolve_scope(q, category)
        self._prepare_text(q, text)
        if not q.scope_pending:
            q.k = self._clamp_k(q)
        q.preprocess_ms = _ms_since(clock)
        return q

    def run_batch(self, prepared: Sequence[PreparedQuery]) -> list[SearchResult]:
        """Answer queries made by this retriever's `prepare`, in order: the uploaded references are encoded
        together and the text encoder and fusion run once for all of them; FAISS then ranks each query (its own
        k and category). Every result's timings are the batch's (preprocess: the prepares' time summed)."""
        if not prepared:
            return []
        timings = dict.fromkeys(STAGES, 0.0)
        timings["preprocess"] = sum(q.preprocess_ms for q in prepared)
        prepared = list(prepared)
        with torch.inference_mode():
            clock = time.perf_counter()
            references = self._reference_features(prepared)
            self._predict_uploads(prepared, references)
            timings["encode_image"] = _ms_since(clock)
            vectors, traces = self._query_vectors(prepared, references, timings)
            clock = time.perf_counter()
            results = [self._rank(q, vectors[i:i + 1], traces[i]) for i, q in enumerate(prepared)]
            timings["search"] = _ms_since(clock)
        timings["total"] = sum(timings[s] for s in STAGES)
        for result in results:
            result.timings_ms = dict(timings)
        return results

    def _resolve_reference(self, reference: Reference) -> PreparedQuery:
        index, catalog = self.index, self.catalog
        if (isinstance(reference, str) and not reference.strip()) or (isinstance(reference, Path) and
                                                                      str(reference) == "."):  # Path("") is "."
            raise ConfigError(f"empty reference {str(reference)!r}: give a catalog item id (e.g. {catalog.ids[0]}), "
                              f"the path of an image file, a PIL image or image bytes")
        if isinstance(reference, Image.Image | bytes | bytearray):
            source = bytes(reference) if isinstance(reference, bytearray) else reference
            return PreparedQuery(_info(UPLOADED, None), pixels=self._pixels(source))
        if isinstance(reference, str) and reference in catalog.row_of:
            if reference in index.unreadable:
                raise DataError(f"catalog item '{reference}' is not searchable: {index.unreadable[reference]}. "
                                f"Fix the file, then run `sdfn index --catalog {catalog.root}`.")
            image = catalog.image_name(catalog.row_of[reference])
            return PreparedQuery(_info(reference, image), index_row=index.row_of[reference])
        if isinstance(reference, Path) or (isinstance(reference, str) and _looks_like_path(reference)):
            return PreparedQuery(_info(UPLOADED, Path(reference).name), pixels=self._pixels(reference))
        if isinstance(reference, str):
            catalog.find(reference)  # raises: unknown id, with close matches and where ids come from
        raise ConfigError(f"reference must be a catalog item id, an image path, a PIL image or image bytes; "
                          f"got {type(reference).__name__}")

    def _resolve_scope(self, q: PreparedQuery, category: str | None) -> None:
        info = q.info
        if category is not None and not isinstance(category, str):
            raise ConfigError(f"category must be a category name or '{ALL}', got {type(category).__name__}")
        name = (category or "").strip()
        if name:
            info.category = None if name.lower() == ALL else self.catalog.category_named(name)
            info.category_source = "asked"
        elif q.index_row is not None:
            own = self.catalog.rows[self.catalog.row_of[info.reference]].get("category") or None
            info.category, info.category_source = own, "reference"
            if own is None:
                info.notes.append("the reference has no category: searched the whole catalog")
        else:
            q.scope_pending, info.category_source = True, "predicted"

    def _predict_uploads(self, prepared: list[PreparedQuery], references: ImageFeatures) -> None:
        """Every upload's predicted category and out-of-catalog check; the default scope of those that wait for
        it (a category too uncertain, or an image out of catalog, searches the whole catalog)."""
        uploads = [i for i, q in enumerate(prepared) if q.pixels is not None]
        if not uploads:
            return
        predictions = self.category_profile().predict(image_summary(references[torch.tensor(uploads)]))
        for i, prediction in zip(uploads, predictions, strict=True):
            q = prepared[i]
            info = q.info
            info.prediction, info.warning = prediction.to_json(), prediction.warning()
            if not q.scope_pending:
                continue
            info.category = prediction.scope
            if prediction.out_of_catalog:
                info.category_source = "uncertain"
                info.notes.append("the image is out of catalog: searched all categories")
            elif info.category is None:
                info.category_source = "uncertain"
                info.notes.append(f"predicted category {prediction.category} is only {prediction.confidence:.0%} "
                                  "sure: searched all categories")
            q.k, q.scope_pending = self._clamp_k(q), False

    def _pixels(self, source: str | Path | bytes | Image.Image) -> torch.Tensor:
        return self.model.backbone.preprocess(self.decode_image(source))

    def _prepare_text(self, q: PreparedQuery, text: str) -> None:
        info = q.info
        stripped = " ".join(text.split())   # the whole text: info.text may be only its start
        if not stripped:
            info.mode, info.text_used = "image-only", ""
            info.notes.append('empty text: image-only search (items most like the reference, "more like this")')
            return
        read, rewrites = self.model.read_text(stripped)
        info.rewrites = [r.to_json() for r in rewrites]
        info.notes += [r.note() for r in rewrites]
        if self.model.reader is not None:
            info.unknown_words = self.model.reader.unknown_words(read)
            if info.unknown_words:
                shown = [f"'{w[:30]}...'" if len(w) > 30 else f"'{w}'" for w in info.unknown_words[:12]]
                more = len(info.unknown_words) - len(shown)
                info.notes.append(f"not understood, so not searched for (words this model never learnt; they "
                                  f"may still nudge the results): {', '.join(shown)}"
                                  + (f" and {more} more" if more else ""))
        stripped = read
        info.mode, info.text_used = "composed", stripped
        backbone = self.model.backbone
        q.tokens = backbone.tokenize([stripped])[0]
        if int(q.tokens[-1]) == 0:  # padding left over: the text fits, with its start and end tokens
            return
        encode = getattr(backbone.tokenizer, "encode", None)
        if encode is None:  # a Hugging Face tokenizer: no word-piece view, so no truncation report
            return
        pieces = encode(stripped)  # only for a text that fills the context: was it cut, and where?
        room = backbone.context_length - 2  # start and end tokens take two places
        if len(pieces) > room:
            info.text_used = backbone.tokenizer.decode(pieces[:room]).strip()
            info.notes.append(f"text truncated to {room} tokens (the model reads {backbone.context_length} "
                              f"including start and end; the text had {len(pieces)})")

    def _clamp_k(self, q: PreparedQuery) -> int:
        info, catalog = q.info, self.catalog
        excluded = info.exclude_reference and q.index_row is not None
        if info.category is None:
            available, where = len(self.index), "the catalog"
        else:
            where = f"category '{info.category}'"
            if info.category not in self._category_size:
                catalog.rows_in_category(info.category)  # raises, listing the categories, when it has no items
                raise DataError(f"{where} has no searchable items (its images could not be read; see "
                                f"{self.index.folder / 'unreadable.txt'}).")
            available = self._category_size[info.category]
            if excluded:
                excluded = catalog.rows[catalog.row_of[info.reference]]["category"] == info.category
        available -= int(excluded)
        if available < 1:
            raise DataError(f"nothing to return: {where} holds only the reference itself; search with "
                            "exclude_reference=False or another category.")
        if info.k > available:
            info.notes.append(f"k larger than {where}: returning all {available} items")
            return available
        return info.k

    def _reference_features(self, prepared: list[PreparedQuery]) -> ImageFeatures:
        """Features of every query's reference, in query order: cache rows for catalog items, encoded uploads."""
        index, model = self.index, self.model
        if len(prepared) == 1 and prepared[0].index_row is not None:   # one catalog reference: its cache row
            return index.cache.features([prepared[0].index_row])
        cached = [i for i, q in enumerate(prepared) if q.index_row is not None]
        uploaded = [i for i, q in enumerate(prepared) if q.pixels is not None]
        parts, order = [], []
        if cached:
            parts.append(index.cache.features([prepared[i].index_row for i in cached]))
            order += cached
        if uploaded:
            pixels = torch.stack([prepared[i].pixels for i in uploaded]).to(model.device)
            parts.append(model.encode_images(pixels).to("cpu", dtype=torch.float32))
            order += uploaded
        return ImageFeatures.cat(parts)[torch.tensor(np.argsort(order, kind="stable"))]

    def _query_vectors(self, prepared: list[PreparedQuery], references: ImageFeatures,
                       timings: dict[str, float]) -> tuple[np.ndarray, list[RouterTrace | None]]:
        """[Q, E] query vectors: composed for queries with text, the reference's target embedding otherwise."""
        model = self.model
        vectors = torch.zeros(len(prepared), model.backbone.embed_dim)
        traces: list[RouterTrace | None] = [None] * len(prepared)
        composed = [i for i, q in enumerate(prepared) if q.info.mode == "composed"]
        alone = [i for i, q in enumerate(prepared) if q.info.mode == "image-only"]
        if composed:
            tokens = torch.stack([prepared[i].tokens for i in composed])
            queries, trace = compose_queries(model, references[torch.tensor(composed)], tokens,
                                             batch_size=len(composed), timings=timings)
            vectors[composed] = queries
            if trace is not None:
                for j, i in enumerate(composed):
                    traces[i] = trace[j:j + 1]
        if alone:
            clock = time.perf_counter()
            vectors[alone] = model.embed_target(references.pooled[torch.tensor(alone)].to(model.device)).float().cpu()
            timings["fuse"] += _ms_since(clock)
        return vectors.numpy(), traces

    def _rank(self, q: PreparedQuery, vector: np.ndarray, trace: RouterTrace | None) -> SearchResult:
        index, catalog = self.index, self.catalog
        drop = q.index_row if q.info.exclude_reference else None
        scores, rows = index.search(vector, q.k + (drop is not None), category=q.info.category)
        items = []
        for score, row in zip(scores[0].tolist(), rows[0].tolist(), strict=True):
            if row < 0 or row == drop or len(items) == q.k:
                continue
            shown = self._shown.get(row)
            if shown is None:   # an item's names are worked out once (path arithmetic is most of a result's cost)
                at = int(self._catalog_row[row])
                shown = self._shown[row] = (catalog.image_name(at), catalog.image_path(at), catalog.metadata(at))
            items.append(ResultItem(len(items) + 1, index.ids[row], score, shown[0], shown[1], dict(shown[2])))
        return SearchResult(q.info, items, trace)


_QUERY_KEYS = {"reference", "text", "k", "category", "exclude_reference"}
_SOURCE_WORDS = {"asked": "as asked", "reference": "the reference's category", "predicted": "predicted from the image",
                 "uncertain": "the image's category is uncertain"}


def _info(reference: str, image: str | None) -> QueryInfo:
    return QueryInfo(reference=reference, reference_image=image, text="", text_used="", mode="composed", k=0,
                     category=None, exclude_reference=True)


def _looks_like_path(reference: str) -> bool:
    return os.sep in reference or "/" in reference or Path(reference).suffix.lower() in IMAGE_EXTENSIONS \
        or Path(reference).exists()


def _ms_since(start: float) -> float:
    return 1000 * (time.perf_counter() - start)


def _set_threads(threads: int | None) -> None:
    if threads is not None:
        torch.set_num_threads(threads)
        return
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    if torch.get_num_threads() > cores:  # containers often report the host's cores to torch
        torch.set_num_threads(cores)


def _open_or_generate(path: Path, progress: bool) -> Catalog:
    """Open a catalog; the default synthetic one is generated first when it is missing."""
    if path == default_catalog() and not (path / "catalog.csv").is_file():
        from sdfn.data.synth import generate_catalog

        log.info("generating the synthetic catalog in %s (once)", path)
        generate_catalog(path, seed=0, progress=progress)
    return open_catalog(path)
