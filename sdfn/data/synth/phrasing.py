"""Everyday-language requests: a triplet's attribute changes phrased the way shoppers type them.

The caption grammar (`captions.py`) writes FashionIQ-style annotator captions ("is red and has long
sleeves"). Shoppers write differently: imperatives ("turn it red", "give it long sleeves"), wishes ("i want
a maxi one"), questions ("do you have this in navy?"), "like this but ...", politeness, relative changes that
depend on the reference ("darker", "not so tight"), negations ("no print", "lose the belt", "without
sleeves"), fashion words and colour names (roomy, gingham, scoop neck, crimson, charcoal), lower case without
punctuation and a few typos. `phrase_request` renders one such request for a reference -> target change and
says which values it accepts per attribute (the same `asks` as the caption grammar's, so sat@k and R@K apply
unchanged).

This is an extra, opt-in API: `sdfn synth` does not use it, so the catalogs it writes stay byte-identical.

The split into a TRAIN part and a HELD-OUT part (fixed in this file, no randomness):

- Request frames (the sentence around the changes: "i want {np}", "do you have {np}", "{v} instead") are
  listed per family as `train` and `heldout` tuples; no frame is in both.
- Imperative verb phrases ("turn it {w}" / "switch it to {w}", "lose the {n}" / "ditch the {n}") and the
  constructions of relative and negated changes ("not so light", "minus the belt") are split the same way.
- Fashion words beyond the catalog's own vocabulary (crimson/scarlet, houndstooth/buffalo-check,
  slouchy/billowy, ...) are split per attribute value: a held-out request may use the value's `core` words
  or its `heldout` words, a training request its `core` or `train` words. `core` words are the ones the
  caption grammar and the pre-training descriptions already use ("red", "striped", "long sleeves",
  "burgundy", "maxi", "oversized", "scoop neck"): every model trained on the catalog has seen them, so
  holding them out would test nothing.
- Typos: training requests swap two neighbouring letters, held-out ones drop a letter.
- Words it does not know: NOISE_SHARE of the training requests (`training_requests`) carry one word of the
  tokenizer's vocabulary that this generator never uses, one with no change's meaning (`noise_words`: "turn
  it cedar red"), so the model learns to read past words it does not know; held-out requests, and the
  training part's requests shown to people (the demo's paraphrases), never get one.
- The bare family ("{c}": the changes alone, like an annotator caption) exists in the training part only.

The training part holds the words and shapes people commonly type (the examples of issue 9 among them:
"turn it", "give it", "not so tight", burgundy, crimson, cream, charcoal, roomy, slouchy, gingham,
houndstooth, scoop neck, ankle-length); the held-out part holds rarer words and other sentence shapes, so
the held-out figure measures how far the model generalises beyond what it was taught. The training part was
widened once (shipped model v3: more frames per family, more add/remove verbs and negations) without touching
the held-out part, so the held-out requests, and figures measured on them before and after, are the same;
the words it added are not in any held-out frame or construction (love, hoping, after, prefer, sell, similar, only,
mind, pls, thanks, kindly, ok, instead, except, rid, ...) but for common ones ("that", "something").
`training_requests` gives a triplet's training-part requests for stage 2 (`data.phrasing_variants`, ours).

So a held-out request never equals a training request, no held-out fashion word occurs in the training part
or in the caption grammar, and `tests/test_phrasing.py` checks all three. `Request.novel` marks held-out
requests that use at least one held-out fashion word, so a benchmark can tell unseen words (which a text
encoder trained only on this catalog cannot know) from unseen sentence shapes.
"""

from __future__ import annotations

import ast
import csv
import random
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from functools import lru_cache
from pathlib import Path

from sdfn.data.attributes import (
    APPLIES,
    ATTRIBUTES,
    NOT_APPLICABLE,
    darker_colors,
    lighter_colors,
    values_above,
    values_below,
)
from sdfn.data.base import RetrievalDataset, Triplet
from sdfn.errors import ConfigError, DataError

TRAIN, HELDOUT = "train", "heldout"
PARTS: tuple[str, ...] = (TRAIN, HELDOUT)
ABSOLUTE, RELATIVE, NEGATED = "absolute", "relative", "negated"

FAMILIES: tuple[str, ...] = ("imperative", "wish", "question", "like_this_but", "polite", "bare")

TYPO_SHARE = 0.12          # requests with one misspelt word
SYNONYM_SHARE = 0.35       # a word slot takes one of its part's fashion words, else a core word
LOWER_SHARE = 0.6          # requests typed in lower case without punctuation
NOISE_SHARE = 0.3          # training requests with one word they do not need ("make it cedar red"): see noise_words


@dataclass(frozen=True)
class Bank:
    """Words or templates of one slot: `core` usable by both parts, `train` and `heldout` by one part each."""

    train: tuple[str, ...] = ()
    heldout: tuple[str, ...] = ()
    core: tuple[str, ...] = ()

    def options(self, part: str) -> tuple[str, ...]:
        return self.core + (self.train if part == TRAIN else self.heldout)


def _b(train: Iterable[str] = (), heldout: Iterable[str] = (), core: Iterable[str] = ()) -> Bank:
    return Bank(tuple(train), tuple(heldout), tuple(core))


