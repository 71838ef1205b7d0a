"""The deterministic synthetic garment catalog, written in FashionIQ's on-disk format.

`generate_catalog` samples families of near-duplicate garments (a base item and siblings that differ in
one or two attributes), pairs items inside each family into triplets with two FashionIQ-style relative
captions, draws every item with PIL and writes:

    images/<id>.png                          224x224 RGB
    image_splits/split.<category>.<split>.json
    captions/cap.<category>.<split>.json     {"target", "candidate", "captions", "asks"}
    catalog.csv                              one row per item with all attributes (written last)

Families put hard negatives in every gallery: siblings share most attributes with the reference, so
image similarity alone cannot find the target and the caption has to be read. Everything random is
drawn in the main process from the seed, and each image from its own seed, so the files are
byte-identical for a seed whatever the number of drawing processes.
"""

from __future__ import annotations

import csv
import io
import json
import math
import multiprocessing
import os
import random
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw
from tqdm import tqdm

from sdfn.data.attributes import (
    APPLIES,
    ATTRIBUTES,
    CATEGORIES,
    COLOR_RGB,
    NOT_APPLICABLE,
    NOUNS,
    color_word,
    darker_colors,
    lighter_colors,
    values_above,
    values_below,
)
from sdfn.errors import ConfigError, DataError

DEFAULT_ITEMS_PER_CATEGORY = 1200
SPLITS: tuple[str, ...] = ("train", "val", "test")
SPLIT_SHARES: dict[str, float] = {"train": 0.70, "val": 0.15, "test": 0.15}
IMAGE_SIZE = 224
CATALOG_COLUMNS: tuple[str, ...] = ("id", "image", "category", "split", "title", *ATTRIBUTES)

MIN_FAMILY, MAX_FAMILY = 4, 6  # a base item plus 3-5 siblings
# Each split needs at least one whole family; val and test get 15%, so 27 items give each 4.
MIN_ITEMS_PER_CATEGORY = math.ceil(MIN_FAMILY / min(SPLIT_SHARES.values()))
MAX_TRAIN_TRIPLETS_PER_ITEM = 3
EVAL_TRIPLETS_PER_ITEM = 1.5
SPLIT_CAPTIONS_SHARE = 0.25  # pairs whose two captions divide the changes between them


@dataclass(frozen=True)
class Item:
    """One catalog garment. `attrs` holds every attribute, `NOT_APPLICABLE` where it does not apply."""

    id: str
    category: str
    split: str
    family: int
    attrs: dict[str, str]


@dataclass(frozen=True)
class Triplet:
    """A query (candidate image + two captions) and its target; `asks` maps each changed attribute to
    the values that satisfy both captions together."""

    candidate: str
    target: str
    captions: tuple[str, str]
    asks: dict[str, list[str]]


@dataclass(frozen=True)
class CatalogSummary:
    """What `generate_catalog` wrote."""

    out: Path
    items: int
    triplets: int


# ---- sampling: families, splits, ids ---------------------------------------------------------------

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


def _family_pairs(members: Sequence[Item]) -> list[tuple[Item, Item]]:
    return [(a, b) for a in members for b in members
            if a is not b and 1 <= len(changed_attributes(a, b)) <= 3]


def _pairs_to_keep(members: Sequence[Item], split: str, rng: random.Random) -> int:
    if split == "train":
        return MAX_TRAIN_TRIPLETS_PER_ITEM * len(members)
    # Stochastic rounding keeps the eval average at EVAL_TRIPLETS_PER_ITEM for any family size.
    return int(EVAL_TRIPLETS_PER_ITEM * len(members) + rng.random())


def sample_triplets(items: Sequence[Item], seed: int) -> dict[tuple[str, str], list[Triplet]]:
    """Triplets per (category, split): ordered pairs inside a family that differ in 1-3 attributes."""
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
            triplets[candidate.category, candidate.split].append(make_triplet(candidate, target, rng))
    return triplets


# ---- captions ---------------------------------------------------------------------------------------
#
# A caption is a few "mentions" joined the way FashionIQ annotators join them ("is red and has long
# sleeves", "is red with long sleeves", "shorter, sleeveless"). A mention covers one attribute (or
# colour and pattern at once, "is solid navy") and carries the values it accepts: absolute wording
# accepts the target value, relative wording every value in its direction, negated wording every
# value but the one it rules out. Each wording exists in several grammatical shapes:
#   pred   a full predicate           "is red", "has long sleeves"
#   bare   no verb                    "red", "long sleeves"
#   attach hangs on the previous one  "in red", "with long sleeves"
#   adj    goes before the noun       "red" in "is a red dress"

ABSOLUTE, RELATIVE, NEGATED = "absolute", "relative", "negated"


@dataclass(frozen=True)
class Mention:
    """One requested change in words, with the values it accepts per attribute."""

    accepted: dict[str, frozenset[str]]
    form: str
    pred: str
    bare: str
    attach: str | None = None
    adj: str | None = None


@dataclass(frozen=True)
class Wording:
    """Phrase banks for one way of saying a change; `{c}` is filled with a colour word."""

    pred: tuple[str, ...]
    bare: tuple[str, ...]
    attach: tuple[str, ...] = ()
    adj: tuple[str, ...] = ()


def _w(pred: Iterable[str], bare: Iterable[str], attach: Iterable[str] = (),
       adj: Iterable[str] = ()) -> Wording:
    return Wording(tuple(pred), tuple(bare), tuple(attach), tuple(adj))


_COLOR_ABSOLUTE = _w(
    ["is {c}", "is {c} in color", "is {c} colored", "is in {c}", "is a {c} color", "has a {c} color",
     "is {c} colour"],
    ["{c}", "{c} color", "{c} colored", "in {c}", "{c} in color", "{c} colour"],
    ["in {c}", "in a {c} color"], ["{c}"])
_COLOR_INSTEAD = _w(["is {c} instead of {u}", "is {c} rather than {u}", "is {c} not {u}"],
                    ["{c} instead of {u}", "{c} not {u}", "{c} rather than {u}"])
_COLOR_NEGATED = _w(["is not {u}", "is no longer {u}", "is not {u} anymore"], ["not {u}", "not {u} colored"])
_DARKER = _w(["is darker", "is darker in color", "is a darker color", "has a darker color", "is darker colored",
              "is {i}darker", "is a darker shade"],
             ["darker", "darker color", "darker in color", "a darker shade", "{i}darker", "darker colored"],
             ["in a darker color", "in a darker shade"], ["darker"])
_LIGHTER = _w(["is lighter", "is lighter in color", "is a lighter color", "has a lighter color", "is brighter",
               "is {i}lighter", "is lighter colored", "is a lighter shade"],
              ["lighter", "lighter color", "lighter in color", "brighter", "{i}lighter", "lighter colored"],
              ["in a lighter color", "in a lighter shade"], ["lighter"])

