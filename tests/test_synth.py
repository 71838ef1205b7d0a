"""The synthetic catalog: deterministic, FashionIQ-shaped, and its captions say what changed."""

from __future__ import annotations

import contextlib
import csv
import errno
import hashlib
import json
import os
import random
import re
import signal
import subprocess
import sys
import textwrap
import time
from collections import Counter
from pathlib import Path

import pytest
from PIL import Image

import sdfn.data.synth.writers as synth_writers
from sdfn.cli import main
from sdfn.data.attributes import (
    APPLIES,
    ATTRIBUTES,
    CATEGORIES,
    COLOR_LIGHTNESS,
    NOT_APPLICABLE,
    describe_item,
    satisfies,
)
from sdfn.data.base import open_dataset
from sdfn.data.synth import (
    CATALOG_COLUMNS,
    MIN_ITEMS_PER_CATEGORY,
    SPLITS,
    changed_attributes,
    generate_catalog,
    mention_change,
    sample_items,
    sample_triplets,
    split_sizes,
)
from sdfn.errors import ConfigError, DataError

ITEMS = 40  # per category: the smallest size with comfortably more than one family per split


def _generate(root: Path, seed: int, workers: int) -> Path:
    generate_catalog(root, seed=seed, items_per_category=ITEMS, workers=workers, progress=False)
    return root


@pytest.fixture(scope="module")
def catalog(tmp_path_factory) -> Path:
    return _generate(tmp_path_factory.mktemp("synth") / "seed0-w1", seed=0, workers=1)


@pytest.fixture(scope="module")
def rows(catalog) -> list[dict[str, str]]:
    with (catalog / "catalog.csv").open(encoding="utf-8", newline="") as handle:
        return list(csv.DictReader(handle))


@pytest.fixture(scope="module")
def by_id(rows) -> dict[str, dict[str, str]]:
    return {row["id"]: row for row in rows}


@pytest.fixture(scope="module")
def entries(catalog) -> list[tuple[str, str, dict]]:
    """(category, split, caption entry) over every caption file."""
    found = []
    for category in CATEGORIES:
        for split in SPLITS:
            path = catalog / "captions" / f"cap.{category}.{split}.json"
            found += [(category, split, e) for e in json.loads(path.read_text(encoding="utf-8"))]
    return found


def _hashes(root: Path) -> dict[str, str]:
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


# ---- determinism -------------------------------------------------------------------------------------

def test_same_seed_gives_byte_identical_files_whatever_the_worker_count(catalog, tmp_path):
    again = _generate(tmp_path / "seed0-w2", seed=0, workers=2)
    first, second = _hashes(catalog), _hashes(again)
    assert len(first) == 5 * ITEMS + 2 * 5 * 3 + 1  # images, split and caption files, catalog.csv
    assert first == second


def test_another_seed_gives_another_catalog(catalog, tmp_path):
    other = _generate(tmp_path / "seed1", seed=1, workers=1)
    first, second = _hashes(catalog), _hashes(other)
    assert first["catalog.csv"] != second["catalog.csv"]
    assert first["captions/cap.dress.train.json"] != second["captions/cap.dress.train.json"]
    shared_images = set(first) & set(second) - {"catalog.csv"}
    assert sum(first[p] != second[p] for p in shared_images if p.startswith("images/")) > 0.9 * 5 * ITEMS


# ---- layout ------------------------------------------------------------------------------------------

def test_fashioniq_layout_exists_and_parses(catalog):
    for category in CATEGORIES:
        for split in SPLITS:
            split_file = catalog / "image_splits" / f"split.{category}.{split}.json"
            text = split_file.read_text(encoding="utf-8")
            assert text.startswith('[\n    "'), f"{split_file} is not indented like FashionIQ"
            assert all(isinstance(i, str) for i in json.loads(text))
            entries = json.loads((catalog / "captions" / f"cap.{category}.{split}.json").read_text(encoding="utf-8"))
            assert entries, f"no triplets for {category}/{split}"
            for entry in entries:
                assert set(entry) == {"target", "candidate", "captions", "asks"}
                assert isinstance(entry["target"], str) and entry["target"]  # test split included


