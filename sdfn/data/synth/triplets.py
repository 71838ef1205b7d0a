"""Pairing garments into queries: ordered pairs inside a family, each with two captions.

The triplets are the data readers' own `Triplet` (`sdfn.data.base`), filled exactly as the FashionIQ
reader fills them when it reads the caption files back (source file, entry index, `asks`), so a generated
catalog and its files agree by construction.
"""

from __future__ import annotations

import random
from collections.abc import Sequence

from sdfn.data.attributes import CATEGORIES
from sdfn.data.base import Triplet
from sdfn.data.synth.captions import caption_pair
from sdfn.data.synth.sampling import SPLITS, Item, changed_attributes

MAX_TRAIN_TRIPLETS_PER_ITEM = 3
EVAL_TRIPLETS_PER_ITEM = 1.5


def caption_file(category: str, split: str) -> str:
    """Where a (category, split)'s caption entries are written, relative to the catalog folder."""
    return f"captions/cap.{category}.{split}.json"


def _family_pairs(members: Sequence[Item]) -> list[tuple[Item, Item]]:
    return [(a, b) for a in members for b in members
            if a is not b and 1 <= len(changed_attributes(a, b)) <= 3]


def _pairs_to_keep(members: Sequence[Item], split: str, rng: random.Random) -> int:
    if split == "train":
        return MAX_TRAIN_TRIPLETS_PER_ITEM * len(members)
    # Stochastic rounding keeps the eval average at EVAL_TRIPLETS_PER_ITEM for any family size.
    return int(EVAL_TRIPLETS_PER_ITEM * len(members) + rng.random())


def sample_triplets(items: Sequence[Item], seed: int) -> dict[tuple[str, str], list[Triplet]]:
    """Triplets per (category, split), in caption-file order: ordered pairs inside a family that differ
    in 1-3 attributes."""
    rng = random.Random(f"sdfn-synth/{seed}/triplets")
    families: dict[int, list[Item]] = {}
    for item in items:
        families.setdefault(item.family, []).append(item)
    triplets: dict[tuple[str, str], list[Triplet]] = {(c, s): [] for c in CATEGORIES for s in SPLITS}
    for number in sorted(families):
        members = families[number]
        pairs = _family_pairs(members)
        keep = min(len(pairs), _pairs_to_keep(members, members[0].split, rng))
        for candidate, target in rng.sample(pairs, keep):
            entries = triplets[candidate.category, candidate.split]
            captions, asks = caption_pair(candidate, target, rng)
            source = caption_file(candidate.category, candidate.split)
            entries.append(Triplet(reference=candidate.id, captions=captions, target=target.id,
                                   category=candidate.category, source=source, index=len(entries), asks=asks))
    return triplets