_PATTERN_ABSOLUTE: dict[str, Wording] = {
    "solid": _w(["is solid", "is plain", "is a solid color", "is solid colored", "is all one color"],
                ["solid", "plain", "solid color", "solid colored", "plain fabric"],
                ["in a solid color", "in one solid color"], ["solid", "plain"]),
    "striped": _w(["is striped", "has stripes", "has horizontal stripes", "is stripy", "has a striped pattern"],
                  ["striped", "stripes", "horizontal stripes", "stripy", "with stripes"],
                  ["with stripes", "with horizontal stripes", "with bold stripes"], ["striped"]),
    "polka dot": _w(["has polka dots", "is polka dotted", "has dots", "is spotted", "has a polka dot pattern",
                     "is polka dot"],
                    ["polka dots", "polka dot", "dots", "polka dot print", "dotted", "spotty"],
                    ["with polka dots", "with dots", "with big dots"], ["polka dot", "polka dotted", "spotted"]),
    "plaid": _w(["is plaid", "has a plaid pattern", "is checkered", "is checked", "is tartan", "has checks"],
                ["plaid", "plaid pattern", "checkered", "checks", "tartan", "plaid print"],
                ["in plaid", "with a plaid pattern", "with checks"], ["plaid", "checkered", "tartan"]),
    "floral": _w(["is floral", "has a floral print", "has flowers", "has a flower pattern", "is flowery",
                  "has flowers on it"],
                 ["floral", "floral print", "flowers", "flower print", "flowery", "floral pattern"],
                 ["with flowers", "with a floral print", "with a flower pattern"],
                 ["floral", "flowery", "flower print"]),
    "graphic": _w(["has a graphic", "has a logo", "has a big logo", "has a graphic on the front",
                   "has a large graphic", "has an image on the front", "has a big print on the front"],
                  ["graphic", "a logo", "big logo", "graphic on the front", "large graphic print", "logo print"],
                  ["with a graphic", "with a logo", "with a big logo on the front", "with a large graphic"],
                  ["graphic", "logo"]),
}
# How a pattern is named when ruled out ("no stripes", "without a logo"; never solid, which is the
# absence of a pattern) and when replaced ("has stripes instead of a solid color").
_PATTERN_NOUNS: dict[str, tuple[str, ...]] = {
    "striped": ("stripes",),
    "polka dot": ("polka dots", "dots"),
    "plaid": ("plaid", "checks"),
    "floral": ("flowers", "floral print"),
    "graphic": ("graphic", "logo", "print on the front"),
}
_PATTERN_INSTEAD: dict[str, tuple[str, ...]] = {
    **_PATTERN_NOUNS,
    "solid": ("a solid color", "a plain color"),
    "floral": ("flowers", "a floral print", "a floral pattern"),
    "graphic": ("a graphic", "a logo", "a print on the front"),
}
_NO_PATTERN = _w(["has no pattern", "is not patterned", "has no print", "does not have a pattern",
                  "has no design"],
                 ["no pattern", "not patterned", "no print", "without a pattern", "no design"],
                 ["without a pattern", "with no print"])
_MORE_PATTERNED = _w(["is patterned", "is more patterned", "has a pattern", "has a print", "is printed",
                      "is more busy"],
                     ["patterned", "more patterned", "a pattern", "printed", "more print"],
                     ["with a pattern", "with a print"], ["patterned", "printed"])
_LESS_PATTERNED = _w(["is less patterned", "is plainer", "is less busy", "has less pattern"],
                     ["less patterned", "plainer", "less busy", "less print"])

_SLEEVE_ABSOLUTE: dict[str, Wording] = {
    "sleeveless": _w(["is sleeveless", "is tank style", "is strappy", "has straps instead of sleeves"],
                     ["sleeveless", "tank style", "straps only"], (), ["sleeveless", "tank style"]),
    "short": _w(["has short sleeves", "is short sleeved", "has half sleeves", "has elbow length sleeves"],
                ["short sleeves", "short sleeved", "short sleeve", "half sleeves"],
                ["with short sleeves", "with half sleeves"], ["short sleeved", "short-sleeve"]),
    "long": _w(["has long sleeves", "is long sleeved", "has full length sleeves", "has sleeves to the wrist"],
               ["long sleeves", "long sleeved", "long sleeve", "full sleeves"],
               ["with long sleeves", "with full length sleeves"], ["long sleeved", "long-sleeve"]),
}
_SLEEVE_NOUNS: dict[str, tuple[str, ...]] = {
    "sleeveless": ("no sleeves", "straps"), "short": ("short sleeves", "half sleeves"),
    "long": ("long sleeves", "full sleeves"),
}
_NO_SLEEVES = _w(["has no sleeves", "is without sleeves", "does not have sleeves"],
                 ["no sleeves", "without sleeves"], ["without sleeves", "with no sleeves"])
_HAS_SLEEVES = _w(["has sleeves", "is not sleeveless", "is no longer sleeveless"],
                  ["sleeves", "not sleeveless"], ["with sleeves"])
_NOT_LONG_SLEEVES = _w(["is not long sleeved", "does not have long sleeves"],
                       ["no long sleeves", "not long sleeved"], ["without long sleeves"])
_LONGER_SLEEVES = _w(["has longer sleeves", "is longer sleeved", "has {i}longer sleeves"],
                     ["longer sleeves", "longer sleeved", "{i}longer sleeves"], ["with longer sleeves"])
_SHORTER_SLEEVES = _w(["has shorter sleeves", "is shorter sleeved", "has {i}shorter sleeves"],
                      ["shorter sleeves", "shorter sleeved", "{i}shorter sleeves"], ["with shorter sleeves"])

_LENGTH_ABSOLUTE: dict[str, Wording] = {
    "short": _w(["is short", "is a mini", "is above the knee", "is mini length", "is short length"],
                ["short", "mini", "above the knee", "mini length", "short length"], (), ["short", "mini"]),
    "knee": _w(["is knee length", "hits at the knee", "is midi length", "is a midi", "comes to the knee"],
               ["knee length", "midi", "to the knee", "knee-length", "midi length"],
               ["with a knee length hem"], ["knee length", "midi"]),
    "long": _w(["is long", "is floor length", "is a maxi", "is full length", "is ankle length",
                "is maxi length"],
               ["long", "floor length", "maxi", "full length", "ankle length"],
               ["with a floor length hem"], ["long", "maxi", "floor length"]),
}
_TROUSER_LENGTH_ABSOLUTE: dict[str, Wording] = {
    "short": _w(["are shorts", "is shorts", "is short", "are short", "is a pair of shorts"],
                ["shorts", "short", "short legs"], (), ["short"]),
    "knee": _w(["is cropped", "are cropped", "are capris", "is knee length", "is capri length",
                "stops at the knee"],
               ["cropped", "capri", "knee length", "capri length"], (), ["cropped", "capri"]),
    "long": _w(["is full length", "are long", "are full length", "is ankle length", "is long",
                "goes to the ankle"],
               ["full length", "long", "ankle length", "long legs"], (), ["long", "full length"]),
}
_LENGTH_NEGATED: dict[str, Wording] = {
    "short": _w(["is not short", "is not a mini", "is not as short"], ["not short", "not a mini"]),
    "knee": _w(["is not knee length", "does not stop at the knee"], ["not knee length"]),
    "long": _w(["is not long", "is not a maxi", "is not floor length"], ["not long", "not a maxi"]),
}
_TROUSER_LENGTH_NEGATED: dict[str, Wording] = {
    "short": _w(["is not shorts", "are not shorts"], ["not shorts", "no shorts"]),
    "knee": _w(["is not cropped", "are not cropped"], ["not cropped", "not capris"]),
    "long": _w(["is not full length", "are not long"], ["not full length", "not long"]),
}
_LONGER = _w(["is longer", "is {i}longer", "has a longer hem", "is longer in length", "has a longer length"],
             ["longer", "{i}longer", "a longer hem", "longer length"], ["with a longer hem"], ["longer"])
_SHORTER = _w(["is shorter", "is {i}shorter", "has a shorter hem", "is shorter in length", "has a shorter length"],
              ["shorter", "{i}shorter", "a shorter hem", "shorter length"], ["with a shorter hem"], ["shorter"])

_NECKLINE_ABSOLUTE: dict[str, Wording] = {
    "round": _w(["has a round neck", "has a crew neck", "is crew neck", "has a round neckline",
                 "has a scoop neck", "is round necked"],
                ["round neck", "crew neck", "round neckline", "scoop neck", "crew neckline"],
                ["with a round neck", "with a crew neck", "with a scoop neck"], ["crew neck", "round neck"]),
    "v-neck": _w(["has a v-neck", "has a v neck", "is v-neck", "has a v shaped neckline", "is v necked",
                  "has a deep v"],
                 ["v-neck", "v neck", "v neckline", "deep v", "v shaped neck"],
                 ["with a v-neck", "with a v neckline", "with a deep v"], ["v-neck", "v neck"]),
    "collar": _w(["has a collar", "is collared", "has a pointed collar", "has a shirt collar"],
                 ["collar", "collared", "pointed collar", "a collar"],
                 ["with a collar", "with a pointed collar"], ["collared"]),
}
_NECKLINE_NOUNS: dict[str, tuple[str, ...]] = {
    "round": ("a round neck", "a crew neck"), "v-neck": ("a v-neck", "a v neck"),
    "collar": ("a collar",),
}
_NECKLINE_NEGATED: dict[str, Wording] = {
    "collar": _w(["has no collar", "is not collared", "is without a collar", "does not have a collar"],
                 ["no collar", "without a collar", "not collared", "collarless"],
                 ["without a collar", "with no collar"]),
    "v-neck": _w(["is not v-neck", "has no v-neck", "does not have a v neck"],
                 ["no v-neck", "not v neck", "no v neckline"], ["without the v-neck"]),
    "round": _w(["is not crew neck", "has no round neck"], ["not crew neck", "no round neck"]),
}

