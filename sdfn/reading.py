"""Reading a request with the words a model was taught (ours, not the paper's).

A text tower trained only on this project's texts (the shipped sdfn-tiny) knows the words of its training texts
and no other: a colour name it never saw ("scarlet", "teal") or a misspelt word ("sleves") reaches the fusion as
an embedding that training never moved. A checkpoint may carry `reading.json` (`Reader.save`; `sdfn train`
writes it with `data.reading`): the words of its training texts, with counts, and the colours its catalog is
drawn in (none for a catalog without colours). With it, `Reader.read` rewrites a request before it is tokenised:

- a colour name the model never saw, from `colour_names.tsv` (the XKCD colour survey's 949 names, CC0, and the
  CSS named colours), as the catalog colour nearest to it: CIEDE2000 with the textile weighting (kL = 2, so a
  difference in lightness counts half). A name any of whose words the model knows stays as it is ("cherry red",
  "off-white": the model reads "red", "white"), and so does a name that is a known word itself ("wine") or a
  material (`MATERIALS`: "denim", "leather", ...);
- a word the model never saw, of 4+ letters, that is not a whole word of the CLIP tokenizer's vocabulary (so
  not an English word of its own, like "shorts" beside "short") and is one edit (a letter left out, added,
  changed, or two swapped) from a known word of 5+ letters, as that word (the most frequent one in training
  when several are); failing that, one edit from exactly one word of a glossary phrase or colour name below
  (5+ letters), as that word, which is then read ("mius the belt" -> "minus the belt" -> "without the belt");
- a way of saying what one does NOT want that the model never learnt ("i don't want a belt", "i'd rather not
  have buttons", "can it not have a belt", "not a fan of the print", "i hate the pattern"), as the refusal its
  training texts use: "without" before what is refused ("without a belt"), "not" before a refused description
  ("don't want it patterned" -> "not patterned"). The captions' own "does not have a belt" stays, and so does a
  refusal with nothing after it in its clause ("i don't like this one, ...": the garment, not a part of it);
- a shopper's word or phrase the model never learnt, from `shopper_glossary.json` (499 such entries: "mid-calf",
  "halter", "baggier", "minus", "pls", ...), as the words it knows for it ("midi", "sleeveless", "looser",
  "without"; politeness and filler left out). An entry is used only where a word of its phrase is unknown to the
  model and every word it is read as is known; a phrase of 2+ words is looked up first, a single word only after
  the spelling and form rules below. Its `relative` entries (807) are ways of asking for more or less, mostly
  made of words the model knows, in shapes its training texts never use ("not so pale" -> "darker", "let the hem
  down" -> "make it longer"), and its `removal` shapes (318) have a slot, {n}, for what is left out ("with the {n}
  taken away" -> "with the {n} removed", "give the {n} a miss" -> "remove the {n}": a slot of 1 to 3 words, whose
  words are read as usual): both are used wherever they occur. The glossary was written for sdfn by helpers who
  saw the catalog's values, captions and the shipped model's known words (and its trained relative and removal
  shapes), never a test request (benchmarks/QUALITY.md measures it);
- shorthands ("w/o", "w/out", "with out" as "without"; "w/" as "with"), "lose fit" as "loose fit", an unknown
  plural of a known word as the word ("florals" -> "floral") and an unknown "-less" word whose stem it knows as
  "without" it ("buttonless" -> "without buttons").

Every rewrite is returned (`Rewrite`), so an answer says what was read ("'scarlet' read as 'red'"), and
`Reader.unknown_words` names what is left that the model was never taught ("cheaper", "zara"), which a search
says in a note: it cannot search by them. Checkpoints
without reading.json (a pretrained text tower knows the words) read every text as given. The words a model knew
are those of the texts it trained on, less the filler words `sdfn.data.synth.phrasing.noise_words` put in
(those were trained to mean nothing).
"""

from __future__ import annotations

import json
import math
import re
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from sdfn.errors import CheckpointError
from sdfn.fsio import atomic_write_text

READING_FILE = "reading.json"
FORMAT = "sdfn-reading"
COLOUR_NAMES_FILE = Path(__file__).parent / "data" / "colour_names.tsv"
GLOSSARY_FILE = Path(__file__).parent / "data" / "shopper_glossary.json"
# "relative": a way of asking for more or less of something made of words the model knows, in a shape its
# training texts do not use ("not so pale" -> "darker", "let the hem down" -> "make it longer"); other kinds: words it
# never learnt
RELATIVE = "relative"
GLOSSARY_KINDS = frozenset({"pattern", "sleeve", "length", "neckline", "fit", "buttons", "belt", "garment", "change",
                            "removal", "comparative", "filler", RELATIVE})
