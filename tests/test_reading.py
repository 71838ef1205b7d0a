"""sdfn.reading: a colour name or a misspelling the model never learnt is read as a word it knows, every rewrite is
said, words it knows and real English words are left alone, and the shipped model carries its reading."""

from __future__ import annotations

import json
import shutil

import pandas as pd
import pytest
import torch

from sdfn import Retriever
from sdfn.config import load_config
from sdfn.data.attributes import COLOR_RGB
from sdfn.data.base import open_dataset
from sdfn.data.synth.phrasing import COLOR_WORDS, catalog_attributes, noise_words, training_requests
from sdfn.errors import CheckpointError
from sdfn.explain import explain_features
from sdfn.fusion import FusionConfig
from sdfn.model import SHIPPED_CHECKPOINT, ComposedRetrievalModel, ModelConfig
from sdfn.reading import READING_FILE, Reader, Rewrite, ciede2000, colour_names, load_reader, nearest_colour
from sdfn.training.data import catalog_palette

WORDS = {"make": 50, "it": 90, "red": 40, "in": 60, "with": 70, "long": 30, "sleeves": 25, "sleeve": 3,
         "pattern": 12, "stripes": 9, "short": 20, "shirt": 8, "white": 15, "a": 99, "please": 5}


@pytest.fixture()
def reader() -> Reader:
    return Reader(WORDS, COLOR_RGB)


def test_ciede2000_matches_the_published_test_data():
    # Sharma, Wu and Dalal (2005), table 1, pairs 1, 7 and 17
    assert ciede2000((50, 2.6772, -79.7751), (50, 0, -82.7485)) == pytest.approx(2.0425, abs=1e-4)
    assert ciede2000((50, 0, 0), (50, -1, 2)) == pytest.approx(2.3669, abs=1e-4)
    assert ciede2000((50, 2.5, 0), (56, -27, -3)) == pytest.approx(31.9030, abs=1e-4)


def test_colour_names_come_with_their_colours_and_read_as_the_nearest_catalog_colour():
    names = colour_names()
    assert len(names) > 1000 and names["scarlet"] == (0xbe, 0x01, 0x19)   # the XKCD survey's value
    assert names["azure"] == (0x06, 0x9a, 0xf3)                         # the survey wins over CSS's near-white
    expected = {"scarlet": "red", "bordeaux": "maroon", "pumpkin": "orange", "lemon": "yellow", "cocoa": "brown",
                "azure": "blue", "aubergine": "purple", "bubblegum": "pink", "slate": "grey", "emerald": "green",
                "charcoal": "black", "taupe": "beige", "snow": "white"}
    assert {n: nearest_colour(names[n], COLOR_RGB) for n in expected} == expected


def test_unknown_colour_names_are_rewritten_and_said(reader):
    text, rewrites = reader.read("make it  Scarlet, please")
    assert text == "make it red, please"                          # punctuation and the rest kept, spaces collapsed
    assert [r.to_json() for r in rewrites] == [{"original": "Scarlet", "read": "red", "kind": "colour"}]
    assert "'Scarlet' read as 'red'" in rewrites[0].note() and "colour" in rewrites[0].note()
    assert reader.read("do you have it in teal?")[0] == "do you have it in green?"
    assert reader.read("in burnt sienna")[0] == "in brown"          # a two-word name is read whole


def test_known_words_and_names_with_a_known_colour_word_stay(reader):
    for text in ("make it red", "in cherry red", "with off-white stripes", "make it red with long sleeves",
                 "in denim", "a leather one"):                      # materials, though the survey names them
        assert reader.read(text) == (text, [])
    own = Reader({**WORDS, "wine": 4}, COLOR_RGB)                    # a colour name the model was taught
    assert own.read("in wine") == ("in wine", [])


def test_misspellings_one_letter_from_a_known_word_are_corrected(reader):
    text, rewrites = reader.read("with long sleves and a patern")
    assert text == "with long sleeves and a pattern"
    assert [(r.original, r.read, r.kind) for r in rewrites] == [("sleves", "sleeves", "spelling"),
                                                                ("patern", "pattern", "spelling")]
    assert reader.read("no strpes")[0] == "no stripes"               # a dropped letter
    assert reader.read("no sritpes")[0] == "no sritpes"              # two edits: left alone
    assert reader.read("shrt")[0] == "short"                         # the more frequent of short / shirt



