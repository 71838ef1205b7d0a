"""`sdfn train` / `sdfn eval` on the small synthetic catalog: learning, SPD, resume, refusals, DDP, presets."""

from __future__ import annotations

import json
import math
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from sdfn.backbone import Backbone, BackboneConfig
from sdfn.cli import main as cli
from sdfn.config import load_config
from sdfn.errors import CheckpointError, ConfigError, DataError
from sdfn.fusion import list_fusions
from sdfn.model import ComposedRetrievalModel, ModelConfig
from sdfn.training import Trainer, run_training, selection_score
from sdfn.training.pretrain import read_catalog

SMALL = ["model.fusion.width=32", "model.fusion.heads=2", "model.fusion.router_hidden=16", "pretrain.epochs=0",
         "data.synthesize=false", "optim.batch_size=16", "optim.num_workers=0", "log_every=1"]


def small_config(catalog: Path, *overrides: str):
    return load_config("tiny-synthetic", [*SMALL, f"data.root={catalog}", *overrides])


def epochs_of(run: Path) -> list[dict]:
    return [r for r in map(json.loads, (run / "log.jsonl").read_text().splitlines()) if r["event"] == "epoch"]


def steps_of(run: Path) -> list[dict]:
    return [r for r in map(json.loads, (run / "log.jsonl").read_text().splitlines()) if r["event"] == "step"]


@pytest.mark.parametrize("name", list_fusions())
def test_every_registered_fusion_learns_on_the_synthetic_catalog(small_catalog, tmp_path, name):
    cfg = small_config(small_catalog, f"model.fusion.name={name}", "eval.every=0", "optim.warmup_epochs=0",
                       "optim.lr=0.003")
    trainer = Trainer(cfg, tmp_path, progress=False)
    batch = list(range(16))
    losses = [trainer.train_step(batch, random.Random(0))["bbc"] for _ in range(12)]
    assert losses[-1] < losses[0] - 0.2, f"{name}: {losses}"


def test_gallery_negatives_rank_every_training_image(small_catalog, tmp_path):
    cfg = small_config(small_catalog, "optim.negatives=gallery", "eval.every=0", "optim.warmup_epochs=0",
                       "optim.lr=0.003")
    trainer = Trainer(cfg, tmp_path, progress=False)
    batch = list(range(16))
    losses = [trainer.train_step(batch, random.Random(0))["bbc"] for _ in range(12)]
    gallery = len(trainer.gallery.row_of)
    assert gallery > 16 and losses[0] > math.log(16) + 1        # the softmax runs over the whole gallery
    assert losses[-1] < losses[0] - 0.2
    with pytest.raises(ConfigError, match="negatives=gallery needs cached image features"):
        Trainer(small_config(small_catalog, "optim.negatives=gallery", "model.backbone.freeze_image=false"),
                tmp_path / "unfrozen", progress=False)


def test_spd_is_off_in_the_first_epoch_and_pulls_routes_later(small_catalog, tmp_path):
    run_training(small_config(small_catalog, "optim.epochs=2", "eval.every=0"), tmp_path, progress=False)
    first, second = epochs_of(tmp_path)
    assert first["spd"] == 0.0
    assert second["spd"] > 0.0


def test_two_epochs_straight_equal_one_plus_resume_plus_one(small_catalog, tmp_path):
    cfg = ["optim.epochs=2", "eval.every=1"]
    run_training(small_config(small_catalog, *cfg), tmp_path / "straight", progress=False)
    run_training(small_config(small_catalog, *cfg), tmp_path / "split", stop_after=1, progress=False)
    assert len(epochs_of(tmp_path / "split")) == 1
    run_training(small_config(small_catalog, *cfg), tmp_path / "ignored", resume=tmp_path / "split", progress=False)
    straight, resumed = steps_of(tmp_path / "straight"), steps_of(tmp_path / "split")
    assert [s["step"] for s in straight] == [s["step"] for s in resumed]
    for a, b in zip(straight, resumed, strict=True):
        assert a["loss"] == pytest.approx(b["loss"], abs=1e-5), a["step"]
        assert a["spd"] == pytest.approx(b["spd"], abs=1e-6), a["step"]
    assert not (tmp_path / "ignored").exists()     # resume continues in the resumed run's folder


def test_a_checkpoint_of_another_config_is_refused(small_catalog, tmp_path):
    run_training(small_config(small_catalog, "optim.epochs=1", "eval.every=0"), tmp_path, progress=False)
    with pytest.raises(CheckpointError, match=r"another model configuration.*fusion\.width: 32 in the checkpoint, 48"):
        run_training(small_config(small_catalog, "optim.epochs=2", "model.fusion.width=48"), tmp_path / "x",
                     resume=tmp_path, progress=False)
    expect = ModelConfig.from_dict({"fusion": {"name": "combiner"}})
    with pytest.raises(CheckpointError, match="fusion.name: 'sdfn' in the checkpoint, 'combiner' asked for"):
        ComposedRetrievalModel.load(tmp_path / "last", expect=expect)


def test_best_checkpoint_is_selected_and_reloads_with_the_same_scores(small_catalog, tmp_path, capsys):
    result = run_training(small_config(small_catalog, "optim.epochs=2", "eval.every=1"), tmp_path, progress=False)
    best = json.loads((tmp_path / "best" / "sdfn_config.json").read_text())
    metric = result["best"]["metric"]
    assert metric == load_config("tiny-synthetic").eval.select
    vals = [selection_score(e["val"], metric) for e in epochs_of(tmp_path)]
    assert selection_score(best["val"], metric) == max(vals) == result["best"]["score"]
    assert best["selected_by"]["epoch"] == 1 + vals.index(max(vals))
    capsys.readouterr()
    code = cli(["eval", "--checkpoint", str(tmp_path / "best"), "--dataset", "fashioniq", "--data",
                str(small_catalog), "--exclude-reference", "--json", "--quiet"])
    assert code == 0
    report = json.loads(capsys.readouterr().out)
    for k, value in best["val"]["mean"].items():
        assert report["mean"][k] == pytest.approx(value, abs=1e-6), k