MAX_GLOSSARY_WORDS = 6      # longest phrase a glossary entry may have ("the longer the sleeves the better")
SLOT = "{n}"                # a removal shape's slot: what is left out ("with the {n} taken away" -> "without the {n}")
MAX_SLOT_WORDS = 3          # the most words a slot takes ("with the pointed collar taken away")
MAX_NAME_WORDS = 3          # longest colour name matched ("dark sky blue")
MIN_TYPO_LENGTH = 4         # shorter unknown words are left alone (too many one-edit neighbours)
MIN_CORRECTION_LENGTH = 5   # a correction is a known word at least this long
MAX_WORD_LETTERS = 30       # longer "words" are not corrected (their one-edit neighbours grow with the square)
MAX_TEXT_CHARS = 1000       # a request is cut here (ComposedRetrievalModel.read_text): far past any text context
TEXTILE_KL = 2.0            # CIEDE2000's parametric lightness factor for textiles
# Names in the colour lists that a shopper means as a material or print, not a colour: never read as one
MATERIALS = frozenset({"denim", "leather", "linen", "velvet", "camo"})
_WORD = re.compile(r"^([^A-Za-z0-9]*)(.*?)([^A-Za-z0-9]*)$")
_TEXT_WORD = re.compile(r"[a-z0-9']+")   # a word as the training texts count them (`training_words`)
WHY = {"colour": "a colour name this model never learnt: the catalog colour nearest to it",
       "spelling": "a word this model never learnt, one letter from one it knows or this reading reads",
       "negation": "a way of saying what you do not want that this model never learnt: read as one it knows",
       "shorthand": "a shorthand this model never learnt: read in full",
       "form": "a form of a word this model knows: read as that word",
       "glossary": "a shopper's word this model never learnt: read as the words it knows for it (sdfn's glossary)",
       RELATIVE: "a way of asking for more or less that this model was not taught: read as the one it was "
                 "(sdfn's glossary)",
       "removal": "a way of saying what to leave out that this model was not taught: read as the one it was "
                  "(sdfn's glossary)"}

# Shorthands shoppers type ("purple w/o sleeves"); the tokenizer splits "w/o" into "w", "/", "o", which the model
# reads as "with" plus noise: the opposite of what was meant.
SHORTHANDS = {"w/o": "without", "w/out": "without", "wo/": "without", "w/": "with"}
_SHORTHAND = re.compile(r"^[^A-Za-z0-9]*((?:w|wo)/(?:o|out)?)([^A-Za-z0-9]*)$", flags=re.I)   # (typed, after)
# a real word typed for another: "lose fit" is "loose fit" ("lose the belt" is the model's own removal verb)
CONFUSIONS = {("lose", "fit"): "loose", ("lose", "fitting"): "loose", ("lose", "fitted"): "loose"}

# Saying what one does NOT want (ours): the shapes the catalog's captions and the training requests never use
# ("i don't want a belt", "i'd rather not have buttons", "not a fan of the print"), read as the ones they do use:
# "without" before what is refused, "not" before a refused description ("don't want it red" -> "not red"); a
# subject that starts the refusal goes with it ("i don't want a belt" -> "without a belt").
# The captions' own "does not have a belt" is known to the model and left alone.
NEGATORS = (("do", "not"), ("does", "not"), ("did", "not"), ("would", "not"), ("will", "not"), ("should", "not"),
            ("rather", "not"), ("no", "longer"), ("not",), ("never",), ("don't",), ("dont",), ("doesn't",),
            ("doesnt",), ("didn't",), ("didnt",), ("won't",), ("wont",), ("wouldn't",), ("wouldnt",),
            ("shouldn't",), ("shouldnt",))
NEGATED_VERBS = frozenset({"want", "need", "like", "love", "fancy", "have", "give", "put", "add", "include", "get",
                           "make", "show", "wear"})
# between the negation and its verb; not "just" or "necessarily" ("i don't just want red" refuses nothing)
ADVERBS = frozenset({"really", "actually", "even", "particularly", "honestly"})
DISLIKES = (("not", "a", "fan", "of"), ("not", "keen", "on"), ("no", "need", "for"), ("can't", "stand"),
            ("cant", "stand"), ("hate",), ("hates",), ("dislike",), ("dislikes",))