def test_misspellings_of_words_the_reading_reads_are_corrected_and_then_read(monkeypatch):
    """A typo of a glossary word or a colour name the model never learnt ("peplm", "scarlot") is respelt first, so
    the glossary or the colour list reads it next, and both rewrites are said in order; a typo one edit from a word
    the model knows is corrected to that word, and one one edit from two readable words is left alone."""
    from sdfn.reading import _readable_words

    monkeypatch.setattr("sdfn.reading.glossary", lambda: {**GLOSSED, "peplus": ("red", "pattern")})
    _readable_words.cache_clear()                # its words come from the glossary, this test's own
    reader = Reader({**WORDS, "knee": 4, "fitted": 3}, COLOR_RGB)
    text, rewrites = reader.read("make it scarlot, peplm and with knee skiming")
    assert text == "make it red, fitted and with knee"
    assert [(r.original, r.read, r.kind) for r in rewrites] == [
        ("scarlot", "scarlet", "spelling"), ("scarlet", "red", "colour"), ("peplm", "peplum", "spelling"),
        ("peplum", "fitted", "glossary"), ("skiming", "skimming", "spelling"), ("knee skimming", "knee", "glossary")]
    assert "one it knows or this reading reads" in rewrites[0].note()
    assert reader.read("make it peplu")[0] == "make it peplu"         # peplum or peplus: which was meant is unknown
    assert reader.read("with long sleevs")[0] == "with long sleeves"  # a word the model knows comes first
    _readable_words.cache_clear()


def test_real_words_short_words_and_numbers_are_not_corrected(reader):
    # "shirts" and "sleeve" are whole words of the tokenizer (English of their own), "slev" is under 5 letters
    # away from nothing long enough, and digits are not words
    for text in ("i want skirts", "one sleeve", "sl", "size 12345", "redd"):
        assert reader.read(text) == (text, [])


@pytest.mark.parametrize("typed,read,kind", [
    ("is there a version w/o buttons", "is there a version without buttons", "shorthand"),
    ("red W/Out stripes, please", "red without stripes, please", "shorthand"),
    ("make it red w/ long sleeves", "make it red with long sleeves", "shorthand"),
    ("with out sleeves", "without sleeves", "shorthand"),
    ("(w/o a pattern)", "(without a pattern)", "shorthand"),
    ("no shirts please", "no shirt please", "form"),              # an unknown plural of a known word
    ("a patterns", "a pattern", "form"),
    ("patternless", "without a pattern", "form"),               # an unknown "-less" word: "without" its stem
    ("sleeveless", "without sleeves", "form"),                  # (this reader was never taught "sleeveless")
    ("lose fit", "loose fit", "spelling"),                      # a real word typed for another
])
def test_shorthands_forms_and_confusions_are_read_as_words_it_knows(typed, read, kind):
    reader = Reader({**WORDS, "without": 8, "loose": 6, "fit": 6, "lose": 9, "the": 40, "belt": 7}, COLOR_RGB)
    text, rewrites = reader.read(typed)
    assert text == read and [r.kind for r in rewrites] == [kind]
    assert reader.read("lose the belt") == ("lose the belt", [])    # "lose" is a word of its own
    assert reader.read("with, out of stock") == ("with, out of stock", [])


def test_a_long_word_is_never_spelt_out_letter_by_letter(reader, monkeypatch):
    """A 'word' of thousands of letters (a hostile request) is not corrected: its one-edit neighbours would cost
    memory and time with the square of its length."""
    import sdfn.reading as reading

    def refuse(word):
        assert len(word) <= reading.MAX_WORD_LETTERS, len(word)
        return set()

    monkeypatch.setattr(reading, "_one_edit", refuse)
    assert reader.read("x" * 5000 + " slevesss") == ("x" * 5000 + " slevesss", [])


def test_words_the_model_was_never_taught_are_listed_and_said(tmp_path, small_catalog, tiny_checkpoint):
    reader = Reader(WORDS, COLOR_RGB)
    assert reader.unknown_words("make it red, cheaper, by Zara; zara 2 pls") == ["cheaper", "by", "zara", "pls"]
    assert reader.unknown_words("make it red with long sleeves") == []
    checkpoint, catalog = tmp_path / "ckpt", tmp_path / "catalog"
    shutil.copytree(tiny_checkpoint, checkpoint)
    shutil.copytree(small_catalog, catalog)
    reader.save(checkpoint)
    retriever = Retriever(checkpoint, catalog, progress=False)
    result = retriever.search(retriever.catalog.ids[0], "make it red, cheaper by zara")
    assert result.query.unknown_words == ["cheaper", "by", "zara"]
    assert any("not searched for" in n and "'zara'" in n for n in result.query.notes)
    assert result.to_json()["query"]["unknown_words"] == ["cheaper", "by", "zara"]


