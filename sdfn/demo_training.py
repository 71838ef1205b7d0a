"""The demo's background training: what a visitor may ask for (`TrainingPolicy`), and the `sdfn train` subprocess
that runs it (`TrainingRun`), started through sdfn.demo_training_worker: it lowers its own CPU priority (nice +10)
and runs torch on one thread fewer than the cores (at least one), so searches go first, and it writes every
progress bar as a structured record into the run's progress.jsonl. The Train view's progress and phase come from
those records, its loss and recall from log.jsonl (sdfn.training.runlog), never from the console text.

The Train view's handlers answer raw `POST /gradio_api/queue/join` requests too (hidden from the API docs is not
closed), so nothing a client sends is trusted:

- the catalog is one the server was started with, or an existing FashionIQ-format catalog inside a folder the
  server was told to allow (`TrainingPolicy.root`); anything else is refused before anything is created;
- the output folder is always the server's own (RUNS/demo-<time>-<random>), never a client's;
- epochs, stage-1 epochs, batch size, learning rate and the stage-1 catalog's size are bounded;
- a run belongs to the browser session that started it: only that session may cancel it or serve its model.

    policy = TrainingPolicy(catalogs=[Path("catalogs/synthetic")])
    settings = policy.check(TrainingSettings("tiny-synthetic", "synthetic", epochs=2, batch_size=64, lr=1e-3,
                                             pretrain_epochs=0))
    run = TrainingRun(settings, out=Path("runs/demo-1"), owner=session_hash)
    run.poll()          # TrainingStatus: state, progress, phase, log records, console tail, checkpoint
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import logging
import math
import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from sdfn.data.base import open_dataset
from sdfn.demo_progress import ProgressLog
from sdfn.demo_training_worker import PROGRESS_ENV, run_threads
from sdfn.errors import ConfigError, DataError
from sdfn.retrieval import whole_number
from sdfn.training.runlog import RunLog

log = logging.getLogger(__name__)

MAX_EPOCHS = 20                      # a 6k-item catalog: about a minute an epoch on 2 cores
MAX_PRETRAIN_EPOCHS = 3
MIN_BATCH, MAX_BATCH = 2, 512
MAX_PRETRAIN_ITEMS_PER_CATEGORY = 1000   # the stage-1 catalog a demo run may generate (the preset's is 3000)
MAX_LR = 1.0
PROGRESS_FILE = "progress.jsonl"


class TrainingFieldError(ConfigError):
    """A Train view field with a value the policy refuses; `field` names it (as TrainingSettings does)."""

    def __init__(self, field: str, message: str):
        super().__init__(message)
        self.field = field


# ---- what a visitor asks for, and what the server allows ----------------------------------------------------

@dataclass(frozen=True)
class TrainingSettings:
    """What the Train view asks for; everything else comes from the preset. `catalog` is what the client sent
    (a catalog's name in the Train view's list, or a path); `TrainingPolicy.check` resolves it."""

    preset: str
    catalog: str
    epochs: int
    batch_size: int
    lr: float
    pretrain_epochs: int
    catalog_path: Path | None = None     # set by TrainingPolicy.check: the allowed folder it resolved to

    def command(self, out: Path) -> list[str]:
        if self.catalog_path is None:
            raise ConfigError("training settings must pass TrainingPolicy.check before a run starts.")
        preset = _preset(self.preset)
        stage1_items = int(preset.get("pretrain", {}).get("synth_items_per_category", 0) or 0)
        overrides = [f"optim.epochs={int(self.epochs)}", f"optim.batch_size={int(self.batch_size)}",
                     f"optim.lr={float(self.lr)}", f"pretrain.epochs={int(self.pretrain_epochs)}",
                     f"data.root={self.catalog_path}", "data.synthesize=false"]
        if stage1_items > MAX_PRETRAIN_ITEMS_PER_CATEGORY:
            overrides.append(f"pretrain.synth_items_per_category={MAX_PRETRAIN_ITEMS_PER_CATEGORY}")
        if preset.get("data", {}).get("phrasing_variants", 0) and not _has_attributes(self.catalog_path):
            overrides.append("data.phrasing_variants=0")   # everyday requests are drawn from synthetic attributes
        return [sys.executable, "-m", "sdfn.demo_training_worker", "train", "--config", self.preset, "--out",
                str(out), *overrides]


def _has_attributes(catalog: Path) -> bool:
    """Whether `catalog` has what the preset's everyday-request training (data.phrasing_variants) reads: the
    same check the trainer makes (`catalog_attributes`); other catalogs train on their captions alone."""
    from sdfn.data.synth.phrasing import catalog_attributes

    try:
        catalog_attributes(catalog)
    except (DataError, OSError, UnicodeDecodeError):
        return False
    return True


@dataclass(frozen=True)
class TrainingPolicy:
    """Which catalogs a demo visitor may train on and how much: the catalogs the server was started with
    (`catalogs`), and any existing catalog inside `root` when one is configured."""

    catalogs: Sequence[Path]
    root: Path | None = None
    max_epochs: int = MAX_EPOCHS
    max_pretrain_epochs: int = MAX_PRETRAIN_EPOCHS
    max_batch_size: int = MAX_BATCH

    def __post_init__(self) -> None:
        object.__setattr__(self, "catalogs", tuple(Path(c).resolve() for c in self.catalogs))
        if self.root is not None:
            object.__setattr__(self, "root", Path(self.root).resolve())

    def choices(self) -> list[str]:
        """The names the Train view lists: each allowed catalog's folder name (unique), else its path."""
        names = [c.name for c in self.catalogs]
        return [n if names.count(n) == 1 else str(c) for n, c in zip(names, self.catalogs, strict=True)]

    def describe(self) -> str:
        where = f"; or a catalog folder inside {self.root.name}/" if self.root is not None else ""
        return f"{', '.join(self.choices())}{where}"

    def catalog(self, asked: str | None) -> Path:
        """The allowed catalog folder `asked` names, or a ConfigError. Nothing is created or expanded (no `~`):
        a name from `choices()`, an allowed folder's path, or a path inside `root` that already holds a catalog."""
        text = str(asked or "").strip()
        if not text:
            raise ConfigError(f"choose a catalog to train on: {self.describe()}.")
        for name, path in zip(self.choices(), self.catalogs, strict=True):
            if text == name:
                return path
        candidate = Path(text)
        if not candidate.is_absolute():
            candidate = (self.root / candidate) if self.root is not None else None
        found = None
        if candidate is not None and "\x00" not in text:
            try:
                found = candidate.resolve(strict=True)
            except (OSError, RuntimeError):
                found = None
        inside = found is not None and (found in self.catalogs or (
            self.root is not None and found != self.root and found.is_relative_to(self.root)))
        if inside and (found / "catalog.csv").is_file():
            return found
        raise ConfigError(f"catalog '{text}' is not one this server trains on; choose one of: {self.describe()}.")

    def problems(self, settings: TrainingSettings) -> list[TrainingFieldError]:
        """Every field of `settings` the policy refuses, each with a message naming the field and the accepted
        range (the catalog is checked by `catalog`, which needs the file system)."""
        from sdfn.config import list_presets

        found = []
        presets = list_presets()
        if settings.preset not in presets:
            found.append(TrainingFieldError("preset", f"unknown preset '{settings.preset}'; choose one of "
                                                      f"{', '.join(presets)}."))
        for attr, name, value, low, high in (
                ("epochs", "epochs", settings.epochs, 1, self.max_epochs),
                ("batch_size", "batch size", settings.batch_size, MIN_BATCH, self.max_batch_size),
                ("pretrain_epochs", "stage-1 epochs", settings.pretrain_epochs, 0, self.max_pretrain_epochs)):
            try:
                whole_number(name, value, low, high)
            except ConfigError as err:
                found.append(TrainingFieldError(attr, str(err)))
        lr = settings.lr
        if isinstance(lr, bool) or not isinstance(lr, int | float) or not math.isfinite(lr) or not 0 < lr <= MAX_LR:
            found.append(TrainingFieldError("lr", f"learning rate must be above 0 and at most {MAX_LR:g}, "
                                                  f"got {lr!r}."))
        return found

    def check(self, settings: TrainingSettings) -> TrainingSettings:
        """Refuse bad settings with a message naming the field and the accepted range (TrainingFieldError, the
        first of `problems`); returns the settings with the catalog resolved to its allowed folder."""
        problems = self.problems(settings)
        if problems:
            raise problems[0]
        lr = settings.lr
        try:
            root = self.catalog(settings.catalog)
        except ConfigError as err:
            raise TrainingFieldError("catalog", str(err)) from None
        try:
            open_dataset("fashioniq", root).triplets("train")
        except DataError as err:
            raise TrainingFieldError("catalog", f"cannot train on catalog {root.name}: {err}. Training needs a "
                                     "FashionIQ-format catalog with train captions, such as the synthetic one "
                                     "(`sdfn synth`).") from err
        return replace(settings, epochs=int(settings.epochs), batch_size=int(settings.batch_size),
                       pretrain_epochs=int(settings.pretrain_epochs), lr=float(lr), catalog_path=root)