# ---- words for attribute values ------------------------------------------------------------------------------
# Colour names: core = the words of sdfn.data.attributes (grey/gray, maroon/burgundy, navy/navy blue).
# The training words include the common shopper words issue 9 names (burgundy, crimson, cream, charcoal, ...):
# a model should know them; the held-out words are rarer ones, kept to measure unseen vocabulary honestly.
COLOR_WORDS: dict[str, Bank] = {
    "black": _b(["jet black", "all black", "pitch black"], ["onyx"], ["black"]),
    "white": _b(["ivory", "bright white", "optic white", "pure white"], ["off-white", "snow white"], ["white"]),
    "grey": _b(["charcoal", "heather grey", "light grey", "dark grey", "silver", "grey marl"],
               ["slate", "ash grey"], ["grey", "gray"]),
    "red": _b(["crimson", "bright red", "ruby", "tomato red", "fire engine red"], ["scarlet", "cherry red"],
              ["red"]),
    "maroon": _b(["wine", "wine red", "dark red", "claret", "deep red"], ["oxblood", "bordeaux"],
                 ["maroon", "burgundy"]),
    "pink": _b(["blush", "hot pink", "baby pink", "fuchsia", "pale pink", "light pink", "magenta"],
               ["rose pink", "bubblegum"], ["pink"]),
    "orange": _b(["tangerine", "bright orange", "neon orange", "apricot"], ["burnt orange", "pumpkin"],
                 ["orange"]),
    "yellow": _b(["mustard", "gold", "golden", "sunshine yellow", "pale yellow"], ["lemon", "canary yellow"],
                 ["yellow"]),
    "beige": _b(["camel", "sand", "cream", "tan", "nude", "khaki", "stone", "taupe", "ecru"], ["oatmeal", "biscuit"],
                ["beige"]),
    "brown": _b(["chocolate", "chestnut", "mocha", "dark brown", "walnut"], ["coffee", "cocoa"], ["brown"]),
    "green": _b(["emerald", "olive", "forest green", "sage", "mint", "bottle green", "lime"],
                ["kelly green", "grass green"], ["green"]),
    "blue": _b(["cobalt", "royal blue", "light blue", "sky blue", "baby blue", "bright blue", "denim blue"],
               ["sapphire", "azure"], ["blue"]),
    "navy": _b(["midnight blue", "dark blue", "deep blue"], ["ink blue", "dark navy"], ["navy", "navy blue"]),
    "purple": _b(["violet", "lilac", "lavender", "plum", "mauve"], ["aubergine", "eggplant"], ["purple"]),
}

# Patterns: adjectives (before the noun: "a gingham shirt") and nouns (after "with": "with pinstripes").
PATTERN_ADJ: dict[str, Bank] = {
    "solid": _b(["unpatterned", "plain coloured", "block colour", "patternless", "one-colour"],
                ["print-free", "single-colour"], ["plain", "solid"]),
    "striped": _b(["pinstriped", "stripy", "stripey", "pinstripe"], ["breton-striped", "candy-striped"],
                  ["striped"]),
    "polka dot": _b(["dotty", "spotted", "spotty", "polka-dot", "dotted"], ["pin-dot"], ["polka dot"]),
    "plaid": _b(["gingham", "houndstooth", "tartan", "checkered", "chequered", "check"],
                ["buffalo-check", "glen-check"], ["plaid", "checked"]),
    "floral": _b(["flowered", "flowery", "flower print", "flower-print"], ["ditsy floral", "botanical"],
                 ["floral"]),
    "graphic": _b(["slogan", "graphic print", "logo print", "printed slogan"], ["printed-logo"],
                  ["graphic", "logo"]),
}
PATTERN_NOUN: dict[str, Bank] = {
    "striped": _b(["pinstripes", "vertical stripes", "horizontal stripes", "thin stripes"],
                  ["breton stripes", "candy stripes"], ["stripes"]),
    "polka dot": _b(["spots", "dot print", "polkadots"], ["pin dots", "little spots"], ["polka dots", "dots"]),
    "plaid": _b(["gingham", "houndstooth", "tartan", "a check print", "a checkered print"],
                ["a buffalo check", "a glen check"], ["plaid", "checks"]),
    "floral": _b(["roses", "a flower print", "a flowery print", "little flowers"], ["blossoms", "a ditsy print"],
                 ["flowers", "a floral print"]),
    "graphic": _b(["a slogan", "a print on the front", "a logo print", "some text on it"],
                  ["lettering", "a picture on the front"], ["a graphic", "a logo"]),
}

SLEEVE_ADJ: dict[str, Bank] = {
    "sleeveless": _b(["armless", "strappy", "strapless", "tank-style", "sleeve-less"], ["spaghetti-strap"],
                     ["sleeveless"]),
    "short": _b(["cap-sleeved", "short-sleeve", "short sleeved", "half-sleeved"], ["tee-sleeved"],
                ["short-sleeved", "short sleeve"]),
    "long": _b(["full-sleeved", "long-sleeve", "long sleeved", "full sleeve"], ["wrist-length-sleeved"],
               ["long-sleeved", "long sleeve"]),
}
SLEEVE_NOUN: dict[str, Bank] = {
    "sleeveless": _b(["bare arms", "straps", "thin straps"], ["bare shoulders and arms"], ["no sleeves"]),
    "short": _b(["cap sleeves", "half sleeves", "tshirt sleeves"], ["elbow sleeves", "tee sleeves"],
                ["short sleeves"]),
    "long": _b(["full-length sleeves", "full sleeves", "sleeves to the wrist"],
               ["wrist-length sleeves", "sleeves down to the wrist"], ["long sleeves"]),
}

LENGTH_ADJ: dict[str, Bank] = {
    "short": _b(["micro", "above-the-knee", "above knee", "super short", "mini-length"], ["thigh-length"],
                ["short", "mini"]),
    "knee": _b(["mid-length", "knee-length", "below-the-knee"], ["calf-length", "tea-length"],
               ["knee length", "midi"]),
    "long": _b(["ankle-length", "full-length", "floor-length", "ankle length", "maxi-length"],
               ["floor-sweeping", "extra long"], ["long", "maxi", "floor length"]),
}
TROUSER_LENGTH_ADJ: dict[str, Bank] = {
    "short": _b(["short-leg", "shorts-length", "above-the-knee"], ["hot-pant"], ["short"]),
    "knee": _b(["three-quarter", "knee-length", "3/4 length"], ["calf-length"], ["cropped", "capri"]),
    "long": _b(["ankle-length", "full-length", "floor-length", "long-leg"], ["extra long"], ["full length", "long"]),
}

