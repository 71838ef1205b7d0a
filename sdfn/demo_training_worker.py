"""The demo's training worker: `python -m sdfn.demo_training_worker train --config ... --out RUN ...` is `sdfn train`
run so that it leaves the searches room and reports its progress as records, not console text.

- it lowers its own CPU priority by NICENESS (the data-loading processes it starts inherit it), so the demo's
  searches go first when both want a core;
- torch runs on OMP_NUM_THREADS threads (the demo sets one fewer than its cores, at least one: `run_threads`);
- when SDFN_DEMO_PROGRESS names a file (the run's progress.jsonl), every tqdm progress bar the run draws (stage-1
  catalog drawing, image decoding, feature caching, epochs, validation) also appends records there
  (`ProgressLog`), from the moment the worker starts, before torch is imported.

progress.jsonl holds one JSON record a line: `{"event": "progress", "phase": "caching image features", "done": 12,
"total": 24, "unit": "batch", "closed": false, "time": 1700000000.0}`, one when a phase starts, at most one a
second while it goes, and one when it ends (`"closed": true`); the phase is the bar's description ("drawing",
"stage 1 epoch 2/3", "epoch 1/5", ...). The run's history (steps, epochs, validation) stays in log.jsonl
(sdfn.training.runlog), written by the trainer.

This module imports nothing heavy (not even sdfn.training, whose package imports torch): its first record is
written within a second of the start.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

NICENESS = 10
PROGRESS_ENV = "SDFN_DEMO_PROGRESS"
PROGRESS_INTERVAL_S = 1.0     # a running bar writes at most one record a second


class ProgressLog:
    """A run's progress records: whole lines appended, read back skipping one cut short."""

    def __init__(self, path: Path):
        self.path = Path(path)

    def emit(self, phase: str, done: float | None = None, total: float | None = None, unit: str = "",
             closed: bool = False) -> None:
        record = {"event": "progress", "phase": phase, "done": done, "total": total, "unit": unit,
                  "closed": closed, "time": time.time()}
        with self.path.open("a") as f:
            f.write(json.dumps(record) + "\n")

    def records(self) -> list[dict]:
        if not self.path.is_file():
            return []
        out = []
        for line in self.path.read_text().splitlines():
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:    # the line being written
                continue
        return out

    def bar_class(self, base: type) -> type:
        """A subclass of the tqdm class `base` whose bars also write progress records here (a bar made with
        `disable=True` writes none, as it shows nothing)."""
        progress = self

        class ProgressBar(base):  # type: ignore[misc, valid-type]
            def __init__(self, *args: Any, **kwargs: Any) -> None:
                self._sdfn_last, self._sdfn_closed = 0.0, False
                super().__init__(*args, **kwargs)
                if not self.disable:
                    self._sdfn_emit()

            def _sdfn_emit(self, closed: bool = False) -> None:
                self._sdfn_last = time.monotonic()
                with contextlib.suppress(OSError):   # a progress record is never worth stopping the run for
                    progress.emit(str(self.desc or "working"), self.n, self.total, str(self.unit or ""), closed)

            def update(self, n: float | None = 1) -> bool | None:
                shown = super().update(n)
                if not self.disable and time.monotonic() - self._sdfn_last >= PROGRESS_INTERVAL_S:
                    self._sdfn_emit()
                return shown

            def close(self) -> None:
                if not self.disable and not self._sdfn_closed:
                    self._sdfn_closed = True
                    self._sdfn_emit(closed=True)
                super().close()

        ProgressBar.__name__ = ProgressBar.__qualname__ = f"Progress_{base.__name__}"
        return ProgressBar


def run_threads() -> int:
    """torch threads for a training run: one fewer than the cores this process may use, at least one."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, cores - 1)


def report_progress_bars(progress: ProgressLog) -> None:
    """Every tqdm bar this process draws from now on also writes progress records. sdfn's modules bind tqdm's
    class when they are first imported, which in the worker is after this call."""
    import tqdm
    import tqdm.auto

    for module in (tqdm, tqdm.auto):
        module.tqdm = progress.bar_class(module.tqdm)


def main(argv: list[str]) -> int:
    with contextlib.suppress(OSError, AttributeError):   # no os.nice (Windows): the run keeps the same priority
        os.nice(NICENESS)
    path = os.environ.get(PROGRESS_ENV)
    if path:
        progress = ProgressLog(Path(path))
        progress.emit("loading")
        report_progress_bars(progress)
    import torch

    torch.set_num_threads(max(1, int(os.environ.get("OMP_NUM_THREADS") or run_threads())))
    from sdfn.cli import main as sdfn_main

    return sdfn_main(argv)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