PRONOUNS = frozenset({"it", "this", "that", "them", "these", "those", "one"})
SUBJECTS = frozenset({"i", "we", "i'd", "id", "we'd", "i'm", "im"})   # read away with the refusal they start
KNOWN_NEGATIONS = {(("do", "not"), "have"), (("does", "not"), "have")}   # the captions' "does not have a belt"
_LETTERS = "abcdefghijklmnopqrstuvwxyz"


def valid_text(text: str) -> str:
    """`text` with anything that is not a character (a lone UTF-16 surrogate, which no keyboard types and no JSON
    answer can carry) as U+FFFD."""
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:
        return "".join("\ufffd" if "\ud800" <= c <= "\udfff" else c for c in text)


@dataclass(frozen=True)
class Rewrite:
    """One change a reading made: `original` (as typed) read as `read`, and why (a key of `WHY`; "cut": a text
    over MAX_TEXT_CHARS, `read` the characters kept, `original` the start of what was left out)."""

    original: str
    read: str
    kind: str

    def note(self) -> str:
        if self.kind == "cut":
            return (f"only the first {self.read} characters were read (no model reads further); "
                    f"left out: '{self.original}'")
        if self.kind == "glossary" and not self.read:
            return f"'{self.original}' left out (politeness or filler this model never learnt; it asks for nothing)"
        return f"'{self.original}' read as '{self.read}' ({WHY[self.kind]})"

    def to_json(self) -> dict[str, str]:
        return {"original": self.original, "read": self.read, "kind": self.kind}


@lru_cache(maxsize=1)
def colour_names() -> dict[str, tuple[int, int, int]]:
    """Colour name (lower case, words joined by one space) -> sRGB, from colour_names.tsv."""
    out = {}
    for line in COLOUR_NAMES_FILE.read_text(encoding="utf-8").splitlines():
        if line and not line.startswith("#"):
            name, value, _source = line.split("\t")
            out[name] = tuple(int(value[i:i + 2], 16) for i in (1, 3, 5))
    return out


def lab(rgb: Iterable[float]) -> tuple[float, float, float]:
    """sRGB (0-255) -> CIELAB (D65)."""
    def linear(c: float) -> float:
        c /= 255
        return c / 12.92 if c <= 0.04045 else ((c + 0.055) / 1.055) ** 2.4

    r, g, b = (linear(c) for c in rgb)
    x = (0.4124 * r + 0.3576 * g + 0.1805 * b) / 0.95047
    y = 0.2126 * r + 0.7152 * g + 0.0722 * b
    z = (0.0193 * r + 0.1192 * g + 0.9505 * b) / 1.08883

    def f(t: float) -> float:
        return t ** (1 / 3) if t > 0.008856 else 7.787 * t + 16 / 116

    return 116 * f(y) - 16, 500 * (f(x) - f(y)), 200 * (f(y) - f(z))


@dataclass(frozen=True)
class Shape:
    """A glossary entry with a slot: `before` {n} `after` (words, `glossary_key`'s) is read as `read_before` {n}
    `read_after`, the slot's words read as usual ("with the {n} taken away" -> "without the {n}")."""

    before: tuple[str, ...]
    after: tuple[str, ...]
    read_before: str
    read_after: str


@lru_cache(maxsize=1)
def _glossary_file() -> tuple[dict[str, tuple[str, str]], dict[str, tuple[Shape, ...]]]:
    """shopper_glossary.json, checked: its phrases (`glossary`) and its shapes with a slot (`glossary_shapes`)."""
    return parse_glossary(json.loads(GLOSSARY_FILE.read_text(encoding="utf-8"))["entries"], GLOSSARY_FILE.name)


def parse_glossary(entries: Iterable[Mapping[str, str]], source: str = "the glossary") -> tuple[
        dict[str, tuple[str, str]], dict[str, tuple[Shape, ...]]]:
    """Glossary entries ({"phrase", "reads_as", "kind", "why"}), checked: phrase -> (read as, kind) for those without
    a slot, and the shapes with one by their first word, those with the most words first."""
    phrases: dict[str, tuple[str, str]] = {}
    shapes: dict[str, list[Shape]] = {}
    for entry in entries:
        phrase, reads_as = glossary_key(entry["phrase"]), glossary_key(entry["reads_as"])
        words = phrase.split()
        slotted = SLOT in words
        if (not phrase or phrase in phrases or entry["kind"] not in GLOSSARY_KINDS
                or len(words) - slotted > MAX_GLOSSARY_WORDS or (not reads_as and entry["kind"] != "filler")
                or (slotted and (words.count(SLOT) != 1 or words[0] == SLOT or reads_as.split().count(SLOT) != 1
                                 or entry["kind"] != "removal"))):
            raise ValueError(f"{source}: entry {entry!r} is empty, repeated, longer than "
                             f"{MAX_GLOSSARY_WORDS} words, of an unknown kind, reads as nothing but is not filler, or "
                             f"has a slot that is not one {SLOT}, after a word, in a removal read with one {SLOT}")
        phrases[phrase] = (entry["reads_as"], entry["kind"])
        if slotted:
            cut, read_cut = words.index(SLOT), reads_as.split().index(SLOT)
            shapes.setdefault(words[0], []).append(Shape(
                tuple(words[:cut]), tuple(words[cut + 1:]), " ".join(reads_as.split()[:read_cut]),
                " ".join(reads_as.split()[read_cut + 1:])))
    return ({p: v for p, v in phrases.items() if SLOT not in p.split()},
            {first: tuple(sorted(found, key=lambda shape: -len(shape.before) - len(shape.after)))
             for first, found in shapes.items()})