def test_catalog_columns_ids_and_files_agree(catalog, rows):
    with (catalog / "catalog.csv").open(encoding="utf-8", newline="") as handle:
        assert next(csv.reader(handle)) == list(CATALOG_COLUMNS)
    assert (catalog / "catalog.csv").read_bytes().count(b"\r") == 0
    ids = [row["id"] for row in rows]
    assert ids == sorted(ids) and len(set(ids)) == len(ids) == 5 * ITEMS
    for row in rows:
        assert re.fullmatch(rf"{row['category']}-\d{{6}}", row["id"])
        assert row["image"] == f"images/{row['id']}.png"
        assert row["title"] and row["color"] in row["title"]
    assert {p.name for p in (catalog / "images").iterdir()} == {f"{i}.png" for i in ids}


def test_split_files_partition_the_catalog(catalog, by_id):
    seen: list[str] = []
    for category in CATEGORIES:
        for split in SPLITS:
            ids = json.loads((catalog / "image_splits" / f"split.{category}.{split}.json").read_text(encoding="utf-8"))
            assert len(ids) == split_sizes(ITEMS)[split]
            assert all(by_id[i]["category"] == category and by_id[i]["split"] == split for i in ids)
            seen += ids
    assert sorted(seen) == sorted(by_id)


def test_not_applicable_exactly_where_an_attribute_does_not_apply(rows):
    for row in rows:
        for attribute, values in ATTRIBUTES.items():
            if attribute in APPLIES[row["category"]]:
                assert row[attribute] in values, (row["id"], attribute)
            else:
                assert row[attribute] == NOT_APPLICABLE, (row["id"], attribute)


def test_images_are_224_rgb_pngs_and_all_different(catalog, rows):
    pixels = set()
    for row in rows:
        with Image.open(catalog / row["image"]) as image:
            assert (image.format, image.mode, image.size) == ("PNG", "RGB", (224, 224)), row["id"]
            pixels.add(hashlib.sha256(image.tobytes()).digest())
    assert len(pixels) == len(rows)


def test_families_stay_inside_one_split_and_siblings_are_near_duplicates():
    items = sample_items(seed=3, items_per_category=100)
    families: dict[int, list] = {}
    for item in items:
        families.setdefault(item.family, []).append(item)
    for members in families.values():
        assert len({(m.category, m.split) for m in members}) == 1
        assert 4 <= len(members) <= 7
        attrs = [tuple(m.attrs.values()) for m in members]
        assert len(set(attrs)) == len(attrs), "siblings must differ from each other"
        def differences(a, b) -> int:
            return sum(a.attrs[name] != b.attrs[name] for name in ATTRIBUTES)

        assert any(all(1 <= differences(base, m) <= 2 for m in members if m is not base) for base in members), \
            "some member (the base) must be one or two changes away from every sibling"


# ---- triplets and captions ---------------------------------------------------------------------------

def test_every_triplet_asks_exactly_for_its_changes(entries, by_id):
    for category, split, entry in entries:
        candidate, target = by_id[entry["candidate"]], by_id[entry["target"]]
        assert candidate["category"] == target["category"] == category
        assert candidate["split"] == target["split"] == split
        changed = {a for a in ATTRIBUTES if candidate[a] != target[a]}
        assert 1 <= len(changed) <= 3
        assert set(entry["asks"]) == changed, entry
        for attribute, accepted in entry["asks"].items():
            assert target[attribute] in accepted, entry
            assert candidate[attribute] not in accepted, entry
        assert satisfies(target, category, entry["asks"], category)
        assert not satisfies(candidate, category, entry["asks"], category)
        c1, c2 = entry["captions"]
        assert c1.strip() and c2.strip() and c1.lower().rstrip(".") != c2.lower().rstrip("."), entry