def test_eval_cli_prints_a_report(small_catalog, tmp_path, capsys):
    run_training(small_config(small_catalog, "optim.epochs=1", "eval.every=0"), tmp_path, progress=False)
    assert cli(["eval", "--checkpoint", str(tmp_path / "last"), "--dataset", "fashioniq", "--data",
                str(small_catalog), "--captions", "both-orders", "--json", "--quiet"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["protocol"]["captions"] == "both-orders"
    assert set(report["categories"]) == {"dress", "shirt", "toptee", "skirt", "trousers"}
    assert cli(["eval", "--checkpoint", str(tmp_path / "nope"), "--dataset", "fashioniq", "--data",
                str(small_catalog)]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_config_errors_name_the_key(small_catalog):
    with pytest.raises(ConfigError, match="unknown key.*'epoch'"):
        small_config(small_catalog, "optim.epoch=3")
    with pytest.raises(ConfigError, match="optim.epochs: expected int"):
        small_config(small_catalog, "optim.epochs=three")
    with pytest.raises(ConfigError, match="no config file or preset named 'nope'.*tiny-synthetic"):
        load_config("nope")


def test_stage_one_pretraining_writes_an_open_clip_backbone(small_catalog, tmp_path):
    pretrain = tmp_path / "pretrain-catalog"        # the preset's separate pre-training catalog, made small
    cfg = small_config(small_catalog, "pretrain.epochs=1", "pretrain.batch_size=32", "optim.epochs=1",
                       "eval.every=0", f"pretrain.catalog={pretrain}", "pretrain.synth_items_per_category=30")
    run_training(cfg, tmp_path / "run", progress=False)
    tmp_path = tmp_path / "run"
    train, val = read_catalog(pretrain, "train"), read_catalog(pretrain, "val")    # generated there ...
    assert len(train) > len(val) > 0
    with pytest.raises(DataError, match="no items in split 'test'"):                 # ... train and val only
        read_catalog(pretrain, "test")
    stage1 = json.loads((tmp_path / "stage1" / "stage1.json").read_text())
    assert stage1["train_images"] == len(train)
    for part in ("pooled", "tokens"):          # what the image embedding and the patch tokens know
        assert set(stage1["val_attribute_accuracy"][part]) >= {"category", "color", "sleeve", "neckline"}
    torch.manual_seed(cfg.seed)                     # stage 1 starts from exactly this initialisation
    random_init = Backbone(BackboneConfig())
    trained = Backbone(BackboneConfig(model=f"local-dir:{tmp_path / 'stage1'}"))
    changed = [k for k, v in trained.clip.state_dict().items() if not torch.equal(v, random_init.clip.state_dict()[k])]
    assert any(k.startswith("visual.") for k in changed) and any(k.startswith("transformer.") for k in changed)
    saved = json.loads((tmp_path / "last" / "train_config.json").read_text())
    assert saved["model"]["backbone"]["model"].startswith("local-dir:")   # stage 2 started from stage 1
    # stage 1 trained both towers, but stage 2 keeps the preset's frozen backbone (and its feature cache)
    assert saved["model"]["backbone"]["freeze_image"] and saved["model"]["backbone"]["freeze_text"]


def test_backbone_loads_a_local_safetensors_file(tmp_path):
    source = Backbone(BackboneConfig())
    path = tmp_path / "weights.safetensors"
    save_file({k: v.contiguous() for k, v in source.clip.state_dict().items()}, str(path))
    loaded = Backbone(BackboneConfig(model="sdfn-tiny", pretrained=str(path)))
    for (k, a), b in zip(source.clip.state_dict().items(), loaded.clip.state_dict().values(), strict=True):
        assert torch.equal(a, b), k
    with pytest.raises(ConfigError, match="cannot create the open_clip backbone 'sdfn-tiny'.*No network here"):
        Backbone(BackboneConfig(model="sdfn-tiny", pretrained="laion2b_s34b_b79k"))


def test_ddp_with_gloo_on_two_processes(small_catalog, tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port", "29533",
           "-m", "sdfn", "train", "--config", "tiny-synthetic", "--out", str(tmp_path), "--quiet",
           *SMALL, f"data.root={small_catalog}", "optim.epochs=2", "optim.batch_size=8", "eval.every=2"]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    epochs = epochs_of(tmp_path)
    assert [e["world"] for e in epochs] == [2, 2]
    assert epochs[1]["spd"] > 0                   # route memory shared across ranks
    assert "val" in epochs[1]
    ComposedRetrievalModel.load(tmp_path / "best")


def test_fashioniq_vitb32_preset_runs_end_to_end_without_pretrained_weights(small_catalog, tmp_path):
    overrides = [f"data.root={small_catalog}", "data.categories=[\"dress\"]", "model.backbone.pretrained=null",
                 "optim.epochs=1", "optim.batch_size=8", "optim.num_workers=0", "eval.every=1"]
    cfg = load_config("fashioniq-vitb32", overrides)
    result = run_training(cfg, tmp_path, progress=False)
    assert result["epoch"] == 1 and (tmp_path / "best" / "open_clip_model.safetensors").is_file()
    assert json.loads((tmp_path / "best" / "sdfn_config.json").read_text())["model"]["backbone"]["model"] == "ViT-B-32"