def _preset(name: str) -> dict:
    from sdfn.config import PRESET_DIR, list_presets

    if name not in list_presets():
        raise ConfigError(f"unknown preset '{name}'; choose one of {', '.join(list_presets())}.")
    return json.loads((PRESET_DIR / f"{name}.json").read_text())


def preset_defaults(name: str) -> dict[str, Any]:
    """The Train view's fields as the preset sets them, within the demo's bounds."""
    from sdfn.config import load_config

    _preset(name)   # a known preset name, never a file path from a client
    cfg = load_config(name)
    return {"epochs": min(cfg.optim.epochs, MAX_EPOCHS), "batch_size": min(cfg.optim.batch_size, MAX_BATCH),
            "lr": cfg.optim.lr, "pretrain_epochs": min(cfg.pretrain.epochs, MAX_PRETRAIN_EPOCHS)}


# ---- the run ----------------------------------------------------------------------------------------------------

_PR_SET_PDEATHSIG = 1


def _find_prctl() -> Any:
    """libc's prctl, looked up once here in the demo (Linux; None elsewhere): the forked child of a threaded
    server must not load libraries (dlopen takes locks another thread may have held at the fork)."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]
    prctl.restype = ctypes.c_int
    return prctl


_PRCTL = _find_prctl()


def _die_with_parent(parent: int) -> None:
    """In the child before exec (Linux): be sent SIGKILL when the demo goes, however it goes (kill -9 too). Only
    calls the prctl found at import: nothing is loaded or looked up after the fork."""
    if _PRCTL is None:
        return
    _PRCTL(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if os.getppid() != parent:   # the demo went before prctl took effect
        os._exit(1)


class _Launcher:
    """One long-lived thread that starts the training subprocesses. The kernel's parent-death signal fires when
    the *thread* that forked the child ends, not the process, and Gradio's worker threads come and go; this
    thread lives as long as the demo."""

    def __init__(self) -> None:
        self._jobs: queue.Queue = queue.Queue()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    def _serve(self) -> None:
        while True:
            args, kwargs, done = self._jobs.get()
            try:
                done["process"] = subprocess.Popen(*args, **kwargs)
            except BaseException as err:   # handed to the caller, which raises it
                done["error"] = err
            done["event"].set()

    def popen(self, *args: Any, **kwargs: Any) -> subprocess.Popen:
        if _PRCTL is not None:
            parent = os.getpid()
            kwargs["preexec_fn"] = lambda: _die_with_parent(parent)
        with self._lock:
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._serve, name="sdfn-training-launcher", daemon=True)
                self._thread.start()
        done: dict[str, Any] = {"event": threading.Event()}
        self._jobs.put((args, kwargs, done))
        done["event"].wait()
        if "error" in done:
            raise done["error"]
        return done["process"]


_spawn = _Launcher().popen


@dataclass
class TrainingStatus:
    state: str                      # running | finished | failed | cancelled
    out: Path
    fraction: float                 # 0..1, over stage 1 and stage 2 epochs
    phase: str                      # what the run is doing now, in words
    records: list[dict] = field(default_factory=list)
    console: str = ""               # the last lines the run printed
    checkpoint: Path | None = None  # best/ (else last/) once one is written
    step: float | None = None       # 0..1 through the current phase, when it counts its work (None: it does not)
    step_label: str = ""            # the current phase's count, e.g. "1,200 / 5,000 img"
    elapsed_s: float = 0.0          # since the run was started

    @property
    def running(self) -> bool:
        return self.state == "running"


_EPOCH = re.compile(r"^(stage 1 )?epoch (\d+)/(\d+)$")
# what each progress bar of `sdfn train` means, in the Train view's words
_PHASES = {"starting": "starting the training process",
           "loading": "loading torch, the data and the model",
           "drawing": "drawing the stage-1 catalog's images",
           "decoding images": "stage 1: decoding the catalog images",
           "caching image features": "encoding every catalog image once (frozen image tower)",
           "caching text features": "encoding every training text once (frozen text tower)",
           "encoding images": "validating: encoding images",
           "encoding queries": "validating: encoding queries",
           "checking images": "checking the catalog images"}


def describe_phase(name: str) -> str:
    """A progress record's phase in the Train view's words."""
    found = _EPOCH.match(name)
    if found:
        stage1, epoch, total = found.groups()
        return (f"stage 1 (backbone pre-training): epoch {epoch} of {total}" if stage1
                else f"training: epoch {epoch} of {total}")
    return _PHASES.get(name, name)


def _count(value: float) -> str:
    return f"{value:,.0f}" if float(value).is_integer() else f"{value:,.1f}"


def progress_of(settings: TrainingSettings, progress: list[dict], records: list[dict]) -> tuple[float, str,
                                                                                                 float | None, str]:
    """(overall fraction, phase in words, fraction of the current phase or None, its count) from the run's
    progress records and log.jsonl records. Overall counts epochs: stage 1's and stage 2's, each one through
    its progress bar's steps; the preparation phases before them (drawing, encoding) show in the phase."""
    stage1_done, stage2_done = 0.0, float(sum(1 for r in records if r.get("event") == "epoch"))
    if any(r.get("event") == "stage1-epoch" for r in records):
        stage1_done = float(sum(1 for r in records if r.get("event") == "stage1-epoch"))
    phase, step, label = describe_phase("starting"), None, ""
    for record in progress:
        name = str(record.get("phase", ""))
        done, total = record.get("done"), record.get("total")
        fraction = done / total if isinstance(done, int | float) and isinstance(total, int | float) and total else None
        found = _EPOCH.match(name)
        if found:
            stage1, epoch = found.group(1), int(found.group(2))
            within = min(fraction or 0.0, 1.0)
            if stage1:
                stage1_done = max(stage1_done, epoch - 1 + within)
            else:
                stage1_done = float(settings.pretrain_epochs)
                stage2_done = max(stage2_done, epoch - 1 + within)
        elif name in ("caching image features", "caching text features"):
            stage1_done = float(settings.pretrain_epochs)   # stage 2 has begun
        phase = describe_phase(name)
        step = fraction
        unit = str(record.get("unit") or "")
        label = (f"{_count(done)} / {_count(total)} {unit}".strip() if fraction is not None
                 else f"{_count(done)} {unit}".strip() if isinstance(done, int | float) and done else "")
        if record.get("closed"):
            phase += " finished: saving the checkpoint, validating on validation epochs" if found else " (done)"
    if records and any(r.get("event") in ("step", "epoch") for r in records):
        stage1_done = float(settings.pretrain_epochs)
    total_epochs = max(1, settings.pretrain_epochs + settings.epochs)
    overall = min(1.0, (min(stage1_done, settings.pretrain_epochs) + min(stage2_done, settings.epochs))
                  / total_epochs)
    return overall, phase, step, label