@pytest.mark.parametrize("typed,read", [
    ("i don't want a belt", "without a belt"),
    ("I do not want sleeves", "without sleeves"),
    ("dont really need any buttons", "without any buttons"),
    ("don\u2019t want it with a belt", "without a belt"),            # a typographic apostrophe
    ("i don't want it patterned", "not patterned"),                 # a refused description: "not"
    ("we don't want it to be red", "not red"),
    ("don't want it to have sleeves", "without sleeves"),
    ("i'd rather not have buttons", "without buttons"),
    ("can it not have a belt", "can it without a belt"),
    ("same but don't give it sleeves!", "same but without sleeves!"),
    ("not a fan of the print", "without the print"),
    ("i hate the pattern, plain please", "without the pattern, plain please"),
    ("Don't want the belt, make it blue", "without the belt, make it blue"),
])
def test_what_is_not_wanted_is_read_as_a_refusal_the_model_knows(reader, typed, read):
    text, rewrites = reader.read(typed)
    assert text == read and [r.kind for r in rewrites] == ["negation"]
    assert rewrites[0].read in {"without", "not"} and "do not want" in rewrites[0].note()


@pytest.mark.parametrize("typed", [
    "does not have a belt", "is not red", "not so tight", "no longer sleeveless", "no belt please", "without buttons",
    "i don't want", "i don't like this one, show me another", "is red instead of blue", "i want it red",
    "why not add a belt", "don't get rid of the belt", "don't you have it in red", "i, for one, want a belt",
    "i don't just want red, i want stripes too", "it doesn't have to be red", "i don't mind a belt"])
def test_refusals_the_model_knows_and_refusals_of_nothing_stay_as_typed(reader, typed):
    assert reader.read(typed) == (typed, [])


def test_a_refusal_and_a_colour_name_are_both_read_and_both_said(reader):
    text, rewrites = reader.read("i don't want it scarlet")
    assert text == "not red" and [(r.original, r.read, r.kind) for r in rewrites] == [
        ("i don't want it", "not", "negation"), ("scarlet", "red", "colour")]


def test_a_checkpoint_carries_its_reading_and_a_bad_file_is_named(tmp_path):
    torch.manual_seed(0)
    model = ComposedRetrievalModel(ModelConfig(fusion=FusionConfig(width=32, heads=2, router_hidden=16)))
    model.save(tmp_path / "plain")
    assert ComposedRetrievalModel.load(tmp_path / "plain").reader is None
    assert ComposedRetrievalModel.load(tmp_path / "plain").read_text(" in  scarlet ") == ("in scarlet", [])
    model.reader = Reader(WORDS, COLOR_RGB)
    model.save(tmp_path / "read")                                    # saving keeps the reading with the weights
    loaded = ComposedRetrievalModel.load(tmp_path / "read")
    assert loaded.read_text("in scarlet")[0] == "in red"
    (tmp_path / "read" / READING_FILE).write_text("{not json")
    with pytest.raises(CheckpointError, match=r"reading\.json.*delete the file"):
        ComposedRetrievalModel.load(tmp_path / "read")
    (tmp_path / "read" / READING_FILE).write_text(json.dumps({"format": "sdfn-reading", "words": {"a": "x"},
                                                              "palette": {"red": [1, 2, 3]}}))
    with pytest.raises(CheckpointError, match="not a number"):
        load_reader(tmp_path / "read")


def test_search_and_explanation_read_the_text_as_the_model_does(tmp_path, small_catalog, tiny_checkpoint):
    checkpoint = tmp_path / "ckpt"
    shutil.copytree(tiny_checkpoint, checkpoint)
    Reader(WORDS, COLOR_RGB).save(checkpoint)
    catalog = tmp_path / "catalog"
    shutil.copytree(small_catalog, catalog)
    retriever = Retriever(checkpoint, catalog, progress=False)
    reference = retriever.catalog.ids[0]
    result = retriever.search(reference, "make it scarlet with long sleves", k=3)
    q = result.to_json()["query"]
    assert q["text"] == "make it scarlet with long sleves"           # as typed
    assert q["text_used"] == "make it red with long sleeves"          # as read
    assert [r["read"] for r in q["rewrites"]] == ["red", "sleeves"]
    assert any("'scarlet' read as 'red'" in n for n in q["notes"])
    same = retriever.search(reference, "make it red with long sleeves", k=3)
    assert [i.id for i in result.items] == [i.id for i in same.items]
    assert [i.score for i in result.items] == pytest.approx([i.score for i in same.items])
    features = retriever.index.cache.features([retriever.index.row_of[reference]])
    explanation = explain_features(retriever.model, features, "make it scarlet", reference)
    assert explanation.text == "make it red" and any("scarlet" in n for n in explanation.notes)