NECKLINE_NOUN: dict[str, Bank] = {
    "round": _b(["crewneck", "crew-neck", "round neckline", "scoop neckline", "scoop-neck", "roundneck"],
                ["jewel neck", "high round neckline"], ["round neck", "crew neck", "scoop neck"]),
    "v-neck": _b(["v-neckline", "vneck", "v-shaped neckline", "v shaped neck", "vee neck"],
                 ["plunging neckline", "wrap neckline"], ["v-neck", "v neck", "deep v"]),
    "collar": _b(["shirt-style collar", "shirt collar", "proper collar", "collared neckline"],
                 ["polo collar", "peter pan collar"], ["collar", "pointed collar"]),
}

FIT_ADJ: dict[str, Bank] = {
    "fitted": _b(["snug", "figure-hugging", "bodycon", "skinny", "form-fitting", "tight-fitting", "slim-fit",
                  "close-fitting"], ["tailored", "body-hugging"], ["fitted", "tight", "slim"]),
    "loose": _b(["roomy", "boxy", "slouchy", "flowy", "loose-fitting", "relaxed-fit", "wide", "oversize"],
                ["billowy", "voluminous"], ["loose", "baggy", "oversized", "relaxed"]),
}

BUTTONS_NOUN = _b(["a button front", "a button-down front", "buttons down the front", "a buttoned front"],
                  ["a row of buttons", "button fastening"], ["buttons"])
BELT_NOUN = _b(["a tie belt", "a waist belt", "a belted waist", "a tie waist"], ["a sash", "a cinched waist tie"],
               ["a belt"])

NOUNS: dict[str, Bank] = {
    "dress": _b(["frock"], ["gown"], ["dress", "one"]),
    "shirt": _b(["button-up"], ["oxford"], ["shirt", "blouse", "one"]),
    "toptee": _b(["tank", "tank top", "tshirt", "tee shirt"], ["cami"], ["top", "tee", "t-shirt", "one"]),
    "skirt": _b([], [], ["skirt", "one"]),
    "trousers": _b(["slacks", "bottoms"], ["chinos"], ["pants", "trousers", "pair"]),
}

# ---- constructions ---------------------------------------------------------------------------------------------
# Imperative verb phrases; {w} a colour/adjective word, {n} a noun phrase, {u} the reference's value.
# The issue's own examples ("turn it ...", "give it ...", "not so tight", "without sleeves") are training
# constructions; the held-out ones are other shapes ("switch it to", "not so" for length and shade, ...).
MAKE_ADJ = _b(["make it {w}", "change it to {w}", "turn it {w}", "make this one {w}", "change to {w}",
               "have it {w}", "turn this one {w}", "change this one to {w}", "make that {w}", "do it {w}"],
              ["switch it to {w}", "go for {w}"])
ADD_NOUN = _b(["add {n}", "put {n} on it", "give it {n}", "with {n} added", "include {n}", "add on {n}",
               "give this one {n}", "put {n} on this one"], ["stick {n} on it", "throw in {n}"])
REMOVE_NOUN = _b(["lose the {n}", "remove the {n}", "take off the {n}", "drop the {n}", "take the {n} off",
                  "skip the {n}", "leave off the {n}", "cut the {n}", "no more {n}", "pull the {n} off"],
                 ["ditch the {n}", "get rid of the {n}", "take away the {n}"])
COLOR_NOT = _b(["not {u}", "any colour but {u}", "anything but {u}", "not in {u}", "any color but {u}"],
               ["anything except {u}", "some colour other than {u}"])
DARKER = _b(["darker", "a darker shade", "a bit darker", "a darker colour", "darker please"],
            ["deeper in colour", "a few shades darker", "not so light"])
LIGHTER = _b(["lighter", "a lighter shade", "a bit lighter", "a lighter colour", "lighter please"],
             ["paler", "a few shades lighter", "not so dark"])
BUSIER = _b(["busier", "more patterned", "with a pattern", "patterned"], ["less plain", "more eye-catching"])
PLAINER = _b(["plainer", "simpler", "less patterned"], ["less busy looking", "more understated"])
WITHOUT = _b(["without the {n}", "no {n}", "without {n}", "with no {n}", "with the {n} removed",
              "with the {n} taken off", "but no {n}", "lacking the {n}"], ["minus the {n}", "with the {n} gone"])
LONGER = _b(["longer", "a bit longer", "a little longer", "much longer"], ["not so short", "with more length"])
SHORTER = _b(["shorter", "a bit shorter", "a little shorter", "much shorter"], ["not so long", "with less length"])
LONGER_SLEEVES = _b(["with longer sleeves", "with longer arms"], ["with sleeves that are not so short"])
SHORTER_SLEEVES = _b(["with shorter sleeves", "with shorter arms"], ["with sleeves that are not so long"])
WITH_SLEEVES = _b(["with sleeves", "with some sleeves"], ["with some sleeves on it"])
# The sleeves named first, their length after ("make the sleeves long", "make the sleeves longer"): without
# these a model taught only "long sleeves" read "sleeves long" as a length change.
SLEEVES_MAKE = _b(["make the sleeves {w}", "have the sleeves {w}", "make its sleeves {w}"],
                  ["let the sleeves be {w}", "change the sleeves to {w} ones"])
