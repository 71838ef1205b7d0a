"""`sdfn train` / `sdfn eval` on the small synthetic catalog: learning, SPD, resume, refusals, DDP, presets."""

from __future__ import annotations

import contextlib
import json
import math
import os
import random
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from helpers import free_port
from safetensors.torch import save_file

from sdfn.backbone import Backbone, BackboneConfig
from sdfn.cli import main as cli
from sdfn.config import load_config
from sdfn.errors import CheckpointError, ConfigError, DataError
from sdfn.fusion import list_fusions
from sdfn.losses import BatchClassificationLoss, image_text_contrastive
from sdfn.model import ComposedRetrievalModel, ModelConfig
from sdfn.training import Trainer, run_training, selection_score
from sdfn.training.optim import param_groups
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
    # As after a kill during the second epoch's checkpoint: its records were logged, its last/ never written
    # (and the last line was cut short).
    second = [line for line in (tmp_path / "straight" / "log.jsonl").read_text().splitlines()
              if json.loads(line)["event"] in ("step", "epoch") and json.loads(line)["epoch"] == 1]
    with (tmp_path / "split" / "log.jsonl").open("a") as f:
        f.write("\n".join(second) + "\n" + second[0][:20])
    run_training(small_config(small_catalog, *cfg), tmp_path / "ignored", resume=tmp_path / "split", progress=False)
    assert [e["epoch"] for e in epochs_of(tmp_path / "split")] == [0, 1]      # the log tells one history
    straight, resumed = steps_of(tmp_path / "straight"), steps_of(tmp_path / "split")
    assert [s["step"] for s in straight] == [s["step"] for s in resumed]
    for a, b in zip(straight, resumed, strict=True):
        assert a["loss"] == pytest.approx(b["loss"], abs=1e-5), a["step"]
        assert a["spd"] == pytest.approx(b["spd"], abs=1e-6), a["step"]
    assert not (tmp_path / "ignored").exists()     # resume continues in the resumed run's folder


def test_resume_of_something_that_is_not_a_run_is_a_one_line_error(small_catalog, tmp_path, capsys):
    empty, no_state = tmp_path / "empty", tmp_path / "no-state"
    empty.mkdir()
    (no_state / "last").mkdir(parents=True)         # a run killed while writing its first checkpoint, by hand
    (no_state / "last" / "train_config.json").write_text(json.dumps(small_config(small_catalog).to_dict()))
    for folder, names in ((tmp_path / "nope", "nope"), (empty, "train_config.json"),
                          (no_state, "train_state")):
        assert cli(["train", "--resume", str(folder), "--quiet"]) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("sdfn train: error:") and "\n" not in err, err
        assert str(folder) in err and names in err and "--config" in err, err      # what, where, what to do
    with pytest.raises(CheckpointError, match="does not exist.*start a new run with --config"):
        run_training(small_config(small_catalog), tmp_path / "x", resume=tmp_path / "nope", progress=False)


@contextlib.contextmanager
def read_only(folder: Path):
    """`folder` made unwritable: by its mode, or (for root, whom modes do not stop) the immutable attribute."""
    folder.chmod(stat.S_IRUSR | stat.S_IXUSR)
    immutable = False
    try:
        if os.access(folder, os.W_OK) and os.geteuid() == 0:
            immutable = subprocess.run(["chattr", "+i", str(folder)], capture_output=True).returncode == 0
            if not immutable:
                pytest.skip("cannot make a folder read-only for root here (no chattr +i on this file system)")
        yield folder
    finally:
        if immutable:
            subprocess.run(["chattr", "-i", str(folder)], check=True)
        folder.chmod(stat.S_IRWXU)