_FIT_ABSOLUTE: dict[str, Wording] = {
    "fitted": _w(["is fitted", "is form fitting", "is tight fitting", "is slim fit", "is slim", "is tight"],
                 ["fitted", "form fitting", "tight fitting", "slim fit", "tight", "slim"],
                 ["with a slim fit", "with a tight fit"], ["fitted", "form fitting", "slim", "tight"]),
    "loose": _w(["is loose", "is loose fitting", "is flowy", "is baggy", "is relaxed fit", "is flowing",
                 "is oversized"],
                ["loose", "loose fitting", "flowy", "baggy", "relaxed fit", "oversized"],
                ["with a loose fit", "with a relaxed fit"], ["loose", "flowy", "baggy", "oversized"]),
}
# Category words for fit: pencil/flared skirts, skinny/wide-leg trousers, bodycon/flared dresses.
_FIT_CATEGORY_WORDS: dict[tuple[str, str], tuple[str, ...]] = {
    ("skirt", "fitted"): ("pencil", "straight"), ("skirt", "loose"): ("flared", "a-line"),
    ("trousers", "fitted"): ("skinny", "slim leg"), ("trousers", "loose"): ("wide leg", "wide"),
    ("dress", "fitted"): ("bodycon", "sheath"), ("dress", "loose"): ("flared", "swing"),
}
_TIGHTER = _w(["is tighter", "is more fitted", "is more form fitting", "is less loose", "is slimmer",
               "is tighter fitting", "is {i}tighter", "fits tighter"],
              ["tighter", "more fitted", "less loose", "slimmer", "tighter fit", "{i}tighter", "more form fitting"],
              ["with a tighter fit", "with a slimmer fit"], ["tighter", "slimmer"])
_LOOSER = _w(["is looser", "is more loose", "is less fitted", "is looser fitting", "is wider", "is more flowy",
              "is {i}looser", "fits looser"],
             ["looser", "more loose", "less fitted", "looser fit", "more flowy", "{i}looser", "wider"],
             ["with a looser fit", "with a more relaxed fit"], ["looser"])
_FIT_NEGATED: dict[str, Wording] = {
    "fitted": _w(["is not fitted", "is not tight", "is not as fitted", "is not form fitting"],
                 ["not fitted", "not tight", "not as tight", "not form fitting"]),
    "loose": _w(["is not loose", "is not baggy", "is not flowy", "is not as loose"],
                ["not loose", "not baggy", "not as loose", "not flowy"]),
}

_BUTTONS_YES = _w(["has buttons", "is button down", "is button up", "is buttoned", "has buttons down the front",
                   "has a button placket"],
                  ["buttons", "button down", "button up", "buttoned", "buttons down the front"],
                  ["with buttons", "with buttons down the front"], ["button down", "button up", "buttoned"])
_BUTTONS_NO = _w(["has no buttons", "is not button down", "is without buttons", "does not have buttons",
                  "is not buttoned"],
                 ["no buttons", "without buttons", "not buttoned", "not button up"],
                 ["without buttons", "with no buttons"])
_BELT_YES = _w(["has a belt", "is belted", "has a belt at the waist", "has a waist belt", "comes with a belt"],
               ["belted", "belt", "a belt", "waist belt", "belt at the waist"],
               ["with a belt", "with a belt at the waist"], ["belted"])
_BELT_NO = _w(["has no belt", "is not belted", "is without a belt", "does not have a belt"],
              ["no belt", "without a belt", "unbelted", "beltless"], ["without a belt", "with no belt"])

_INTENSIFIERS = ("", "", "", "slightly ", "a little ", "much ", "a bit ", "a lot ")

# How often each wording family is chosen where it is possible. Relative wording accepts every value
# in its direction, so it is kept to about a quarter of all mentions; most queries pin the target.
RELATIVE_SHARE = 0.42  # where possible; neckline, buttons and belt have no relative wording
NEGATED_SHARE = 0.2


def _fill(template: str, rng: random.Random, **words: str) -> str:
    return template.format(i=rng.choice(_INTENSIFIERS), **words)


def _mention(wording: Wording, accepted: Mapping[str, Iterable[str]], form: str, rng: random.Random,
             **words: str) -> Mention:
    def pick(bank: tuple[str, ...]) -> str | None:
        return _fill(rng.choice(bank), rng, **words) if bank else None

    return Mention({a: frozenset(v) for a, v in accepted.items()}, form,
                   pick(wording.pred) or "", pick(wording.bare) or "", pick(wording.attach), pick(wording.adj))


def _choose_form(has_relative: bool, rng: random.Random) -> str:
    """Relative, negated or absolute wording. Every attribute has some negated wording; where a
    function finds none for a particular change it falls back to absolute."""
    roll = rng.random()
    if has_relative and roll < RELATIVE_SHARE:
        return RELATIVE
    if roll > 1 - NEGATED_SHARE:
        return NEGATED
    return ABSOLUTE


def _color_mention(u: str, v: str, rng: random.Random) -> Mention:
    darker, lighter = darker_colors(u), lighter_colors(u)
    direction = darker if v in darker else lighter if v in lighter else []
    form = _choose_form(bool(direction), rng)
    words = {"c": color_word(v, rng), "u": color_word(u, rng)}
    if form == RELATIVE:
        return _mention(_DARKER if direction is darker else _LIGHTER, {"color": direction}, form, rng)
    if form == NEGATED and rng.random() < 0.3:
        others = [c for c in ATTRIBUTES["color"] if c != u]
        return _mention(_COLOR_NEGATED, {"color": others}, form, rng, **words)
    wording = _COLOR_INSTEAD if rng.random() < 0.12 else _COLOR_ABSOLUTE
    return _mention(wording, {"color": [v]}, ABSOLUTE, rng, **words)


def _pattern_mention(u: str, v: str, rng: random.Random) -> Mention:
    has_relative = "solid" in (u, v)
    form = _choose_form(has_relative, rng)
    not_solid = [p for p in ATTRIBUTES["pattern"] if p != "solid"]
    if form == RELATIVE:
        if u == "solid":
            return _mention(_MORE_PATTERNED, {"pattern": not_solid}, form, rng)
        return _mention(_LESS_PATTERNED, {"pattern": ["solid"]}, form, rng)
    if form == NEGATED:
        if v == "solid" and (u == "solid" or rng.random() < 0.4):
            return _mention(_NO_PATTERN, {"pattern": ["solid"]}, form, rng)
        if u != "solid":
            return _no_pattern_mention(u, v, rng)
    if rng.random() < 0.12 and u != "solid":
        vn, un = rng.choice(_PATTERN_INSTEAD[v]), rng.choice(_PATTERN_INSTEAD[u])
        wording = _w([f"has {vn} instead of {un}"], [f"{vn} instead of {un}", f"{vn} rather than {un}"])
        return _mention(wording, {"pattern": [v]}, ABSOLUTE, rng)
    return _mention(_PATTERN_ABSOLUTE[v], {"pattern": [v]}, ABSOLUTE, rng)


def _no_pattern_mention(u: str, v: str, rng: random.Random) -> Mention:
    """ "no stripes" (anything but stripes), or with the new pattern named too: "no stripes, floral"."""
    un = rng.choice(_PATTERN_NOUNS[u])
    if rng.random() < 0.5:
        absolute = _mention(_PATTERN_ABSOLUTE[v], {}, ABSOLUTE, rng)
        wording = _w([f"{absolute.pred} with no {un}", f"has no {un} and {absolute.pred}"],
                     [f"no {un}, {absolute.bare}", f"{absolute.bare} with no {un}"])
        return _mention(wording, {"pattern": [v]}, NEGATED, rng)
    others = [p for p in ATTRIBUTES["pattern"] if p != u]
    wording = _w([f"has no {un}", f"is without {un}", f"does not have {un}"],
                 [f"no {un}", f"without {un}", f"no more {un}"], [f"without {un}", f"with no {un}"])
    return _mention(wording, {"pattern": others}, NEGATED, rng)


