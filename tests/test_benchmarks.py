"""Benchmark scripts write what they measured into their results files, never their own template text."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"
# An f-string field left unformatted: "{table}", "{goal_line(rows)}", "{x!r}", "{n:,}" (JSON and set literals
# such as {"fit": [...]} or {0.001, 0.002} start with a quote or a digit and are not matched).
PLACEHOLDER = re.compile(r"\{[A-Za-z_][A-Za-z0-9_.]*(\([^)]*\))?(![rsa])?(:[^}]*)?\}")


def load_script(name: str):
    spec = importlib.util.spec_from_file_location(f"benchmarks_{name}", BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
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
    assert card.whole_recipe_line({"wall_seconds": None, "stage1_runs": []}, "x") == ""
