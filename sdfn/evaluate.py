"""Recall@K for composed retrieval: model-agnostic, every protocol choice explicit, no image silently dropped.

A model plugs in through `QueryEncoder` (gallery images -> vectors; reference image + text -> vectors).
`evaluate` builds the queries of a split (`build_queries`), encodes them, ranks the gallery exactly
(`rank`), and reports per-category R@K, the category means and FashionIQ's (R@10+R@50)/2. Images that
cannot be read are taken out of the gallery and listed; queries that cannot be answered (reference
unreadable, target missing or unreadable, an empty caption under captions="single") are skipped, counted,
listed and logged; recall is over the rest.
"""

from __future__ import annotations

import logging
import math
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Protocol

import torch

from sdfn.data.base import RetrievalDataset, Triplet, unique
from sdfn.errors import ConfigError, DataError

log = logging.getLogger(__name__)

GALLERIES = ("split", "val-subset")
CAPTION_MODES = ("joined", "both-orders", "single")
DEFAULT_KS = (1, 5, 10, 50)
DEFAULT_TOP = 50
SATISFACTION_KS = (1, 5)  # sat@k reported next to R@K
R10_R50 = "(R@10+R@50)/2"  # FashionIQ's single summary number
# Shoes and Fashion200k papers rank the gallery without the query's own image; FashionIQ's reference
# code (CLIP4Cir, SPRC) keeps it.
_EXCLUDES_REFERENCE = {"fashioniq": False, "shoes": True, "fashion200k": True}
_CHUNK_ELEMENTS = 1 << 22  # query x gallery scores per chunk: 16 MiB of float32, so 10k x 10k fits easily
_STRIP = ".?, "  # what CLIP4Cir strips from both ends of each caption before joining

# Why a query could not be evaluated (the report counts each kind).
EMPTY_CAPTION = "empty caption"  # captions="single" on an entry whose caption is empty (FashionIQ has 3 in val)
TARGET_NOT_IN_GALLERY = "target not in gallery"
TARGET_FAILED = "target image failed"
REFERENCE_FAILED = "reference image failed"
ONLY_REFERENCE = "only positive is the excluded reference"


@dataclass
class EncodeResult:
    """What an encoder returns: one row per item; rows listed in `failed` are ignored."""

    features: torch.Tensor  # [N, E], L2-normalised
    failed: dict[int, str] = field(default_factory=dict)  # row -> reason (e.g. an ImageError message)


class QueryEncoder(Protocol):
    """The model side of evaluation."""

    def encode_gallery(self, image_paths: Sequence[Path]) -> EncodeResult: ...

    def encode_queries(self, reference_paths: Sequence[Path], texts: Sequence[str]) -> EncodeResult: ...


@dataclass(frozen=True)
class EvalProtocol:
    """How queries and the gallery are formed. Published numbers differ mostly by these choices.

    gallery: "split" = every image of the category split (CLIP4Cir/SPRC); "val-subset" = only the images
        that are a reference or a target in the split's triplets (VAL/CosMo).
    captions: "joined" = one query "c1 and c2" per triplet (CLIP4Cir); "both-orders" = two queries,
        "c1 and c2" and "c2 and c1", recall averaged over queries; "single" = one query per caption.
        Every triplet forms the same number of queries, so each weighs the same in the mean: under
        "both-orders" a triplet whose two orders read the same (identical captions, or one empty: 21 of
        FashionIQ's val triplets) still counts twice; under "single" an empty caption's query is formed,
        then skipped as EMPTY_CAPTION (counted, listed and logged like any skipped query), never ranked
        with an empty text.
    exclude_reference: rank the gallery without the query's reference image.
    """

    gallery: str = "split"
    captions: str = "joined"
    exclude_reference: bool = False
    ks: tuple[int, ...] = DEFAULT_KS

    def __post_init__(self) -> None:
        if self.gallery not in GALLERIES:
            raise ConfigError(f"evaluation protocol: gallery={self.gallery!r}; "
                              f"use one of {', '.join(GALLERIES)}")
        if self.captions not in CAPTION_MODES:
            raise ConfigError(f"evaluation protocol: captions={self.captions!r}; "
                              f"use one of {', '.join(CAPTION_MODES)}")
        if not isinstance(self.exclude_reference, bool):
            raise ConfigError(f"evaluation protocol: exclude_reference={self.exclude_reference!r}; "
                              f"use true or false")
        ks = tuple(self.ks) if isinstance(self.ks, list | tuple) else ()
        valid = all(isinstance(k, int) and not isinstance(k, bool) and k >= 1 for k in ks)
        if not ks or not valid or len(set(ks)) < len(ks):
            raise ConfigError(f"evaluation protocol: ks={self.ks!r}; give distinct positive integers, "
                              f"e.g. 1, 10, 50")
        object.__setattr__(self, "ks", tuple(sorted(ks)))

    @classmethod
    def default_for(cls, dataset_name: str) -> EvalProtocol:
        """The protocol each benchmark's papers report: whole split gallery, joined captions."""
        if dataset_name not in _EXCLUDES_REFERENCE:
            raise ConfigError(f"no default evaluation protocol for data set {dataset_name!r}; "
                              f"known: {', '.join(_EXCLUDES_REFERENCE)}")
        return cls(exclude_reference=_EXCLUDES_REFERENCE[dataset_name])

    def describe(self) -> str:
        return (f"gallery={self.gallery}, captions={self.captions}, "
                f"exclude_reference={self.exclude_reference}, ks={','.join(map(str, self.ks))}")