def _color_pattern_mention(cv: str, pu: str, pv: str, rng: random.Random) -> Mention:
    """Colour and pattern in one phrase, as annotators write it: "is solid navy", "red with stripes",
    "no stripes, solid black"."""
    c = color_word(cv, rng)
    accepted = {"color": [cv], "pattern": [pv]}
    pattern_word = rng.choice(_PATTERN_ABSOLUTE[pv].adj)
    if pv == "solid":
        bare = [f"solid {c}", f"plain {c}", f"all {c}", f"just {c}"]
        if pu != "solid":
            bare += [f"no {rng.choice(_PATTERN_NOUNS[pu])}, solid {c}"]
        wording = _w([f"is solid {c}", f"is plain {c}", f"is all {c}", f"is a solid {c} color"], bare,
                     [f"in solid {c}"], [f"solid {c}"])
    else:
        with_pattern = rng.choice(_PATTERN_ABSOLUTE[pv].attach)
        pred = [f"is {c} {with_pattern}", f"is {c} and {pattern_word}", f"is a {c} {pattern_word}"]
        bare = [f"{c} {with_pattern}", f"{c} and {pattern_word}"]
        if pv != "graphic":  # "striped red" reads naturally, "logo red" does not
            pred.append(f"is {pattern_word} {c}")
            bare.append(f"{pattern_word} {c}")
        wording = _w(pred, bare, [f"in {c} {with_pattern}"], [f"{c} {pattern_word}"])
    return _mention(wording, accepted, ABSOLUTE, rng)


def _sleeve_mention(u: str, v: str, rng: random.Random) -> Mention:
    form = _choose_form(True, rng)
    if form == RELATIVE:
        if v in values_above("sleeve", u):
            return _mention(_LONGER_SLEEVES, {"sleeve": values_above("sleeve", u)}, form, rng)
        return _mention(_SHORTER_SLEEVES, {"sleeve": values_below("sleeve", u)}, form, rng)
    if form == NEGATED:
        if v == "sleeveless":
            return _mention(_NO_SLEEVES, {"sleeve": ["sleeveless"]}, form, rng)
        if u == "sleeveless":
            return _mention(_HAS_SLEEVES, {"sleeve": ["short", "long"]}, form, rng)
        if u == "long":
            return _mention(_NOT_LONG_SLEEVES, {"sleeve": ["sleeveless", "short"]}, form, rng)
    if rng.random() < 0.1:
        vn, un = rng.choice(_SLEEVE_NOUNS[v]), rng.choice(_SLEEVE_NOUNS[u])
        wording = _w([f"has {vn} instead of {un}"], [f"{vn} instead of {un}", f"{vn} not {un}"])
        return _mention(wording, {"sleeve": [v]}, ABSOLUTE, rng)
    return _mention(_SLEEVE_ABSOLUTE[v], {"sleeve": [v]}, ABSOLUTE, rng)


def _length_mention(u: str, v: str, category: str, rng: random.Random) -> Mention:
    form = _choose_form(True, rng)
    trousers = category == "trousers"
    if form == RELATIVE:
        if v in values_above("length", u):
            return _mention(_LONGER, {"length": values_above("length", u)}, form, rng)
        return _mention(_SHORTER, {"length": values_below("length", u)}, form, rng)
    if form == NEGATED and rng.random() < 0.5:
        others = [x for x in ATTRIBUTES["length"] if x != u]
        negated = (_TROUSER_LENGTH_NEGATED if trousers else _LENGTH_NEGATED)[u]
        return _mention(negated, {"length": others}, form, rng)
    return _mention((_TROUSER_LENGTH_ABSOLUTE if trousers else _LENGTH_ABSOLUTE)[v], {"length": [v]}, ABSOLUTE,
                    rng)


def _neckline_mention(u: str, v: str, rng: random.Random) -> Mention:
    form = _choose_form(False, rng)
    if form == NEGATED:
        others = [x for x in ATTRIBUTES["neckline"] if x != u]
        if rng.random() < 0.4:
            absolute = _mention(_NECKLINE_ABSOLUTE[v], {}, ABSOLUTE, rng)
            negated = _mention(_NECKLINE_NEGATED[u], {}, NEGATED, rng)
            wording = _w([f"{absolute.pred} and {negated.bare}", f"{negated.pred} and {absolute.pred}"],
                         [f"{negated.bare}, {absolute.bare}", f"{absolute.bare} and {negated.bare}"])
            return _mention(wording, {"neckline": [v]}, form, rng)
        return _mention(_NECKLINE_NEGATED[u], {"neckline": others}, form, rng)
    if rng.random() < 0.12:
        vn, un = rng.choice(_NECKLINE_NOUNS[v]), rng.choice(_NECKLINE_NOUNS[u])
        wording = _w([f"has {vn} instead of {un}"], [f"{vn} instead of {un}", f"{vn} rather than {un}"],
                     [f"with {vn} instead of {un}"])
        return _mention(wording, {"neckline": [v]}, ABSOLUTE, rng)
    return _mention(_NECKLINE_ABSOLUTE[v], {"neckline": [v]}, ABSOLUTE, rng)


def _fit_mention(u: str, v: str, category: str, rng: random.Random) -> Mention:
    form = _choose_form(True, rng)
    accepted = {"fit": [v]}
    if form == RELATIVE:
        return _mention(_LOOSER if v == "loose" else _TIGHTER, accepted, form, rng)
    if form == NEGATED:
        return _mention(_FIT_NEGATED[u], accepted, form, rng)
    words = _FIT_CATEGORY_WORDS.get((category, v))
    if words and rng.random() < 0.3:
        word = rng.choice(words)
        return _mention(_w([f"is {word}"], [word], (), [word]), accepted, ABSOLUTE, rng)
    return _mention(_FIT_ABSOLUTE[v], accepted, ABSOLUTE, rng)


def _yes_no_mention(attribute: str, v: str, rng: random.Random) -> Mention:
    yes, no = (_BUTTONS_YES, _BUTTONS_NO) if attribute == "buttons" else (_BELT_YES, _BELT_NO)
    if v == "yes":
        return _mention(yes, {attribute: ["yes"]}, ABSOLUTE, rng)
    return _mention(no, {attribute: ["no"]}, NEGATED, rng)


def mention_change(attribute: str, u: str, v: str, category: str, rng: random.Random) -> Mention:
    """One wording of the change `attribute`: u -> v."""
    if attribute == "color":
        return _color_mention(u, v, rng)
    if attribute == "pattern":
        return _pattern_mention(u, v, rng)
    if attribute == "sleeve":
        return _sleeve_mention(u, v, rng)
    if attribute == "length":
        return _length_mention(u, v, category, rng)
    if attribute == "neckline":
        return _neckline_mention(u, v, rng)
    if attribute == "fit":
        return _fit_mention(u, v, category, rng)
    return _yes_no_mention(attribute, v, rng)


def mention_changes(attributes: Sequence[str], candidate: Item, target: Item,
                    rng: random.Random) -> list[Mention]:
    """Mentions covering `attributes` (in random order); colour and pattern sometimes share one."""
    u, v = candidate.attrs, target.attrs
    mentions = [mention_change(a, u[a], v[a], candidate.category, rng) for a in attributes]
    if "color" in attributes and "pattern" in attributes and rng.random() < 0.4:
        color = next(m for m in mentions if "color" in m.accepted)
        pattern = next(m for m in mentions if "pattern" in m.accepted)
        if color.form == ABSOLUTE and pattern.form != RELATIVE:
            mentions.remove(color)
            mentions.remove(pattern)
            mentions.append(_color_pattern_mention(v["color"], u["pattern"], v["pattern"], rng))
    rng.shuffle(mentions)
    return mentions


def _noun_phrase(mentions: list[Mention], category: str, rng: random.Random) -> tuple[str, list[Mention]]:
    """ "is a red striped dress": up to two adjective mentions folded into a noun phrase."""
    adjectives = [m for m in mentions if m.adj][:2]
    rest = [m for m in mentions if m not in adjectives]
    noun = rng.choice(NOUNS[category])
    head = " ".join([*(m.adj or "" for m in adjectives), noun])
    if category == "trousers":
        return rng.choice(("are ", "")) + head, rest
    article = "an" if head[0] in "aeiou" else "a"
    return rng.choice(("is ", "", "it is ")) + f"{article} {head}", rest


