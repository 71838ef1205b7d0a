"""Reading router traces: how much each cell is used, which kind of change a query asks for, and route
statistics over a split grouped by kind of change (the teaching view of dynamic routing).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from sdfn.backbone import ImageFeatures
from sdfn.data.attributes import KINDS_OF_CHANGE
from sdfn.data.base import RetrievalDataset, Triplet
from sdfn.data.synth.phrasing import HELDOUT, catalog_attributes, phrase_request, request_rng
from sdfn.encode import ImageFeatureTable, compose_queries, extract_image_features
from sdfn.errors import DataError
from sdfn.evaluate import join_captions
from sdfn.fusion import RouterTrace
from sdfn.model import ComposedRetrievalModel


def cell_usage(trace: RouterTrace) -> torch.Tensor:
    """[B, R, K]: the share of each layer's routed output that leaves through each cell.

    Cell i of layer r passes its output on with weights w[r][:, i, :]; their sum, normalised over the
    layer's cells, says how much the query relies on that operation at that depth.
    """
    usage = torch.stack([w.sum(dim=2) for w in trace.weights], dim=1)          # [B, R, K]
    return usage / usage.sum(dim=2, keepdim=True).clamp_min(1e-9)


def route_entropy(trace: RouterTrace) -> torch.Tensor:
    """[B]: mean entropy (nats) of the incoming distributions; log(K) = uniform, 0 = a single path."""
    parts = [-(p.clamp_min(1e-9) * p.clamp_min(1e-9).log()).sum(dim=1).mean(dim=1) for p in trace.incoming]
    return torch.stack(parts, dim=1).mean(dim=1)


def strongest_paths(trace: RouterTrace) -> list[tuple[int, ...]]:
    """Per query, one cell index per layer: from the output back to layer 1, the cell that contributes the
    largest incoming share to the cell chosen after it."""
    batch = torch.arange(trace.incoming[0].shape[0])
    column = torch.zeros(len(batch), dtype=torch.long)
    path = []
    for incoming in reversed(trace.incoming):                 # [B, K_in, K_out]
        column = incoming[batch, :, column].argmax(dim=1)
        path.append(column)
    return [tuple(p) for p in torch.stack(path[::-1], dim=1).tolist()]


# Words that mark each kind of change in free text (real FashionIQ captions carry no labels).
_KIND_WORDS = {
    "color": r"black|white|gr[ae]y|red|maroon|burgundy|pink|orange|yellow|beige|brown|green|blue|navy|purple|"
             r"darker|lighter|brighter|colou?r|shade|tan|gold|silver|cream|khaki|teal",
    "pattern": r"strip|dot|spot|plaid|check|floral|flower|print|pattern|graphic|logo|solid|plain",
    "sleeve": r"sleeve|strap|tank|arms?\b|shoulder",
    "length": r"shorter|longer|length|mini|midi|maxi|knee|ankle|floor|hem|capri|crop",
    "neckline": r"neck|collar|v-neck|scoop|crew",
    "fit": r"fit|tight|loose|baggy|flow|slim|wide|snug|relaxed|skinny|form",
    "buttons": r"button",
    "belt": r"belt",
}


def kinds_of_change(triplet: Triplet) -> tuple[str, ...]:
    """What a query asks to change: the generator's labels where the data has them, else keywords."""
    if triplet.asks:
        return tuple(k for k in KINDS_OF_CHANGE if k in triplet.asks)
    text = join_captions(triplet.captions).lower()
    return tuple(k for k, words in _KIND_WORDS.items() if re.search(words, text))


@dataclass
class KindStats:
    kind: str
    queries: int
    usage: torch.Tensor                  # [R, K] mean cell usage
    incoming: list[torch.Tensor]         # per layer [K_in, K_out] mean incoming distributions
    entropy: float                       # mean route entropy (nats)
    image_share: float | None            # mean share of the path weight that comes from the image router


@dataclass
class RouteStatistics:
    cells: tuple[str, ...]
    mode: str
    split: str
    overall: KindStats
    by_kind: list[KindStats] = field(default_factory=list)
    distinct_strongest_paths: int = 0
    top_path_share: float = 0.0          # share of queries whose strongest path is the most common one

    def to_json(self) -> dict:
        def one(k: KindStats) -> dict:
            return {"kind": k.kind, "queries": k.queries, "usage": k.usage.tolist(),
                    "incoming": [p.tolist() for p in k.incoming], "entropy": k.entropy,
                    "image_share": k.image_share}

        return {"cells": list(self.cells), "mode": self.mode, "split": self.split, "overall": one(self.overall),
                "by_kind": [one(k) for k in self.by_kind],
                "distinct_strongest_paths": self.distinct_strongest_paths, "top_path_share": self.top_path_share}


def collect_traces(model: ComposedRetrievalModel, dataset: RetrievalDataset, triplets: Sequence[Triplet],
                   table: ImageFeatureTable | None = None,
                   batch_size: int = 256) -> tuple[RouterTrace, list[int]] | None:
    """Router traces of `triplets` (joined captions), batched, and the indices of the triplets they belong
    to (those whose reference image could be read); None for a static fusion."""
    if not model.fusion.has_routes:
        return None
    features, keep = _reference_features(model, dataset, triplets, table)
    texts = [join_captions(triplets[i].captions) for i in keep]
    _, trace = compose_queries(model, features, texts, batch_size)
    return trace, keep