def test_every_wording_accepts_the_target_and_rules_out_the_reference():
    rng = random.Random(0)
    for category in CATEGORIES:
        for attribute in APPLIES[category]:
            for u in ATTRIBUTES[attribute]:
                for v in ATTRIBUTES[attribute]:
                    for _ in range(20 if u != v else 0):
                        mention = mention_change(attribute, u, v, category, rng)
                        assert set(mention.accepted) == {attribute}
                        accepted = mention.accepted[attribute]
                        assert v in accepted and u not in accepted, (category, attribute, u, v, mention)
                        assert mention.pred and mention.bare


def test_asks_hold_on_a_large_sample_of_triplets():
    """Many more triplets than the small catalog has (no drawing needed), so rare combinations occur:
    split captions, colour and pattern in one phrase, two relative wordings of one change."""
    items = sample_items(seed=7, items_per_category=300)
    by_item = {item.id: item for item in items}
    triplets = [t for group in sample_triplets(items, seed=7).values() for t in group]
    assert len(triplets) > 3000
    for triplet in triplets:
        candidate, target = by_item[triplet.reference], by_item[triplet.target]
        assert list(triplet.asks) == changed_attributes(candidate, target)
        for attribute, accepted in triplet.asks.items():
            assert target.attrs[attribute] in accepted and candidate.attrs[attribute] not in accepted, triplet


def test_triplet_counts_follow_the_per_item_budget(entries):
    per_split = Counter(split for _, split, _ in entries)
    items = {split: 5 * split_sizes(ITEMS)[split] for split in SPLITS}
    assert 1.5 * items["train"] <= per_split["train"] <= 3 * items["train"]
    for split in ("val", "test"):
        assert 1.0 * items[split] <= per_split[split] <= 2.0 * items[split]


RELATIVE = re.compile(r"\b(darker|lighter|brighter|longer|shorter|looser|tighter|slimmer|more fitted|less fitted|"
                      r"more loose|less loose|more patterned|less patterned|plainer)\b", re.I)
NEGATED = re.compile(r"\b(no|not|without|does not)\b", re.I)


def test_captions_vary_and_use_relative_and_negated_forms(entries):
    captions = [c for _, _, e in entries for c in e["captions"]]
    assert len(set(captions)) >= 0.6 * len(captions)
    relative = sum(bool(RELATIVE.search(c)) for c in captions) / len(captions)
    negated = sum(bool(NEGATED.search(c)) for c in captions) / len(captions)
    assert 0.1 <= relative <= 0.5, relative
    assert 0.1 <= negated <= 0.6, negated
    starts = Counter(c.split()[0].lower() for c in captions)
    assert starts["is"] < 0.7 * len(captions), "captions should not all start the same way"


def test_relative_asks_accept_every_value_in_their_direction(entries, by_id):
    darker = [(e, by_id[e["candidate"]]) for _, _, e in entries
              if re.search(r"\bdarker\b", " and ".join(e["captions"])) and "color" in e["asks"]
              and len(e["asks"]["color"]) > 1]
    assert darker, "expected some 'darker' queries in the small catalog"
    for entry, candidate in darker:
        for color in entry["asks"]["color"]:
            assert COLOR_LIGHTNESS[color] < COLOR_LIGHTNESS[candidate["color"]]


def test_most_queries_pin_the_target_down(entries):
    asks = [values for _, _, e in entries for values in e["asks"].values()]
    assert sum(len(v) == 1 for v in asks) >= 0.75 * len(asks)


# ---- item descriptions (image-text pre-training) -----------------------------------------------------