def _plural(text: str) -> str:
    """Trousers are plural to many annotators: "are shorter", "have a belt" (but "is a pair of...")."""
    if text.startswith("is ") and not text.startswith("is a "):
        return "are " + text[3:]
    if text.startswith("has "):
        return "have " + text[4:]
    return text


def join_mentions(mentions: list[Mention], category: str, rng: random.Random) -> str:
    """Join mentions into one caption: "is red and has long sleeves", "shorter, sleeveless", ..."""
    plural = category == "trousers" and rng.random() < 0.3

    def phrase(mention: Mention, with_verb: float) -> str:
        text = mention.pred if rng.random() < with_verb else mention.bare
        return _plural(text) if plural else text

    parts: list[str] = []
    rest = list(mentions)
    if any(m.adj for m in rest) and rng.random() < 0.15:
        head, rest = _noun_phrase(rest, category, rng)
        parts.append(head)
    for mention in rest:
        roll = rng.random()
        if not parts:
            parts.append(phrase(mention, 0.75))
        elif mention.attach and roll < 0.3:
            parts.append(" " + mention.attach)
        elif roll < 0.8:
            parts.append(" and " + phrase(mention, 0.6))
        else:
            parts.append(", " + phrase(mention, 0.5))
    return _finish("".join(parts), rng)


def _finish(caption: str, rng: random.Random) -> str:
    """Fix "a orange" and, like some annotators, capitalise or end with a full stop."""
    caption = re.sub(r"\ba (?=[aeiou])", "an ", caption)
    if rng.random() < 0.1:
        caption = caption[0].upper() + caption[1:]
    if rng.random() < 0.05:
        caption += "."
    return caption


def _asks(mentions: Iterable[Mention]) -> dict[str, list[str]]:
    """Per attribute, the values every mention of it accepts (schema order)."""
    accepted: dict[str, frozenset[str]] = {}
    for mention in mentions:
        for attribute, values in mention.accepted.items():
            accepted[attribute] = accepted.get(attribute, values) & values
    return {a: [v for v in ATTRIBUTES[a] if v in accepted[a]] for a in ATTRIBUTES if a in accepted}


def _normalised(caption: str) -> str:
    return caption.lower().rstrip(".")


def make_triplet(candidate: Item, target: Item, rng: random.Random) -> Triplet:
    """Two different captions for candidate -> target; together they cover every change."""
    changed = changed_attributes(candidate, target)
    rng.shuffle(changed)
    if len(changed) >= 2 and rng.random() < SPLIT_CAPTIONS_SHARE:
        cut = rng.randint(1, len(changed) - 1)
        groups = (changed[:cut], changed[cut:])
    else:
        groups = (changed, changed)
    first = mention_changes(groups[0], candidate, target, rng)
    c1 = join_mentions(first, candidate.category, rng)
    for _ in range(100):
        second = mention_changes(groups[1], candidate, target, rng)
        c2 = join_mentions(second, candidate.category, rng)
        if _normalised(c2) != _normalised(c1):
            return Triplet(candidate.id, target.id, (c1, c2), _asks(first + second))
    raise RuntimeError(f"no second caption different from {c1!r} for {candidate.id} -> {target.id}")


# ---- drawing ----------------------------------------------------------------------------------------
#
# Garments are designed on the 224 px canvas around x = 112 (right half mirrored) and placed with a
# random scale and shift. Everything an attribute depends on is drawn at least ~8 px wide at full
# size so that it survives the 64 px input of the tiny model (patch 8); thin details would vanish.

Point = tuple[float, float]
CENTER_X = IMAGE_SIZE / 2
OUTLINE = (34, 32, 38)
INNER_DARK = (52, 46, 54)
SKIN = (232, 194, 164)
BUCKLE = (226, 186, 62)


@dataclass
class Garment:
    """A garment's shape in design coordinates: filled parts back to front, and where details go."""

    parts: list[list[Point]]
    neck_y: float | None = None
    placket_end: float | None = None  # the button placket runs from the neckline down to here
    waist: tuple[float, float] | None = None  # (y, half width) of a belt
    graphic_at: Point = (CENTER_X, 100.0)  # below any neckline cut-out, which would hide it
    graphic_radius: float = 28.0
    cuffs: list[list[Point]] = field(default_factory=list)
    bands: list[list[Point]] = field(default_factory=list)  # rib hems, waistbands: a darker shade


def _mirror(right: Sequence[Point]) -> list[Point]:
    """A symmetric outline from its right half (x offsets from the centre, listed top to bottom)."""
    return [(CENTER_X + x, y) for x, y in right] + [(CENTER_X - x, y) for x, y in reversed(right)]


def _across(shoulder: Point, armpit: Point, angle: float, length: float, width: float) -> list[Point]:
    """The outer and inner point of a sleeve `length` down its axis, which leaves the middle of the
    armhole at `angle` degrees from vertical (right side; x as offset from the centre)."""
    mx, my = (shoulder[0] + armpit[0]) / 2, (shoulder[1] + armpit[1]) / 2
    rad = math.radians(angle)
    ex, ey = mx + math.sin(rad) * length, my + math.cos(rad) * length
    px, py = math.cos(rad) * width / 2, -math.sin(rad) * width / 2
    return [(ex + px, ey + py), (ex - px, ey - py)]


def _sleeves(attrs: Mapping[str, str], shoulder: Point, armpit: Point, angles: tuple[float, float],
             lengths: tuple[float, float]) -> tuple[list[list[Point]], list[list[Point]]]:
    """Both sleeves (none when sleeveless) and, for long sleeves, a cuff band at each end. Short
    sleeves stop near the armpit line, long ones at hip height: unmistakable even at 64 px."""
    if attrs["sleeve"] == "sleeveless":
        return [], []
    long = attrs["sleeve"] == "long"
    loose = attrs["fit"] == "loose"
    angle, length = angles[long], lengths[long]
    width = (38 if long else 36) if loose else (18 if long else 24)
    end = _across(shoulder, armpit, angle, length, width)
    right_sleeve = [shoulder, *end, armpit]
    right_cuffs = [[*end, *reversed(_across(shoulder, armpit, angle, length - 12, width))]] if long else []

    def both(right: list[Point]) -> list[list[Point]]:
        return [[(CENTER_X + side * x, y) for x, y in right] for side in (1, -1)]

    return both(right_sleeve), [cuff for right in right_cuffs for cuff in both(right)]


_DRESS_HEM_Y = {"short": 150.0, "knee": 182.0, "long": 212.0}
_SKIRT_HEM_Y = {"short": 108.0, "knee": 158.0, "long": 206.0}
_TROUSER_HEM_Y = {"short": 122.0, "knee": 162.0, "long": 210.0}


def _dress(attrs: Mapping[str, str]) -> Garment:
    loose = attrs["fit"] == "loose"
    hem_y = _DRESS_HEM_Y[attrs["length"]]
    hem = {"short": 76, "knee": 86, "long": 94}[attrs["length"]] if loose else 44
    if attrs["sleeve"] == "sleeveless":
        top = [(22, 24), (30, 26), (34, 48), (38, 64)]
    else:
        top = [(40, 26), (44, 32), (40, 64)]
    body = [(46, 64), (hem, hem_y)] if loose else [(36, 66), (26, 98), (38, 122), (hem, hem_y)]
    outline = _mirror([*top, *body, (hem * 0.5, hem_y + 3), (0, hem_y + 4)])
    sleeves, cuffs = _sleeves(attrs, (42, 30), (40, 62), (28, 20), (36, 100))
    waist = (98.0, 46.0 if loose else 27.0)
    # A button-front dress buttons down to the hem, so the row stays long whatever the neckline and belt.
    return Garment([*sleeves, outline], neck_y=24, placket_end=min(hem_y - 14, 176), waist=waist,
                   graphic_at=(CENTER_X, min(134.0, hem_y - 26)), graphic_radius=24, cuffs=cuffs)


