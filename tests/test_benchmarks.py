"""Benchmark scripts write what they measured into their results files, never their own template text."""

from __future__ import annotations

import importlib.util
import random
import re
import sys
from pathlib import Path

import pandas as pd
import pytest

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"
# An f-string field left unformatted: "{table}", "{goal_line(rows)}", "{x!r}", "{n:,}" (JSON and set literals
# such as {"fit": [...]} or {0.001, 0.002} start with a quote or a digit and are not matched).
PLACEHOLDER = re.compile(r"\{[A-Za-z_][A-Za-z0-9_.]*(\([^)]*\))?(![rsa])?(:[^}]*)?\}")


def load_script(name: str):
    spec = importlib.util.spec_from_file_location(f"benchmarks_{name}", BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module      # dataclasses look their module up while the script runs
    spec.loader.exec_module(module)
    return module


def test_search_scale_section_holds_the_table_and_the_goal_verdict(tmp_path):
    search_scale, results = load_script("search_scale"), load_script("results")
    rows = [["10,000", "flat", "exact", "0.0", "10", "1.50", "1.90", "1.000"],
            ["1,000,000", "hnsw-fp16", "efSearch=64", "610.2", "790", "0.27", "0.41", "0.993"],
            ["1,000,000", "ivfpq", "nlist=4096 nprobe=64", "95.0", "40", "0.80", "1.10", "0.612"]]
    body = search_scale.section_body(rows, queries=200, build_threads=2)
    assert "| 1,000,000 | hnsw-fp16 | efSearch=64 | 610.2 | 790 | 0.27 | 0.41 | 0.993 |" in body
    assert "**met** by hnsw-fp16 efSearch=64: p50 0.27 ms, recall@50 0.993." in body
    assert not PLACEHOLDER.search(body)
    path = tmp_path / "RESULTS.md"
    results.write_section("search_scale", "Search scaling", body, path)
    assert body.strip() in path.read_text()


def test_committed_results_files_hold_no_unformatted_template_fields():
    for path in BENCHMARKS.glob("*.md"):
        for number, line in enumerate(path.read_text().splitlines(), 1):
            assert not PLACEHOLDER.search(line), f"{path.name}:{number}: {line}"


def test_model_card_states_a_whole_recipe_time_only_when_the_run_trained_stage_one():
    card = load_script("model_card")
    line = card.whole_recipe_line({"wall_seconds": 870.0, "stage1_runs": ["reused"]}, "2 CPU cores")
    assert "reused" in line and "14.5 min on 2 CPU cores" in line and "Whole recipe (" not in line
    line = card.whole_recipe_line({"wall_seconds": 2482.0, "stage1_runs": ["trained", "reused"]}, "2 CPU cores")
    assert line.startswith("- Whole recipe (") and "41.4 min" in line          # a resumed run: both invocations
    assert "does not record" in card.whole_recipe_line({"wall_seconds": 60.0, "stage1_runs": [None]}, "")
    assert "no stage 1" in card.whole_recipe_line({"wall_seconds": 60.0, "stage1_runs": ["none"]}, "")
    assert card.whole_recipe_line({"wall_seconds": None, "stage1_runs": []}, "x") == ""


def test_own_requests_score_the_top_1_item_and_only_ask_where_a_change_is_needed():
    bench = load_script("own_requests")
    rows = []
    for i, (category, color, belt) in enumerate([("dress", "red", "yes"), ("dress", "blue", "no"),
                                                 ("skirt", "red", "no"), ("dress", "blue", "yes")]):
        rows.append({"id": f"x{i}", "split": "val", "category": category, "color": color, "belt": belt,
                     "sleeve": "n/a" if category == "skirt" else "long"})
    catalog = pd.DataFrame(rows).set_index("id")
    wants_red = bench.OwnRequest("in red", {"color": "red"}, ("dress", "skirt"))
    no_belt = bench.OwnRequest("ditch the belt", {"belt": "no"}, ("dress",))
    sleeves = bench.OwnRequest("short sleeves", {"sleeve": "short"}, ("dress", "skirt"))
    oracle = {"in red": "x0", "ditch the belt": "x1", "short sleeves": "x1"}
    scored = bench.measure(lambda ref, text: [oracle[text], ref], catalog, [wants_red, no_belt, sleeves], n=6)
    assert [(r["hits"], r["asked"]) for r in scored] == [(6, 6), (6, 6), (0, 6)]
    asked = bench.references(catalog, no_belt, random.Random(0), 20)
    assert set(asked) == {"x0", "x3"}                  # belted dresses only: x1 has no belt, x2 is a skirt
    assert "x2" not in bench.references(catalog, sleeves, random.Random(0), 20)     # a skirt has no sleeves
    echo = bench.measure(lambda ref, text: [ref], catalog, [wants_red, no_belt], n=6)   # the reference back
    assert [r["hits"] for r in echo] == [0, 0]
    text = bench.section(scored, "toy", "ckpt", "cat")
    assert "66.7%" in text and '"ditch the belt"' in text and "Negations" not in text
    both = bench.section(scored, "toy", "ckpt", "cat", scored[:2])     # the negations' own table and mean
    assert both.startswith(text) and "Negations typed by hand (2 requests" in both and "**100.0%** of the neg" in both
    alone = [{**r, "hits": 3} for r in scored[:2]]                      # the same negations, read as typed
    compared = bench.section(scored, "toy", "ckpt", "cat", scored[:2], alone)
    assert "| model alone (no reading.json) |" in compared and "(50.0% for the model alone" in compared
    assert {r.wants.keys() <= {"belt", "buttons", "sleeve", "pattern", "color"} for r in bench.NEGATIONS} == {True}
    # any of several values is right; `where` asks only on references that have what a request changes
    not_red = bench.OwnRequest("not red", {"color": ("blue", "green")}, ("dress", "skirt"), {"color": ("red",)},
                               ("negation",))
    assert set(bench.references(catalog, not_red, random.Random(0), 20)) == {"x0", "x2"}
    strangers = bench.measure(lambda ref, text: ["x1"], catalog, [not_red, bench.OwnRequest(
        "in red, cheaper", {"color": "red"}, ("dress",), tags=("ooc",))], n=4)
    told = bench.section(scored, "toy", "ckpt", "cat", strangers=strangers)
    assert "color blue or green (references: color red)" in told
    assert "Mean over the 1: top-1 has every asked change for **100.0%**" in told
    assert "the 1 that also ask for what the catalog lacks: 0.0%" in told and "| negation | 1 |" not in told
    shipped = bench.STRANGERS
    assert len(shipped) == 97 and sum("ooc" in r.tags for r in shipped) == 5
    assert all(r.wants and r.categories for r in shipped)
    shapes = bench.section(scored, "toy", "ckpt", "cat", shapes=strangers[:1],
                           shapes_alone=[{**strangers[0], "hits": 1}])
    assert "Relative changes and removals written by someone" in shapes
    assert "**100.0%** of their references (25.0%" in shapes
    assert "First measured" in shapes
    assert len(bench.SHAPES) >= 60 and all(r.wants and r.categories for r in bench.SHAPES)
    assert all(r.where for r in bench.SHAPES if {"relative", "removal"} & set(r.tags))   # asked where they apply


def test_own_requests_name_a_catalog_they_cannot_judge(tmp_path):
    bench = load_script("own_requests")
    with pytest.raises(SystemExit, match="no catalog.csv in .*--catalog"):
        bench.main(["--catalog", str(tmp_path / "missing"), "--quality", str(tmp_path / "q.md")])
    (tmp_path / "catalog.csv").write_text("id,split,category\nx,val,dress\n")   # FashionIQ-like: no attributes
    with pytest.raises(SystemExit, match="has no belt, buttons, color.*synthetic catalog"):
        bench.main(["--catalog", str(tmp_path), "--quality", str(tmp_path / "q.md")])
    assert not (tmp_path / "q.md").exists()


def latency_section() -> str:
    """A latency.py section as benchmarks/RESULTS.md holds it (the numbers of a real run)."""
    stages = ("preprocess", "encode_image", "encode_text", "fuse", "search", "end to end")
    rows = [["sdfn-tiny", "sdfn", "catalog reference", "0.32 / 0.44", "0.34 / 0.40", "1.21 / 1.52", "3.03 / 3.52",
             "0.59 / 0.72", "5.76 / 6.94"],
            ["sdfn-tiny", "sdfn", "catalog reference, all categories", "0.38 / 0.49", "0.41 / 0.49", "1.38 / 1.58",
             "3.31 / 3.56", "1.44 / 1.61", "7.23 / 7.79"],
            ["sdfn-tiny", "combiner", "catalog reference", "0.21 / 0.31", "0.26 / 0.33", "0.92 / 1.26", "0.44 / 0.61",
             "0.45 / 0.57", "2.41 / 3.21"]]
    table = load_script("results").markdown_table(
        ["backbone", "fusion", "reference", *(f"{s} ms p50 / p95" for s in stages)], rows)
    return f"<!-- latency:start -->\n## Query latency\n\n{table}\n<!-- latency:end -->\n"


def test_fusion_cost_budget_is_what_the_ratio_goal_leaves_for_the_routed_fusion():
    bench = load_script("fusion_cost")
    budget = bench.latency_budget("# Results\n" + latency_section())
    assert budget == {"sdfn fuse": 3.03, "sdfn end to end": 5.76, "combiner fuse": 0.44, "combiner end to end": 2.41}
    lines = "\n".join(bench.budget_lines(budget, [("compose", 2.3), ("torch.compile", 2.0)]))
    assert "1.3 x 2.41 - 2.73 = **0.40 ms**" in lines                    # 3.133 - (5.76 - 3.03)
    assert "torch.compile, p50 2.00 ms (5.0 x the budget)" in lines
    assert "within the budget" in "\n".join(bench.budget_lines(budget, [("fast", 0.3)]))
    assert bench.latency_budget("no latency section here") is None
    assert bench.latency_budget(latency_section().replace("| sdfn-tiny | combiner |", "| other | combiner |")) is None
    assert "run `python benchmarks/latency.py --skip-vit` first" in bench.budget_lines(None, [("x", 1.0)])[0]


def test_fusion_cost_times_each_way_of_running_the_shipped_fusion(capsys, tmp_path):
    bench = load_script("fusion_cost")
    bench.main(["--repeats", "2", "--no-compile", "--no-record"])
    out = capsys.readouterr().out
    for row in ("| compose (what the Retriever runs) |", "| eager |", "| trace + freeze |", "| bfloat16 trace |",
                "| 16 image tokens |",
                "| 2 layers |", "| width 64 |", "| text-free cells (ours) |", "| region cells (ours) |",
                "| combiner |"):
        assert row in out
    assert "| torch.compile |" not in out and not PLACEHOLDER.search(out)
    with pytest.raises(SystemExit, match="no sdfn_config.json there"):
        bench.main(["--checkpoint", str(tmp_path), "--no-record"])


def test_token_locality_draws_pairs_that_differ_in_one_attribute_and_finds_where_it_shows(small_catalog,
                                                                                        tiny_checkpoint):
    bench = load_script("token_locality")
    from sdfn.catalog import open_catalog
    from sdfn.data.attributes import APPLIES, ATTRIBUTES
    from sdfn.errors import DataError
    from sdfn.model import ComposedRetrievalModel

    pairs = bench.controlled_pairs(open_catalog(small_catalog).rows, per_kind=3)
    assert {kind for kind, *_ in pairs} == set(ATTRIBUTES)
    for kind, _, attrs, changed, category in pairs:
        assert kind in APPLIES[category]
        assert [k for k in ATTRIBUTES if attrs[k] != changed[k]] == [kind]
    model = ComposedRetrievalModel.load(tiny_checkpoint).eval()
    result = bench.measure(model, small_catalog, per_kind=4)
    assert list(result) == ["pixels", "block 1", "block 2", "block 3", "block 4 (last, default)"]
    for by_kind in result.values():
        assert set(by_kind) == set(ATTRIBUTES)
        for row in by_kind.values():
            assert row["pairs"] == 4
            # the bands' means weigh back to the all-patch mean (bands of 3, 2 and 3 rows of an 8 x 8 grid)
            assert abs((3 * row["upper"] + 2 * row["middle"] + 3 * row["lower"]) / 8 - 1) < 1e-4
            assert -1 <= row["nearest"][1] <= 1
    # the same picture drawn twice differs only where the attribute is: a hem low, a neckline high
    pixels = result["pixels"]
    assert pixels["length"]["lower"] > 1.3 > 0.5 > pixels["length"]["upper"]
    assert pixels["neckline"]["upper"] > 1.3 > 0.5 > pixels["neckline"]["lower"]
    assert "| block 1 | length | 4 |" in bench.table(result)
    assert bench.band_spans(64) == {"upper": (0, 24), "middle": (24, 40), "lower": (40, 64)}
    with pytest.raises(DataError, match="sdfn synth"):
        bench.controlled_pairs([{"image": "a.jpg", "category": "dress"}], per_kind=1)