def test_a_read_only_run_folder_is_a_one_line_error(small_catalog, tmp_path, capsys):
    ro = tmp_path / "ro"
    ro.mkdir()
    with read_only(ro):
        code = cli(["train", "--config", "tiny-synthetic", "--out", str(ro / "run"), "--quiet", *SMALL,
                    f"data.root={small_catalog}"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.startswith("sdfn train: error:") and "\n" not in err, err
    assert str(ro) in err and "--out" in err, err
    assert not (ro / "run").exists()


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


def test_stage_one_sees_an_image_as_search_does(tmp_path):
    """Stage 1 decodes with sdfn.data.images' one policy and the model's own resize and centre crop, not a
    square stretch: its un-augmented view of a wide photo is exactly the model preprocess's (the middle third)."""
    from PIL import Image

    from sdfn.data.images import load_model_image
    from sdfn.training.pretrain import Augment, decode_all

    backbone = Backbone(BackboneConfig(model="sdfn-tiny"), load_weights=False)
    wide = torch.zeros(60, 180, 3, dtype=torch.uint8)
    wide[:, :60, 0], wide[:, 60:120, 1], wide[:, 120:, 2] = 255, 200, 255      # red | green | blue thirds
    Image.fromarray(wide.numpy()).save(tmp_path / "wide.png")
    size, look = backbone.image_size[0], backbone.preprocess_cfg
    images = decode_all([tmp_path / "wide.png"], size, 0, False, look)
    assert images.shape == (1, 3, size, size)
    assert (images[0, 1] > 150).all() and (images[0, 0] < 60).all() and (images[0, 2] < 60).all()   # all green
    view = Augment(size, look["mean"], look["std"])(images, None, train=False)[0]
    expected = backbone.preprocess(load_model_image(tmp_path / "wide.png", backbone.image_size))
    assert torch.allclose(view, expected, atol=1e-5)


def test_stage_one_pretraining_writes_an_open_clip_backbone(small_catalog, tmp_path):
    pretrain = tmp_path / "pretrain-catalog"        # the preset's separate pre-training catalog, made small
    abandoned = tmp_path / "run" / ".stage1.tmp-999999-0badcafe"      # left by a killed stage 1
    abandoned.mkdir(parents=True)
    cfg = small_config(small_catalog, "pretrain.epochs=1", "pretrain.batch_size=32", "optim.epochs=1",
                       "eval.every=0", f"pretrain.catalog={pretrain}", "pretrain.synth_items_per_category=30")
    run_training(cfg, tmp_path / "run", progress=False)
    tmp_path = tmp_path / "run"
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith(".")]     # no staging folder left
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
    # stage 1 trained both towers; stage 2 keeps the preset's frozen image tower (and its feature cache) and
    # goes on training the text tower with the fusion
    assert saved["model"]["backbone"]["freeze_image"] and not saved["model"]["backbone"]["freeze_text"]
    stage2 = ComposedRetrievalModel.load(tmp_path / "last").backbone.clip.state_dict()
    stage1_weights = trained.clip.state_dict()
    moved = {k.split(".")[0] for k, v in stage2.items() if not torch.equal(v, stage1_weights[k])}
    assert "transformer" in moved and "visual" not in moved
    # the run record says this run trained stage 1; a run that finds it finished in its folder skips it and says so
    # (the model card tells a whole recipe's time from a stage-2-only one by this)
    assert run_records(tmp_path) == ["trained"]
    again = tmp_path.parent / "again"
    shutil.copytree(tmp_path / "stage1", again / "stage1")
    run_training(cfg, again, progress=False)
    assert run_records(again) == ["reused"]
    assert json.loads((again / "stage1" / "stage1.json").read_text()) == stage1       # untouched
    paper = small_config(small_catalog, "optim.epochs=1", "eval.every=0")             # no stage 1 at all
    run_training(paper, tmp_path.parent / "none", progress=False)
    assert run_records(tmp_path.parent / "none") == ["none"]


def run_records(run: Path) -> list[str]:
    """The `stage1` field of each run record in a run folder's log."""
    records = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    return [r["stage1"] for r in records if r["event"] == "run"]


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
           *SMALL, f"data.root={small_catalog}", "optim.epochs=2", "optim.batch_size=8", "eval.every=2",
           "optim.negatives=batch"]          # each rank's queries against both ranks' targets
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
    assert result["epoch"] == 1
    assert ComposedRetrievalModel.load(tmp_path / "best").cfg.backbone.model == "ViT-B-32"