def _shirt(attrs: Mapping[str, str]) -> Garment:
    loose = attrs["fit"] == "loose"
    top = [(24, 20), (30, 22)] if attrs["sleeve"] == "sleeveless" else [(42, 22), (48, 30)]
    side = [(48, 62), (54, 120), (54, 170)] if loose else [(42, 64), (36, 110), (42, 170)]
    hem = [(side[-1][0] * 0.7, 182), (0, 190)]
    armhole = [(36, 44), (44, 62)] if attrs["sleeve"] == "sleeveless" else []
    outline = _mirror([*top, *armhole, *side, *hem])
    sleeves, cuffs = _sleeves(attrs, (47, 28), (44, 62), (36, 22), (40, 108))
    return Garment([*sleeves, outline], neck_y=20, placket_end=176, graphic_at=(CENTER_X, 114.0), cuffs=cuffs)


def _toptee(attrs: Mapping[str, str]) -> Garment:
    loose = attrs["fit"] == "loose"
    if attrs["sleeve"] == "sleeveless":
        top = [(22, 44), (32, 46), (38, 70), (46, 90)]
    else:
        top = [(34, 44), (50, 50), (46, 80)]
    side = [(56, 150)] if loose else [(34, 118), (42, 150)]
    outline = _mirror([*top, *side])
    # A rib band along the straight hem: the t-shirt's cue next to the shirt's curved tail.
    (x0, y0), (x1, y1) = [*top, *side][-2:]
    band_x = x0 + (x1 - x0) * (140 - y0) / (y1 - y0)
    band = _mirror([(band_x, 140), (x1, 150)])
    sleeves, cuffs = _sleeves(attrs, (49, 50), (46, 78), (62, 28), (30, 92))
    return Garment([*sleeves, outline], neck_y=44, graphic_at=(CENTER_X, 120.0), graphic_radius=24, cuffs=cuffs,
                   bands=[band])


def _skirt(attrs: Mapping[str, str]) -> Garment:
    loose = attrs["fit"] == "loose"
    hem_y = _SKIRT_HEM_Y[attrs["length"]]
    hem = {"short": 76, "knee": 88, "long": 96}[attrs["length"]] if loose else 44
    side = [(42, 42), (hem, hem_y)] if loose else [(42, 42), (50, 76), (hem, hem_y)]
    outline = _mirror([*side, (hem * 0.5, hem_y + 3), (0, hem_y + 4)])
    band = _mirror([(42, 24), (42, 44)])
    return Garment([outline], waist=(34.0, 43.0), graphic_at=(CENTER_X, 80.0 + (hem_y - 108) / 3),
                   bands=[band])


def _trousers(attrs: Mapping[str, str]) -> Garment:
    loose = attrs["fit"] == "loose"
    hem_y = _TROUSER_HEM_Y[attrs["length"]]
    outer, inner = (64, 4) if loose else (42, 10)
    if attrs["length"] == "short":
        outer, inner = (outer + 6, inner) if loose else (50, 8)
    outline = _mirror([(44, 22), (48, 60), (outer, hem_y), (inner, hem_y), (0, 96)])
    band = _mirror([(44, 20), (44, 34)])
    return Garment([outline], waist=(27.0, 45.0), graphic_at=(CENTER_X + 26, 78.0), bands=[band])


_SHAPES = {"dress": _dress, "shirt": _shirt, "toptee": _toptee, "skirt": _skirt, "trousers": _trousers}


@dataclass(frozen=True)
class Placement:
    """Random scale and shift of a design, so that no two images are pixel-identical."""

    scale: float
    dx: float
    dy: float

    def point(self, p: Point) -> Point:
        x, y = p
        return (CENTER_X + self.scale * (x - CENTER_X) + self.dx, CENTER_X + self.scale * (y - CENTER_X) + self.dy)

    def points(self, ps: Iterable[Point]) -> list[Point]:
        return [self.point(p) for p in ps]

    def size(self, v: float) -> float:
        return v * self.scale


def _luma(rgb: Sequence[float]) -> float:
    return 0.299 * rgb[0] + 0.587 * rgb[1] + 0.114 * rgb[2]


def _shade(rgb: Sequence[float], factor: float) -> tuple[int, int, int]:
    return tuple(int(max(0, min(255, round(c * factor)))) for c in rgb)  # type: ignore[return-value]


def _jitter(rgb: Sequence[int], rng: random.Random, amount: int) -> tuple[int, int, int]:
    return tuple(max(0, min(255, c + rng.randint(-amount, amount))) for c in rgb)  # type: ignore[return-value]


def _background(main: Sequence[int], rng: random.Random) -> np.ndarray:
    """A plain or softly graded light backdrop; darker for light garments so they never melt into it."""
    level = rng.uniform(118, 160) if _luma(main) > 170 else rng.uniform(208, 246)
    top = np.array([level + rng.uniform(-10, 10) for _ in range(3)], np.float32)
    bottom = top + np.float32(rng.uniform(-16, 16) if rng.random() < 0.6 else 0.0)
    t = _ramp(rng.uniform(0, 2 * math.pi))[..., None]
    return np.clip(top + (bottom - top) * t, 0, 255)


_AXIS = np.linspace(-0.5, 0.5, IMAGE_SIZE, dtype=np.float32)


def _ramp(angle: float) -> np.ndarray:
    """0..1 over the canvas along `angle`; (224, 224) float32."""
    cos, sin = abs(math.cos(angle)), abs(math.sin(angle))
    ramp = _AXIS[None, :] * np.float32(math.cos(angle)) + _AXIS[:, None] * np.float32(math.sin(angle))
    return ramp / np.float32(cos + sin) + np.float32(0.5)


def _pattern_color(main: Sequence[int]) -> tuple[int, int, int]:
    return (244, 242, 236) if _luma(main) < 140 else (36, 34, 40)


def _texture(attrs: Mapping[str, str], garment: Garment, place: Placement, main: tuple[int, int, int],
             rng: random.Random) -> Image.Image:
    """The fabric over the whole canvas: main colour, the pattern in a contrasting colour."""
    fabric = Image.new("RGB", (IMAGE_SIZE, IMAGE_SIZE), main)
    draw = ImageDraw.Draw(fabric)
    ink = _pattern_color(main)
    pattern = attrs["pattern"]
    phase_x, phase_y = rng.uniform(0, 1), rng.uniform(0, 1)
    if pattern == "striped":
        period, band = place.size(24), place.size(9)
        y = -period * (1 + phase_y)
        while y < IMAGE_SIZE:
            draw.rectangle((0, y, IMAGE_SIZE, y + band), fill=ink)
            y += period
    elif pattern == "polka dot":
        _dots(draw, place.size(26), place.size(6.5), phase_x, phase_y, ink)
    elif pattern == "plaid":
        _plaid(fabric, place.size(30), place.size(8), phase_x, phase_y, ink)
    elif pattern == "floral":
        _flowers(draw, place.size(44), place.scale, phase_x, phase_y, ink, rng)
    elif pattern == "graphic":
        x, y = garment.graphic_at
        radius = garment.graphic_radius
        if attrs["buttons"] == "yes":  # beside the placket, like a chest print, not hidden under it
            x, radius = x + 26, radius * 0.75
        _graphic(draw, place.point((x, y)), place.size(radius), ink, rng)
    return fabric


def _grid(period: float, phase_x: float, phase_y: float) -> Iterable[Point]:
    """Centres of a staggered grid (every other row shifted by half a period) covering the canvas."""
    row = 0
    y = -period * (1 + phase_y)
    while y < IMAGE_SIZE + period:
        x = -period * (1 + phase_x) + (period / 2 if row % 2 else 0)
        while x < IMAGE_SIZE + period:
            yield x, y
            x += period
        y += period
        row += 1


def _dots(draw: ImageDraw.ImageDraw, period: float, radius: float, phase_x: float, phase_y: float,
          ink: tuple[int, int, int]) -> None:
    for x, y in _grid(period, phase_x, phase_y):
        draw.ellipse((x - radius, y - radius, x + radius, y + radius), fill=ink)


