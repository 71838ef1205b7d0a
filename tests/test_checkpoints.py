"""Checkpoint files: sharded or single-file weights load the same, altered or damaged weights are refused with a
message naming the folder, fingerprints follow the weights, and nothing stored names a machine folder."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from sdfn.backbone import BackboneConfig
from sdfn.errors import CheckpointError
from sdfn.fusion import FusionConfig
from sdfn.model import ComposedRetrievalModel, ModelConfig
from sdfn.weights import INDEX_SUFFIX, load_tensors, save_tensors


def test_weights_are_sharded_below_the_limit_and_read_back_exactly(tmp_path):
    torch.manual_seed(0)
    tensors = {"big": torch.randn(1000, 64), "small": torch.randn(10), "int": torch.arange(7),
               "scalar": torch.tensor(3.0)}
    files = save_tensors(tensors, tmp_path, "w", shard_bytes=300_000)   # "big" is 256 kB: split in row blocks
    index = json.loads((tmp_path / f"w{INDEX_SUFFIX}").read_text())
    assert f"w{INDEX_SUFFIX}" in files and not (tmp_path / "w.safetensors").exists()
    assert len(index["split"]["big"]) == 2
    assert all((tmp_path / f).stat().st_size <= 300_000 for f in files)
    back = load_tensors(tmp_path, "w")
    assert back.keys() == tensors.keys()
    assert all(torch.equal(back[k], tensors[k]) for k in tensors)

    (tmp_path / "one").mkdir()
    save_tensors(tensors, tmp_path / "one", "w")
    assert sorted(p.name for p in (tmp_path / "one").iterdir()) == ["w.safetensors"]   # fits: one plain file
    assert all(torch.equal(load_tensors(tmp_path / "one", "w")[k], tensors[k]) for k in tensors)


def merge_into_one_file(folder: Path) -> None:
    """Rewrite a sharded backbone as the single open_clip_model.safetensors older checkpoints have."""
    tensors = load_tensors(folder, "open_clip_model")
    for path in folder.glob("open_clip_model*"):
        path.unlink()
    save_file(tensors, str(folder / "open_clip_model.safetensors"))


def test_sharded_and_single_file_checkpoints_load_the_same_model(tiny_checkpoint, tmp_path):
    assert (tiny_checkpoint / f"open_clip_model{INDEX_SUFFIX}").is_file()      # float32 sdfn-tiny: 33 MB, sharded
    assert max(p.stat().st_size for p in tiny_checkpoint.iterdir()) <= 8 * 2**20
    single = tmp_path / "single"
    shutil.copytree(tiny_checkpoint, single)
    merge_into_one_file(single)
    a, b = ComposedRetrievalModel.load(tiny_checkpoint), ComposedRetrievalModel.load(single)
    assert a.fingerprint() == b.fingerprint() == json.loads((single / "sdfn_config.json").read_text())["fingerprint"]
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values(), strict=True))


def test_a_float16_export_stores_the_fingerprint_of_its_weights(tiny_checkpoint, tmp_path):
    """The shipped checkpoint's stored fingerprint was that of the float32 weights before halving: never equal."""
    ComposedRetrievalModel.load(tiny_checkpoint).save(tmp_path / "half", half=True)
    meta = json.loads((tmp_path / "half" / "sdfn_config.json").read_text())
    assert ComposedRetrievalModel.load(tmp_path / "half").fingerprint() == meta["fingerprint"]


def test_altered_weights_are_refused_with_the_folder_and_what_to_do(tiny_checkpoint, tmp_path):
    altered = tmp_path / "altered"
    shutil.copytree(tiny_checkpoint, altered)
    head = load_file(str(altered / "fusion.safetensors"))
    name = next(k for k, v in head.items() if v.is_floating_point() and v.numel() > 1)
    head[name] = head[name].clone()
    head[name].view(-1)[0] += 0.5                       # a valid file, one weight changed
    save_file(head, str(altered / "fusion.safetensors"))
    with pytest.raises(CheckpointError, match=rf"{altered}.*do not match the fingerprint.*Copy the folder again"):
        ComposedRetrievalModel.load(altered)