def _reference_features(model: ComposedRetrievalModel, dataset: RetrievalDataset, triplets: Sequence[Triplet],
                        table: ImageFeatureTable | None) -> tuple[ImageFeatures, list[int]]:
    """The reference images' features of `triplets` whose image could be read, and those triplets' indices."""
    paths = [dataset.image_path(t.reference) for t in triplets]
    if table is None:
        table = extract_image_features(model, sorted(set(paths)))
    features, failed = table.rows(paths)
    keep = [i for i in range(len(triplets)) if i not in failed]
    if not keep:
        raise DataError(f"no reference image of the {len(triplets)} queries could be read, so there is no route "
                        f"to show; first failure: {next(iter(failed.values()), 'no queries')}")
    return features[torch.tensor(keep)], keep


def _stats(kind: str, trace: RouterTrace, index: torch.Tensor) -> KindStats:
    sub = trace[index]
    share = None
    if sub.image is not None:
        image = sum(x.sum() for x in sub.image)
        share = float(image / sum(x.sum() for x in sub.weights).clamp_min(1e-9))
    return KindStats(kind, len(index), cell_usage(sub).mean(dim=0), [p.mean(dim=0) for p in sub.incoming],
                     float(route_entropy(sub).mean()), share)


def route_statistics(model: ComposedRetrievalModel, dataset: RetrievalDataset, split: str,
                     triplets: Sequence[Triplet] | None = None, table: ImageFeatureTable | None = None,
                     single_change_only: bool = False) -> RouteStatistics | None:
    """Route usage over a split's queries, overall and per kind of change (a query counts in every kind it
    asks for, or only in its kind when `single_change_only`). None for a static fusion."""
    triplets = list(triplets if triplets is not None else dataset.triplets(split))
    collected = collect_traces(model, dataset, triplets, table)
    if collected is None:
        return None
    trace, kept = collected
    kinds = [kinds_of_change(triplets[i]) for i in kept]
    stats = RouteStatistics(trace.cells, trace.mode, split, _stats("all", trace, torch.arange(len(kept))))
    for kind in KINDS_OF_CHANGE:
        index = [i for i, ks in enumerate(kinds) if kind in ks and (len(ks) == 1 or not single_change_only)]
        if index:
            stats.by_kind.append(_stats(kind, trace, torch.tensor(index)))
    paths = strongest_paths(trace)
    counts: dict[tuple[int, ...], int] = {}
    for p in paths:
        counts[p] = counts.get(p, 0) + 1
    stats.distinct_strongest_paths = len(counts)
    stats.top_path_share = max(counts.values()) / len(paths)
    return stats


def route_js_divergence(a: RouterTrace, b: RouterTrace) -> torch.Tensor:
    """[B]: Jensen-Shannon divergence (nats, 0 .. log 2) between two traces' incoming distributions, per
    query, averaged over every cell of every layer."""
    parts = []
    for p, q in zip(a.incoming, b.incoming, strict=True):
        m = (p + q) / 2
        kl = [(x.clamp_min(1e-9) * (x.clamp_min(1e-9).log() - m.clamp_min(1e-9).log())).sum(dim=1) for x in (p, q)]
        parts.append(((kl[0] + kl[1]) / 2).mean(dim=1))
    return torch.stack(parts, dim=1).mean(dim=1)


@dataclass
class ParaphraseConsistency:
    pairs: int                  # paraphrase pairs compared (pairs with the same text are left out)
    same_strongest_path: float  # share of pairs whose strongest paths (sdfn.routes.strongest_paths) are equal
    js_divergence: float        # mean JS divergence between the pairs' routes (nats; log 2 = 0.693 at most)
    part: str
    paraphrases: int

    def to_json(self) -> dict:
        return {"pairs": self.pairs, "same_strongest_path": self.same_strongest_path,
                "js_divergence": self.js_divergence, "part": self.part, "paraphrases": self.paraphrases}


def paraphrase_consistency(model: ComposedRetrievalModel, dataset: RetrievalDataset, split: str = "test",
                           part: str = HELDOUT, paraphrases: int = 3, seed: int = 0,
                           table: ImageFeatureTable | None = None, limit: int | None = None,
                           batch_size: int = 256) -> ParaphraseConsistency | None:
    """Do paraphrases of one request take the same route? (issue 9 §4: what self path distillation is for)

    Each triplet of `split` (a synthetic catalog: its catalog.csv gives the attributes) is asked
    `paraphrases` times with `sdfn.data.synth.phrasing.phrase_request` (the `part` words and frames, streams
    seed, seed + 1, ...; every paraphrase asks for the same changes), on the same reference image. Over every
    pair of a triplet's paraphrases whose texts differ: the share with the same strongest path, and the mean
    JS divergence of their routes. None for a static fusion."""
    if not model.fusion.has_routes:
        return None
    attributes = catalog_attributes(dataset.root)
    triplets = [t for t in dataset.triplets(split) if t.target is not None][:limit]
    features, keep = _reference_features(model, dataset, triplets, table)
    texts, traces = [], []
    for j in range(paraphrases):
        asked = [phrase_request(attributes[triplets[i].reference], attributes[triplets[i].target],
                                triplets[i].category, part, request_rng(seed + j, part, triplets[i])).text
                 for i in keep]
        texts.append(asked)
        traces.append(compose_queries(model, features, asked, batch_size)[1])
    strongest = [strongest_paths(t) for t in traces]
    same, js = [], []
    for a in range(paraphrases):
        for b in range(a + 1, paraphrases):
            differ = torch.tensor([x != y for x, y in zip(texts[a], texts[b], strict=True)])
            if not differ.any():
                continue
            index = differ.nonzero().squeeze(1)
            js.append(route_js_divergence(traces[a][index], traces[b][index]))
            same += [strongest[a][i] == strongest[b][i] for i in index.tolist()]
    if not same:
        raise DataError(f"every paraphrase of the {split} queries came out the same text; nothing to compare")
    return ParaphraseConsistency(len(same), sum(same) / len(same), float(torch.cat(js).mean()), part, paraphrases)
