"""A run's `last/` checkpoint: the model plus everything an exact resume needs, written atomically.

`last/` is a model checkpoint folder (see sdfn.model) with three more files:
- `train_config.json`: the run's whole TrainConfig;
- `train_state.json`: epoch, step, best score, history, optimiser hyper-parameters, scheduler and scaler;
- `train_state.safetensors`: the optimiser's moment tensors and the SPD route memory.
No random state is stored: every epoch seeds itself (`distributed.epoch_seed`), and checkpoints are taken
at epoch ends, so a resumed run draws what the uninterrupted one drew.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from sdfn.config import TrainConfig, from_dict
from sdfn.errors import CheckpointError
from sdfn.fsio import atomic_write_text, save_safetensors, staging_folder
from sdfn.model import ComposedRetrievalModel, config_differences

RESUME_FILES = ("train_config.json", "train_state.json", "train_state.safetensors")
STATE_KEYS = ("epoch", "step", "best", "history", "optimizer", "scheduler", "scaler", "triplets")
# What a run folder holds before its first checkpoint (see stages.run_training): the resolved config, the log,
# stage 1.
_EARLY_RUN_FILES = ("config.json", "log.jsonl", "stage1")


def stopped_before_first_checkpoint(path: Path | str) -> bool:
    """Whether `path` is a run folder that was stopped (Ctrl-C, kill) before its first last/ checkpoint."""
    path = Path(path)
    checkpoint = (path / "train_config.json").exists() or any(path.glob("*.safetensors*"))  # last/ or best/ itself
    return (path.is_dir() and not (path / "last").exists() and not checkpoint
            and any((path / name).exists() for name in _EARLY_RUN_FILES))


def stopped_early_message(path: Path | str) -> str:
    return (f"cannot resume {path}: the run stopped before its first checkpoint (last/ is written at the end of "
            f"every epoch): start it again without --resume (`sdfn train --config {Path(path) / 'config.json'} "
            f"--out {path}`, or your original command).")


def resumable_folder(path: Path | str) -> Path:
    """The `last/` checkpoint of run folder `path` (or `path` itself when it is one); a clear error otherwise."""
    path = Path(path)
    if not path.is_dir():
        raise CheckpointError(f"cannot resume: {path} does not exist. Give the folder of a run (the --out of "
                              "`sdfn train`) or its last/ checkpoint, or start a new run with --config.")
    if stopped_before_first_checkpoint(path):
        raise CheckpointError(stopped_early_message(path))
    folder = path / "last" if (path / "last").is_dir() else path
    for name in RESUME_FILES:
        if not (folder / name).is_file():
            raise CheckpointError(f"cannot resume from {path}: {folder / name} is missing. Only a run's last/ "
                                  "checkpoint can be resumed (it is written at the end of every epoch; best/ and "
                                  "exported models hold weights only). Start a new run with --config.")
    return folder


def config_from_run(path: Path | str) -> TrainConfig:
    """The TrainConfig a run (its folder or its last/ checkpoint) was started with."""
    source = resumable_folder(path) / "train_config.json"
    try:
        return from_dict(TrainConfig, json.loads(source.read_text()))
    except json.JSONDecodeError as err:
        raise CheckpointError(f"{source} is not valid JSON ({err}); the checkpoint is damaged.") from err


def write_last(dst: Path, model: ComposedRetrievalModel, cfg: TrainConfig, extra: dict,
               tensors: dict[str, torch.Tensor], state: dict) -> None:
    """Write the `last/` checkpoint `dst`: readers (and a resume after a kill) see the old one or the new one."""
    with staging_folder(dst) as tmp:
        model.save_files(tmp, extra=extra)
        save_safetensors(tensors, str(tmp / "train_state.safetensors"))
        atomic_write_text(tmp / "train_state.json", json.dumps(state, indent=1))
        atomic_write_text(tmp / "train_config.json", json.dumps(cfg.to_dict(), indent=2))


def read_last(folder: Path, cfg: TrainConfig, triplets: int) -> tuple[dict[str, torch.Tensor], dict]:
    """The training state of a `last/` checkpoint, after checking it belongs to this model and data."""
    folder = resumable_folder(folder)
    saved_cfg = config_from_run(folder)
    diffs = config_differences(asdict(cfg.model), asdict(saved_cfg.model), "model.")
    if diffs:
        raise CheckpointError(f"cannot resume from {folder}: it was trained with another model configuration ("
                              + "; ".join(diffs) + "). Resume with its own config or start a new run.")
    state = read_state(folder)
    if state["triplets"] != triplets:
        raise CheckpointError(f"cannot resume from {folder}: it trained on {state['triplets']} triplets, "
                              f"this data has {triplets}. Point data.root at the same data set.")
    return read_state_tensors(folder), state


def damaged_state(folder: Path, name: str, why: str) -> CheckpointError:
    """The error for a damaged file of a `last/` checkpoint: which file, and what to do."""
    run = folder.parent if folder.name == "last" else folder
    return CheckpointError(f"cannot resume from {run}: {folder / name} is damaged ({why}). The run's best/ "
                           f"checkpoint (if it has one) is not affected: start the run again without --resume, or "
                           f"restore {folder} from a backup.")


def read_state(folder: Path) -> dict:
    """`train_state.json` of a `last/` checkpoint, checked to hold what a resume reads."""
    name = "train_state.json"
    try:
        state = json.loads((folder / name).read_bytes())
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise damaged_state(folder, name, f"not valid JSON: {err}") from err
    if not isinstance(state, dict):
        raise damaged_state(folder, name, "not a JSON object")
    missing = [key for key in STATE_KEYS if key not in state]
    if missing:
        raise damaged_state(folder, name, f"it lacks {', '.join(missing)}")
    if not isinstance(state["optimizer"], dict) or not isinstance(state["triplets"], int):
        raise damaged_state(folder, name, "its optimizer or triplets entry has the wrong type")
    return state


def read_state_tensors(folder: Path) -> dict[str, torch.Tensor]:
    """`train_state.safetensors` of a `last/` checkpoint (optimiser moments, SPD memory)."""
    name = "train_state.safetensors"
    try:
        return load_file(str(folder / name))
    except (SafetensorError, ValueError) as err:
        raise damaged_state(folder, name, f"not a readable safetensors file: {err}") from err


def check_last(folder: Path) -> None:
    """Read a `last/` checkpoint's training state now, so that damage stops a resume before any work."""
    read_state(folder)
    read_state_tensors(folder)


def flatten_optimizer(state: dict) -> tuple[dict[str, torch.Tensor], dict]:
    """Split an optimizer state dict into tensors (for safetensors) and plain JSON (the rest)."""
    tensors, plain = {}, {"param_groups": state["param_groups"], "state": {}}
    for pid, pstate in state["state"].items():
        plain["state"][str(pid)] = {}
        for key, value in pstate.items():
            if torch.is_tensor(value):
                tensors[f"optim.{pid}.{key}"] = value.detach().cpu().contiguous()
                plain["state"][str(pid)][key] = {"tensor": f"optim.{pid}.{key}"}
            else:
                plain["state"][str(pid)][key] = value
    return tensors, plain


def unflatten_optimizer(tensors: dict[str, torch.Tensor], plain: dict) -> dict:
    state = {}
    for pid, pstate in plain["state"].items():
        state[int(pid)] = {k: tensors[v["tensor"]] if isinstance(v, dict) and "tensor" in v else v
                           for k, v in pstate.items()}
    return {"state": state, "param_groups": plain["param_groups"]}
