"""Weight files of a checkpoint: safetensors, one file or shards, read back with a clear message on damage.

`save_tensors(tensors, folder, "open_clip_model")` writes `open_clip_model.safetensors` when the tensors fit in
one shard (8 MiB by default), else shards as Hugging Face writes them:

- `open_clip_model-00001-of-00003.safetensors`, ... each at most one shard's size;
- `open_clip_model.safetensors.index.json`: `{"metadata": {"total_size": BYTES}, "weight_map": {NAME: FILE}}`.

One addition to Hugging Face's layout: a tensor bigger than a shard (sdfn-tiny's float16 token embedding is
12 MiB) is stored as row blocks named `NAME:part-00000`, ... and listed under `"split": {NAME: [PART, ...]}`
in the index; reading concatenates them along the first dimension. So every file stays under the Hub's 10 MiB
limit for plain git pushes, and no weight changes: the blocks are exact slices. Nothing is ever unpickled.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from sdfn.errors import CheckpointError
from sdfn.fsio import save_safetensors

SHARD_BYTES = 8 * 2**20
HEADER_ROOM = 64 * 2**10    # kept free in each shard for its JSON header, so a file stays within SHARD_BYTES
INDEX_SUFFIX = ".safetensors.index.json"


def _nbytes(t: torch.Tensor) -> int:
    return t.numel() * t.element_size()


def _pieces(name: str, t: torch.Tensor, limit: int) -> list[tuple[str, torch.Tensor]]:
    """`t` whole when it fits in a shard, else row blocks of at most `limit` bytes each."""
    if _nbytes(t) <= limit or t.dim() == 0 or t.shape[0] < 2:
        return [(name, t)]
    rows = max(1, limit // max(1, _nbytes(t[0])))
    return [(f"{name}:part-{i:05d}", t[start:start + rows].contiguous())
            for i, start in enumerate(range(0, t.shape[0], rows))]


def save_tensors(tensors: dict[str, torch.Tensor], folder: Path, stem: str,
                 shard_bytes: int = SHARD_BYTES) -> list[str]:
    """Write `tensors` into `folder` as STEM.safetensors, or as shards plus STEM.safetensors.index.json when
    they do not fit in one shard. Returns the names of the files written."""
    folder = Path(folder)
    total = sum(_nbytes(t) for t in tensors.values())
    limit = shard_bytes - HEADER_ROOM
    if total <= limit:
        save_safetensors(tensors, str(folder / f"{stem}.safetensors"))
        return [f"{stem}.safetensors"]
    split: dict[str, list[str]] = {}
    shards: list[dict[str, torch.Tensor]] = [{}]
    used = 0
    for name in sorted(tensors):
        pieces = _pieces(name, tensors[name], limit)
        if len(pieces) > 1:
            split[name] = [piece for piece, _ in pieces]
        for piece, t in pieces:
            if shards[-1] and used + _nbytes(t) > limit:
                shards.append({})
                used = 0
            shards[-1][piece] = t
            used += _nbytes(t)
    names = [f"{stem}-{i + 1:05d}-of-{len(shards):05d}.safetensors" for i in range(len(shards))]
    weight_map = {}
    for file, shard in zip(names, shards, strict=True):
        save_safetensors(shard, str(folder / file))
        weight_map.update(dict.fromkeys(shard, file))
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    if split:
        index["split"] = split
    (folder / f"{stem}{INDEX_SUFFIX}").write_text(json.dumps(index, indent=2))
    return [*names, f"{stem}{INDEX_SUFFIX}"]


def has_tensors(folder: Path, stem: str) -> bool:
    folder = Path(folder)
    return (folder / f"{stem}.safetensors").is_file() or (folder / f"{stem}{INDEX_SUFFIX}").is_file()


def _damaged(path: Path, why: str) -> CheckpointError:
    return CheckpointError(f"{path} is damaged ({why}). The checkpoint folder {path.parent} cannot be used: copy it "
                           "again from where it came from, or re-export it (`sdfn train` writes runs/NAME/best).")


def _read_index(path: Path) -> dict:
    try:
        index = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise _damaged(path, f"not valid JSON: {err}") from err
    if not isinstance(index, dict) or not isinstance(index.get("weight_map"), dict):
        raise _damaged(path, "no weight_map")
    return index


def _load_file(path: Path) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise CheckpointError(f"{path} is missing; the checkpoint folder {path.parent} is incomplete: copy it again "
                              "whole, or re-export it.")
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as err:
        size = path.stat().st_size
        raise _damaged(path, f"{'an empty file' if size == 0 else f'{size:,} bytes'}, not a complete safetensors "
                             f"file: {err}") from err


def load_tensors(folder: Path, stem: str) -> dict[str, torch.Tensor]:
    """Read what `save_tensors` wrote (one file or shards); CheckpointError naming the file on any damage."""
    folder = Path(folder)
    single, index_path = folder / f"{stem}.safetensors", folder / f"{stem}{INDEX_SUFFIX}"
    if single.is_file() and index_path.is_file():
        raise CheckpointError(f"{folder} holds both {single.name} and {index_path.name}: one of them is left over "
                              "from another save. Delete the stale one, or re-export the checkpoint.")
    if not index_path.is_file():
        return _load_file(single)
    index = _read_index(index_path)
    tensors: dict[str, torch.Tensor] = {}
    for file in sorted(set(index["weight_map"].values())):
        tensors.update(_load_file(folder / file))
    missing = sorted(set(index["weight_map"]) - set(tensors))
    if missing:
        raise _damaged(index_path, f"{len(missing)} tensor(s) listed but not in their shard, e.g. {missing[0]}")
    for name, parts in index.get("split", {}).items():
        tensors[name] = torch.cat([tensors.pop(part) for part in parts])
    if index["metadata"].get("total_size") != sum(_nbytes(t) for t in tensors.values()):
        raise _damaged(index_path, "the shards do not add up to the total size it states")
    return tensors