def glossary() -> dict[str, tuple[str, str]]:
    """Shopper's phrase (`glossary_key`) -> (what it is read as, "" = left out (filler only); its kind), from
    shopper_glossary.json (its entries without a slot)."""
    return _glossary_file()[0]


def glossary_shapes() -> dict[str, tuple[Shape, ...]]:
    """The glossary's removal shapes with a slot, by their first word, those with the most words first."""
    return _glossary_file()[1]


@lru_cache(maxsize=2)
def _readable_words(with_colours: bool) -> frozenset[str]:
    """The words of 5+ letters that the reading reads even where a model never learnt them: of glossary phrases and,
    `with_colours`, of colour names (`Reader._readable_correction` corrects a misspelling towards them)."""
    phrases = [*glossary(), *(colour_names() if with_colours else ())]
    return frozenset(w for phrase in phrases for w in re.split(r"[ -]", phrase)
                     if len(w) >= MIN_CORRECTION_LENGTH and w.isalpha())


def glossary_key(phrase: str) -> str:
    """A phrase as the glossary looks it up: lower case, hyphens as spaces, one space between words."""
    return " ".join(phrase.lower().replace("-", " ").split())


def ciede2000(lab1: tuple[float, float, float], lab2: tuple[float, float, float], kl: float = 1.0) -> float:
    """The CIEDE2000 colour difference (Sharma, Wu and Dalal 2005), with lightness factor `kl`."""
    l1, a1, b1 = lab1
    l2, a2, b2 = lab2
    c_mean = (math.hypot(a1, b1) + math.hypot(a2, b2)) / 2
    g = 0.5 * (1 - math.sqrt(c_mean ** 7 / (c_mean ** 7 + 25 ** 7)))
    a1p, a2p = (1 + g) * a1, (1 + g) * a2
    c1p, c2p = math.hypot(a1p, b1), math.hypot(a2p, b2)
    h1p = math.degrees(math.atan2(b1, a1p)) % 360
    h2p = math.degrees(math.atan2(b2, a2p)) % 360
    dl, dc = l2 - l1, c2p - c1p
    dh = 0.0 if c1p * c2p == 0 else h2p - h1p
    dh = dh - 360 if dh > 180 else dh + 360 if dh < -180 else dh
    dh_big = 2 * math.sqrt(c1p * c2p) * math.sin(math.radians(dh / 2))
    l_mean, cp_mean = (l1 + l2) / 2, (c1p + c2p) / 2
    if c1p * c2p == 0:
        h_mean = h1p + h2p
    elif abs(h1p - h2p) <= 180:
        h_mean = (h1p + h2p) / 2
    else:
        h_mean = (h1p + h2p + 360) / 2 if h1p + h2p < 360 else (h1p + h2p - 360) / 2
    t = (1 - 0.17 * math.cos(math.radians(h_mean - 30)) + 0.24 * math.cos(math.radians(2 * h_mean))
         + 0.32 * math.cos(math.radians(3 * h_mean + 6)) - 0.20 * math.cos(math.radians(4 * h_mean - 63)))
    rotation = 30 * math.exp(-(((h_mean - 275) / 25) ** 2))
    rc = 2 * math.sqrt(cp_mean ** 7 / (cp_mean ** 7 + 25 ** 7))
    sl = 1 + 0.015 * (l_mean - 50) ** 2 / math.sqrt(20 + (l_mean - 50) ** 2)
    sc, sh = 1 + 0.045 * cp_mean, 1 + 0.015 * cp_mean * t
    rt = -math.sin(math.radians(2 * rotation)) * rc
    return math.sqrt((dl / (kl * sl)) ** 2 + (dc / sc) ** 2 + (dh_big / sh) ** 2 + rt * (dc / sc) * (dh_big / sh))