TIGHTER = _b(["tighter", "more fitted", "not so loose", "less loose"], ["less baggy", "closer to the body"])
LOOSER = _b(["looser", "less fitted", "not so tight", "less tight", "roomier"], ["less clingy", "with more room"])
LONGER_VERB = _b(["make it longer", "longer please"], ["lengthen it", "add some length"])
SHORTER_VERB = _b(["make it shorter", "shorter please"], ["shorten it", "take the hem up"])
DARKER_VERB = _b(["make it darker", "go darker"], ["go a few shades darker", "darken it"])
LIGHTER_VERB = _b(["make it lighter", "go lighter"], ["go a few shades lighter", "lighten it"])
TIGHTER_VERB = _b(["make it tighter", "make it more fitted"], ["take it in"])
LOOSER_VERB = _b(["make it looser", "make it roomier"], ["let it out"])

# Request frames per family: {c} the changes as complements ("red and with long sleeves"), {np} a noun phrase
# ("a red one with long sleeves"), {v} imperative verb phrases ("turn it red and give it long sleeves").
FRAMES: dict[str, Bank] = {
    "imperative": _b(["{v}", "just {v}", "can you {v}", "{v} for me", "please {v}", "could you {v}",
                      "{v} please", "try to {v}", "i'd like you to {v}", "{v} if possible", "now {v}"],
                     ["ok {v}", "{v} instead"]),
    "wish": _b(["i want it {c}", "i want {np}", "looking for {np}", "i need {np}", "i'd like {np}",
                "i'm looking for {np}", "want it {c}", "i need it {c}", "ideally {np}", "i wish it was {c}",
                "i'd rather have {np}", "want {np}", "need something {c}", "i'm searching for {np}",
                "i want something {c}", "what i want is {np}"],
               ["i'd love {np}", "hoping to find {np}", "i'm after {np}", "i would prefer it {c}"]),
    "question": _b(["do you have {np}", "do you have this {c}", "is there {np}", "do you have it {c}",
                    "have you got {np}", "is there one {c}", "do you do {np}", "do you carry {np}",
                    "is this available {c}", "could i have {np}", "anything {c}", "do you stock {np}",
                    "is there a version {c}"],
                   ["got {np}", "does it come {c}", "can i get {np}", "do you sell {np}"]),
    "like_this_but": _b(["like this but {c}", "same but {c}", "this but {c}", "like this one but {c}",
                         "the same but {c}", "just like this but {c}", "like this though {c}",
                         "this one but {c}", "like that but {c}", "same one but {c}", "exactly like this but {c}",
                         "same thing but {c}"],
                        ["similar to this but {c}", "something like this only {c}", "same style but {c}"]),
    "polite": _b(["please show me {np}", "could i see {np} please", "{c} please", "show me {np}", "find me {np}",
                  "please {c}", "can you show me {np}", "i'd like to see {np}",
                  "hi {c} please", "could you find {np}", "help me find {np}", "show me something {c}",
                  "hello i'd like {np}", "please find {np}"],
                 ["would you mind finding {np}", "pls {c}", "{c} thanks", "kindly show me {np}"]),
    "bare": _b(["{c}", "{np}"], []),
}


@dataclass(frozen=True)
class Phrase:
    """One change in words, in the shapes a frame needs, and the values it accepts."""

    attribute: str
    form: str
    accepted: frozenset[str]
    comp: str              # after "make it"/"but": "red", "darker", "with long sleeves", "without the belt"
    verb: str              # an imperative: "turn it red", "lose the belt"
    mod: str               # after the noun: "in red", "with long sleeves", "without a belt"
    adj: str | None = None  # before the noun: "red", "maxi", "gingham"
    novel: bool = False    # uses a held-out fashion word


@dataclass(frozen=True)
class Request:
    """A request for reference -> target and what a correct answer must have."""

    text: str
    asks: dict[str, tuple[str, ...]]
    family: str
    part: str
    forms: tuple[str, ...]   # per change: absolute | relative | negated
    novel: bool              # held-out part: at least one held-out fashion word
    typo: bool

    @property
    def changes(self) -> int:
        return len(self.asks)


def _pick(bank: Bank, part: str, rng: random.Random) -> tuple[str, bool]:
    """A word of `bank` for `part`, and whether it is a held-out (non-core) one."""
    own = bank.train if part == TRAIN else bank.heldout
    roll = rng.random()
    word = rng.choice(own if own and (roll < SYNONYM_SHARE or not bank.core) else bank.core)
    return word, part == HELDOUT and word in bank.heldout


def _fill(template: str, **words: str) -> str:
    return template.format(**words)


def _accepted(values: Iterable[str]) -> frozenset[str]:
    return frozenset(values)


def _color(u: str, v: str, part: str, rng: random.Random) -> Phrase:
    darker, lighter = darker_colors(u), lighter_colors(u)
    roll = rng.random()
    if roll < 0.3 and (v in darker or v in lighter):
        is_darker = v in darker
        comp = rng.choice((DARKER if is_darker else LIGHTER).options(part))
        verb = rng.choice((DARKER_VERB if is_darker else LIGHTER_VERB).options(part))
        adj = "darker" if is_darker else "lighter"
        return Phrase("color", RELATIVE, _accepted(darker if is_darker else lighter), comp, verb,
                      f"in a {adj} shade", adj)
    if roll > 0.88:
        uw, _ = _pick(COLOR_WORDS[u], part, rng)
        comp = _fill(rng.choice(COLOR_NOT.options(part)), u=uw)
        others = [c for c in ATTRIBUTES["color"] if c != u]
        return Phrase("color", NEGATED, _accepted(others), comp, f"make it {comp}" if part == TRAIN
                      else f"go with {comp}", f"that is {comp}")
    word, novel = _pick(COLOR_WORDS[v], part, rng)
    comp = word if rng.random() < 0.5 else f"in {word}"
    return Phrase("color", ABSOLUTE, _accepted([v]), comp, _fill(rng.choice(MAKE_ADJ.options(part)), w=word),
                  f"in {word}", word, novel)


