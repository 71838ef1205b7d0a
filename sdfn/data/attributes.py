"""The garment attribute schema shared by the synthetic catalog, its captions and the benchmarks.

Every synthetic item is one category plus one value per applicable attribute; attributes that do not
apply to a category hold `NOT_APPLICABLE`. A relative query ("is darker", "has longer sleeves") accepts
every value in its direction, so the value orders below (`COLOR_LIGHTNESS`, `ORDERED_VALUES`) are part of
the schema, not of the drawing.
"""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence

CATEGORIES: tuple[str, ...] = ("dress", "shirt", "toptee", "skirt", "trousers")

ATTRIBUTES: dict[str, tuple[str, ...]] = {
    "color": ("black", "white", "grey", "red", "maroon", "pink", "orange", "yellow", "beige", "brown",
              "green", "blue", "navy", "purple"),
    "pattern": ("solid", "striped", "polka dot", "plaid", "floral", "graphic"),
    "sleeve": ("sleeveless", "short", "long"),
    "length": ("short", "knee", "long"),
    "neckline": ("round", "v-neck", "collar"),
    "fit": ("fitted", "loose"),
    "buttons": ("yes", "no"),
    "belt": ("yes", "no"),
}

NOT_APPLICABLE = "n/a"

APPLIES: dict[str, tuple[str, ...]] = {
    "dress": tuple(ATTRIBUTES),
    "shirt": ("color", "pattern", "sleeve", "neckline", "fit", "buttons"),
    "toptee": ("color", "pattern", "sleeve", "neckline", "fit"),
    "skirt": ("color", "pattern", "length", "fit", "belt"),
    "trousers": ("color", "pattern", "length", "fit", "belt"),
}

# Teaching views group queries by what they change; one group per attribute.
KINDS_OF_CHANGE: tuple[str, ...] = tuple(ATTRIBUTES)

# sRGB of each colour as drawn. Chosen so that the easily confused neighbours (navy/blue/black,
# grey/white/beige, maroon/red/brown) stay apart after shading and jitter.
COLOR_RGB: dict[str, tuple[int, int, int]] = {
    "black": (28, 28, 30),
    "white": (246, 246, 244),
    "grey": (138, 138, 140),
    "red": (212, 30, 36),
    "maroon": (118, 20, 42),
    "pink": (244, 150, 192),
    "orange": (242, 128, 24),
    "yellow": (248, 214, 36),
    "beige": (222, 200, 158),
    "brown": (124, 74, 36),
    "green": (34, 138, 58),
    "blue": (36, 102, 214),
    "navy": (24, 36, 100),
    "purple": (104, 42, 150),
}

# Lightness level of each colour (0 = darkest). "Darker" accepts every colour on a strictly lower
# level; colours on one level are not darker or lighter than each other, which keeps "is darker"
# true to what a person would say (red is not "darker" than blue).
COLOR_LIGHTNESS: dict[str, int] = {
    "black": 0,
    "navy": 1, "maroon": 1, "brown": 1, "purple": 1,
    "green": 2, "blue": 2, "red": 2,
    "grey": 3, "orange": 3,
    "pink": 4, "yellow": 4, "beige": 4,
    "white": 5,
}

# Attributes whose values are ordered, shortest/tightest first: "longer", "shorter", "looser".
ORDERED_VALUES: dict[str, tuple[str, ...]] = {
    "sleeve": ("sleeveless", "short", "long"),
    "length": ("short", "knee", "long"),
    "fit": ("fitted", "loose"),
}

NOUNS: dict[str, tuple[str, ...]] = {
    "dress": ("dress",),
    "shirt": ("shirt", "blouse"),
    "toptee": ("top", "tee", "t-shirt"),
    "skirt": ("skirt",),
    "trousers": ("pants", "trousers"),
}


def applicable_values(category: str, attribute: str) -> tuple[str, ...]:
    """The values `attribute` can take for `category`: its schema values, or just `NOT_APPLICABLE`."""
    if attribute in APPLIES[category]:
        return ATTRIBUTES[attribute]
    return (NOT_APPLICABLE,)