def _plaid(fabric: Image.Image, period: float, width: float, phase_x: float, phase_y: float,
           ink: tuple[int, int, int]) -> None:
    """Crossing bands in both directions; where they cross they darken/lighten twice, like woven checks."""
    layer = Image.new("L", fabric.size, 0)
    draw = ImageDraw.Draw(layer)
    offset = -period * (1 + phase_x)
    while offset < IMAGE_SIZE:
        draw.rectangle((offset, 0, offset + width, IMAGE_SIZE), fill=150)
        offset += period
    band = Image.new("L", fabric.size, 0)
    band_draw = ImageDraw.Draw(band)
    offset = -period * (1 + phase_y)
    while offset < IMAGE_SIZE:
        band_draw.rectangle((0, offset, IMAGE_SIZE, offset + width), fill=150)
        offset += period
    alpha = np.minimum(np.asarray(layer, np.uint16) + np.asarray(band, np.uint16), 230).astype(np.uint8)
    fabric.paste(ink, (0, 0, *fabric.size), Image.fromarray(alpha))


def _flowers(draw: ImageDraw.ImageDraw, period: float, scale: float, phase_x: float, phase_y: float,
             ink: tuple[int, int, int], rng: random.Random) -> None:
    """Five-petal flowers, about 32 px across, on a jittered grid."""
    petal, reach = 7.5 * scale, 9.5 * scale
    for x, y in _grid(period, phase_x, phase_y):
        cx, cy = x + rng.uniform(-5, 5) * scale, y + rng.uniform(-5, 5) * scale
        turn = rng.uniform(0, 2 * math.pi)
        for k in range(5):
            a = turn + 2 * math.pi * k / 5
            px, py = cx + reach * math.cos(a), cy + reach * math.sin(a)
            draw.ellipse((px - petal, py - petal, px + petal, py + petal), fill=ink)
        draw.ellipse((cx - 4 * scale, cy - 4 * scale, cx + 4 * scale, cy + 4 * scale), fill=BUCKLE)


def _graphic(draw: ImageDraw.ImageDraw, center: Point, radius: float, ink: tuple[int, int, int],
             rng: random.Random) -> None:
    """One big motif on the front: a star, a ring or a block letter."""
    cx, cy = center
    kind = rng.choice(("star", "star", "ring", "letter"))
    if kind == "star":
        turn = rng.uniform(-0.3, 0.3)
        points = [(cx + (radius if k % 2 == 0 else radius * 0.45) * math.sin(turn + math.pi * k / 5),
                   cy - (radius if k % 2 == 0 else radius * 0.45) * math.cos(turn + math.pi * k / 5))
                  for k in range(10)]
        draw.polygon(points, fill=ink)
    elif kind == "ring":
        draw.ellipse((cx - radius, cy - radius, cx + radius, cy + radius), fill=ink)
        inner = radius * 0.5
        draw.ellipse((cx - inner, cy - inner, cx + inner, cy + inner), fill=_pattern_color(ink))
    else:
        w = radius * 0.38
        draw.line((cx - radius * 0.7, cy + radius, cx, cy - radius), fill=ink, width=round(w))
        draw.line((cx, cy - radius, cx + radius * 0.7, cy + radius), fill=ink, width=round(w))
        draw.line((cx - radius * 0.4, cy + radius * 0.2, cx + radius * 0.4, cy + radius * 0.2), fill=ink,
                  width=round(w * 0.8))


def _lighting(fabric: Image.Image, rng: random.Random) -> Image.Image:
    """A soft light gradient over the garment (about +-7%), too weak to change a colour's name."""
    strength = rng.uniform(0.04, 0.08)
    light = 1 - strength + 2 * strength * _ramp(rng.uniform(0, 2 * math.pi))
    lit = np.asarray(fabric, np.float32) * light[..., None]
    return Image.fromarray(np.clip(lit, 0, 255).astype(np.uint8))


def _inner_color(main: Sequence[int]) -> tuple[int, int, int]:
    """What shows through a neckline: the dark inside back, or skin on dark garments."""
    return INNER_DARK if _luma(main) > 110 else SKIN


def _draw_neckline(draw: ImageDraw.ImageDraw, neckline: str, neck_y: float, place: Placement,
                   main: tuple[int, int, int]) -> float:
    """Cut the neckline (big, filled with a contrasting inside); returns where a placket may start."""
    inner = _inner_color(main)
    width = max(3, round(place.size(4)))
    if neckline == "round":
        box = [place.point((CENTER_X - 24, neck_y - 20)), place.point((CENTER_X + 24, neck_y + 20))]
        draw.chord([*box[0], *box[1]], 0, 180, fill=inner, outline=OUTLINE, width=width)
        return neck_y + 20
    if neckline == "v-neck":
        v = [(CENTER_X - 24, neck_y - 1), (CENTER_X + 24, neck_y - 1), (CENTER_X, neck_y + 56)]
        draw.polygon(place.points(v), fill=inner, outline=OUTLINE, width=width)
        return neck_y + 56
    _draw_collar(draw, neck_y, place, main, inner, width)
    return neck_y + 24


def _draw_collar(draw: ImageDraw.ImageDraw, neck_y: float, place: Placement, main: tuple[int, int, int],
                 inner: tuple[int, int, int], width: int) -> None:
    """A band standing up behind the neck (above the shoulder line, where no cut-out neckline reaches)
    and two broad pointed flaps in a plain shade with a thick outline; only a narrow gap between them,
    unlike the wide triangle of a v-neck."""
    stand = _mirror([(28, neck_y - 16), (30, neck_y + 2)])
    draw.polygon(place.points(stand), fill=_shade(main, 0.75), outline=OUTLINE, width=width)
    gap = [(CENTER_X - 10, neck_y - 8), (CENTER_X + 10, neck_y - 8), (CENTER_X, neck_y + 22)]
    draw.polygon(place.points(gap), fill=inner, outline=OUTLINE, width=width)
    flap_color = _shade(main, 1.2) if _luma(main) < 200 else _shade(main, 0.88)
    for side in (1, -1):
        flap = [(1, neck_y + 20), (22, neck_y - 10), (44, neck_y + 6), (16, neck_y + 42)]
        draw.polygon(place.points([(CENTER_X + side * x, y) for x, y in flap]), fill=flap_color, outline=OUTLINE,
                     width=width)


def _draw_buttons(draw: ImageDraw.ImageDraw, y_top: float, y_bottom: float, place: Placement,
                  main: tuple[int, int, int]) -> None:
    """A plain placket strip with big contrasting buttons, so they read on any pattern."""
    width = max(2, round(place.size(3)))
    strip = [(CENTER_X - 9, y_top), (CENTER_X + 9, y_bottom)]
    a, b = place.points(strip)
    draw.rectangle((*a, *b), fill=_shade(main, 0.92), outline=OUTLINE, width=width)
    ink = _pattern_color(main)
    radius = place.size(6.5)
    y = y_top + 14
    while y < y_bottom - 8:
        cx, cy = place.point((CENTER_X, y))
        draw.ellipse((cx - radius, cy - radius, cx + radius, cy + radius), fill=ink, outline=OUTLINE, width=width)
        y += 24


def _draw_belt(draw: ImageDraw.ImageDraw, waist: tuple[float, float], place: Placement,
               main: tuple[int, int, int]) -> None:
    """A band across the waist in a colour far from the garment's, with a gold buckle."""
    y, half = waist
    belt_color = (66, 40, 24) if _luma(main) > 110 else (204, 168, 116)
    width = max(2, round(place.size(3)))
    a, b = place.points([(CENTER_X - half - 4, y - 9), (CENTER_X + half + 4, y + 9)])
    draw.rectangle((*a, *b), fill=belt_color, outline=OUTLINE, width=width)
    a, b = place.points([(CENTER_X - 16, y - 14), (CENTER_X + 16, y + 14)])
    draw.rectangle((*a, *b), fill=BUCKLE, outline=OUTLINE, width=width)
    a, b = place.points([(CENTER_X - 6, y - 5), (CENTER_X + 6, y + 5)])
    draw.rectangle((*a, *b), fill=belt_color)


