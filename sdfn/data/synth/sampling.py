"""Sampling the catalog's garments: families of near-duplicates, their split, and their ids.

A family is a base item (every applicable attribute drawn uniformly and independently) plus 3-5 siblings
that differ from it in one or two attributes; a whole family lands in one split, so every gallery holds
hard negatives that only the caption can tell apart. Everything is drawn from string-seeded
`random.Random` streams, so a seed gives the same items on every machine and Python version.
"""

from __future__ import annotations

import math
import random
from collections.abc import Mapping
from dataclasses import dataclass

from sdfn.data.attributes import APPLIES, ATTRIBUTES, CATEGORIES, NOT_APPLICABLE

DEFAULT_ITEMS_PER_CATEGORY = 1200
SPLITS: tuple[str, ...] = ("train", "val", "test")
SPLIT_SHARES: dict[str, float] = {"train": 0.70, "val": 0.15, "test": 0.15}

MIN_FAMILY, MAX_FAMILY = 4, 6  # a base item plus 3-5 siblings
# Each split needs at least one whole family; val and test get 15%, so 27 items give each 4.
MIN_ITEMS_PER_CATEGORY = math.ceil(MIN_FAMILY / min(SPLIT_SHARES.values()))


@dataclass(frozen=True)
class Item:
    """One catalog garment. `attrs` holds every attribute, `NOT_APPLICABLE` where it does not apply."""

    id: str
    category: str
    split: str
    family: int
    attrs: dict[str, str]


def split_sizes(items_per_category: int) -> dict[str, int]:
    """Items per split for one category: 15% val, 15% test, the rest train."""
    val = round(items_per_category * SPLIT_SHARES["val"])
    test = round(items_per_category * SPLIT_SHARES["test"])
    return {"train": items_per_category - val - test, "val": val, "test": test}


def family_sizes(total: int, rng: random.Random) -> list[int]:
    """Split `total` items into families of MIN_FAMILY..MAX_FAMILY. Only a total of 7 has no such
    split (4+3 is too small); it becomes one family of 7."""
    sizes: list[int] = []
    left = total
    while left > 0:
        fits = [s for s in range(MIN_FAMILY, MAX_FAMILY + 1) if left - s == 0 or left - s >= MIN_FAMILY]
        fits = [s for s in fits if left - s != 7] or fits
        size = rng.choice(fits) if fits else left
        sizes.append(size)
        left -= size
    return sizes


def _random_attrs(category: str, rng: random.Random) -> dict[str, str]:
    attrs = dict.fromkeys(ATTRIBUTES, NOT_APPLICABLE)
    for attribute in APPLIES[category]:
        attrs[attribute] = rng.choice(ATTRIBUTES[attribute])
    return attrs


def _mutate(base: Mapping[str, str], category: str, rng: random.Random) -> dict[str, str]:
    """A sibling: the base with one or two applicable attributes changed to another value."""
    sibling = dict(base)
    for attribute in rng.sample(APPLIES[category], rng.choice((1, 2))):
        sibling[attribute] = rng.choice([v for v in ATTRIBUTES[attribute] if v != base[attribute]])
    return sibling


def sample_family(category: str, size: int, rng: random.Random) -> list[dict[str, str]]:
    """A base item (every applicable attribute uniform and independent) and size-1 distinct siblings."""
    family = [_random_attrs(category, rng)]
    while len(family) < size:
        sibling = _mutate(family[0], category, rng)
        if sibling not in family:
            family.append(sibling)
    return family


def sample_items(seed: int, items_per_category: int) -> list[Item]:
    """All catalog items, sorted by id. Running numbers are shuffled within a category so that neither
    the id nor the file order gives away the split or the family."""
    rng = random.Random(f"sdfn-synth/{seed}/items")
    items: list[Item] = []
    family_number = 0
    for category in CATEGORIES:
        drawn: list[tuple[str, int, dict[str, str]]] = []
        for split, count in split_sizes(items_per_category).items():
            for size in family_sizes(count, rng):
                drawn += [(split, family_number, attrs) for attrs in sample_family(category, size, rng)]
                family_number += 1
        numbers = rng.sample(range(len(drawn)), len(drawn))
        items += [Item(f"{category}-{number:06d}", category, split, family, attrs)
                  for number, (split, family, attrs) in zip(numbers, drawn, strict=True)]
    return sorted(items, key=lambda item: item.id)


def changed_attributes(candidate: Item, target: Item) -> list[str]:
    """Attributes (schema order) on which two items of one category differ."""
    return [a for a in APPLIES[candidate.category] if candidate.attrs[a] != target.attrs[a]]
