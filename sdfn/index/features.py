"""The feature cache: every indexed item's backbone features, in float16 safetensors shards beside the index.

A shard holds `tokens` [n, N, D] and `pooled` [n, E] for n consecutive index rows. A `Shard` opens its file
once (a file descriptor), reads and checks the safetensors header, and then reads only the rows asked for
with `os.preadv` at their offset (seek + read under a lock where the system has no preadv): using a catalog
item as a query reference reads one row and encodes no image. Nothing is memory-mapped: a file replaced by a
rebuild (a new inode) keeps being read through the descriptor, so an opened cache is a snapshot, and a file
truncated or rewritten in place under a running server gives a short read, reported as `DamagedIndex` naming
the file (a mapped file would kill the process with SIGBUS).
"""

from __future__ import annotations

import json
import math
import os
import threading
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import torch

from sdfn.backbone import ImageFeatures
from sdfn.fsio import save_safetensors
from sdfn.index.manifest import DamagedIndex
from sdfn.model import ComposedRetrievalModel

SHARD_ROWS = 8192           # items per feature shard; also the encoding chunk, which bounds memory
EMBED_CHUNK = 16384
SHARD_NAMES = ("tokens", "pooled")
_DTYPES = {"F16": torch.float16, "BF16": torch.bfloat16, "F32": torch.float32, "F64": torch.float64}
_MAX_HEADER = 100 * 2**20   # safetensors' own limit on the JSON header


def shard_name(number: int) -> str:
    return f"features-{number:05d}.safetensors"


class Shard:
    """One feature shard file, opened now and read row by row with `os.preadv` on its own descriptor.

    `label` names the file in messages, `advice` (set by the owner, e.g. the command that rebuilds the index)
    ends every message about damage found while reading."""

    def __init__(self, path: Path | str, label: str, rows: int | None = None):
        self.label, self.advice = label, ""
        self._lock = threading.Lock()  # only where the system has no preadv (seek + read share the offset)
        self._fd: int | None = None    # set first: __del__ closes it even when the open below fails
        try:
            self._fd = os.open(str(path), os.O_RDONLY | getattr(os, "O_BINARY", 0))
        except OSError as err:
            raise DamagedIndex(label, f"cannot be opened: {err.strerror}") from err
        try:
            self._tensors = self._read_header(rows)
        except BaseException:
            self.close()
            raise

    def _read_header(self, rows: int | None) -> dict[str, tuple[torch.dtype, tuple[int, ...], int]]:
        size = os.fstat(self._fd).st_size
        if size < 8:
            raise DamagedIndex(self.label, f"not a safetensors file: {size} bytes")
        length = int.from_bytes(self._read(8, 0), "little")
        if length > min(_MAX_HEADER, size - 8):
            raise DamagedIndex(self.label, f"not a safetensors file: a header of {length} bytes in a file of {size}")
        try:
            header = json.loads(self._read(length, 8))
        except (UnicodeDecodeError, json.JSONDecodeError) as err:
            raise DamagedIndex(self.label, f"not a safetensors file: its header is not JSON ({err})") from err
        if not isinstance(header, dict):
            raise DamagedIndex(self.label, "not a safetensors file: its header is not a JSON object")
        names = set(header) - {"__metadata__"}
        if names != set(SHARD_NAMES):
            raise DamagedIndex(self.label, f"it holds {sorted(names)}, not {list(SHARD_NAMES)}")
        tensors = {}
        for name in SHARD_NAMES:
            entry = header[name]
            try:
                dtype, shape = _DTYPES[entry["dtype"]], tuple(int(n) for n in entry["shape"])
                begin, end = (int(n) for n in entry["data_offsets"])
            except (KeyError, TypeError, ValueError) as err:
                raise DamagedIndex(self.label, f"its header describes {name!r} wrongly: {entry!r:.200}") from err
            nbytes = math.prod(shape) * torch.empty((), dtype=dtype).element_size()
            if min(shape, default=0) < 0 or begin < 0 or end - begin != nbytes or 8 + length + end > size:
                raise DamagedIndex(self.label, f"{name!r} ({entry['dtype']} {list(shape)} at bytes {begin}-{end}) "
                                               f"does not fit in a file of {size} bytes: truncated?")
            tensors[name] = (dtype, shape, 8 + length + begin)
        tokens, pooled = tensors["tokens"][1], tensors["pooled"][1]
        if len(tokens) != 3 or len(pooled) != 2 or tokens[0] != pooled[0]:
            raise DamagedIndex(self.label, f"tensor shapes {tokens} and {pooled} do not fit")
        if rows is not None and pooled[0] != rows:
            raise DamagedIndex(self.label, f"it holds {pooled[0]} rows, the manifest says {rows}")
        return tensors

    @property
    def rows(self) -> int:
        return self._tensors["pooled"][1][0]

    def row_shape(self, name: str) -> tuple[int, ...]:
        return self._tensors[name][1][1:]

    def _read(self, nbytes: int, offset: int) -> bytearray:
        """Exactly `nbytes` from `offset`; DamagedIndex when the file ends before (truncated since it was opened)."""
        if self._fd is None:
            raise ValueError(f"{self.label}: the shard was closed")
        buf = bytearray(nbytes)
        view, done = memoryview(buf), 0
        while done < nbytes:
            if hasattr(os, "preadv"):
                got = os.preadv(self._fd, [view[done:]], offset + done)
            else:
                with self._lock:
                    os.lseek(self._fd, offset + done, os.SEEK_SET)
                    chunk = os.read(self._fd, nbytes - done)
                view[done:done + len(chunk)] = chunk
                got = len(chunk)
            if got == 0:
                raise DamagedIndex(self.label, f"it ends at byte {offset + done}, before the {nbytes} bytes at "
                                               f"{offset} that its header lists: it was truncated or rewritten "
                                               f"after it was opened", self.advice)
            done += got
        return buf

    def read_rows(self, name: str, start: int, stop: int) -> torch.Tensor:
        """Rows start..stop-1 of tensor `name`, in its stored dtype."""
        dtype, shape, offset = self._tensors[name]
        row = math.prod(shape[1:]) * torch.empty((), dtype=dtype).element_size()
        data = self._read((stop - start) * row, offset + start * row)
        if not data:
            return torch.empty((0, *shape[1:]), dtype=dtype)
        return torch.frombuffer(data, dtype=dtype).reshape(stop - start, *shape[1:])

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def __del__(self) -> None:
        self.close()