def test_clean_training_requests_are_the_trained_ones_without_typos_or_filler(small_catalog):
    from sdfn.data.synth.phrasing import catalog_attributes

    dataset = open_dataset("fashioniq", small_catalog)
    attributes = catalog_attributes(small_catalog)
    fillers = set(noise_words())
    pairs = [(training_requests(t, attributes, 4), training_requests(t, attributes, 4, clean=True))
             for t in dataset.triplets("train")[:150]]
    trained = [r for noisy, _ in pairs for r in noisy]
    clean = [r for _, c in pairs for r in c]
    assert any(set(r.lower().split()) & fillers for r in trained)     # the trained ones do carry filler words
    assert not any(set(r.lower().split()) & fillers for r in clean)
    assert sum(map(len, (c for _, c in pairs))) >= 0.9 * len(trained)


@pytest.mark.skipif(not (SHIPPED_CHECKPOINT / READING_FILE).is_file(), reason="the shipped model has no reading")
def test_shipped_reading_leaves_captions_alone_and_never_learnt_the_held_out_words(small_catalog):
    reader = load_reader(SHIPPED_CHECKPOINT)
    dataset = open_dataset("fashioniq", small_catalog)
    captions = [c for split in ("val", "test") for t in dataset.triplets(split) for c in t.captions]
    changed = [c for c in captions if reader.read(c)[1]]
    assert not changed, changed[:5]             # the annotated captions are read as typed (metrics.json's val R@1)
    attributes = catalog_attributes(small_catalog)
    requests = [r for t in dataset.triplets("train")[:1500] for r in training_requests(t, attributes, 4, clean=True)]
    refusals = [r for r in requests if any(w.kind in ("negation", "relative", "removal") for w in reader.read(r)[1])]
    assert not refusals, refusals[:5]           # nor the refusals, removals and relative changes they taught it
    held_out = {w for bank in COLOR_WORDS.values() for w in bank.heldout}
    assert not held_out & set(reader.words)     # the held-out colour names stay words the model never learnt
    assert not set(noise_words()) & set(reader.words)   # filler words taught nothing
    # held-out colour words are read as the bank's colour when the survey names them nearest to it
    read = {w: reader.read(f"make it {w}")[0].split()[-1] for w in held_out if w in colour_names()}
    right = [w for w, colour in read.items() if w in COLOR_WORDS[colour].heldout]
    assert {"scarlet", "bordeaux", "azure", "aubergine", "pumpkin"} <= set(right)


def test_a_reading_without_catalog_colours_reads_only_misspellings(tmp_path):
    """A data set whose colours are not known (FashionIQ's) gets a spelling-only reading: colour names stay."""
    spelling = Reader(WORDS, {})
    assert spelling.read("make it scarlet with long sleves") == (
        "make it scarlet with long sleeves", [Rewrite("sleves", "sleeves", "spelling")])
    spelling.save(tmp_path)
    assert load_reader(tmp_path).to_json() == spelling.to_json()
    with pytest.raises(CheckpointError, match="words"):
        Reader({}, COLOR_RGB)


def test_catalog_palette_is_the_catalog_colours_or_none(small_catalog, tmp_path):
    palette = catalog_palette(small_catalog)
    drawn = set(pd.read_csv(small_catalog / "catalog.csv", dtype=str)["color"])
    assert set(palette) == drawn and all(palette[c] == COLOR_RGB[c] for c in palette)
    assert catalog_palette(tmp_path) == {}     # no catalog.csv: a real data set