def _pattern(u: str, v: str, part: str, rng: random.Random) -> Phrase:
    roll = rng.random()
    not_solid = [p for p in ATTRIBUTES["pattern"] if p != "solid"]
    if roll < 0.2 and "solid" in (u, v):
        if u == "solid":
            comp = rng.choice(BUSIER.options(part))
            return Phrase("pattern", RELATIVE, _accepted(not_solid), comp, f"make it {comp}"
                          if part == TRAIN else f"go {comp}", comp)
        comp = rng.choice(PLAINER.options(part))
        return Phrase("pattern", RELATIVE, _accepted(["solid"]), comp, f"make it {comp}"
                      if part == TRAIN else f"go {comp}", comp)
    if roll > 0.75 and u != "solid":
        # "no stripes", "lose the print": anything but the reference's pattern, or plain when asked plainly
        noun, novel = _pick(PATTERN_NOUN[u], part, rng)
        noun = re.sub(r"^an? ", "", noun)
        if v == "solid" and rng.random() < 0.5:
            noun, novel = rng.choice(("print", "pattern")), False
            accepted = ["solid"]
        else:
            accepted = [p for p in ATTRIBUTES["pattern"] if p != u]
        comp = _fill(rng.choice(WITHOUT.options(part)), n=noun)
        verb = _fill(rng.choice(REMOVE_NOUN.options(part)), n=noun)
        return Phrase("pattern", NEGATED, _accepted(accepted), comp, verb, comp, None, novel)
    adj, novel_adj = _pick(PATTERN_ADJ[v], part, rng)
    if v == "solid" or rng.random() < 0.5:
        return Phrase("pattern", ABSOLUTE, _accepted([v]), adj, _fill(rng.choice(MAKE_ADJ.options(part)), w=adj),
                      f"in a {adj} print" if v != "solid" else f"in a {adj} fabric", adj, novel_adj)
    noun, novel = _pick(PATTERN_NOUN[v], part, rng)
    return Phrase("pattern", ABSOLUTE, _accepted([v]), f"with {noun}",
                  _fill(rng.choice(ADD_NOUN.options(part)), n=noun), f"with {noun}", adj, novel or novel_adj)


def _sleeve(u: str, v: str, part: str, rng: random.Random) -> Phrase:
    roll = rng.random()
    if roll < 0.25:
        if v in values_above("sleeve", u):
            if u == "sleeveless" and rng.random() < 0.5:
                comp = rng.choice(WITH_SLEEVES.options(part))
                verb = _fill(rng.choice(ADD_NOUN.options(part)), n="sleeves")
                return Phrase("sleeve", NEGATED, _accepted(["short", "long"]), comp, verb, comp)
            comp = rng.choice(LONGER_SLEEVES.options(part))
            return Phrase("sleeve", RELATIVE, _accepted(values_above("sleeve", u)), comp,
                          _sleeves_verb(comp, "longer", part, rng), comp)
        comp = rng.choice(SHORTER_SLEEVES.options(part))
        return Phrase("sleeve", RELATIVE, _accepted(values_below("sleeve", u)), comp,
                      _sleeves_verb(comp, "shorter", part, rng), comp)
    if v == "sleeveless" and roll < 0.5:
        comp = rng.choice(WITHOUT.options(part)).format(n="sleeves")
        verb = _fill(rng.choice(REMOVE_NOUN.options(part)), n="sleeves")
        return Phrase("sleeve", NEGATED, _accepted(["sleeveless"]), comp, verb, comp)
    adj, novel_adj = _pick(SLEEVE_ADJ[v], part, rng)
    noun, novel = _pick(SLEEVE_NOUN[v], part, rng)
    with_noun = f"with {noun}"
    comp = adj if rng.random() < 0.5 else with_noun
    verb = (_fill(rng.choice(MAKE_ADJ.options(part)), w=adj) if v == "sleeveless"
            else _sleeves_verb(with_noun, v, part, rng, noun))
    return Phrase("sleeve", ABSOLUTE, _accepted([v]), comp, verb, with_noun, adj,
                  (novel_adj and comp == adj) or (novel and comp == with_noun))


def _sleeves_verb(comp: str, word: str, part: str, rng: random.Random, noun: str | None = None) -> str:
    """An imperative for a sleeve change: "add long sleeves" (ADD_NOUN with the noun phrase), or, a third of the
    time, the sleeves first ("make the sleeves long", "make the sleeves longer"; SLEEVES_MAKE with `word`)."""
    if rng.random() < 0.35:
        return _fill(rng.choice(SLEEVES_MAKE.options(part)), w=word)
    return _fill(rng.choice(ADD_NOUN.options(part)), n=noun or comp.removeprefix("with "))


def _length(u: str, v: str, category: str, part: str, rng: random.Random) -> Phrase:
    if rng.random() < 0.35:
        if v in values_above("length", u):
            comp, verb = rng.choice(LONGER.options(part)), rng.choice(LONGER_VERB.options(part))
            return Phrase("length", RELATIVE, _accepted(values_above("length", u)), comp, verb, comp, "longer")
        comp, verb = rng.choice(SHORTER.options(part)), rng.choice(SHORTER_VERB.options(part))
        return Phrase("length", RELATIVE, _accepted(values_below("length", u)), comp, verb, comp, "shorter")
    bank = (TROUSER_LENGTH_ADJ if category == "trousers" else LENGTH_ADJ)[v]
    adj, novel = _pick(bank, part, rng)
    mod = f"in a {adj} length" if adj not in ("short", "long") and "length" not in adj else f"that is {adj}"
    return Phrase("length", ABSOLUTE, _accepted([v]), adj, _fill(rng.choice(MAKE_ADJ.options(part)), w=adj),
                  mod, adj, novel)