def darker_colors(color: str) -> list[str]:
    """Colours a person would call darker than `color`, in schema order."""
    return [c for c in ATTRIBUTES["color"] if COLOR_LIGHTNESS[c] < COLOR_LIGHTNESS[color]]


def lighter_colors(color: str) -> list[str]:
    """Colours a person would call lighter than `color`, in schema order."""
    return [c for c in ATTRIBUTES["color"] if COLOR_LIGHTNESS[c] > COLOR_LIGHTNESS[color]]


def values_above(attribute: str, value: str) -> list[str]:
    """Values of an ordered attribute after `value` (longer sleeves, longer hem, looser fit)."""
    order = ORDERED_VALUES[attribute]
    return list(order[order.index(value) + 1:])


def values_below(attribute: str, value: str) -> list[str]:
    """Values of an ordered attribute before `value` (shorter sleeves, shorter hem, tighter fit)."""
    order = ORDERED_VALUES[attribute]
    return list(order[:order.index(value)])


def satisfies(item_attrs: Mapping[str, str], category: str, asks: Mapping[str, Sequence[str]],
              reference_category: str) -> bool:
    """Whether an item answers a query: same category as the reference and an accepted value for every
    asked attribute (the "asks" of a synthetic caption entry)."""
    if category != reference_category:
        return False
    return all(item_attrs.get(attribute) in accepted for attribute, accepted in asks.items())


# ---- absolute descriptions (image-text pre-training) ------------------------------------------------

_COLOR_WORDS: dict[str, tuple[str, ...]] = {
    "black": ("black",),
    "white": ("white",),
    "grey": ("grey", "gray"),
    "red": ("red",),
    "maroon": ("maroon", "burgundy"),
    "pink": ("pink",),
    "orange": ("orange",),
    "yellow": ("yellow",),
    "beige": ("beige",),
    "brown": ("brown",),
    "green": ("green",),
    "blue": ("blue",),
    "navy": ("navy", "navy blue"),
    "purple": ("purple",),
}


def color_word(color: str, rng: random.Random) -> str:
    """One of the words people use for `color` (grey/gray, maroon/burgundy, navy/navy blue)."""
    return rng.choice(_COLOR_WORDS[color])


# Per attribute value: words that go before the noun ("striped shirt") and phrases that follow it
# ("shirt with stripes"). Every phrase names its value unambiguously, so a description always lets a
# reader recover all applicable attributes.
_PRE: dict[tuple[str, str], tuple[str, ...]] = {
    ("pattern", "solid"): ("solid", "plain"),
    ("pattern", "striped"): ("striped",),
    ("pattern", "polka dot"): ("polka dot", "polka-dotted"),
    ("pattern", "plaid"): ("plaid", "checked"),
    ("pattern", "floral"): ("floral", "flower print"),
    ("pattern", "graphic"): ("graphic", "logo print"),
    ("sleeve", "sleeveless"): ("sleeveless",),
    ("sleeve", "short"): ("short-sleeve", "short sleeved"),
    ("sleeve", "long"): ("long-sleeve", "long sleeved"),
    ("length", "short"): ("short", "mini"),
    ("length", "knee"): ("knee-length", "midi"),
    ("length", "long"): ("long", "full-length", "maxi"),
    ("neckline", "v-neck"): ("v-neck",),
    ("neckline", "round"): ("crew-neck", "round-neck"),
    ("neckline", "collar"): ("collared",),
    ("fit", "fitted"): ("fitted", "slim", "form-fitting"),
    ("fit", "loose"): ("loose", "relaxed", "loose-fitting"),
    ("buttons", "yes"): ("button-down", "buttoned"),
    ("belt", "yes"): ("belted",),
}