@dataclass(frozen=True)
class Query:
    """One ranked query: a triplet's reference with one text; positives index the gallery list."""

    triplet: Triplet
    text: str
    positives: frozenset[int]  # the exact target; Fashion200k: every image with the target caption
    reference_index: int | None  # the reference's place in the gallery, None when it is not there

    @property
    def reference(self) -> str:
        return self.triplet.reference

    @property
    def target(self) -> str | None:
        return self.triplet.target


@dataclass(frozen=True)
class Ranking:
    first_positive_rank: torch.Tensor  # [Q] int64: 1-based rank of the best-ranked positive
    top: torch.Tensor  # [Q, min(top, G)] int64 gallery indices, best first; -1 where the reference was masked


@dataclass(frozen=True)
class SkippedQuery:
    reference: str
    target: str | None
    text: str
    kind: str  # one of the reasons above
    detail: str  # e.g. the ImageError message


@dataclass(frozen=True)
class FailedImage:
    image_id: str
    reason: str


@dataclass(frozen=True)
class QueryRanking:
    """One evaluated query and what the model returned, for per-query analysis (attribute benchmarks)."""

    category: str
    reference: str
    text: str
    target: str | None
    rank: int  # 1-based rank of the best-ranked positive
    top_ids: tuple[str, ...]
    triplet: Triplet


# Does gallery item `image_id` answer this query? (e.g. the synthetic catalog's asked attribute values)
Answers = Callable[[QueryRanking, str], bool]


@dataclass
class CategoryResult:
    category: str
    recall: dict[int, float]  # K -> percent over evaluated queries; NaN when none could be evaluated
    queries: int  # all queries the protocol forms
    evaluated: int
    skipped: list[SkippedQuery]
    gallery_size: int  # images ranked, after removing unreadable ones
    gallery_failed: list[FailedImage]
    rankings: list[QueryRanking] | None = None