class TrainingRun:
    """One `sdfn train` subprocess (the worker, `python -m sdfn.demo_training_worker train ...`): its folder
    (log.jsonl, progress.jsonl, best/, last/), its console output in OUT/console.log, and its owner (the session
    that started it). A subprocess, not a thread: cancelling is terminating it, and it holds no lock of the
    server's. It still shares the CPU with the searches: it runs at a lower priority (nice +10, the worker's
    NICENESS) and with torch on one thread fewer than the cores this process may use (at least one), so searches
    are slower while it runs but go first for a core."""

    def __init__(self, settings: TrainingSettings, out: Path, owner: str | None = None, cwd: Path | None = None):
        self.settings, self.out, self.owner = settings, out, owner
        command = settings.command(out)
        out.mkdir(parents=True, exist_ok=False)
        self.console_path = out / "console.log"
        self.progress_log = ProgressLog(out / PROGRESS_FILE)
        self.cancelled = False
        self.started = time.time()
        self.progress_log.emit("starting")   # the view's first feedback, before the process has even started
        threads = str(run_threads())
        env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads,
               PROGRESS_ENV: str(self.progress_log.path)}
        with self.console_path.open("wb") as console:
            # a session of its own: cancelling signals the run and its data-loading workers, and nothing else;
            # started from the launcher thread so that it dies with the demo, even a killed one (see _spawn)
            self.process = _spawn(command, stdout=console, stderr=subprocess.STDOUT, cwd=cwd, env=env,
                                  start_new_session=True)
        log.info("training run started in %s (pid %d)", out, self.process.pid)

    def owned_by(self, session: str | None) -> bool:
        return self.owner is None or (session is not None and session == self.owner)

    def cancel(self) -> None:
        if self.process.poll() is None:
            self.cancelled = True
            # the run may end (and a poll() on another thread reap it) between the check and the signal
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()

    def records(self) -> list[dict]:
        """log.jsonl as far as it is written (a line being written is skipped until complete)."""
        return RunLog(self.out / "log.jsonl").records()

    def progress(self) -> list[dict]:
        """progress.jsonl as far as it is written."""
        return self.progress_log.records()

    def console(self, lines: int = 12) -> str:
        """The run's last printed lines; progress bars redraw with carriage returns, so each redraw is a line."""
        if not self.console_path.is_file():
            return ""
        with self.console_path.open("rb") as handle:
            handle.seek(max(0, handle.seek(0, os.SEEK_END) - 20_000))
            text = handle.read().decode("utf-8", errors="replace")
        kept: list[str] = []
        for part in (p.strip() for p in re.split(r"[\r\n]+", text)):
            if not part:
                continue
            # a progress bar's redraw replaces its previous state ("epoch 2/5:  40%|...")
            if "|" in part and kept and "|" in kept[-1] and kept[-1].split(":", 1)[0] == part.split(":", 1)[0]:
                kept[-1] = part
            else:
                kept.append(part)
        return "\n".join(kept[-lines:])

    def checkpoint(self) -> Path | None:
        for name in ("best", "last"):
            if (self.out / name / "sdfn_config.json").is_file():
                return self.out / name
        return None

    def poll(self) -> TrainingStatus:
        code = self.process.poll()
        state = "running" if code is None else "cancelled" if self.cancelled else "finished" if code == 0 \
            else "failed"
        records = self.records()
        fraction, phase, step, label = progress_of(self.settings, self.progress(), records)
        if state == "finished":
            fraction, phase, step, label = 1.0, "finished", None, ""
        elif state == "failed":
            phase = f"failed (exit code {code}); the last lines it printed are below"
        elif state == "cancelled":
            phase = "cancelled"
        return TrainingStatus(state, self.out, fraction, phase, records, self.console(), self.checkpoint(), step,
                              label, time.time() - self.started)