def _neckline(u: str, v: str, part: str, rng: random.Random) -> Phrase:
    if rng.random() < 0.25:
        noun, novel = _pick(NECKLINE_NOUN[u], part, rng)
        others = [x for x in ATTRIBUTES["neckline"] if x != u]
        comp = _fill(rng.choice(WITHOUT.options(part)), n=noun)
        return Phrase("neckline", NEGATED, _accepted(others), comp,
                      _fill(rng.choice(REMOVE_NOUN.options(part)), n=noun), comp, None, novel)
    noun, novel = _pick(NECKLINE_NOUN[v], part, rng)
    article = "an" if noun[0] in "aeiou" else "a"
    return Phrase("neckline", ABSOLUTE, _accepted([v]), f"with {article} {noun}",
                  _fill(rng.choice(ADD_NOUN.options(part)), n=f"{article} {noun}"), f"with {article} {noun}",
                  noun if rng.random() < 0.5 else None, novel)


def _fit(u: str, v: str, part: str, rng: random.Random) -> Phrase:
    if rng.random() < 0.3:
        looser = v == "loose"
        comp = rng.choice((LOOSER if looser else TIGHTER).options(part))
        verb = rng.choice((LOOSER_VERB if looser else TIGHTER_VERB).options(part))
        return Phrase("fit", RELATIVE, _accepted([v]), comp, verb, f"that is {comp}",
                      "looser" if looser else "tighter")
    adj, novel = _pick(FIT_ADJ[v], part, rng)
    return Phrase("fit", ABSOLUTE, _accepted([v]), adj, _fill(rng.choice(MAKE_ADJ.options(part)), w=adj),
                  f"with a {adj} fit", adj, novel)


def _yes_no(attribute: str, v: str, part: str, rng: random.Random) -> Phrase:
    bank = BUTTONS_NOUN if attribute == "buttons" else BELT_NOUN
    noun, novel = _pick(bank, part, rng)
    if v == "yes":
        return Phrase(attribute, ABSOLUTE, _accepted(["yes"]), f"with {noun}",
                      _fill(rng.choice(ADD_NOUN.options(part)), n=noun), f"with {noun}", None, novel)
    bare = re.sub(r"^an? ", "", noun)
    comp = _fill(rng.choice(WITHOUT.options(part)), n=bare)
    return Phrase(attribute, NEGATED, _accepted(["no"]), comp, _fill(rng.choice(REMOVE_NOUN.options(part)), n=bare),
                  comp, None, novel)


def phrase_change(attribute: str, u: str, v: str, category: str, part: str, rng: random.Random) -> Phrase:
    """One everyday wording of the change `attribute`: u -> v, from the words of `part`."""
    if attribute == "color":
        return _color(u, v, part, rng)
    if attribute == "pattern":
        return _pattern(u, v, part, rng)
    if attribute == "sleeve":
        return _sleeve(u, v, part, rng)
    if attribute == "length":
        return _length(u, v, category, part, rng)
    if attribute == "neckline":
        return _neckline(u, v, part, rng)
    if attribute == "fit":
        return _fit(u, v, part, rng)
    return _yes_no(attribute, v, part, rng)


def _join(parts: Sequence[str], rng: random.Random) -> str:
    if len(parts) == 1:
        return parts[0]
    if rng.random() < 0.7:   # "red and with long sleeves"; a last part that says "but no ..." takes no "and"
        return ", ".join(parts[:-1]) + (", " if parts[-1].startswith("but ") else " and ") + parts[-1]
    return " ".join(parts) if rng.random() < 0.5 else ", ".join(parts)


def _noun_phrase(phrases: Sequence[Phrase], category: str, part: str, rng: random.Random) -> tuple[str, bool]:
    noun, novel = _pick(NOUNS[category], part, rng)
    adjectives = [p for p in phrases if p.adj and rng.random() < 0.5][:2]
    plural = category == "trousers" and noun != "pair"
    mods = [p.mod.replace("that is ", "that are ") if plural else p.mod for p in phrases if p not in adjectives]
    head = " ".join([*(p.adj or "" for p in adjectives), noun])
    vowel = head[0] in "aeiou" and not head.startswith("one")
    singular = "" if head == "one" else "an " if vowel else "a "
    article = ("some " if rng.random() < 0.3 else "") if plural else singular
    return article + head + ("" if not mods else " " + _join(mods, rng)), novel


def _typo(text: str, part: str, rng: random.Random) -> str:
    """One misspelt word of five letters or more: neighbouring letters swapped (train), a letter dropped
    (held out)."""
    words = text.split(" ")
    long = [i for i, w in enumerate(words) if len(w) >= 5 and w.isalpha()]
    if not long:
        return text
    i = rng.choice(long)
    word = words[i]
    at = rng.randrange(1, len(word) - 2)
    words[i] = (word[:at] + word[at + 1] + word[at] + word[at + 2:]) if part == TRAIN else word[:at] + word[at + 1:]
    return " ".join(words)


def _style(text: str, family: str, rng: random.Random) -> str:
    if rng.random() < LOWER_SHARE:
        return re.sub(r"[,.?!]", "", text.lower())
    text = text[0].upper() + text[1:]
    return text + ("?" if family == "question" else "" if rng.random() < 0.5 else ".")


def _asks(phrases: Iterable[Phrase]) -> dict[str, tuple[str, ...]]:
    accepted = {p.attribute: p.accepted for p in phrases}
    return {a: tuple(v for v in ATTRIBUTES[a] if v in accepted[a]) for a in ATTRIBUTES if a in accepted}


def check_part(part: str) -> None:
    if part not in PARTS:
        raise ConfigError(f"phrasing part {part!r}; use one of {', '.join(PARTS)}")