def render_item(category: str, attrs: Mapping[str, str], rng: random.Random) -> Image.Image:
    """Draw one garment as a 224x224 RGB image."""
    garment = _SHAPES[category](attrs)
    place = Placement(rng.uniform(0.8, 1.0), rng.uniform(-12, 12), rng.uniform(-8, 8))
    main = _jitter(COLOR_RGB[attrs["color"]], rng, 6)
    canvas = Image.fromarray(_background(main, rng).astype(np.uint8))
    fabric = _lighting(_texture(attrs, garment, place, main, rng), rng)
    draw = ImageDraw.Draw(canvas)
    outline_width = max(3, round(place.size(4)))
    for part in garment.parts:
        points = place.points(part)
        mask = Image.new("L", canvas.size, 0)
        ImageDraw.Draw(mask).polygon(points, fill=255)
        canvas.paste(fabric, (0, 0), mask)
        draw.polygon(points, outline=OUTLINE, width=outline_width)
    for band in garment.bands + garment.cuffs:
        draw.polygon(place.points(band), fill=_shade(main, 0.78), outline=OUTLINE, width=outline_width)
    if garment.neck_y is not None:
        neck_bottom = _draw_neckline(draw, attrs["neckline"], garment.neck_y, place, main)
        if attrs["buttons"] == "yes" and garment.placket_end is not None:
            _draw_buttons(draw, neck_bottom, garment.placket_end, place, main)
    if attrs["belt"] == "yes" and garment.waist is not None:
        _draw_belt(draw, garment.waist, place, main)
    return canvas


def item_rng(seed: int, item_id: str) -> random.Random:
    """Each image's own random stream: independent of drawing order and of the number of workers."""
    return random.Random(f"sdfn-synth/{seed}/draw/{item_id}")


def png_bytes(image: Image.Image) -> bytes:
    """PNG with fixed options and no metadata, so that equal pixels give equal bytes."""
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", compress_level=6)
    return buffer.getvalue()


def _draw_job(job: tuple[str, int, str, str, tuple[tuple[str, str], ...]]) -> None:
    """Pool worker (top level so it pickles under "spawn"): draw and write one image."""
    images_dir, seed, item_id, category, attrs = job
    image = render_item(category, dict(attrs), item_rng(seed, item_id))
    Path(images_dir, f"{item_id}.png").write_bytes(png_bytes(image))


def draw_images(items: Sequence[Item], images_dir: Path, seed: int, workers: int, progress: bool) -> None:
    """Draw all images, in `workers` processes when more than one."""
    jobs = [(str(images_dir), seed, item.id, item.category, tuple(item.attrs.items())) for item in items]
    bar = tqdm(total=len(jobs), desc="drawing", unit="img", disable=not progress)
    if workers == 1:
        for job in jobs:
            _draw_job(job)
            bar.update()
    else:
        # "spawn" never copies the caller's threads or locks (torch, tqdm), unlike fork.
        with multiprocessing.get_context("spawn").Pool(workers) as pool:
            for _ in pool.imap_unordered(_draw_job, jobs, chunksize=16):
                bar.update()
    bar.close()


# ---- writing the catalog ----------------------------------------------------------------------------

def item_title(item: Item) -> str:
    """A plain, canonical description for the catalog table: "fitted navy striped long-sleeve shirt
    with a v-neck, no buttons"."""
    a = item.attrs
    noun = NOUNS[item.category][0]
    words = [a["fit"]]
    if item.category == "trousers":  # short trousers are shorts, knee-length ones cropped
        noun = "shorts" if a["length"] == "short" else noun
        words += {"short": [], "knee": ["cropped"], "long": ["full-length"]}[a["length"]]
    elif a["length"] != NOT_APPLICABLE:
        words.append({"short": "short", "knee": "knee-length", "long": "full-length"}[a["length"]])
    words += [a["color"], {"polka dot": "polka-dot"}.get(a["pattern"], a["pattern"])]
    if a["sleeve"] != NOT_APPLICABLE:
        words.append({"sleeveless": "sleeveless", "short": "short-sleeve", "long": "long-sleeve"}[a["sleeve"]])
    words.append(noun)
    extras = []
    if a["neckline"] != NOT_APPLICABLE:
        extras.append({"round": "a round neck", "v-neck": "a v-neck", "collar": "a collar"}[a["neckline"]])
    if a["buttons"] != NOT_APPLICABLE:
        extras.append("buttons" if a["buttons"] == "yes" else "no buttons")
    if a["belt"] != NOT_APPLICABLE:
        extras.append("a belt" if a["belt"] == "yes" else "no belt")
    if not extras:
        return " ".join(words)
    listed = extras[0] if len(extras) == 1 else ", ".join(extras[:-1]) + " and " + extras[-1]
    return " ".join(words) + " with " + listed


def _write_json(path: Path, data: object) -> None:
    # FashionIQ's files are indented by 4; keep the layout so diffs against them read the same.
    path.write_text(json.dumps(data, indent=4) + "\n", encoding="utf-8")


def write_splits(items: Sequence[Item], out: Path, splits: Sequence[str] = SPLITS) -> None:
    folder = out / "image_splits"
    folder.mkdir()
    for category in CATEGORIES:
        for split in splits:
            ids = [item.id for item in items if item.category == category and item.split == split]
            _write_json(folder / f"split.{category}.{split}.json", ids)


def write_captions(triplets: Mapping[tuple[str, str], list[Triplet]], out: Path) -> None:
    folder = out / "captions"
    folder.mkdir()
    for (category, split), entries in triplets.items():
        data = [{"target": t.target, "candidate": t.candidate, "captions": list(t.captions), "asks": t.asks}
                for t in entries]
        _write_json(folder / f"cap.{category}.{split}.json", data)


def write_catalog_csv(items: Sequence[Item], out: Path) -> None:
    """catalog.csv, written to a temporary name and renamed: its presence marks a complete catalog."""
    partial = out / "catalog.csv.partial"
    with partial.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(CATALOG_COLUMNS)
        for item in items:
            writer.writerow([item.id, f"images/{item.id}.png", item.category, item.split, item_title(item),
                             *(item.attrs[a] for a in ATTRIBUTES)])
    os.replace(partial, out / "catalog.csv")


def _check_arguments(out: Path, items_per_category: int, workers: int | None) -> None:
    if items_per_category < MIN_ITEMS_PER_CATEGORY:
        raise ConfigError(
            f"--items-per-category {items_per_category} is too small: train, val and test each need at least "
            f"one family of {MIN_FAMILY} near-duplicate items; use {MIN_ITEMS_PER_CATEGORY} or more "
            f"(default {DEFAULT_ITEMS_PER_CATEGORY})")
    if workers is not None and workers < 1:
        raise ConfigError(f"--workers {workers} must be 1 or more (leave it out to use every core)")
    if out.exists() and not out.is_dir():
        raise DataError(f"output {out} is a file, not a folder; choose a new folder for the catalog")
    if out.is_dir() and any(out.iterdir()):
        hint = "" if (out / "catalog.csv").exists() else " (it has no catalog.csv: an interrupted run?)"
        raise DataError(f"output folder {out} is not empty{hint}; delete it or choose a new folder")


def generate_catalog(out: Path, seed: int = 0, items_per_category: int = DEFAULT_ITEMS_PER_CATEGORY,
                     workers: int | None = None, progress: bool = True,
                     splits: Sequence[str] = SPLITS) -> CatalogSummary:
    """Generate the synthetic catalog in `out` (created; must be absent or empty). Same seed, same bytes.

    `splits` keeps only those splits: their items, captions and images are exactly those of the full
    catalog (everything is sampled first, every image has its own seed), so e.g. the val split of the
    default catalog can be remade in seconds to check a model against its recorded figures.
    """
    out = Path(out)
    _check_arguments(out, items_per_category, workers)
    unknown = sorted(set(splits) - set(SPLITS))
    if unknown or not splits:
        raise ConfigError(f"splits {unknown or '(none)'}: choose from {', '.join(SPLITS)}")
    items = sample_items(seed, items_per_category)
    triplets = sample_triplets(items, seed)
    items = [item for item in items if item.split in splits]
    triplets = {key: entries for key, entries in triplets.items() if key[1] in splits}
    out.mkdir(parents=True, exist_ok=True)
    (out / "images").mkdir()
    draw_images(items, out / "images", seed, workers or os.cpu_count() or 1, progress)
    write_splits(items, out, splits)
    write_captions(triplets, out)
    write_catalog_csv(items, out)
    return CatalogSummary(out, len(items), sum(len(t) for t in triplets.values()))