def test_weight_decay_only_on_weight_matrices_each_part_at_its_learning_rate():
    model = torch.nn.ModuleDict({"proj": torch.nn.Linear(4, 4), "norm": torch.nn.LayerNorm(4),
                                 "token_embedding": torch.nn.Embedding(10, 4), "frozen": torch.nn.Linear(4, 4)})
    model.register_parameter("logit_scale", torch.nn.Parameter(torch.zeros(())))
    model["frozen"].requires_grad_(False)
    named = list(model.named_parameters())
    groups = param_groups({"fusion": ([x for x in named if x[0] != "proj.weight"], 1e-3),
                           "backbone": ([x for x in named if x[0] == "proj.weight"], 1e-5)}, weight_decay=0.1)
    names = {id(p): n for n, p in named}
    got = {g["name"]: (g["lr"], g["weight_decay"], sorted(names[id(p)] for p in g["params"])) for g in groups}
    assert got == {"fusion-no-decay": (1e-3, 0.0, ["logit_scale", "norm.bias", "norm.weight", "proj.bias",
                                                   "token_embedding.weight"]),
                   "backbone": (1e-5, 0.1, ["proj.weight"])}


class _Towers(torch.nn.Module):
    """Query and target projections plus the loss (which holds the temperature), as in ComposedRetrievalModel."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.query, self.target = torch.nn.Linear(6, 5), torch.nn.Linear(6, 5)
        self.criterion = BatchClassificationLoss(init_temperature=0.2)

    def forward(self, x, y):
        return F.normalize(self.query(x), dim=-1), F.normalize(self.target(y), dim=-1)


def _global_batch(n: int = 8):
    g = torch.Generator().manual_seed(1)
    keys = torch.tensor([0, 1, 2, 3, 0, 5, 6, 1])[:n]     # queries 0/4 and 1/7 share a target, across ranks
    return torch.randn(n, 6, generator=g), torch.randn(n, 6, generator=g), keys, torch.randn(n, 5, generator=g), \
        torch.randn(n, 5, generator=g)


def _rank_losses(rank: int, world: int, port: int, out: str) -> None:
    """One rank of a 2-process gloo group: the training loss through DDP, and stage 1's CLIP loss, on its half."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    x, y, keys, img, txt = (t.chunk(world)[rank] for t in _global_batch())
    towers = _Towers()
    towers.criterion.distribute(rank, world)
    ddp = torch.nn.parallel.DistributedDataParallel(towers)
    loss = towers.criterion(*ddp(x, y), keys)          # the temperature is used outside forward, as in the trainer
    loss.backward()
    img, txt = img.requires_grad_(), txt.requires_grad_()
    clip = image_text_contrastive(rank, world)(F.normalize(img, dim=-1), F.normalize(txt, dim=-1), torch.tensor(10.0))
    clip.backward()
    grads = {n: p.grad.tolist() for n, p in towers.named_parameters()}
    (Path(out) / f"rank{rank}.json").write_text(json.dumps({"loss": loss.item(), "clip": clip.item(), "grads": grads,
                                                            "img": img.grad.tolist(), "txt": txt.grad.tolist()}))
    dist.destroy_process_group()


