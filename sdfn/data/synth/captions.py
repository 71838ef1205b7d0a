"""The caption grammar: FashionIQ-style relative captions for a change between two garments.

A caption is a few "mentions" joined the way FashionIQ annotators join them ("is red and has long
sleeves", "is red with long sleeves", "shorter, sleeveless"). A mention covers one attribute (or
colour and pattern at once, "is solid navy") and carries the values it accepts: absolute wording
accepts the target value, relative wording every value in its direction, negated wording every
value but the one it rules out. Each wording exists in several grammatical shapes:

    pred   a full predicate           "is red", "has long sleeves"
    bare   no verb                    "red", "long sleeves"
    attach hangs on the previous one  "in red", "with long sleeves"
    adj    goes before the noun       "red" in "is a red dress"

`caption_pair` writes the two captions of one query and what they ask for together. Every choice is
drawn from the caller's `random.Random` in a fixed order, so a seed gives the same captions.
"""

from __future__ import annotations

import random
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from sdfn.data.attributes import (
    ATTRIBUTES,
    NOUNS,
    color_word,
    darker_colors,
    lighter_colors,
    values_above,
    values_below,
)
from sdfn.data.synth.sampling import Item, changed_attributes

SPLIT_CAPTIONS_SHARE = 0.25  # pairs whose two captions divide the changes between them

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



def _asks(mentions: Iterable[Mention]) -> dict[str, tuple[str, ...]]:
    """Per attribute, the values every mention of it accepts (schema order)."""
    accepted: dict[str, frozenset[str]] = {}
    for mention in mentions:
        for attribute, values in mention.accepted.items():
            accepted[attribute] = accepted.get(attribute, values) & values
    return {a: tuple(v for v in ATTRIBUTES[a] if v in accepted[a]) for a in ATTRIBUTES if a in accepted}


def _normalised(caption: str) -> str:
    return caption.lower().rstrip(".")


def caption_pair(candidate: Item, target: Item,
                 rng: random.Random) -> tuple[tuple[str, str], dict[str, tuple[str, ...]]]:
    """Two different captions for candidate -> target that together cover every change, and the values
    they ask for per changed attribute (what a correct answer must have)."""
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
            return (c1, c2), _asks(first + second)
    raise RuntimeError(f"no second caption different from {c1!r} for {candidate.id} -> {target.id}")