# Words that identify each value in a description; sleeve phrases are removed before reading lengths.
VALUE_WORDS: dict[str, dict[str, str]] = {
    "pattern": {"solid": r"solid|plain|no pattern|no print", "striped": r"stripe", "polka dot": r"dot",
                "plaid": r"plaid|checked", "floral": r"floral|flower", "graphic": r"graphic|logo"},
    "sleeve": {"sleeveless": r"sleeveless|no sleeves|without sleeves", "short": r"short[- ]sleeve",
               "long": r"long[- ]sleeve"},
    "neckline": {"round": r"round|crew", "v-neck": r"\bv[- ]neck", "collar": r"collar"},
    "fit": {"fitted": r"fitted|slim|form[- ]fitting", "loose": r"loose|relaxed"},
    "buttons": {"yes": r"button-down|buttoned|with buttons|buttons down", "no": r"without buttons|no buttons"},
    "belt": {"yes": r"belted|with a belt", "no": r"without a belt|no belt"},
}
LENGTH_WORDS = {"short": r"\bshort\b|mini|above the knee|shorts", "knee": r"(?<!above the )knee|midi|cropped|capri",
                "long": r"\blong\b|full[- ]length|maxi|ankle"}


def test_item_descriptions_name_every_applicable_value(rows):
    rng = random.Random(0)
    texts = Counter()
    for row in rows * 3:
        attrs = {a: row[a] for a in APPLIES[row["category"]]}
        text = describe_item(attrs, row["category"], rng)
        texts[text] += 1
        assert re.search(rf"\b{row['color'][:4]}|gray|burgundy", text), text
        for attribute, words in VALUE_WORDS.items():
            if attribute in attrs:
                found = {v for v, pattern in words.items() if re.search(pattern, text)}
                assert found == {attrs[attribute]}, (attribute, attrs[attribute], text)
        if "length" in attrs:
            no_sleeves = re.sub(r"(short|long)[- ]sleeves?d?", "", text)
            found = {v for v, pattern in LENGTH_WORDS.items() if re.search(pattern, no_sleeves)}
            assert found == {attrs["length"]}, (attrs["length"], text)
    assert len(texts) >= 0.9 * sum(texts.values())


def test_satisfies_needs_the_reference_category_and_every_asked_value():
    item = {"color": "navy", "sleeve": "long"}
    asks = {"color": ["navy", "black"], "sleeve": ["long"]}
    assert satisfies(item, "shirt", asks, "shirt")
    assert not satisfies(item, "toptee", asks, "shirt")
    assert not satisfies({**item, "sleeve": "short"}, "shirt", asks, "shirt")


# ---- command line ------------------------------------------------------------------------------------

def test_cli_generates_a_catalog_and_refuses_a_non_empty_folder(tmp_path, capsys):
    out = tmp_path / "cli"
    args = ["synth", "--out", str(out), "--items-per-category", str(MIN_ITEMS_PER_CATEGORY), "--workers", "1",
            "--quiet"]
    assert main(args) == 0
    assert (out / "catalog.csv").is_file() and (out / "captions" / "cap.trousers.test.json").is_file()
    capsys.readouterr()
    assert main(args) == 2
    message = capsys.readouterr().err
    assert str(out) in message and "not empty" in message and "delete it or choose" in message


def test_cli_rejects_too_few_items_per_category(tmp_path, capsys):
    out = tmp_path / "tiny"
    assert main(["synth", "--out", str(out), "--items-per-category", "10", "--quiet"]) == 2
    message = capsys.readouterr().err
    assert "--items-per-category 10" in message and f"{MIN_ITEMS_PER_CATEGORY} or more" in message
    assert not out.exists()


def test_output_that_is_a_file_or_bad_worker_count_is_refused(tmp_path):
    target = tmp_path / "file.txt"
    target.write_text("x")
    with pytest.raises(DataError, match="is a file"):
        generate_catalog(target, items_per_category=ITEMS, workers=1, progress=False)
    with pytest.raises(ConfigError, match="--workers 0"):
        generate_catalog(tmp_path / "new", items_per_category=ITEMS, workers=0, progress=False)


