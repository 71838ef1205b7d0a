"""Where sdfn finds shipped files and puts generated ones: package data, SDFN_HOME, presets' own catalogs."""

from __future__ import annotations

import json
from pathlib import Path

from sdfn.config import load_config
from sdfn.paths import PRESET_DIR, SHIPPED_CHECKPOINT, default_catalog, sdfn_home, source_checkout

REPO = Path(__file__).resolve().parent.parent


def test_shipped_files_live_inside_the_package():
    package = REPO / "sdfn"
    assert SHIPPED_CHECKPOINT.is_relative_to(package) and (SHIPPED_CHECKPOINT / "sdfn_config.json").is_file()
    assert PRESET_DIR.is_relative_to(package) and (PRESET_DIR / "tiny-synthetic.json").is_file()


def test_generated_data_goes_to_sdfn_home_else_the_checkout(monkeypatch, tmp_path):
    monkeypatch.delenv("SDFN_HOME", raising=False)
    assert source_checkout() == REPO and sdfn_home() == REPO            # a clone keeps its catalogs/ as before
    assert default_catalog() == REPO / "catalogs" / "synthetic"
    monkeypatch.setenv("SDFN_HOME", str(tmp_path / "home"))
    assert default_catalog() == tmp_path / "home" / "catalogs" / "synthetic"


def test_a_presets_synthetic_catalogs_go_to_sdfn_home_and_overrides_stay_as_given(monkeypatch, tmp_path):
    monkeypatch.setenv("SDFN_HOME", str(tmp_path / "home"))
    cfg = load_config("tiny-synthetic")
    assert cfg.data.root == str(tmp_path / "home" / "catalogs" / "synthetic")
    assert cfg.pretrain.catalog == str(tmp_path / "home" / "catalogs" / "pretrain")
    assert load_config("tiny-synthetic", ["data.root=mine"]).data.root == "mine"
    assert load_config("fashioniq-vitb32").data.root == "data/fashioniq"   # a user's data set: not generated

    own = tmp_path / "own.json"
    own.write_text(json.dumps({"data": {"root": "catalogs/x", "synthesize": True}}))
    assert load_config(str(own)).data.root == "catalogs/x"                # a user's file: relative to the cwd