def phrase_request(reference: Mapping[str, str], target: Mapping[str, str], category: str, part: str,
                   rng: random.Random, family: str | None = None, noise: bool = False, typos: bool = True) -> Request:
    """An everyday request for reference -> target (attribute dicts of one category) from the words and
    frames of `part` ("train" or "heldout"); `family` picks the frame family (default: drawn from the part's
    families). Every changed attribute is asked for. `noise` (training requests only, `training_requests`):
    NOISE_SHARE of the requests get one word of `noise_words` at a random place. `typos=False`: no request is
    misspelt (for the words a model was taught, `training_requests(clean=True)`)."""
    check_part(part)
    if noise and part != TRAIN:
        raise ConfigError("phrase_request: noise words are for training requests only (part 'train')")
    changed = [a for a in APPLIES[category] if reference[a] != target[a] and NOT_APPLICABLE not in
               (reference[a], target[a])]
    if not changed:
        raise ConfigError(f"phrase_request: reference and target ({category}) do not differ; nothing to ask for")
    families = [f for f in FAMILIES if FRAMES[f].options(part)]
    if family is None:
        family = rng.choice(families)
    elif family not in families:
        raise ConfigError(f"phrasing family {family!r} has no {part} frames; use one of {', '.join(families)}")
    rng.shuffle(changed)
    phrases = [phrase_change(a, reference[a], target[a], category, part, rng) for a in changed]
    frame = rng.choice(FRAMES[family].options(part))
    novel = any(p.novel for p in phrases)
    words: dict[str, str] = {}
    if "{v}" in frame:
        words["v"] = _join([p.verb for p in phrases], rng)
    if "{c}" in frame:
        words["c"] = _join([p.comp for p in phrases], rng)
    if "{np}" in frame:
        words["np"], novel_noun = _noun_phrase(phrases, category, part, rng)
        novel = novel or novel_noun
    text = re.sub(r"\ba (?=[aeiou])(?!one\b)", "an ", frame.format(**words))
    # a frame word met again at the start of a change ("this but" + "but no flowers", "anything" + "anything but
    # grey", "a logo print" + " print") is said once
    text = re.sub(r"\b(\w+) \1\b", r"\1", text)
    if noise and rng.random() < NOISE_SHARE:
        words_ = text.split(" ")
        words_.insert(rng.randrange(len(words_) + 1), rng.choice(noise_words()))
        text = " ".join(words_)
    typo = typos and rng.random() < TYPO_SHARE and len(text.split()) >= 3   # a misspelt one-word request says nothing
    if typo:
        text = _typo(text, part, rng)
    return Request(_style(text, family, rng), _asks(phrases), family, part,
                   tuple(p.form for p in phrases), novel, typo)


# Words a random insertion must never be: they carry a change's meaning even where no bank lists them.
_MEANINGFUL_WORDS = """
not no nor never none nothing nobody neither without dont don doesnt didnt isnt arent wasnt werent wont cant cannot
shouldnt wouldnt couldnt hate hated dislike avoid except minus lose drop remove removed skip instead rather than but
however although though unless only just keep kept same different change changed more less most least much many few
too very extra super darker lighter brighter duller longer shorter bigger smaller wider narrower tighter looser
higher lower color colors colour colours colored coloured shade shades tone hue dark light bright pale deep neon
pastel teal turquoise aqua coral indigo salmon peach rust copper bronze silver gold golden amber jade ivory cyan
magenta khaki beige denim silk lace velvet leather cotton wool linen satin suede knit knitted sequin sequins fabric
material hem hemline waist waistline sleeve sleeves sleeved collar collared neck neckline button buttons buttoned
belt belts belted zip zipper pocket pockets hood hooded strap straps strapless ruffle ruffles pleat pleated print
prints printed pattern patterns patterned stripe stripes striped check checks checked dots dotted spots floral
flowers plain solid fit fits fitted loose tight length long short mini midi maxi cropped dress dresses shirt shirts
blouse blouses top tops tee tees tshirt skirt skirts trousers pants jeans shorts jacket coat sweater jumper cardigan
hoodie vest tank gown frock outfit suit wear wearing reddish bluish greenish pinkish purplish yellowish brownish
greyish grayish orangey blu blk wht rosy blonde brunette florals
"""
_MEANINGFUL = frozenset(_MEANINGFUL_WORDS.split())