def test_sdfn_train_writes_the_reading_the_shipped_model_card_builds(small_catalog, tmp_path):
    """`data.reading` (on in the tiny-synthetic preset): best/ and last/ carry reading.json, the words of the
    run's clean training texts and the catalog's colours, so a reproduced model reads as the shipped one does;
    with it off (the paper's setting) the checkpoints read texts as typed."""
    from sdfn.training import run_training
    from sdfn.training.data import open_training_data, reading_for, training_triplets

    small = ["model.fusion.width=32", "model.fusion.heads=2", "model.fusion.router_hidden=16", "pretrain.epochs=0",
             "data.synthesize=false", "optim.batch_size=16", "optim.num_workers=0", "optim.epochs=1",
             "eval.every=1", "data.phrasing_variants=2", f"data.root={small_catalog}"]
    cfg = load_config("tiny-synthetic", small)
    assert cfg.data.reading
    run_training(cfg, tmp_path / "run", progress=False)
    dataset = open_training_data(cfg)
    expected = reading_for(dataset, training_triplets(dataset, cfg, None), cfg).to_json()
    assert set(expected["palette"]) == set(catalog_palette(small_catalog))
    assert "sleeves" in expected["words"] and not set(expected["words"]) & set(noise_words())
    for folder in ("best", "last"):
        model = ComposedRetrievalModel.load(tmp_path / "run" / folder)
        assert model.reader is not None and model.reader.to_json() == expected, folder
        text, rewrites = model.read_text("make it scarlet with long sleves")
        assert [r.kind for r in rewrites] == ["colour", "spelling"] and text.endswith("with long sleeves")
    run_training(load_config("tiny-synthetic", [*small, "data.reading=false"]), tmp_path / "plain", progress=False)
    assert not (tmp_path / "plain" / "best" / READING_FILE).exists()
    assert ComposedRetrievalModel.load(tmp_path / "plain" / "best").reader is None


GLOSSED = {"knee skimming": ("knee", "length"), "peplum": ("fitted", "fit"), "bell sleeves": ("long sleeves", "sleeve"),
           "with sleeves": ("with sleeves", "sleeve"), "ta": ("", "filler"), "lengthy": ("long clingy", "length"),
           "not so long": ("shorter", "relative"), "take it in": ("make it tighter", "relative"),
           "a bit less red": ("lighter clingy", "relative")}


@pytest.mark.parametrize(("typed", "read"), [
    ("make it knee-skimming, with bell sleeves", "make it knee, with long sleeves"),   # hyphen or space alike
    ("make it Knee Skimming!", "make it knee!"),
    ("ta, make it red", "make it red"),                 # filler is left out with its punctuation
    ("make it red ta", "make it red"),
])
def test_shopper_words_it_never_learnt_are_read_through_the_glossary_and_said(monkeypatch, typed, read):
    monkeypatch.setattr("sdfn.reading.glossary", lambda: GLOSSED)
    reader = Reader({**WORDS, "knee": 4, "fitted": 3}, COLOR_RGB)
    text, rewrites = reader.read(typed)
    assert text == read
    assert rewrites and all(r.kind == "glossary" for r in rewrites)
    notes = [r.note() for r in rewrites]
    assert all("glossary" in n or "left out" in n for n in notes), notes


def test_the_glossary_never_overrides_words_the_model_knows_nor_reads_into_words_it_does_not(monkeypatch):
    monkeypatch.setattr("sdfn.reading.glossary", lambda: GLOSSED)
    reader = Reader(WORDS, COLOR_RGB)                          # knows "with" and "sleeves", not "knee" or "clingy"
    assert reader.read("make it red with sleeves") == ("make it red with sleeves", [])   # all its words are known
    assert reader.read("make it lengthy")[0] == "make it lengthy"          # "clingy" would be one more unknown word
    assert reader.read("make it knee skimming")[0] == "make it knee skimming"   # nor "knee": the phrase stays
    assert reader.read("knee, skimming please")[0] == "knee, skimming please"   # punctuation inside ends a phrase


@pytest.mark.parametrize(("typed", "read"), [
    ("same but not so long", "same but shorter"),
    ("Not so long, and take it in please", "shorter, and make it tighter please"),
    ("take it in", "make it tighter"),
])
def test_relative_shapes_of_known_words_are_read_as_the_shapes_the_model_was_taught(monkeypatch, typed, read):
    """A `relative` entry is made of words the model knows, in a shape it was not taught: it is read even so, and
    said as such; one that would read into a word the model does not know stays as typed."""
    monkeypatch.setattr("sdfn.reading.glossary", lambda: GLOSSED)
    reader = Reader({**WORDS, "not": 3, "so": 2, "long": 5, "shorter": 4, "take": 2, "in": 9, "make": 9, "tighter": 3,
                     "a": 9, "bit": 2, "less": 3, "lighter": 2}, COLOR_RGB)
    text, rewrites = reader.read(typed)
    assert text == read and rewrites and all(r.kind == "relative" for r in rewrites)
    assert all("was not taught" in r.note() for r in rewrites)
    assert reader.read("make it a bit less red") == ("make it a bit less red", [])    # "clingy" is unknown
    assert reader.read("not so, long")[0] == "not so, long"                        # punctuation inside ends it


