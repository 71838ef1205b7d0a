"""The feature cache: every indexed item's backbone features, in float16 safetensors shards beside the index.

A shard holds `tokens` [n, N, D] and `pooled` [n, E] for n consecutive index rows. Shards are opened with
the safetensors library, which memory-maps the file: using a catalog item as a query reference reads
one row from disk and encodes no image. The mapping is made when the cache is opened and stays valid
after the file is replaced or deleted, so an opened cache is a snapshot.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import torch
from safetensors import SafetensorError, safe_open

from sdfn.backbone import ImageFeatures
from sdfn.fsio import save_safetensors
from sdfn.index.manifest import DamagedIndex
from sdfn.model import ComposedRetrievalModel

SHARD_ROWS = 8192           # items per feature shard; also the encoding chunk, which bounds memory
EMBED_CHUNK = 16384
SHARD_NAMES = ("tokens", "pooled")


def shard_name(number: int) -> str:
    return f"features-{number:05d}.safetensors"


def open_shard(path: Path | str, label: str, rows: int | None = None) -> dict[str, torch.Tensor]:
    """The tensors of one shard, memory-mapped; DamagedIndex (naming `label`) when the file is not a valid shard
    of `rows` rows."""
    try:
        with safe_open(str(path), framework="pt") as handle:
            names = set(handle.keys())
            if names != set(SHARD_NAMES):
                raise DamagedIndex(label, f"it holds {sorted(names)}, not {list(SHARD_NAMES)}")
            tensors = {name: handle.get_tensor(name) for name in SHARD_NAMES}
    except (SafetensorError, OSError) as err:
        raise DamagedIndex(label, f"not a readable safetensors file: {err}") from err
    tokens, pooled = tensors["tokens"], tensors["pooled"]
    if tokens.dim() != 3 or pooled.dim() != 2 or len(tokens) != len(pooled):
        raise DamagedIndex(label, f"tensor shapes {tuple(tokens.shape)} and {tuple(pooled.shape)} do not fit")
    if rows is not None and len(pooled) != rows:
        raise DamagedIndex(label, f"it holds {len(pooled)} rows, the manifest says {rows}")
    return tensors


class FeatureCache:
    """Backbone features of the indexed items, row-aligned with the index, over already opened shards.

    A shard may be None (a damaged one, while rebuilding) when `rows` gives every shard's row count; its rows
    must not be read."""

    def __init__(self, shards: Sequence[dict[str, torch.Tensor] | None], rows: Sequence[int] | None = None):
        self.shards = list(shards)
        rows = rows if rows is not None else [len(s["pooled"]) for s in self.shards]
        self.starts = np.cumsum([0, *rows])
        self._first = next((s for s in self.shards if s is not None), None)

    @classmethod
    def open(cls, paths: Sequence[Path | str], rows: Sequence[int] | None = None,
             labels: Sequence[str] | None = None) -> FeatureCache:
        """Open (memory-map) every shard now; `rows` and `labels` (names for messages) per shard."""
        rows = rows if rows is not None else [None] * len(paths)
        labels = labels if labels is not None else [str(p) for p in paths]
        return cls([open_shard(p, label, n) for p, n, label in zip(paths, rows, labels, strict=True)])

    def __len__(self) -> int:
        return int(self.starts[-1])

    def _gather(self, name: str, rows: Sequence[int]) -> torch.Tensor:
        """float32 copies of `rows` of tensor `name`; only those rows are read from disk."""
        rows = np.asarray(rows, dtype=np.int64)
        out = torch.empty((len(rows), *self._first[name].shape[1:]), dtype=torch.float32)
        shard = np.searchsorted(self.starts, rows, side="right") - 1
        for s in np.unique(shard):
            here = shard == s
            local = torch.from_numpy(rows[here] - self.starts[s])
            out[torch.from_numpy(here)] = self.shards[s][name][local].float()
        return out

    def features(self, rows: Sequence[int]) -> ImageFeatures:
        """float32 backbone features of `rows`."""
        return ImageFeatures(self._gather("tokens", rows), self._gather("pooled", rows))

    def pooled(self, rows: Sequence[int]) -> np.ndarray:
        """float32 pooled embeddings [len(rows), E]."""
        return self._gather("pooled", rows).numpy()

    def pooled_chunks(self) -> Iterable[np.ndarray]:
        """The pooled embeddings of all rows, shard by shard (as float32)."""
        for shard in self.shards:
            yield shard["pooled"].float().numpy()


def write_shard(folder: Path, number: int, features: ImageFeatures) -> dict:
    """Write `features` as the next free shard file in `folder`; its manifest entry (file, rows)."""
    while (folder / shard_name(number)).exists():  # appended shards follow linked ones, whose numbers may have gaps
        number += 1
    name = shard_name(number)
    save_safetensors({"tokens": features.tokens.half().contiguous(), "pooled": features.pooled.half().contiguous()},
              str(folder / name))
    return {"file": name, "rows": len(features.pooled)}


@torch.no_grad()
def embed_items(model: ComposedRetrievalModel, pooled: np.ndarray) -> np.ndarray:
    """Backbone pooled embeddings [n, E] -> L2-normalised index vectors [n, E] float32."""
    out = [model.embed_target(torch.from_numpy(np.asarray(pooled[i:i + EMBED_CHUNK], dtype=np.float32))
                              .to(model.device)).cpu().numpy()
           for i in range(0, len(pooled), EMBED_CHUNK)]
    return np.concatenate(out) if out else np.zeros((0, model.backbone.embed_dim), np.float32)