def test_one_split_is_the_same_as_in_the_full_catalog(tmp_path, catalog):
    """The val split alone (as the shipped-model test remakes it) matches the full catalog byte for byte."""
    part = tmp_path / "val-only"
    generate_catalog(part, seed=0, items_per_category=ITEMS, workers=1, progress=False, splits=("val",))
    assert sorted(p.name for p in (part / "captions").iterdir()) == sorted(
        p.name for p in (catalog / "captions").iterdir() if ".val." in p.name)
    for path in (part / "captions").iterdir():
        assert path.read_bytes() == (catalog / "captions" / path.name).read_bytes()
    ids = [line.split(",", 1)[0] for line in (part / "catalog.csv").read_text().splitlines()[1:]]
    assert ids and all(line.split(",")[3] == "val" for line in (part / "catalog.csv").read_text().splitlines()[1:])
    for item in ids:
        assert (part / "images" / f"{item}.png").read_bytes() == (catalog / "images" / f"{item}.png").read_bytes()
    with pytest.raises(ConfigError, match="splits.*'dev'"):
        generate_catalog(tmp_path / "bad", seed=0, items_per_category=ITEMS, workers=1, progress=False,
                         splits=("dev",))


# ---- the catalog appears whole or not at all ---------------------------------------------------------

def _staging_folders(parent: Path) -> list[Path]:
    return [p for p in parent.iterdir() if p.name.startswith(".") and ".tmp-" in p.name]


# Run in a subprocess: the same generation as the `catalog` fixture, with each image slowed down so that
# the kill lands part-way through drawing (200 images take seconds instead of well under one).
_SLOW_GENERATION = textwrap.dedent(f"""
    import sys, time
    import sdfn.data.synth.writers as writers
    from sdfn.data.synth import generate_catalog
    render = writers.render_item
    def slow_render(*args):
        time.sleep(0.05)
        return render(*args)
    writers.render_item = slow_render
    generate_catalog(sys.argv[1], seed=0, items_per_category={ITEMS}, workers=1, progress=False)
""")


def test_a_generation_killed_part_way_leaves_nothing_and_the_next_run_gives_the_same_bytes(catalog, tmp_path):
    """kill -9 while drawing (a stopped first `python demo.py`): no half-written catalog appears; the next run
    removes the dead run's staging folder and writes what an uninterrupted run writes."""
    out = tmp_path / "synthetic"
    process = subprocess.Popen([sys.executable, "-c", _SLOW_GENERATION, str(out)])
    try:
        deadline = time.monotonic() + 120
        while not any(len(list((s / "images").glob("*.png"))) >= 5 for s in _staging_folders(tmp_path)):
            assert process.poll() is None, "the generating process ended before it could be killed"
            assert time.monotonic() < deadline, "the generating process drew no images"
            time.sleep(0.02)
        os.kill(process.pid, signal.SIGKILL)
    finally:
        process.kill()
        process.wait()
    assert not out.exists(), "a killed generation must not leave a catalog folder behind"
    assert _staging_folders(tmp_path), "expected the killed run's staging folder"

    generate_catalog(out, seed=0, items_per_category=ITEMS, workers=1, progress=False)
    assert _hashes(out) == _hashes(catalog)
    assert not _staging_folders(tmp_path), "the dead run's staging folder must be removed"


@pytest.mark.parametrize("splits", [SPLITS, ("val",)], ids=["all-splits", "val-remake"])
def test_an_interrupted_or_failed_generation_leaves_no_folder(tmp_path, monkeypatch, splits):
    """Ctrl-C (KeyboardInterrupt) or a full disk part-way, for a whole catalog and a `--splits` remake alike:
    neither the output folder nor a staging folder remains; a full disk is a DataError naming the folder."""
    out = tmp_path / "catalog"

    def interrupted(*args):
        raise KeyboardInterrupt

    monkeypatch.setattr(synth_writers, "write_captions", interrupted)
    with pytest.raises(KeyboardInterrupt):
        generate_catalog(out, items_per_category=ITEMS, workers=1, progress=False, splits=splits)
    assert not out.exists() and not _staging_folders(tmp_path)

    def disk_full(*args):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.undo()
    monkeypatch.setattr(synth_writers, "write_catalog_csv", disk_full)
    with pytest.raises(DataError, match=rf"cannot write the catalog to {re.escape(str(out))}: No space left"):
        generate_catalog(out, items_per_category=ITEMS, workers=1, progress=False, splits=splits)
    assert not out.exists() and not _staging_folders(tmp_path)