def open_shard(path: Path | str, label: str, rows: int | None = None) -> Shard:
    """One shard, opened and its header checked; DamagedIndex (naming `label`) when the file is not a valid shard
    of `rows` rows."""
    return Shard(path, label, rows)


def _runs(rows: np.ndarray) -> Iterable[tuple[int, int]]:
    """(start, stop) of the runs of consecutive values in sorted unique `rows`."""
    if not len(rows):
        return
    breaks = np.flatnonzero(np.diff(rows) != 1) + 1
    for first, last in zip(np.r_[0, breaks], np.r_[breaks, len(rows)], strict=True):
        yield int(rows[first]), int(rows[last - 1]) + 1


class FeatureCache:
    """Backbone features of the indexed items, row-aligned with the index, over already opened shards.

    A shard may be None (a damaged one, while rebuilding) when `rows` gives every shard's row count; its rows
    must not be read."""

    def __init__(self, shards: Sequence[Shard | None], rows: Sequence[int] | None = None):
        self.shards = list(shards)
        rows = rows if rows is not None else [s.rows for s in self.shards]
        self.starts = np.cumsum([0, *rows])
        self._first = next((s for s in self.shards if s is not None), None)

    @classmethod
    def open(cls, paths: Sequence[Path | str], rows: Sequence[int] | None = None,
             labels: Sequence[str] | None = None) -> FeatureCache:
        """Open every shard now (and check its header); `rows` and `labels` (names for messages) per shard."""
        rows = rows if rows is not None else [None] * len(paths)
        labels = labels if labels is not None else [str(p) for p in paths]
        return cls([open_shard(p, label, n) for p, n, label in zip(paths, rows, labels, strict=True)])

    def set_advice(self, advice: str) -> None:
        """What every message about a shard found damaged while reading ends with (what to run)."""
        for shard in self.shards:
            if shard is not None:
                shard.advice = advice

    def __len__(self) -> int:
        return int(self.starts[-1])

    def _gather(self, name: str, rows: Sequence[int]) -> torch.Tensor:
        """float32 copies of `rows` of tensor `name`; only those rows are read from disk (one read per run of
        consecutive rows)."""
        rows = np.asarray(rows, dtype=np.int64)
        if self._first is None:
            if len(rows):
                raise IndexError("the feature cache has no readable shard")
            return torch.empty((0,), dtype=torch.float32)
        out = torch.empty((len(rows), *self._first.row_shape(name)), dtype=torch.float32)
        shard = np.searchsorted(self.starts, rows, side="right") - 1
        for s in np.unique(shard):
            here = np.flatnonzero(shard == s)
            local = rows[here] - self.starts[s]
            wanted = np.unique(local)
            parts = [self.shards[s].read_rows(name, a, b) for a, b in _runs(wanted)]
            block = torch.cat(parts).float()
            out[torch.from_numpy(here)] = block[torch.from_numpy(np.searchsorted(wanted, local))]
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
            yield shard.read_rows("pooled", 0, shard.rows).float().numpy()


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