@pytest.mark.parametrize("damage", ["truncated", "garbage", "empty"])
@pytest.mark.parametrize("file", ["fusion.safetensors", "a backbone shard", "open_clip_model.safetensors"])
def test_damaged_weight_files_are_a_checkpoint_error_naming_the_file(tiny_checkpoint, tmp_path, file, damage):
    folder = tmp_path / "damaged"
    shutil.copytree(tiny_checkpoint, folder)
    if file == "open_clip_model.safetensors":
        merge_into_one_file(folder)
    path = sorted(folder.glob("open_clip_model-*"))[1] if file == "a backbone shard" else folder / file
    data = path.read_bytes()
    path.write_bytes({"truncated": data[: len(data) // 2], "garbage": b"\x00garbage" * 100, "empty": b""}[damage])
    with pytest.raises(CheckpointError, match=rf"{path} is damaged"):
        ComposedRetrievalModel.load(folder)


def test_fingerprints_are_cached_and_follow_every_weight_change(tiny_checkpoint):
    model = ComposedRetrievalModel.load(tiny_checkpoint).eval()
    first, backbone = model.fingerprint(), model.backbone_fingerprint()
    assert model.fingerprint() == first and model.train().eval().fingerprint() == first
    original = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.no_grad():
        next(model.fusion.parameters()).add_(0.1)      # what an optimiser step does
    assert model.fingerprint() != first
    assert model.backbone_fingerprint() == backbone    # fusion only: cached image features stay valid
    with torch.no_grad():
        next(model.backbone.clip.parameters()).mul_(2)
    assert model.backbone_fingerprint() != backbone
    model.load_state_dict(original)
    assert (model.fingerprint(), model.backbone_fingerprint()) == (first, backbone)


def test_backbone_provenance_is_stored_relative_to_the_checkpoint_or_by_name(tiny_checkpoint, tmp_path):
    """A stage-2 run names its stage-1 backbone; the checkpoint stores it as ../stage1, never a machine path."""
    run = tmp_path / "runs" / "r"
    stage1 = run / "stage1"
    stage1.mkdir(parents=True)
    for path in tiny_checkpoint.glob("open_clip*"):
        shutil.copy(path, stage1 / path.name)
    cfg = ModelConfig(BackboneConfig(model=f"local-dir:{stage1}", freeze_image=True, freeze_text=True),
                      FusionConfig(width=32, heads=2, router_hidden=16))
    model = ComposedRetrievalModel(cfg)
    assert model.backbone_fingerprint() == ComposedRetrievalModel.load(tiny_checkpoint).backbone_fingerprint()
    model.save(run / "best")
    stored = json.loads((run / "best" / "sdfn_config.json").read_text())["model"]["backbone"]["model"]
    assert stored == "local-dir:../stage1"
    ComposedRetrievalModel.load(run / "best", expect=cfg)          # the same backbone as the config asks for
    ComposedRetrievalModel.load(run / "best").save(tmp_path / "elsewhere" / "deep" / "export", half=True)
    text = (tmp_path / "elsewhere" / "deep" / "export" / "sdfn_config.json").read_text()
    assert json.loads(text)["model"]["backbone"]["model"] == "sdfn-tiny"     # far away: by architecture name
    assert str(tmp_path) not in text and str(tmp_path) not in (run / "best" / "sdfn_config.json").read_text()


def test_image_token_layer_travels_with_the_checkpoint_and_keys_cached_image_features(tmp_path):
    """Ours: model.backbone.image_token_layer feeds the fusion an earlier block's patch tokens. A checkpoint keeps the
    choice, and features cached for one choice are never reused for another (the backbone fingerprint differs)."""
    from sdfn.errors import ConfigError

    torch.manual_seed(0)
    small = FusionConfig(width=32, heads=2, router_hidden=16)
    early = ComposedRetrievalModel(ModelConfig(BackboneConfig(image_token_layer=1), small)).eval()
    last = ComposedRetrievalModel(ModelConfig(BackboneConfig(), small)).eval()
    last.backbone.clip.load_state_dict(early.backbone.clip.state_dict())
    images = torch.rand(2, 3, *early.backbone.image_size)
    with torch.no_grad():
        a, b = early.encode_images(images), last.encode_images(images)
        block1 = early.backbone.clip.visual.forward_intermediates(images, indices=[0], normalize_intermediates=True,
                                                                  output_fmt="NLC")["image_intermediates"][0]
    assert torch.equal(a.pooled, b.pooled) and not torch.allclose(a.tokens, b.tokens)
    assert torch.allclose(a.tokens, block1 @ early.backbone.clip.visual.proj)
    assert early.backbone_fingerprint() != last.backbone_fingerprint()
    early.save(tmp_path / "early")
    loaded = ComposedRetrievalModel.load(tmp_path / "early")
    assert loaded.cfg.backbone.image_token_layer == 1 and loaded.backbone.cfg.image_token_layer == 1
    assert loaded.backbone_fingerprint() == early.backbone_fingerprint()
    with torch.no_grad():
        assert torch.allclose(loaded.encode_images(images).tokens, a.tokens, atol=1e-5)
    for bad in (0, 5, 1.5, True):
        with pytest.raises(ConfigError, match="image_token_layer.*from 1 to 4"):
            ComposedRetrievalModel(ModelConfig(BackboneConfig(image_token_layer=bad), small))