def nearest_colour(rgb: Iterable[float], palette: Mapping[str, Iterable[float]]) -> str:
    """The palette colour nearest to `rgb` (CIEDE2000, textile weighting)."""
    target = lab(rgb)
    return min(palette, key=lambda name: (ciede2000(target, lab(palette[name]), TEXTILE_KL), name))


def _starts_with(keys: list[str], i: int, phrase: tuple[str, ...]) -> bool:
    return tuple(keys[i:i + len(phrase)]) == phrase


def negation(keys: list[str], i: int, ends: frozenset[int] = frozenset()) -> tuple[int, str] | None:
    """A way of saying what one does not want that starts at word `i` of `keys` (lower case, no punctuation
    around them): (words it spans, the words it is read as), or None. `ends`: the indices of words that end a
    clause (punctuation after them); a refusal is read only when what it refuses follows in the same clause."""
    n, first = len(keys), i
    if keys[i] in SUBJECTS and i not in ends:    # "i don't want a belt" is read as "without a belt"
        i += 1

    def read_as(j: int, words: str) -> tuple[int, str] | None:   # the span is keys[first:j]; something must follow
        return (j - first, words) if j < n and not ends & set(range(first, j)) else None

    for phrase in DISLIKES:
        if _starts_with(keys, i, phrase):
            return read_as(i + len(phrase), "without")
    for negator in NEGATORS:
        if not _starts_with(keys, i, negator):
            continue
        j = i + len(negator)
        while j < n and keys[j] in ADVERBS:
            j += 1
        if j >= n or keys[j] not in NEGATED_VERBS or (negator, keys[j]) in KNOWN_NEGATIONS:
            return None
        if negator == ("not",) and i > 0 and ((keys[i - 1], "not") in NEGATORS or keys[i - 1] == "why"):
            return None     # "does not have": read (or left alone) from the word before; "why not add a belt"
        if keys[j] == "get" and keys[j + 1:j + 2] == ["rid"]:
            return None     # "don't get rid of the belt" keeps it
        verb, j = keys[j], j + 1
        if j < n and keys[j] in PRONOUNS:                    # "don't want it red", "don't give it sleeves"
            j += 1 + (j + 1 < n and keys[j + 1] == "one")    # "this one"
            if keys[j:j + 1] == ["with"]:                    # "don't want it with a belt"
                return read_as(j + 1, "without")
            if keys[j:j + 2] == ["to", "be"]:                # "don't want it to be red"
                return read_as(j + 2, "not")
            if keys[j:j + 2] == ["to", "have"]:              # "don't want it to have sleeves"
                return read_as(j + 2, "without")
            return read_as(j, "not" if verb in {"want", "need", "like", "love", "fancy", "make"} else "without")
        if keys[j:j + 2] == ["to", "have"]:                  # "i'd rather not want to have a belt"
            j += 2
        elif keys[j:j + 1] == ["to"]:
            return None     # "doesn't have to be red", "don't need to change the colour": nothing refused
        return read_as(j, "without")
    return None


@lru_cache(maxsize=1)
def _clip_whole_words() -> frozenset[str]:
    from open_clip.tokenizer import _tokenizer

    return frozenset(token[:-4] for token in _tokenizer.encoder if token.endswith("</w>"))


def _one_edit(word: str) -> set[str]:
    """Every string one edit from `word` (Norvig's spelling corrector)."""
    splits = [(word[:i], word[i:]) for i in range(len(word) + 1)]
    deletes = {a + b[1:] for a, b in splits if b}
    swaps = {a + b[1] + b[0] + b[2:] for a, b in splits if len(b) > 1}
    changes = {a + c + b[1:] for a, b in splits if b for c in _LETTERS}
    inserts = {a + c + b for a, b in splits for c in _LETTERS}
    return deletes | swaps | changes | inserts