def test_two_ranks_see_the_loss_and_gradient_of_the_whole_global_batch(tmp_path):
    port = free_port()
    mp.spawn(_rank_losses, args=(2, port, str(tmp_path)), nprocs=2, join=True)
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    x, y, keys, img, txt = _global_batch()
    towers = _Towers()
    loss = towers.criterion(*towers(x, y), keys)
    loss.backward()
    assert sum(r["loss"] for r in ranks) / 2 == pytest.approx(loss.item(), abs=1e-6)
    for name, p in towers.named_parameters():        # DDP's average over the ranks = the single-process gradient
        for r in ranks:
            torch.testing.assert_close(torch.tensor(r["grads"][name]), p.grad, atol=1e-6, rtol=1e-5)
    without_keys = BatchClassificationLoss(init_temperature=0.2)(*towers(x, y))
    assert without_keys.item() != pytest.approx(loss.item(), abs=1e-3)    # the shared targets were masked
    img, txt = img.requires_grad_(), txt.requires_grad_()
    clip = image_text_contrastive()(F.normalize(img, dim=-1), F.normalize(txt, dim=-1), torch.tensor(10.0))
    clip.backward()
    assert sum(r["clip"] for r in ranks) / 2 == pytest.approx(clip.item(), abs=1e-6)
    for part, full in (("img", img.grad), ("txt", txt.grad)):
        got = torch.cat([torch.tensor(r[part]) for r in ranks]) / 2     # each rank's loss is its half's mean
        torch.testing.assert_close(got, full, atol=1e-6, rtol=1e-5)


# ---- resume: damaged state, a run stopped before its first checkpoint, a read-only run ---------------------

@pytest.fixture(scope="module")
def one_epoch_run(small_catalog, tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("resumable") / "run"
    run_training(small_config(small_catalog, "optim.epochs=2", "eval.every=0"), run, stop_after=1, progress=False)
    return run


@pytest.mark.parametrize("name,content,why", [
    ("train_state.json", b"", "not valid JSON"),
    ("train_state.json", b'{"x": 1}', "it lacks epoch"),
    ("train_state.json", b"[1, 2]", "not a JSON object"),
    ("train_state.safetensors", b"", "not a readable safetensors file"),
    ("train_state.safetensors", b"\x10\x00\x00\x00\x00\x00\x00\x00garbage garbage!", "not a readable safetensors"),
], ids=["json-empty", "json-no-keys", "json-list", "tensors-empty", "tensors-garbage"])
def test_a_damaged_train_state_is_a_one_line_error_naming_the_file(one_epoch_run, tmp_path, capsys, name, content,
                                                                   why):
    import shutil
    run = tmp_path / "run"
    shutil.copytree(one_epoch_run, run)
    (run / "last" / name).write_bytes(content)
    assert cli(["train", "--resume", str(run), "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("sdfn train: error:") and "\n" not in err and "Traceback" not in err, err
    assert f"{run / 'last' / name} is damaged ({why}" in err, err
    assert "best/" in err and "without --resume" in err, err      # what is safe, what to do
    assert [e["epoch"] for e in epochs_of(run)] == [0]            # nothing was trained or logged


def test_a_run_stopped_before_its_first_checkpoint_says_to_start_again(small_catalog, tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()   # what Ctrl-C during the first epoch leaves: the resolved config and the log, no last/
    (run / "config.json").write_text(json.dumps(small_config(small_catalog).to_dict()))
    (run / "log.jsonl").write_text("")
    assert cli(["train", "--resume", str(run), "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "stopped before its first checkpoint" in err, err
    assert "start it again without --resume" in err and "not a training run" not in err, err
    with pytest.raises(CheckpointError, match="stopped before its first checkpoint"):
        run_training(small_config(small_catalog), tmp_path / "x", resume=run, progress=False)


def test_resuming_a_read_only_run_folder_says_so_for_a_resume(one_epoch_run, tmp_path, capsys):
    import shutil
    run = tmp_path / "run"
    shutil.copytree(one_epoch_run, run)
    with read_only(run):
        code = cli(["train", "--resume", str(run), "--quiet"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.startswith("sdfn train: error:") and "\n" not in err, err
    assert f"cannot resume {run}" in err and "cannot be written" in err and "resume the copy" in err, err
    assert "--out" not in err, err



def test_a_checkpoint_path_that_is_a_file_is_called_a_file(tmp_path):
    file = tmp_path / "passwd"
    file.write_text("root:x:0:0::/root:/bin/sh\n")
    with pytest.raises(CheckpointError, match=r"is a file, not a folder"):
        ComposedRetrievalModel.load(file)
    with pytest.raises(CheckpointError) as err:
        ComposedRetrievalModel.load(file)
    assert str(file) in str(err.value) and "does not exist" not in str(err.value)