SHAPES = [{"phrase": "with the {n} taken away", "reads_as": "without the {n}", "kind": "removal", "why": "w"},
          {"phrase": "get shot of the {n}", "reads_as": "remove the {n}", "kind": "removal", "why": "w"},
          {"phrase": "with the {n} binned", "reads_as": "without the {n} clingy", "kind": "removal", "why": "w"}]


@pytest.mark.parametrize(("typed", "read", "said"), [
    ("same but with the belt taken away", "same but without the belt", [("with the … taken away", "without the …")]),
    ("with the pointed collar taken away, in red", "without the pointed collar, in red",
     [("with the … taken away", "without the …")]),
    ("Get shot of the stripes and make it red", "remove the stripes and make it red",
     [("Get shot of the …", "remove the …")]),
    ("with the sleves taken away", "without the sleeves",
     [("sleves", "sleeves"), ("with the … taken away", "without the …")]),
])
def test_removal_shapes_with_a_slot_are_read_around_what_is_left_out(monkeypatch, typed, read, said):
    from sdfn.reading import parse_glossary

    phrases, shapes = parse_glossary(SHAPES)
    monkeypatch.setattr("sdfn.reading.glossary_shapes", lambda: shapes)
    monkeypatch.setattr("sdfn.reading.glossary", lambda: phrases)
    reader = Reader({**WORDS, "without": 5, "the": 40, "belt": 9, "pointed": 2, "collar": 4, "remove": 3, "and": 30,
                     "same": 4, "but": 8}, COLOR_RGB)
    text, rewrites = reader.read(typed)
    assert text == read
    assert [(r.original, r.read) for r in rewrites] == said
    assert all("leave out" in r.note() for r in rewrites if r.kind == "removal")
    # a slot of more than MAX_SLOT_WORDS words, punctuation inside, or reading into a word it does not know: as typed
    for kept in ("with the big red pointed collar taken away", "with the belt, taken away", "with the belt binned"):
        assert reader.read(kept)[0] == kept


def test_a_glossary_shape_needs_one_slot_after_a_word_and_a_removal_read_with_one():
    from sdfn.reading import parse_glossary

    for bad in ({"phrase": "{n} taken away", "reads_as": "without {n}"}, {"phrase": "with the {n} gone"},
                {"phrase": "with {n} and {n} gone", "reads_as": "without {n}"},
                {"phrase": "with the {n} gone", "reads_as": "without {n}", "kind": "fit"}):
        entry = {"phrase": "", "reads_as": "without the", "kind": "removal", "why": "w", **bad}
        with pytest.raises(ValueError, match="slot"):
            parse_glossary([entry])


def test_shipped_glossary_loads_and_reads_into_words_the_shipped_model_knows():
    from sdfn.reading import GLOSSARY_KINDS, glossary, glossary_key
    table = glossary()
    assert len(table) >= 100
    known = load_reader(SHIPPED_CHECKPOINT).words
    inert = {p: r for p, (r, _) in table.items() if not all(w in known for w in glossary_key(r).split())}
    assert not inert, list(inert.items())[:5]                 # every entry reads into words sdfn-tiny knows
    raw = json.loads((SHIPPED_CHECKPOINT.parents[1] / "data" / "shopper_glossary.json").read_text())["entries"]
    assert {e["kind"] for e in raw} <= GLOSSARY_KINDS and all(e["why"] for e in raw)
    never_used = [p for p, (_, kind) in table.items() if kind != "relative" and all(w in known for w in p.split())]
    assert not never_used, never_used[:5]                     # a phrase the model knows whole is never read through it
    from sdfn.reading import glossary_shapes

    shapes = [shape for found in glossary_shapes().values() for shape in found]
    assert len(shapes) >= 100
    unread = [shape for shape in shapes
              if not all(w in known for w in f"{shape.read_before} {shape.read_after}".split())]
    assert not unread, unread[:5]                             # every removal shape reads into words sdfn-tiny knows