def test_a_folder_left_by_an_older_in_place_run_is_replaced_but_other_folders_are_kept(catalog, tmp_path):
    """Before staging, a stopped run left images and split files in the output folder itself; such a folder
    (only generated names, no catalog.csv) is regenerated without asking. Anything else is refused."""
    leftover = tmp_path / "synthetic"
    (leftover / "images").mkdir(parents=True)
    (leftover / "image_splits").mkdir()
    for name in sorted(p.name for p in (catalog / "images").iterdir())[:3]:
        (leftover / "images" / name).write_bytes(b"half a png")
    (leftover / "image_splits" / "split.dress.train.json").write_text('["dress-0', encoding="utf-8")
    generate_catalog(leftover, seed=0, items_per_category=ITEMS, workers=1, progress=False)
    assert _hashes(leftover) == _hashes(catalog)

    mine = tmp_path / "photos"
    (mine / "images").mkdir(parents=True)
    (mine / "images" / "holiday.png").write_bytes(b"a user's photo")
    with pytest.raises(DataError, match="is not empty.*does not look like an interrupted"):
        generate_catalog(mine, seed=0, items_per_category=ITEMS, workers=1, progress=False)
    assert (mine / "images" / "holiday.png").read_bytes() == b"a user's photo"


def test_output_that_is_a_link_to_an_empty_folder_gets_the_catalog_and_stays_a_link(tmp_path):
    (tmp_path / "disk").mkdir()
    (tmp_path / "catalog").symlink_to("disk")
    generate_catalog(tmp_path / "catalog", items_per_category=MIN_ITEMS_PER_CATEGORY, workers=1, progress=False)
    assert (tmp_path / "catalog").is_symlink() and (tmp_path / "disk" / "catalog.csv").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["catalog", "disk"]


@pytest.mark.parametrize("where", ["parent-is-a-file", "name-too-long"])
def test_output_folder_that_cannot_be_made_is_one_error_line(tmp_path, capsys, where):
    """An unwritable --out is a DataError naming the folder, and on the command line one `error:` line with
    exit code 2. Tests run as root, where a read-only folder does not stop a write, so two folders no user
    can create stand in: one under a regular file, and one whose name is longer than file systems allow."""
    blocker = tmp_path / "file.txt"
    blocker.write_text("x")
    out = blocker / "catalog" if where == "parent-is-a-file" else tmp_path / ("c" * 300)
    with pytest.raises(DataError, match=re.escape(str(out))):
        generate_catalog(out, items_per_category=MIN_ITEMS_PER_CATEGORY, workers=1, progress=False)
    code = main(["synth", "--out", str(out), "--items-per-category", str(MIN_ITEMS_PER_CATEGORY), "--workers", "1",
                 "--quiet"])
    message = capsys.readouterr().err
    assert code == 2
    assert message.count("\n") == 1 and message.startswith("sdfn synth: error:") and str(tmp_path) in message
    assert "Traceback" not in message and "choose" in message.lower()
    assert blocker.read_text() == "x" and sorted(p.name for p in tmp_path.iterdir()) == ["file.txt"]


# ---- the generated triplets are the readers' triplets ------------------------------------------------

def test_sampled_triplets_equal_what_the_fashioniq_reader_reads_back(catalog):
    """One Triplet type: the generator's triplets, with their source file and entry index, are exactly what
    the FashionIQ reader parses from the written caption files."""
    sampled = sample_triplets(sample_items(0, ITEMS), seed=0)
    reader = open_dataset("fashioniq", catalog)
    for (category, split), triplets in sampled.items():
        assert reader.triplets(split, category) == triplets, (category, split)
        assert [t.asks for t in reader.triplets(split, category)] == [t.asks for t in triplets]


