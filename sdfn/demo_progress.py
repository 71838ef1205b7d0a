"""Progress as records, for the demo: what a long piece of work is doing now, read by a page instead of parsing
console text. Light on purpose (no torch, no gradio): the training worker and demo.py import it first.

- `reporting_bar_class(base, report)`: a subclass of a tqdm class whose bars also call `report(phase, done, total,
  unit, closed)`: when a bar starts, at most once a second while it goes, and when it ends;
- `report_progress_bars(report)`: every tqdm bar this process draws from now on reports so (sdfn's modules bind
  tqdm's class when first imported: call this before importing them);
- `ProgressLog`: records in a file, one JSON line each (a training run's progress.jsonl);
- `StartupProgress`: the demo's own start-up (drawing the catalog, building its index, loading the model), in
  memory, for the page served while it prepares.
"""

from __future__ import annotations

import contextlib
import json
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPORT_INTERVAL_S = 1.0      # a running bar reports at most once a second

Report = Callable[[str, "float | None", "float | None", str, bool], None]


def reporting_bar_class(base: type, report: Report) -> type:
    """A subclass of the tqdm class `base` whose bars also call `report` (a bar made with `disable=True` reports
    nothing, as it shows nothing). A failing report never stops the work it reports on."""

    class ReportingBar(base):  # type: ignore[misc, valid-type]
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            self._sdfn_last, self._sdfn_closed = 0.0, False
            super().__init__(*args, **kwargs)
            if not self.disable:
                self._sdfn_report()

        def _sdfn_report(self, closed: bool = False) -> None:
            self._sdfn_last = time.monotonic()
            with contextlib.suppress(Exception):
                report(str(self.desc or "working").rstrip(": "), self.n, self.total, str(self.unit or ""), closed)

        def update(self, n: float | None = 1) -> bool | None:
            shown = super().update(n)
            if not self.disable and time.monotonic() - self._sdfn_last >= REPORT_INTERVAL_S:
                self._sdfn_report()
            return shown

        def close(self) -> None:
            # a bar whose __init__ a stop (Ctrl-C, SIGTERM) cut short has no `disable` yet, and tqdm's __del__ still
            # closes it: count it as disabled, as tqdm's own close does
            if not getattr(self, "disable", True) and not getattr(self, "_sdfn_closed", True):
                self._sdfn_closed = True
                self._sdfn_report(closed=True)
            super().close()

    ReportingBar.__name__ = ReportingBar.__qualname__ = f"Reporting_{base.__name__}"
    return ReportingBar


_reporter: list[Report] = []    # where this process's bars report, once report_progress_bars was called


def _report_to_current(phase: str, done: float | None, total: float | None, unit: str, closed: bool) -> None:
    if _reporter:
        _reporter[0](phase, done, total, unit, closed)


def report_progress_bars(report: Report) -> None:
    """Every tqdm bar this process draws from now on also reports to `report` (tqdm.tqdm and tqdm.auto.tqdm are
    replaced by reporting subclasses, once per process; modules that import them later get those). A later call
    only changes where they report."""
    import tqdm
    import tqdm.auto

    if not _reporter:
        for module in (tqdm, tqdm.auto):
            module.tqdm = reporting_bar_class(module.tqdm, _report_to_current)
        _reporter.append(report)
    _reporter[0] = report


class ProgressLog:
    """Progress records in a file: `{"event": "progress", "phase": "caching image features", "done": 12,
    "total": 24, "unit": "batch", "closed": false, "time": 1700000000.0}`, one a line, appended whole; read back
    skipping a line cut short."""

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
        """A subclass of the tqdm class `base` whose bars also write records here."""
        return reporting_bar_class(base, self.emit)


# what the start-up's progress bars mean, in the page's words
_STARTUP_PHASES = {"drawing": "drawing the synthetic catalog (once)",
                   "encoding catalog images": "building the catalog's index (encoding its images)",
                   "encoding images": "building the catalog's index (encoding its images)",
                   "checking images": "checking the catalog's images"}

_UNITS = {"img": "images", "batch": "batches", "step": "steps", "it": ""}


class StartupProgress:
    """Where the demo's start-up is: a phase set by demo.py, and the counts of the progress bar running in it.
    Thread-safe; `report` has the signature `report_progress_bars` wants."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.started = time.monotonic()
        self.phase, self.done, self.total, self.unit = "starting", None, None, ""

    def set(self, phase: str) -> None:
        with self._lock:
            self.phase, self.done, self.total, self.unit = phase, None, None, ""

    def report(self, phase: str, done: float | None, total: float | None, unit: str, closed: bool) -> None:
        with self._lock:
            self.phase = _STARTUP_PHASES.get(phase, phase)
            self.done, self.total, self.unit = done, total, unit

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            return {"phase": self.phase, "done": self.done, "total": self.total, "unit": self.unit,
                    "elapsed_s": time.monotonic() - self.started}

    def describe(self) -> str:
        """One line: the phase, its count when it has one, the time since the start."""
        s = self.snapshot()
        count = ""
        if s["total"]:
            unit = _UNITS.get(s["unit"], s["unit"])
            count = f": {s['done']:,.0f} of {s['total']:,.0f} {unit}".rstrip()
        return f"{s['phase']}{count} ({s['elapsed_s']:.0f} s since the start)"
