"""The demo's training worker: `python -m sdfn.demo_training_worker train --config ... --out RUN ...` is `sdfn train`
run so that it leaves the searches room and reports its progress as records, not console text.

- it lowers its own CPU priority by NICENESS (the data-loading processes it starts inherit it), so the demo's
  searches go first when both want a core;
- torch runs on OMP_NUM_THREADS threads (the demo sets one fewer than its cores, at least one: `run_threads`);
- when SDFN_DEMO_PROGRESS names a file (the run's progress.jsonl), every tqdm progress bar the run draws (stage-1
  catalog drawing, image decoding, feature caching, epochs, validation) also appends records there
  (sdfn.demo_progress.ProgressLog), from the moment the worker starts, before torch is imported.

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
import os
import sys
from pathlib import Path

from sdfn.demo_progress import ProgressLog, report_progress_bars

NICENESS = 10
PROGRESS_ENV = "SDFN_DEMO_PROGRESS"


def run_threads() -> int:
    """torch threads for a training run: one fewer than the cores this process may use, at least one."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, cores - 1)


def main(argv: list[str]) -> int:
    with contextlib.suppress(OSError, AttributeError):   # no os.nice (Windows): the run keeps the same priority
        os.nice(NICENESS)
    path = os.environ.get(PROGRESS_ENV)
    if path:
        progress = ProgressLog(Path(path))
        progress.emit("loading")
        report_progress_bars(progress.emit)
    import torch

    torch.set_num_threads(max(1, int(os.environ.get("OMP_NUM_THREADS") or run_threads())))
    from sdfn.cli import main as sdfn_main

    return sdfn_main(argv)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
