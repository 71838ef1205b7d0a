"""The shipped model (sdfn/assets/sdfn-tiny): what its card says is what it does, its config rebuilds it, its stored
fingerprint is its weights', and every file it ships fits a plain git push to a Space (under 10 MiB)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from safetensors import safe_open

from sdfn.backbone import BackboneConfig
from sdfn.data.base import open_dataset
from sdfn.data.synth import generate_catalog
from sdfn.encode import ModelQueryEncoder
from sdfn.evaluate import EvalProtocol, evaluate
from sdfn.fusion import FusionConfig
from sdfn.model import SHIPPED_CHECKPOINT, ComposedRetrievalModel, ModelConfig
from sdfn.weights import load_tensors

MODEL_CONFIG = Path(__file__).resolve().parent.parent / "sdfn" / "model_configs" / "sdfn-tiny.json"


def shapes(folder: Path, stem: str) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in load_tensors(folder, stem).items()}


def test_shipped_files_are_small_safetensors_and_json():
    names = sorted(p.name for p in SHIPPED_CHECKPOINT.iterdir())
    assert {"open_clip_config.json", "open_clip_model.safetensors.index.json", "fusion.safetensors",
            "sdfn_config.json", "metrics.json", "README.md"} <= set(names)
    files = [p for p in SHIPPED_CHECKPOINT.rglob("*") if p.is_file()]      # the shipped Combiner's folder too
    assert {p.suffix for p in files} <= {".json", ".safetensors", ".md"}
    assert max(p.stat().st_size for p in files) <= 8 * 2**20   # shards, not one 15 MiB file
    assert sum(p.stat().st_size for p in files) <= 25 * 10**6   # issue 9: the whole model <= 25 MB
    for path in SHIPPED_CHECKPOINT.rglob("*.safetensors"):
        with safe_open(str(path), framework="pt") as f:
            assert list(f.keys())                        # each shard is a readable safetensors file


def test_shipped_config_names_no_machine_folder_and_its_fingerprint_is_checked():
    meta = json.loads((SHIPPED_CHECKPOINT / "sdfn_config.json").read_text())

    def strings(value):
        if isinstance(value, dict):
            yield from (s for v in value.values() for s in strings(v))
        elif isinstance(value, list):
            yield from (s for v in value for s in strings(v))
        elif isinstance(value, str):
            yield value

    absolute = [s for s in strings(meta) if s.startswith(("/", "~")) or "local-dir:/" in s]
    assert not absolute, f"the shipped config names folders of the machine that trained it: {absolute}"
    assert meta["model"]["backbone"]["model"] == "sdfn-tiny"
    model = ComposedRetrievalModel.load()                 # raises CheckpointError when the fingerprint differs
    assert model.fingerprint() == meta["fingerprint"]


def test_config_rebuilds_the_exact_architecture():
    meta = json.loads((SHIPPED_CHECKPOINT / "sdfn_config.json").read_text())
    clip_cfg = json.loads((SHIPPED_CHECKPOINT / "open_clip_config.json").read_text())
    assert clip_cfg["model_cfg"] == json.loads(MODEL_CONFIG.read_text())   # the registered sdfn-tiny
    rebuilt = ComposedRetrievalModel(ModelConfig(BackboneConfig(model="sdfn-tiny"),
                                                 FusionConfig(**meta["model"]["fusion"])))
    clip = {k: tuple(v.shape) for k, v in rebuilt.backbone.clip.state_dict().items()}
    head = {f"fusion.{k}": tuple(v.shape) for k, v in rebuilt.fusion.state_dict().items()}
    head |= {f"criterion.{k}": tuple(v.shape) for k, v in rebuilt.criterion.state_dict().items()}
    assert clip == shapes(SHIPPED_CHECKPOINT, "open_clip_model")
    assert head == shapes(SHIPPED_CHECKPOINT, "fusion")


def test_shipped_checkpoint_reproduces_its_val_recall(tmp_path):
    """Remake the val split of the training catalog (seconds) and check R@10 against the card's figure."""
    metrics = json.loads((SHIPPED_CHECKPOINT / "metrics.json").read_text())
    root = tmp_path / "val"
    generate_catalog(root, seed=metrics["catalog"]["seed"], items_per_category=metrics["catalog"]["items_per_category"],
                     progress=False, splits=("val",))
    model = ComposedRetrievalModel.load()                      # no folder: the shipped model
    report = evaluate(open_dataset("fashioniq", root), "val", ModelQueryEncoder(model, batch_size=256),
                      EvalProtocol(**metrics["protocol"]))
    assert report.mean_recall()[10] == pytest.approx(metrics["val"]["R@10"], abs=0.5)
    assert report.mean_recall()[1] == pytest.approx(metrics["val"]["R@1"], abs=1.0)
    card = (SHIPPED_CHECKPOINT / "README.md").read_text()
    assert f"{metrics['val']['R@10']:.1f}" in card