class Reader:
    """Rewrites the words a model never learnt (see the module docstring). `words`: word -> count in the model's
    training texts; `palette`: catalog colour name -> sRGB (empty for a catalog whose colours are not known, such
    as FashionIQ's: then colour names are read as typed)."""

    def __init__(self, words: Mapping[str, int], palette: Mapping[str, Iterable[int]]):
        if not words:
            raise CheckpointError("a reading needs the words of the model's training texts")
        self.words = {w.lower(): int(n) for w, n in words.items()}
        self.palette = {name: tuple(int(c) for c in rgb) for name, rgb in palette.items()}
        self._colour_of: dict[str, str] = {}

    def _colour(self, name: str) -> str:
        if name not in self._colour_of:
            self._colour_of[name] = nearest_colour(colour_names()[name], self.palette)
        return self._colour_of[name]

    def _correction(self, word: str) -> str | None:
        if (not MIN_TYPO_LENGTH <= len(word) <= MAX_WORD_LETTERS or not word.isalpha() or word in self.words
                or word in _clip_whole_words()):
            return None
        known = [w for w in _one_edit(word) if w in self.words and len(w) >= MIN_CORRECTION_LENGTH]
        return max(known, key=lambda w: (self.words[w], w)) if known else None

    def _readable_correction(self, word: str) -> str | None:
        """A word the model never learnt, one edit from a word this reading reads though the model never learnt it (a
        word of a glossary phrase, or of a colour name where the catalog's colours are known; 5+ letters), when no
        word it knows is one edit away and exactly one such word is: that word ("mius" -> "minus", then read through
        the glossary as "without"); else None."""
        readable = _readable_words(bool(self.palette))
        if (not MIN_TYPO_LENGTH <= len(word) <= MAX_WORD_LETTERS or not word.isalpha() or word in self.words
                or word in readable or word in _clip_whole_words()):
            return None
        edits = _one_edit(word)
        if any(w in self.words and len(w) >= MIN_CORRECTION_LENGTH for w in edits):
            return None                          # `_correction`'s: a word the model knows comes first
        found = [w for w in edits if w in readable and w not in self.words]
        return found[0] if len(found) == 1 else None

    def _form(self, word: str) -> str | None:
        """An unknown plural of a known word ("florals" -> "floral"), or an unknown "-less" word whose stem is known
        ("buttonless" -> "without buttons"; "patternless" -> "without a pattern" where "patterns" is unknown); else
        None."""
        if not MIN_TYPO_LENGTH <= len(word) <= MAX_WORD_LETTERS or not word.isalpha() or word in self.words:
            return None
        if word.endswith("less") and "without" in self.words:
            stem = word[:-4]
            if stem + "s" in self.words:
                return f"without {stem}s"
            if stem in self.words and len(stem) >= 3:
                return f"without {'an' if stem[0] in 'aeiou' else 'a'} {stem}"
            return None
        if not word.endswith("s"):
            return None
        singulars = (word[:-1], word[:-2]) if word.endswith("es") else (word[:-1],)   # "florals", "dresses"
        return next((w for w in singulars if w in self.words and len(w) >= 3), None)

    def read(self, text: str) -> tuple[str, list[Rewrite]]:
        """`text` with whitespace collapsed and read as the module docstring says (colour names, misspellings,
        refusals, glossary phrases and shapes, shorthands and forms the model never learnt), and the rewrites in the
        order they are said. Punctuation around a word is kept; a rewritten word is lower case."""
        tokens = text.split()
        parts = [_WORD.match(t).groups() for t in tokens]   # (leading punctuation, word, trailing punctuation)
        keys = [w.lower().replace("\u2019", "'") for _, w, _ in parts]
        ends = frozenset(k for k, (_, _, trail) in enumerate(parts) if trail)
        names = colour_names()
        # rewrites: (where it is said, Rewrite): a span's after the respellings inside it (index of its last word + 0.5)
        out, rewrites, i = [], [], 0
        for k, key in enumerate(keys):  # first, words misspelt from ones the reading reads, so phrases match
            respelt = self._readable_correction(key)
            if respelt is not None:
                rewrites.append((k, Rewrite(parts[k][1], respelt, "spelling")))
                parts[k], keys[k], tokens[k] = (parts[k][0], respelt, parts[k][2]), respelt, \
                    parts[k][0] + respelt + parts[k][2]
        after_slot: dict[int, tuple[int, str]] = {}   # a shape's words after its slot: (how many, read as)
        while i < len(tokens):
            if i in after_slot:                       # a shape's words after its slot, read as its words there
                span, words = after_slot.pop(i)
                trail = parts[i + span - 1][2]
                if words:
                    out.append(words + trail)
                elif out:
                    out[-1] += trail
                i += span
                continue
            refusal = negation(keys, i, ends)
            if refusal is not None:
                span, words = refusal
                rewrites.append((i + span - 0.5, Rewrite(" ".join(parts[j][1] for j in range(i, i + span)), words,
                                                         "negation")))
                out.append(parts[i][0] + words + parts[i + span - 1][2])
                i += span
                continue
            shaped = self._shape(keys, parts, i)       # a removal shape with a slot ("with the {n} taken away")
            if shaped is not None:
                shape, first, stop = shaped
                end = stop + len(shape.after)         # said with the slot as "…" ("with the … taken away")
                typed = " ".join([*(parts[j][1] for j in range(i, first)), "…",
                                  *(parts[j][1] for j in range(stop, end))])
                read = " ".join(w for w in (shape.read_before, "…", shape.read_after) if w)
                rewrites.append((end - 0.5, Rewrite(typed, read, "removal")))
                if shape.read_before:
                    out.append(parts[i][0] + shape.read_before)
                if shape.after:
                    after_slot[stop] = (len(shape.after), shape.read_after)
                i = first
                continue
            glossed = self._glossary(keys, parts, i, shortest=2)   # a glossary phrase of 2+ words
            if glossed is not None:
                i = _glossed(glossed, parts, i, out, rewrites)
                continue
            for n in range(min(MAX_NAME_WORDS, len(tokens) - i), 0, -1):
                name = " ".join(keys[i:i + n])
                # a hyphenated word is a name if its parts are one ("off-white"); punctuation inside a span ends it
                lookup = name.replace("-", " ")
                if not self.palette or not _one_span(parts, i, n) or lookup not in names or lookup in MATERIALS:
                    continue
                if any(w in self.words for w in re.split(r"[ -]", name)) or lookup in self.palette:
                    out += tokens[i:i + n]   # the model knows a word of it, or it is a catalog colour: as typed
                else:
                    colour = self._colour(lookup)
                    original = " ".join(parts[j][1] for j in range(i, i + n))
                    rewrites.append((i + n - 0.5, Rewrite(original, colour, "colour")))
                    out.append(parts[i][0] + colour + parts[i + n - 1][2])
                i += n
                break
            else:
                lead, word, trail = parts[i]
                shorthand = self._shorthand(tokens, keys, i, ends)
                if shorthand is not None:
                    span, original, full, after = shorthand
                    rewrites.append((i + span - 0.5, Rewrite(original, full, "shorthand")))
                    out.append(lead + full + after)
                    i += span
                    continue
                confused = CONFUSIONS.get((keys[i], keys[i + 1] if i + 1 < len(keys) and i not in ends else ""))
                fixed = confused if confused in self.words else self._correction(keys[i])
                form = None if fixed is not None else self._form(keys[i])
                glossed = None if fixed or form else self._glossary(keys, parts, i, longest=1)
                if fixed is not None or form is not None:
                    rewrites.append((i + 0.5, Rewrite(word, fixed or form, "spelling" if fixed else "form")))
                    out.append(lead + (fixed or form) + trail)
                elif glossed is not None:
                    i = _glossed(glossed, parts, i, out, rewrites)
                    continue
                else:
                    out.append(tokens[i])
                i += 1
        return " ".join(out), [rewrite for _, rewrite in sorted(rewrites, key=lambda said: said[0])]

    def _glossary(self, keys: list[str], parts: list[tuple[str, str, str]], i: int, shortest: int = 1,
                  longest: int = MAX_GLOSSARY_WORDS) -> tuple[int, str, str] | None:
        """The longest glossary phrase of `shortest` to `longest` words at word `i` that is read as words this model
        knows and either has a word it never learnt or is a `RELATIVE` shape: (words spanned, read as, the
        Rewrite's kind), else None. Punctuation inside ends a span. `read` looks up phrases of 2+ words first and
        a single word only after the spelling and form rules."""
        table = glossary()
        for n in range(min(longest, len(keys) - i), shortest - 1, -1):
            if not _one_span(parts, i, n):
                continue
            phrase = glossary_key(" ".join(keys[i:i + n]))
            words, kind = table.get(phrase, (None, None))
            if (words is not None and (kind == RELATIVE or not all(w in self.words for w in phrase.split()))
                    and all(w in self.words for w in glossary_key(words).split())):
                return n, words, RELATIVE if kind == RELATIVE else "glossary"
        return None

    def _shape(self, keys: list[str], parts: list[tuple[str, str, str]], i: int) -> tuple[Shape, int, int] | None:
        """A glossary shape with a slot that starts at word `i` and is read into words this model knows, all in one
        span without punctuation: (the shape, index of the slot's first word, index after the slot: its shortest
        fill of 1 to MAX_SLOT_WORDS words that the shape's words after it follow), else None."""
        for shape in glossary_shapes().get(glossary_key(keys[i]), ()):
            first = i + len(shape.before)
            if (first >= len(keys) or tuple(glossary_key(k) for k in keys[i:first]) != shape.before
                    or not all(w in self.words for w in f"{shape.read_before} {shape.read_after}".split())):
                continue
            for stop in range(first + 1, min(first + MAX_SLOT_WORDS, len(keys)) + 1):
                end = stop + len(shape.after)
                if end > len(keys) or not _one_span(parts, i, end - i):
                    break
                if tuple(glossary_key(k) for k in keys[stop:end]) == shape.after:
                    return shape, first, stop
        return None

    def _shorthand(self, tokens: list[str], keys: list[str], i: int,
                   ends: frozenset[int]) -> tuple[int, str, str, str] | None:
        """A shorthand at word `i` ("w/o", "w/out", "with out", "w/"): (words spanned, as typed, read as,
        punctuation after it), else None."""
        shorthand = _SHORTHAND.match(tokens[i])
        if shorthand is not None:
            typed, after = shorthand.groups()
            full = SHORTHANDS.get(typed.lower())
            if full in self.words:
                return 1, typed, full, after
        if keys[i:i + 2] == ["with", "out"] and i not in ends and "without" in self.words:
            return 2, " ".join(tokens[i:i + 2]).rstrip(",.!?;:"), "without", _WORD.match(tokens[i + 1]).group(3)
        return None

    def unknown_words(self, text: str) -> list[str]:
        """The words of `text` (as read) that this model's training texts never taught it, in order, each once:
        words it cannot search by (a price, a brand, a material its catalog does not have, or filler)."""
        seen: dict[str, None] = {}
        for word in _TEXT_WORD.findall(text.lower().replace("\u2019", "'")):
            word = word.strip("'")
            if word and not word.isdigit() and word not in self.words:
                seen.setdefault(word)
        return list(seen)

    def to_json(self) -> dict:
        return {"format": FORMAT, "version": 1, "palette": {k: list(v) for k, v in self.palette.items()},
                "words": dict(sorted(self.words.items()))}

    def save(self, folder: Path | str) -> Path:
        """Write it as the checkpoint folder's reading.json (`load_reader` reads it back)."""
        path = Path(folder) / READING_FILE
        atomic_write_text(path, json.dumps(self.to_json(), indent=1) + "\n")
        return path