@dataclass
class EvalReport:
    dataset: str
    split: str
    protocol: EvalProtocol
    categories: list[CategoryResult]

    def mean_recall(self) -> dict[int, float]:
        """Unweighted mean over categories (FashionIQ convention); NaN if any category has no recall."""
        return {k: sum(c.recall[k] for c in self.categories) / len(self.categories) for k in self.protocol.ks}

    def score(self) -> float | None:
        """(R@10 + R@50) / 2 of the category means; None when the protocol does not compute both."""
        return _r10_r50(self.mean_recall())

    def category_satisfaction(self, answers: Answers, ks: Sequence[int] = SATISFACTION_KS
                              ) -> dict[str, dict[int, float]]:
        """sat@k per category in percent: the mean over its evaluated queries of `query_satisfaction`; NaN
        where a category has none. Needs `evaluate(..., return_rankings=True)`."""
        for k in ks:
            if not 1 <= k <= DEFAULT_TOP:
                raise ValueError(f"sat@{k}: k must be 1..{DEFAULT_TOP}, the length of the evaluated top lists")
        missing = [c.category for c in self.categories if c.rankings is None]
        if missing:
            raise ValueError(f"sat@k of {self.dataset} {self.split} needs the top lists of every query; "
                             f"evaluate with return_rankings=True (missing for {', '.join(missing)})")
        return {c.category: {k: 100.0 * sum(query_satisfaction(r, answers, k) for r in c.rankings) / len(c.rankings)
                             if c.rankings else float("nan") for k in ks}
                for c in self.categories}

    def mean_satisfaction(self, answers: Answers, ks: Sequence[int] = SATISFACTION_KS) -> dict[int, float]:
        """sat@k in percent, the unweighted mean over categories like `mean_recall` (NaN if a category has
        no evaluated query)."""
        per_category = self.category_satisfaction(answers, ks)
        return {k: sum(c[k] for c in per_category.values()) / len(per_category) for k in ks}

    def to_json(self, max_examples: int = 20) -> dict[str, Any]:
        """A JSON-ready summary: recalls, counts, and up to `max_examples` skipped/failed ids per category."""
        mean = self.mean_recall()
        report: dict[str, Any] = {
            "dataset": self.dataset,
            "split": self.split,
            "protocol": asdict(self.protocol),
            "categories": {c.category: _category_json(c, max_examples) for c in self.categories},
            "mean": _recall_json(mean),
            "queries": sum(c.queries for c in self.categories),
            "evaluated": sum(c.evaluated for c in self.categories),
            "skipped": sum(len(c.skipped) for c in self.categories),
            "gallery_failed": sum(len(c.gallery_failed) for c in self.categories),
        }
        if any(c.rankings is not None for c in self.categories):
            report["rankings"] = [_ranking_json(r) for c in self.categories for r in c.rankings or []]
        return report

    def to_table(self, max_examples: int = 5) -> str:
        """A text table, one row per category plus the mean, then what was skipped or removed and why."""
        headers = ["category", *(f"R@{k}" for k in self.protocol.ks), R10_R50, "queries", "skipped"]
        rows = [_table_row(c.category, c.recall, c.queries, len(c.skipped)) for c in self.categories]
        rows.append(_table_row("mean", self.mean_recall(), sum(c.queries for c in self.categories),
                               sum(len(c.skipped) for c in self.categories)))
        widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(headers)]
        lines = [f"{self.dataset} {self.split}: {self.protocol.describe()}",
                 *(_aligned(cells, widths) for cells in [headers, *rows])]
        for c in self.categories:
            lines.extend(_problem_lines(c, max_examples))
        return "\n".join(lines)


def query_satisfaction(ranking: QueryRanking, answers: Answers, k: int) -> float:
    """A query's sat@k as a fraction: the share of its top-k returned items that answer it, over the items
    actually returned (fewer than k only when the gallery, less an excluded reference, holds fewer). The top
    list breaks ties like the ranks, so sat@k and R@K see the same order."""
    returned = ranking.top_ids[:k]
    return sum(bool(answers(ranking, item)) for item in returned) / len(returned)


def join_captions(captions: Sequence[str]) -> str:
    """CLIP4Cir's query text: each caption stripped of ".?, " at both ends, the first capitalised, joined
    with " and " ("Is red and has long sleeves"); an empty caption is left out, so the other stands alone."""
    present = [c.strip(_STRIP) for c in captions if c.strip(_STRIP)]
    return " and ".join([present[0].capitalize(), *present[1:]]) if present else ""


def query_texts(captions: Sequence[str], mode: str) -> list[str]:
    """The query text(s) of one triplet under a `captions` mode of `EvalProtocol`: one per caption for
    "single" ("" for an empty caption, which evaluation skips), two for "both-orders" even when both
    orders read the same, one for "joined"."""
    if mode == "single":
        return [c.strip(_STRIP).capitalize() for c in captions]
    forward = join_captions(captions)
    return [forward] if mode == "joined" else [forward, join_captions(captions[::-1])]


