"""A run's `log.jsonl`: one JSON record per line, read by the demo's loss curve and the model card.

Records are `{"event": "stage1-epoch" | "step" | "epoch" | "run", ...}`. The log always tells one history:
when a run resumes from its last checkpoint, the records of the steps and epochs that checkpoint does not
contain (written by the interrupted invocation after its last save) are dropped first, and a stage 1 that
starts again replaces the records of the one that was interrupted. Rewrites are atomic (fsio). The "run"
record closes an invocation: its seconds, epochs, best score, and `stage1`: "trained" (this invocation ran
stage 1, so its seconds cover the whole recipe), "reused" (it found a finished stage 1 in the run folder) or
"none" (no stage 1).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from sdfn.fsio import atomic_write_text


class RunLog:
    def __init__(self, path: Path):
        self.path = Path(path)

    def append(self, record: dict) -> None:
        with self.path.open("a") as f:
            f.write(json.dumps(record) + "\n")

    def records(self) -> list[dict]:
        """Every complete record (a line cut short by a crash is skipped)."""
        if not self.path.is_file():
            return []
        out = []
        for line in self.path.read_text().splitlines():
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                continue
        return out

    def keep(self, wanted: Callable[[dict], bool]) -> None:
        """Rewrite the log with only the records `wanted` accepts."""
        if self.path.is_file():
            atomic_write_text(self.path, "".join(json.dumps(r) + "\n" for r in self.records() if wanted(r)))

    def rewind(self, epoch: int, step: int) -> None:
        """Forget what happened after a checkpoint taken after `epoch` epochs and `step` steps."""
        self.keep(lambda r: not ((r["event"] == "step" and r["step"] > step)
                                 or (r["event"] == "epoch" and r["epoch"] >= epoch)))

    def restart_stage1(self) -> None:
        self.keep(lambda r: r["event"] != "stage1-epoch")