def _one_span(parts: list[tuple[str, str, str]], i: int, n: int) -> bool:
    """Whether words i .. i+n-1 (`Reader.read`'s (leading punctuation, word, trailing punctuation)) have no
    punctuation between them: a phrase or name is looked up only within one such span."""
    return not any(parts[j][2] for j in range(i, i + n - 1)) and not any(parts[j][0] for j in range(i + 1, i + n))


def _glossed(glossed: tuple[int, str, str], parts: list[tuple[str, str, str]], i: int, out: list[str],
             rewrites: list[tuple[float, Rewrite]]) -> int:
    """Reads the glossary phrase found at word `i` into `out` and `rewrites` (`Reader.read`'s); the index after it."""
    span, words, kind = glossed
    rewrites.append((i + span - 0.5, Rewrite(" ".join(parts[j][1] for j in range(i, i + span)), words, kind)))
    if words:     # filler is left out with its punctuation
        out.append(parts[i][0] + words + parts[i + span - 1][2])
    return i + span


def training_words(texts: Iterable[str]) -> Counter:
    """Word -> count over `texts` (lower case, split on anything but letters, digits and apostrophes)."""
    counts: Counter = Counter()
    for text in texts:
        counts.update(_TEXT_WORD.findall(text.lower()))
    return counts




def load_reader(folder: Path | str) -> Reader | None:
    """The Reader of a checkpoint folder's reading.json; None when it has none (the text is read as given)."""
    path = Path(folder) / READING_FILE
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise CheckpointError(f"{path}: not valid JSON ({err}); copy the checkpoint folder again whole, or delete "
                              "the file to read texts as given") from err
    if not isinstance(data, dict) or data.get("format") != FORMAT or not isinstance(data.get("words"), dict) \
            or not isinstance(data.get("palette"), dict):
        raise CheckpointError(f"{path}: not an sdfn reading file (format '{FORMAT}' with 'words' and 'palette'); "
                              "copy the checkpoint folder again whole, or delete the file to read texts as given")
    try:
        return Reader(data["words"], data["palette"])
    except (TypeError, ValueError) as err:
        raise CheckpointError(f"{path}: a word count or colour is not a number ({err}); copy the checkpoint folder "
                              "again whole, or delete the file to read texts as given") from err