def build_queries(dataset: RetrievalDataset, split: str, category: str,
                  protocol: EvalProtocol) -> tuple[list[Query], list[str]]:
    """The queries of one category split under `protocol`, and the gallery image ids they rank."""
    triplets = dataset.triplets(split, category)
    if protocol.gallery == "split":
        gallery_ids = dataset.gallery(split, category)
    else:
        gallery_ids = unique([i for t in triplets for i in (t.reference, t.target) if i is not None])
    position = {image_id: index for index, image_id in enumerate(gallery_ids)}
    by_caption = _caption_groups(dataset, split, gallery_ids) if any(t.target_caption for t in triplets) else {}
    queries = []
    for triplet in triplets:
        if triplet.target_caption is not None:
            positives = by_caption.get(triplet.target_caption, frozenset())
        else:
            positives = frozenset([position[triplet.target]] if triplet.target in position else [])
        queries.extend(Query(triplet, text, positives, position.get(triplet.reference))
                       for text in query_texts(triplet.captions, protocol.captions))
    return queries, gallery_ids


def rank(query_features: torch.Tensor, gallery_features: torch.Tensor, queries: Sequence[Query],
         protocol: EvalProtocol, top: int = DEFAULT_TOP) -> Ranking:
    """Exact inner-product ranking of the gallery for each query, in chunks of queries.

    Ties are broken by gallery order. With `protocol.exclude_reference` the reference never ranks.
    Every query needs a positive that is not its excluded reference.
    """
    two_d = query_features.ndim == 2 and gallery_features.ndim == 2
    if not two_d or query_features.shape[1] != gallery_features.shape[1]:
        raise ValueError(f"rank: query features {tuple(query_features.shape)} and gallery features "
                         f"{tuple(gallery_features.shape)} must be [Q, E] and [G, E]")
    if len(queries) != query_features.shape[0]:
        raise ValueError(f"rank: {len(queries)} queries but {query_features.shape[0]} query feature rows")
    gallery = gallery_features.float()
    query_features = query_features.float().to(gallery.device)
    width = min(top, gallery.shape[0])
    ranks = torch.empty(len(queries), dtype=torch.long)
    tops = torch.empty(len(queries), width, dtype=torch.long)
    step = max(1, _CHUNK_ELEMENTS // max(1, gallery.shape[0]))
    for start in range(0, len(queries), step):
        chunk = queries[start:start + step]
        scores = query_features[start:start + len(chunk)] @ gallery.T  # [q, G]
        if protocol.exclude_reference:
            _mask_references(scores, chunk)
        ranks[start:start + len(chunk)] = _first_positive_ranks(scores, chunk).cpu()
        tops[start:start + len(chunk)] = _top_indices(scores, width).cpu()
    return Ranking(first_positive_rank=ranks, top=tops)


def evaluate(dataset: RetrievalDataset, split: str, encoder: QueryEncoder,
             protocol: EvalProtocol | None = None, categories: Sequence[str] | None = None,
             return_rankings: bool = False) -> EvalReport:
    """R@K of `encoder` on each category of `split` (all categories of the data set unless given)."""
    protocol = protocol or EvalProtocol.default_for(dataset.name)
    selected = tuple(categories) if categories is not None else dataset.categories
    if not selected:
        raise ConfigError(f"evaluate: no categories selected; choose from {', '.join(dataset.categories)}")
    for category in selected:
        dataset.check_category(category)
    results = [_evaluate_category(dataset, split, c, encoder, protocol, return_rankings) for c in selected]
    return EvalReport(dataset=dataset.name, split=split, protocol=protocol, categories=results)


def _caption_groups(dataset: RetrievalDataset, split: str,
                    gallery_ids: Sequence[str]) -> dict[str, frozenset[int]]:
    groups: dict[str, set[int]] = {}
    for index, image_id in enumerate(gallery_ids):
        caption = dataset.image_caption(image_id, split)  # the split's own labels, never another's
        if caption is not None:
            groups.setdefault(caption, set()).add(index)
    return {caption: frozenset(indices) for caption, indices in groups.items()}


def _mask_references(scores: torch.Tensor, queries: Sequence[Query]) -> None:
    rows = [row for row, q in enumerate(queries) if q.reference_index is not None]
    cols = [queries[row].reference_index for row in rows]
    scores[rows, cols] = float("-inf")


def _first_positive_ranks(scores: torch.Tensor, queries: Sequence[Query]) -> torch.Tensor:
    """1-based rank of each row's best positive: 1 + items above it + tied items earlier in the gallery."""
    # Positives as padded column lists [q, P]: a few passes over [q, G] instead of a dense positive mask.
    width = max(1, max(len(q.positives) for q in queries))
    padded = [sorted(q.positives) + [-1] * (width - len(q.positives)) for q in queries]
    columns = torch.tensor(padded, dtype=torch.long, device=scores.device)
    valid = columns >= 0
    positive_scores = scores.gather(1, columns.clamp(min=0)).masked_fill(~valid, float("-inf"))
    best = positive_scores.max(dim=1, keepdim=True).values  # a masked reference scores -inf
    missing = (~torch.isfinite(best.squeeze(1))).nonzero().flatten().tolist()
    if missing:
        triplet = queries[missing[0]].triplet
        raise ValueError(f"rank: query {missing[0]} ({triplet.source} entry {triplet.index}) has no rankable "
                         f"positive; filter such queries first (evaluate reports them as skipped)")
    best_index = torch.where(valid & (positive_scores == best), columns, scores.shape[1]).min(dim=1).values
    ranks = (scores > best).sum(dim=1) + 1
    tied = scores == best
    # Exact ties are rare; only rows that have one pay for finding the tied items earlier in the gallery.
    for row in (tied.sum(dim=1) > 1).nonzero().flatten().tolist():
        ranks[row] += int(tied[row, : best_index[row]].sum())
    return ranks


def _top_indices(scores: torch.Tensor, width: int) -> torch.Tensor:
    """The `width` best gallery indices per row, masked ones -1, with the ranks' tie rule: among equal scores
    the lower gallery index comes first, so the list is a stable descending sort's first `width` entries."""
    values, indices = scores.topk(width, dim=1)  # a full sort of every row would cost ~10x more
    if width > 0:
        # topk keeps arbitrary members of a tie at the cut; rows whose tie spills over the cut take every
        # item above it, then the tied ones in gallery order until the row has `width`.
        cut = values[:, -1:]  # [q, 1]
        spilled = ((scores >= cut).sum(dim=1) > width).nonzero().flatten()
        if len(spilled):
            rows, row_cut = scores[spilled], cut[spilled]
            above, tied = rows > row_cut, rows == row_cut
            chosen = above | (tied & (tied.cumsum(dim=1) <= width - above.sum(dim=1, keepdim=True)))
            indices[spilled] = chosen.nonzero()[:, 1].view(len(spilled), width)  # exactly `width` per row
            values[spilled] = rows.gather(1, indices[spilled])
    by_index = indices.argsort(dim=1)
    values, indices = values.gather(1, by_index), indices.gather(1, by_index)
    by_score = values.argsort(dim=1, descending=True, stable=True)
    values, indices = values.gather(1, by_score), indices.gather(1, by_score)
    return indices.masked_fill(values == float("-inf"), -1)


def _evaluate_category(dataset: RetrievalDataset, split: str, category: str, encoder: QueryEncoder,
                       protocol: EvalProtocol, return_rankings: bool) -> CategoryResult:
    queries, gallery_ids = build_queries(dataset, split, category, protocol)
    _require_targets(queries, dataset, split)
    encoded_gallery = _checked(encoder.encode_gallery([dataset.image_path(i) for i in gallery_ids]),
                               len(gallery_ids), "encode_gallery")
    kept = [i for i in range(len(gallery_ids)) if i not in encoded_gallery.failed]
    gallery_failed = [FailedImage(gallery_ids[i], reason)
                      for i, reason in sorted(encoded_gallery.failed.items())]
    answerable, skipped = _answerable(queries, kept, encoded_gallery.failed, protocol)
    evaluated, query_features, reference_failures = _encode_queries(dataset, encoder, answerable)
    result = CategoryResult(category=category, recall={k: float("nan") for k in protocol.ks},
                            queries=len(queries), evaluated=len(evaluated), skipped=skipped + reference_failures,
                            gallery_size=len(kept), gallery_failed=gallery_failed,
                            rankings=[] if return_rankings else None)
    if result.skipped:
        log.warning("%s %s %s: %s", dataset.name, split, category, _skipped_summary(result))
    if evaluated:
        ranking = rank(query_features, encoded_gallery.features[kept], evaluated, protocol)
        result.recall = {k: 100.0 * (ranking.first_positive_rank <= k).double().mean().item()
                         for k in protocol.ks}
        if return_rankings:
            result.rankings = _query_rankings(category, evaluated, ranking, [gallery_ids[i] for i in kept])
    return result


def _encode_queries(dataset: RetrievalDataset, encoder: QueryEncoder, queries: Sequence[Query]
                    ) -> tuple[list[Query], torch.Tensor, list[SkippedQuery]]:
    """Encoded queries whose reference image could be read, their features, and the ones that could not."""
    if not queries:
        return [], torch.zeros(0, 0), []
    references = [dataset.image_path(q.reference) for q in queries]
    encoded = _checked(encoder.encode_queries(references, [q.text for q in queries]), len(queries),
                       "encode_queries")
    rows = [row for row in range(len(queries)) if row not in encoded.failed]
    failures = [SkippedQuery(q.reference, q.target, q.text, REFERENCE_FAILED, encoded.failed[row])
                for row, q in enumerate(queries) if row in encoded.failed]
    return [queries[row] for row in rows], encoded.features[rows], failures


def _query_rankings(category: str, queries: Sequence[Query], ranking: Ranking,
                    gallery_ids: Sequence[str]) -> list[QueryRanking]:
    ranks, tops = ranking.first_positive_rank.tolist(), ranking.top.tolist()
    return [QueryRanking(category, q.reference, q.text, q.target, r, tuple(gallery_ids[i] for i in top if i >= 0),
                         q.triplet)
            for q, r, top in zip(queries, ranks, tops, strict=True)]


def _require_targets(queries: Sequence[Query], dataset: RetrievalDataset, split: str) -> None:
    untargeted = next((q.triplet for q in queries if q.target is None), None)
    if untargeted is not None:
        raise DataError(f"{dataset.root / untargeted.source}: entry {untargeted.index}: no target; "
                        f"the {split} split of {dataset.name} publishes no targets, so recall cannot be "
                        f"computed; evaluate on a split with targets (FashionIQ: val)")


def _answerable(queries: Sequence[Query], kept: Sequence[int], failed: dict[int, str],
                protocol: EvalProtocol) -> tuple[list[Query], list[SkippedQuery]]:
    """Queries re-indexed into the gallery of readable images, and the ones that cannot be answered there."""
    new_index = {old: new for new, old in enumerate(kept)}
    answerable, skipped = [], []
    for q in queries:
        positives = frozenset(new_index[p] for p in q.positives if p in new_index)
        reference_index = new_index.get(q.reference_index) if q.reference_index is not None else None
        if protocol.exclude_reference and reference_index is not None:
            rankable = positives - {reference_index}
        else:
            rankable = positives
        if not q.text:
            skipped.append(SkippedQuery(q.reference, q.target, q.text, EMPTY_CAPTION,
                                        "the annotation's caption is empty; nothing to compose with"))
        elif not q.positives:
            skipped.append(SkippedQuery(q.reference, q.target, q.text, TARGET_NOT_IN_GALLERY,
                                        f"{q.target} is not among the gallery images"))
        elif not positives:
            first, *others = sorted(q.positives)
            detail = failed[first] + (f" (and {len(others)} more correct images failed)" if others else "")
            skipped.append(SkippedQuery(q.reference, q.target, q.text, TARGET_FAILED, detail))
        elif not rankable:
            skipped.append(SkippedQuery(q.reference, q.target, q.text, ONLY_REFERENCE,
                                        "the protocol excludes the reference, the only correct image"))
        else:
            answerable.append(replace(q, positives=positives, reference_index=reference_index))
    return answerable, skipped


def _checked(result: EncodeResult, rows: int, call: str) -> EncodeResult:
    """Guard the encoder contract; its rows index our lists, so a wrong count would silently misalign."""
    features = result.features
    if not isinstance(features, torch.Tensor) or features.ndim != 2 or features.shape[0] != rows:
        shape = tuple(features.shape) if isinstance(features, torch.Tensor) else type(features).__name__
        raise ValueError(f"{call} returned features {shape} for {rows} items; expected a [{rows}, E] tensor")
    outside = [i for i in result.failed if not 0 <= i < rows]
    if outside:
        raise ValueError(f"{call} reported failed rows {outside[:5]} outside 0..{rows - 1}")
    good = [i for i in range(rows) if i not in result.failed]
    finite = torch.isfinite(features[good]).all(dim=1)
    if not bool(finite.all()):
        row = good[int((~finite).nonzero()[0])]
        raise ValueError(f"{call} returned non-finite features in row {row} without listing it as failed")
    return result


def _r10_r50(recall: dict[int, float]) -> float | None:
    return (recall[10] + recall[50]) / 2 if 10 in recall and 50 in recall else None


def _number(value: float | None) -> float | None:
    return None if value is None or math.isnan(value) else round(value, 4)


def _recall_json(recall: dict[int, float]) -> dict[str, float | None]:
    """{"R@1": .., "R@10": .., "(R@10+R@50)/2": ..} in percent; None where nothing could be evaluated."""
    return {**{f"R@{k}": _number(v) for k, v in recall.items()}, R10_R50: _number(_r10_r50(recall))}


def _category_json(result: CategoryResult, max_examples: int) -> dict[str, Any]:
    return {
        **_recall_json(result.recall),
        "queries": result.queries,
        "evaluated": result.evaluated,
        "skipped": {
            "count": len(result.skipped),
            "by_reason": dict(Counter(s.kind for s in result.skipped)),
            "examples": [asdict(s) for s in result.skipped[:max_examples]],
        },
        "gallery": {
            "size": result.gallery_size,
            "failed": {"count": len(result.gallery_failed),
                       "examples": [asdict(f) for f in result.gallery_failed[:max_examples]]},
        },
    }


def _ranking_json(ranking: QueryRanking) -> dict[str, Any]:
    asks = ranking.triplet.asks
    return {
        "category": ranking.category,
        "reference": ranking.reference,
        "text": ranking.text,
        "target": ranking.target,
        "rank": ranking.rank,
        "top": list(ranking.top_ids),
        "source": ranking.triplet.source,
        "index": ranking.triplet.index,
        "asks": {k: list(v) for k, v in asks.items()} if asks is not None else None,
    }


def _table_row(name: str, recall: dict[int, float], queries: int, skipped: int) -> list[str]:
    cells = [_percent(v) for v in recall.values()]
    return [name, *cells, _percent(_r10_r50(recall)), str(queries), str(skipped)]


def _aligned(cells: Sequence[str], widths: Sequence[int]) -> str:
    """First column left-aligned (names), the rest right-aligned (numbers)."""
    pairs = enumerate(zip(cells, widths, strict=True))
    return "  ".join(cell.ljust(width) if i == 0 else cell.rjust(width) for i, (cell, width) in pairs)


def _percent(value: float | None) -> str:
    return "n/a" if value is None or math.isnan(value) else f"{value:.2f}"


def _skipped_summary(result: CategoryResult) -> str:
    counts = ", ".join(f"{kind}: {n}" for kind, n in Counter(s.kind for s in result.skipped).items())
    return (f"{len(result.skipped)} of {result.queries} queries skipped ({counts}); "
            f"recall is over the other {result.evaluated}")


def _problem_lines(result: CategoryResult, max_examples: int) -> list[str]:
    lines = []
    if result.gallery_failed:
        lines.append(f"{result.category}: {len(result.gallery_failed)} gallery image(s) unreadable, removed "
                     f"from the gallery of {result.gallery_size + len(result.gallery_failed)}:")
        lines += [f"  {f.image_id}: {f.reason}" for f in result.gallery_failed[:max_examples]]
        if len(result.gallery_failed) > max_examples:
            lines.append(f"  ... and {len(result.gallery_failed) - max_examples} more")
    if result.skipped:
        lines.append(f"{result.category}: {_skipped_summary(result)}:")
        lines += [f"  {s.reference} -> {s.target} ({s.kind}): {s.detail}"
                  for s in result.skipped[:max_examples]]
        if len(result.skipped) > max_examples:
            lines.append(f"  ... and {len(result.skipped) - max_examples} more")
    return lines