_POST: dict[tuple[str, str], tuple[str, ...]] = {
    ("pattern", "solid"): ("in a solid color", "with no pattern", "plain, no print"),
    ("pattern", "striped"): ("with stripes", "in stripes", "striped"),
    ("pattern", "polka dot"): ("with polka dots", "in polka dots", "dotted"),
    ("pattern", "plaid"): ("in plaid", "with a plaid pattern", "checked"),
    ("pattern", "floral"): ("with flowers", "with a floral print", "floral"),
    ("pattern", "graphic"): ("with a big graphic", "with a logo on the front", "graphic print"),
    ("sleeve", "sleeveless"): ("without sleeves", "no sleeves", "sleeveless"),
    ("sleeve", "short"): ("with short sleeves", "short sleeves"),
    ("sleeve", "long"): ("with long sleeves", "long sleeves"),
    ("length", "short"): ("short length", "above the knee", "short"),
    ("length", "knee"): ("knee length", "to the knee"),
    ("length", "long"): ("full length", "long", "ankle length"),
    ("neckline", "round"): ("with a round neck", "round neckline", "crew neck"),
    ("neckline", "v-neck"): ("with a v-neck", "v neckline", "v-neck"),
    ("neckline", "collar"): ("with a collar", "collared"),
    ("fit", "fitted"): ("fitted", "slim fit", "form fitting"),
    ("fit", "loose"): ("loose", "loose fit", "relaxed fit"),
    ("buttons", "yes"): ("with buttons", "buttons down the front"),
    ("buttons", "no"): ("without buttons", "no buttons"),
    ("belt", "yes"): ("with a belt", "belted"),
    ("belt", "no"): ("without a belt", "no belt"),
}

# Trousers read differently: short trousers are shorts, knee length ones cropped; never "mini" or "maxi".
_TROUSER_LENGTH: dict[str, tuple[str, ...]] = {
    "short": ("shorts",),
    "knee": ("cropped pants", "cropped trousers", "capri pants"),
    "long": ("full-length pants", "long trousers", "full-length trousers"),
}
_TROUSER_LENGTH_PRE: dict[str, tuple[str, ...]] = {
    "short": ("short",), "knee": ("cropped", "capri"), "long": ("full-length", "long"),
}
_TROUSER_LENGTH_POST: dict[str, tuple[str, ...]] = {
    "short": ("short length", "above the knee"), "knee": ("cropped", "knee length"),
    "long": ("full length", "ankle length"),
}


def _article(phrase: str) -> str:
    return "an" if phrase[:1] in "aeiou" else "a"


def _noun_for(attrs: Mapping[str, str], category: str, rng: random.Random) -> tuple[str, bool]:
    """The head noun, and whether it already names the length (trousers: shorts/cropped/long)."""
    if category == "trousers" and rng.random() < 0.6:
        return rng.choice(_TROUSER_LENGTH[attrs["length"]]), True
    return rng.choice(NOUNS[category]), False


def describe_item(attrs: Mapping[str, str], category: str, rng: random.Random) -> str:
    """An absolute description naming every applicable attribute, worded and ordered at random:
    "a navy striped long-sleeve shirt with a v-neck", "loose knee-length red dress, polka dots, ..."."""
    noun, noun_has_length = _noun_for(attrs, category, rng)
    todo = [a for a in APPLIES[category] if not (a == "length" and noun_has_length)]
    rng.shuffle(todo)
    pre: list[str] = []
    post: list[str] = []
    for attribute in todo:
        value = attrs[attribute]
        if attribute == "color":
            word = color_word(value, rng)
            if rng.random() < 0.7:
                pre.append(word)
            else:
                post.append(rng.choice((f"in {word}", f"{word} color", f"in {word} color")))
            continue
        before, after = _PRE.get((attribute, value), ()), _POST[attribute, value]
        if category == "trousers" and attribute == "length":
            before, after = _TROUSER_LENGTH_PRE[value], _TROUSER_LENGTH_POST[value]
        if before and len(pre) < 3 and rng.random() < 0.5:
            pre.append(rng.choice(before))
        else:
            post.append(rng.choice(after))
    head = " ".join([*pre, noun])
    plural = category == "trousers"
    if not plural and (not pre or rng.random() < 0.6):
        head = f"{_article(head)} {head}"
    return head + _join_post(post, rng)


def _join_post(post: Sequence[str], rng: random.Random) -> str:
    """Attach the after-noun phrases with commas or "and", the way catalog titles read."""
    if not post:
        return ""
    if len(post) == 1 or rng.random() < 0.5:
        return ", " + ", ".join(post)
    return ", " + ", ".join(post[:-1]) + " and " + post[-1]