def _launch_drawing(out: Path) -> subprocess.Popen:
    """`sdfn synth` with 2 drawing processes in its own process group, with Ctrl-C's default disposition (as a
    terminal runs it, even when these tests run in a background job, whose shell ignores SIGINT)."""
    return subprocess.Popen([sys.executable, "-m", "sdfn", "synth", "--out", str(out), "--items-per-category",
                             "400", "--workers", "2", "--quiet"], stderr=subprocess.PIPE, text=True,
                            start_new_session=True, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))


def _ctrl_c(process: subprocess.Popen, signal_workers) -> None:
    """`signal_workers()`, then a second later Ctrl-C to the whole group: one line, exit 130, no worker traceback."""
    try:
        signal_workers()
        time.sleep(1)
        os.killpg(process.pid, signal.SIGINT)
        _, err = process.communicate(timeout=60)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
    assert "Traceback" not in err and "KeyboardInterrupt" not in err, err
    assert process.returncode == 130 and "interrupted" in err, (process.returncode, err)


def _start_drawing(out: Path) -> subprocess.Popen:
    """`_launch_drawing`, once it is drawing."""
    process = _launch_drawing(out)
    deadline = time.monotonic() + 120
    while not any(len(list((s / "images").glob("*.png"))) >= 5 for s in _staging_folders(out.parent)):
        assert process.poll() is None, f"the generation ended before it could be stopped: {process.stderr.read()}"
        assert time.monotonic() < deadline, "the generating process drew no images"
        time.sleep(0.05)
    return process


def _children(pid: int) -> list[int]:
    children = []
    for entry in Path("/proc").iterdir():
        with contextlib.suppress(OSError, ValueError, IndexError):
            if entry.name.isdigit() and int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1]) == pid:
                children.append(int(entry.name))
    return children


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="finds the drawing processes in /proc")
def test_ctrl_c_while_drawing_stops_with_one_line_and_no_worker_tracebacks(tmp_path):
    """Ctrl-C in a terminal signals the whole process group: the drawing workers ignore it, the parent stops.
    The workers get it first here (a second before the parent), so that one that did not ignore it would
    always have the time to print its traceback."""
    out = tmp_path / "synthetic"
    process = _start_drawing(out)

    def signal_workers() -> None:
        workers = _children(process.pid)
        assert workers, "expected drawing processes"
        for pid in workers:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGINT)

    _ctrl_c(process, signal_workers)
    assert not out.exists()


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="finds the drawing processes in /proc")
def test_ctrl_c_while_the_workers_still_import_prints_no_worker_traceback(tmp_path):
    """A worker that is still starting (importing, before its set-up runs) when Ctrl-C comes must ignore it too:
    each worker is signalled as soon as it exists, then the parent."""
    process = _launch_drawing(tmp_path / "synthetic")

    def signal_workers_as_they_start() -> None:
        signalled: set[int] = set()
        deadline = time.monotonic() + 60
        while len(signalled) < 2 and time.monotonic() < deadline and process.poll() is None:
            for pid in set(_children(process.pid)) - signalled:
                with contextlib.suppress(OSError):
                    if b"spawn_main" in Path(f"/proc/{pid}/cmdline").read_bytes():
                        time.sleep(0.05)             # well inside its imports (they take seconds)
                        os.kill(pid, signal.SIGINT)
                        signalled.add(pid)
            time.sleep(0.005)
        assert len(signalled) == 2, "expected two drawing processes"

    _ctrl_c(process, signal_workers_as_they_start)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="workers follow a killed parent on Linux")
def test_kill_9_of_the_parent_ends_the_drawing_workers_quietly(tmp_path):
    out = tmp_path / "synthetic"
    process = _start_drawing(out)
    try:
        os.kill(process.pid, signal.SIGKILL)
        _, err = process.communicate(timeout=60)   # EOF once every worker has closed the shared stderr too
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
    assert "Traceback" not in err and "BrokenPipeError" not in err, err