def _string_literals(path: Path) -> list[str]:
    """The string constants of a Python file's code, docstrings left out."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    docstrings = {id(node.body[0].value) for node in ast.walk(tree)
                  if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))
                  and node.body and isinstance(node.body[0], ast.Expr) and isinstance(node.body[0].value, ast.Constant)}
    return [node.value for node in ast.walk(tree)
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings]


NOISE_WORDS_FILE = Path(__file__).with_name("noise_words.txt")


def noise_word_candidates() -> tuple[str, ...]:
    """Whole words of the CLIP tokenizer's vocabulary (the one sdfn-tiny's text tower reads) that no part of this
    generator, the caption grammar or the attribute vocabulary uses (every word of their code's string literals,
    docstrings left out: so no held-out frame, verb or fashion word) and that carry no change's meaning
    (negations, comparatives, colour, fabric and garment words; `_MEANINGFUL`). `noise_words` reads a fixed list
    made by this function (noise_words.txt), so that editing the generator's code cannot change the training
    requests; tests/test_phrasing.py checks that the list still avoids every word the generator uses.
    `write_noise_words()` makes the list again (the training requests, and the shipped model's recipe, change
    with it)."""
    from open_clip.tokenizer import _tokenizer

    vocabulary = (token[:-4] for token in _tokenizer.encoder if token.endswith("</w>"))
    used = generator_words()
    return tuple(sorted(w for w in vocabulary if w.isascii() and w.isalpha() and 3 <= len(w) <= 10
                        and w not in used and w not in _MEANINGFUL))


def generator_words() -> set[str]:
    """Every word of the string literals of this generator, the caption grammar and the attribute vocabulary."""
    sources = [*sorted(Path(__file__).parent.glob("*.py")), Path(__file__).parents[1] / "attributes.py"]
    return {w for path in sources for text in _string_literals(path) for w in re.findall(r"[a-z]+", text.lower())}


def write_noise_words() -> Path:
    """Make noise_words.txt again from `noise_word_candidates`."""
    NOISE_WORDS_FILE.write_text("\n".join(noise_word_candidates()) + "\n", encoding="utf-8")
    return NOISE_WORDS_FILE


@lru_cache(maxsize=1)
def noise_words() -> tuple[str, ...]:
    """The words NOISE_SHARE of the training requests get one of, at a random place ("turn it cedar red"), so the
    model learns to read past a word it does not know: its text tower learnt only this project's texts, and
    people type words it never saw. A fixed list (noise_words.txt, made by `noise_word_candidates`). Only
    `training_requests` asks for them: held-out requests (the held-out figure measures unseen shapes and words
    as before) and requests shown to people (the demo's paraphrases) never get one."""
    return tuple(NOISE_WORDS_FILE.read_text(encoding="utf-8").split())


def request_rng(seed: int, part: str, triplet: Triplet) -> random.Random:
    """The random stream of one triplet's request: fixed by seed, part, caption file and entry."""
    return random.Random(f"sdfn-phrasing/{seed}/{part}/{triplet.source}/{triplet.index}")


def phrase_triplets(triplets: Sequence[Triplet], attributes: Mapping[str, Mapping[str, str]], part: str,
                    seed: int = 0) -> list[tuple[Triplet, Request]]:
    """Each triplet with its captions replaced by one everyday request (and its `asks` by the request's).

    `attributes` maps item id -> attribute values (e.g. read from the catalog's catalog.csv)."""
    check_part(part)
    out = []
    for triplet in triplets:
        if triplet.target is None:
            raise ConfigError(f"{triplet.source}: entry {triplet.index} has no target; phrasings need one")
        missing = [i for i in (triplet.reference, triplet.target) if i not in attributes]
        if missing:
            raise ConfigError(f"{triplet.source}: entry {triplet.index}: no attributes for {missing[0]}; "
                              f"pass the catalog's catalog.csv rows")
        request = phrase_request(attributes[triplet.reference], attributes[triplet.target], triplet.category, part,
                                 request_rng(seed, part, triplet))
        out.append((replace(triplet, captions=(request.text,), asks=request.asks), request))
    return out


def training_requests(triplet: Triplet, attributes: Mapping[str, Mapping[str, str]], variants: int,
                      seed: int = 0, clean: bool = False) -> tuple[str, ...]:
    """Up to `variants` distinct everyday requests for a training triplet, from the TRAIN part only (never
    the held-out one), fixed by `seed` and the triplet; () when reference and target do not differ in any
    attribute (nothing to ask for) or the triplet has no target. `clean`: the same requests without their
    misspellings and filler words (the words they teach, for `sdfn.reading`; never trained on)."""
    if triplet.target is None or variants <= 0:
        return ()
    missing = [i for i in (triplet.reference, triplet.target) if i not in attributes]
    if missing:
        raise DataError(f"{triplet.source}: entry {triplet.index}: no attributes for {missing[0]} in catalog.csv; "
                        "regenerate the catalog with sdfn synth or set data.phrasing_variants=0")
    reference, target = attributes[triplet.reference], attributes[triplet.target]
    if not any(reference[a] != target[a] and NOT_APPLICABLE not in (reference[a], target[a])
               for a in APPLIES[triplet.category]):
        return ()
    texts = (phrase_request(reference, target, triplet.category, TRAIN,
                            request_rng(seed * 1_000 + k, TRAIN, triplet), noise=not clean, typos=not clean).text
             for k in range(variants))
    return tuple(dict.fromkeys(texts))


def catalog_attributes(root: Path | str) -> dict[str, dict[str, str]]:
    """Item id -> attribute values, from a synthetic catalog's catalog.csv."""
    path = Path(root) / "catalog.csv"
    if not path.is_file():
        raise DataError(f"{path}: not found; phrasings need a synthetic catalog's catalog.csv (sdfn synth)")
    with path.open(newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    missing = [a for a in ("id", *ATTRIBUTES) if rows and a not in rows[0]]
    if not rows or missing:
        raise DataError(f"{path}: no items or missing columns {missing}; regenerate it with sdfn synth")
    return {row["id"]: {a: row[a] for a in ATTRIBUTES} for row in rows}


class PhrasedDataset(RetrievalDataset):
    """A synthetic catalog whose triplets carry one everyday request of `part` instead of their two captions
    (galleries and images unchanged), for `sdfn.evaluate.evaluate` and training alike. `request(triplet)`
    gives the request a triplet was phrased with (its family, forms, ...)."""

    def __init__(self, base: RetrievalDataset, part: str, seed: int = 0,
                 attributes: Mapping[str, Mapping[str, str]] | None = None):
        check_part(part)
        self.base, self.part, self.seed = base, part, seed
        self.name, self.splits, self.root, self.categories = base.name, base.splits, base.root, base.categories
        self.attributes = attributes if attributes is not None else catalog_attributes(base.root)
        self._triplets: dict[tuple[str, str | None], list[Triplet]] = {}
        self._requests: dict[tuple[str, int], Request] = {}

    def triplets(self, split: str, category: str | None = None) -> list[Triplet]:
        key = (split, category)
        if key not in self._triplets:
            pairs = phrase_triplets(self.base.triplets(split, category), self.attributes, self.part, self.seed)
            self._requests.update({(t.source, t.index): r for t, r in pairs})
            self._triplets[key] = [t for t, _ in pairs]
        return self._triplets[key]

    def request(self, triplet: Triplet) -> Request:
        return self._requests[triplet.source, triplet.index]

    def gallery(self, split: str, category: str | None = None) -> list[str]:
        return self.base.gallery(split, category)

    def image_path(self, image_id: str) -> Path:
        return self.base.image_path(image_id)
