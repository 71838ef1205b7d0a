"""What the demo needs around the retrieval engine, with no UI in it: browsing the catalog, caption suggestions and
known targets from the catalog's annotations, searches with their ground truth, route statistics cached per model
and catalog, switching to a new checkpoint while searches keep being answered, and one background training run.

    service = DemoService(checkpoint=None, catalog=None)   # as Retriever: shipped model, default synthetic catalog
    service.load()
    outcome = service.search("dress-000041", "is red and has longer sleeves", k=10)
    outcome.result.items, outcome.target       # target: the annotated answer when (reference, text) is a known pair
"""

from __future__ import annotations

import atexit
import json
import os
import random
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image

from sdfn.data.base import open_dataset
from sdfn.data.images import load_image
from sdfn.encode import ImageFeatureTable
from sdfn.errors import ConfigError, DataError
from sdfn.evaluate import join_captions
from sdfn.retrieval import Retriever, SearchResult
from sdfn.routes import RouteStatistics, route_statistics

REPO_ROOT = Path(__file__).resolve().parent.parent
GENERIC_CHANGES = ("is red and has longer sleeves", "is darker and has no pattern", "is shorter and more fitted",
                   "has a v-neck and a belt", "is striped instead of plain", "is looser and lighter in color")
KNOWN_TARGET_SPLITS = ("val", "test")   # train pairs are what the model learnt from: no honest check there
_STRIP = " .?,!;:"


# ---- caption suggestions and known targets ---------------------------------------------------------------

@dataclass(frozen=True)
class Suggestion:
    """One annotated change of a reference item: the text a query reads (captions joined as evaluation joins
    them), the split it comes from and its annotated target (None where the split publishes none)."""

    text: str
    split: str
    target: str | None
    captions: tuple[str, ...] = ()

    def to_json(self) -> dict[str, Any]:
        return {"text": self.text, "split": self.split, "target": self.target, "captions": list(self.captions)}


def normalise(text: str) -> str:
    """How a typed text is compared with a caption: case, spacing and end punctuation do not matter."""
    return " ".join(text.lower().split()).strip(_STRIP)


class Captions:
    """The relative captions of a catalog in FashionIQ format, by reference item; empty for a catalog that has
    none (one built from a folder of images)."""

    def __init__(self, root: Path):
        self.root = root
        self.by_reference: dict[str, list[Suggestion]] = {}
        self.problem = ""
        try:
            dataset = open_dataset("fashioniq", root)
        except DataError as err:
            self.problem = str(err)
            return
        for split in dataset.splits:
            for category in dataset.categories:
                try:
                    triplets = dataset.triplets(split, category)
                except DataError:    # a split file missing for one category leaves the others usable
                    continue
                for t in triplets:
                    self.by_reference.setdefault(t.reference, []).append(
                        Suggestion(join_captions(t.captions), split, t.target, t.captions))

    def for_reference(self, item_id: str | None) -> list[Suggestion]:
        """Annotated changes of `item_id`, the ones with a checkable target (val, test) first."""
        found = self.by_reference.get(item_id or "", [])
        return sorted(found, key=lambda s: (s.split not in KNOWN_TARGET_SPLITS or s.target is None, s.split))

    def known_target(self, item_id: str | None, text: str) -> Suggestion | None:
        """The val/test annotation whose joined captions, or either caption alone, is `text`."""
        wanted = normalise(text)
        if not wanted:
            return None
        for s in self.for_reference(item_id):
            if s.split in KNOWN_TARGET_SPLITS and s.target is not None and \
                    wanted in {normalise(s.text), *(normalise(c) for c in s.captions)}:
                return s
        return None


@dataclass
class TargetCheck:
    """Where a known pair's annotated target landed in the results."""

    target: str
    split: str
    rank: int | None     # 1-based; None when it is not among the results
    k: int

    def message(self) -> str:
        head = f"Known pair from the {self.split} split: the annotated target is {self.target}"
        if self.rank is not None:
            return f"✓ {head}, found at rank {self.rank}."
        return f"✗ {head}; it is not in the top {self.k} (raise k to look further)."

    def to_json(self) -> dict[str, Any]:
        return {"target": self.target, "split": self.split, "found": self.rank is not None, "rank": self.rank,
                "message": self.message()}


@dataclass
class SearchOutcome:
    result: SearchResult
    target: TargetCheck | None

    def to_json(self) -> dict[str, Any]:
        return {**self.result.to_json(), "target": self.target.to_json() if self.target else None}


@dataclass
class Page:
    ids: list[str]
    page: int        # 1-based, clamped to the pages there are
    pages: int
    total: int


# ---- the service -------------------------------------------------------------------------------------------

class DemoService:
    """One retriever shared by every visitor (swapped whole when the model changes), plus what the demo shows
    around it. Thread-safe: Gradio calls it from many worker threads."""

    def __init__(self, checkpoint: Path | str | None = None, catalog: Path | str | None = None,
                 threads: int | None = None, progress: bool = True, runs: Path | str | None = None):
        self.threads, self.progress = threads, progress
        self.runs = Path(runs) if runs is not None else REPO_ROOT / "runs"
        self._retriever = Retriever(checkpoint, catalog, threads=threads, progress=progress)
        self._lock = threading.Lock()
        self._captions: Captions | None = None
        self._statistics: dict[tuple[str, str, str], RouteStatistics | None] = {}
        self._statistics_lock = threading.Lock()
        self._training: TrainingRun | None = None

    # the engine ---------------------------------------------------------------------------------------------

    @property
    def retriever(self) -> Retriever:
        return self._retriever

    def load(self) -> DemoService:
        """Load model, catalog and index (generating the default catalog, building the index when needed)."""
        self._retriever.load()
        self.captions()
        return self

    def captions(self) -> Captions:
        with self._lock:
            root = self._retriever.catalog.root
            if self._captions is None or self._captions.root != root:
                self._captions = Captions(root)
            return self._captions

    def describe(self) -> dict[str, Any]:
        """What is being served: model, catalog and index, for the page header and the API."""
        retriever = self._retriever
        manifest = retriever.index.manifest
        checkpoint = retriever.checkpoint
        return {"checkpoint": str(checkpoint) if checkpoint is not None else "assets/sdfn-tiny (shipped)",
                "backbone": manifest["model"]["backbone"], "fusion": manifest["model"]["fusion"],
                "router": retriever.model.cfg.fusion.router, "model_fingerprint": manifest["model"]["fingerprint"],
                "catalog": str(retriever.catalog.root), "items": len(retriever.index),
                "categories": retriever.catalog.category_counts(), "index": retriever.index.index_type,
                "index_status": retriever.index_status.message if retriever.index_status else ""}

    def categories(self) -> dict[str, int]:
        return self._retriever.catalog.category_counts()

    def browse(self, category: str | None = None, seed: int | None = None, page: int = 1,
               per_page: int = 12) -> Page:
        """One page of catalog items, of one category or all, in catalog order or shuffled by `seed`."""
        catalog = self._retriever.catalog
        rows = catalog.rows_in_category(category) if category else range(len(catalog))
        ids = [catalog.rows[r]["id"] for r in rows]
        if seed is not None:
            random.Random(seed).shuffle(ids)
        pages = max(1, -(-len(ids) // per_page))
        page = min(max(1, int(page)), pages)
        return Page(ids[(page - 1) * per_page:page * per_page], page, pages, len(ids))

    def item(self, item_id: str) -> tuple[Path, dict[str, str]]:
        """An item's image file and metadata; an unknown id is an error naming close matches."""
        catalog = self._retriever.catalog
        row = catalog.find(item_id)
        return catalog.image_path(row), catalog.metadata(row)

    def check_upload(self, path: Path | str) -> Image.Image:
        """Decode an uploaded file as the engine will (size checked before decoding): a PIL image, or an
        ImageError that names the file and what is wrong with it."""
        return load_image(path, max_side=512)

    # searching ---------------------------------------------------------------------------------------------

    def search(self, reference: str | Path, text: str = "", k: int = 10, category: str | None = None) -> SearchOutcome:
        """Search, and where (reference, text) is an annotated val/test pair, say where its target landed."""
        result = self._retriever.search(reference, text, k=k, category=category)
        reference_id = reference if isinstance(reference, str) else None
        known = self.captions().known_target(reference_id, text)
        check = None
        if known is not None:
            ranks = [item.rank for item in result.items if item.id == known.target]
            check = TargetCheck(known.target, known.split, ranks[0] if ranks else None, len(result.items))
        return SearchOutcome(result, check)

    def routes(self, reference: str | Path, texts: Sequence[str]) -> list[SearchResult]:
        """The router traces of several texts on one reference (one batch; results trimmed to one item)."""
        return self._retriever.search_batch([{"reference": reference, "text": t, "k": 1} for t in texts])

    def route_statistics(self, split: str = "val") -> RouteStatistics | None:
        """Route usage over a split's annotated queries by kind of change; None for a static fusion.

        Cached per model fingerprint + catalog fingerprint + split (it takes seconds); the references' features
        come from the index's feature cache, so no image is encoded again.
        """
        retriever = self._retriever
        index = retriever.index
        key = (index.manifest["model"]["fingerprint"], index.manifest["catalog"]["fingerprint"], split)
        with self._statistics_lock:
            if key not in self._statistics:
                self._statistics[key] = self._compute_statistics(retriever, split)
            return self._statistics[key]

    @staticmethod
    def _compute_statistics(retriever: Retriever, split: str) -> RouteStatistics | None:
        index, root = retriever.index, retriever.catalog.root
        try:
            dataset = open_dataset("fashioniq", root)
            triplets = [t for t in dataset.triplets(split) if t.reference in index.row_of]
        except DataError as err:
            raise DataError(f"route statistics need the catalog's {split} captions: {err}") from err
        if not triplets:
            raise DataError(f"no {split} query of catalog {root} has a searchable reference image; "
                            "rebuild the index with `sdfn index`.")
        references = sorted({t.reference for t in triplets})
        table = ImageFeatureTable([dataset.image_path(r) for r in references],
                                  index.cache.features([index.row_of[r] for r in references]), {})
        return route_statistics(retriever.model, dataset, split, triplets=triplets, table=table)

    def use_checkpoint(self, checkpoint: Path | str) -> str:
        """Serve another checkpoint on the same catalog. The new retriever is loaded (its index brought up to date
        by the engine) before it replaces the old one, so searches are answered throughout."""
        retriever = Retriever(checkpoint, self._retriever.catalog_path, threads=self.threads, progress=self.progress)
        retriever.load()
        with self._lock:
            self._retriever = retriever
        return retriever.index_status.message if retriever.index_status else "model loaded"

    # training ------------------------------------------------------------------------------------------------

    @property
    def training(self) -> TrainingRun | None:
        return self._training

    def start_training(self, settings: TrainingSettings) -> TrainingRun:
        """Start `python -m sdfn train` in the background; one run at a time."""
        with self._lock:
            if self._training is not None and self._training.poll().running:
                raise ConfigError(f"a training run is already going ({self._training.out}); wait for it or "
                                  "cancel it first.")
            settings.check()
            out = self.runs / time.strftime("demo-%Y%m%d-%H%M%S")
            self._training = TrainingRun(settings, out)
            # the run has a session of its own, so stopping the demo would not stop it: end it on the way out
            atexit.register(self._training.cancel)
            return self._training


# ---- background training ------------------------------------------------------------------------------------

@dataclass
class TrainingSettings:
    """What the Train view asks for; everything else comes from the preset."""

    preset: str
    catalog: str
    epochs: int
    batch_size: int
    lr: float
    pretrain_epochs: int

    def check(self) -> None:
        """Refuse bad settings with a message naming the field and the accepted range."""
        from sdfn.config import list_presets

        if self.preset not in list_presets():
            raise ConfigError(f"unknown preset '{self.preset}'; choose one of {', '.join(list_presets())}.")
        for name, value, low, high in (("epochs", self.epochs, 1, 1000), ("batch size", self.batch_size, 2, 4096),
                                       ("pre-training epochs", self.pretrain_epochs, 0, 1000)):
            if value is None or int(value) != value or not low <= value <= high:
                raise ConfigError(f"{name} must be a whole number from {low} to {high}, got {value!r}.")
        if self.lr is None or not 0 < self.lr <= 1:
            raise ConfigError(f"learning rate must be above 0 and at most 1, got {self.lr!r}.")
        if not str(self.catalog).strip():
            raise ConfigError("give the catalog folder to train on (the default is catalogs/synthetic).")
        self._check_data()

    def _check_data(self) -> None:
        root = Path(self.catalog).expanduser()
        synthesizes = _preset(self.preset).get("data", {}).get("synthesize", False)
        if synthesizes and not root.exists():
            return   # the preset generates the synthetic catalog there first
        try:
            open_dataset("fashioniq", root).triplets("train")
        except DataError as err:
            raise ConfigError(f"cannot train on {root}: {err}. Training needs a FashionIQ-format catalog with "
                              "train captions, such as the synthetic one (`sdfn synth`).") from err

    def command(self, out: Path) -> list[str]:
        overrides = [f"optim.epochs={int(self.epochs)}", f"optim.batch_size={int(self.batch_size)}",
                     f"optim.lr={float(self.lr)}", f"pretrain.epochs={int(self.pretrain_epochs)}",
                     f"data.root={Path(self.catalog).expanduser().resolve()}"]
        return [sys.executable, "-m", "sdfn", "train", "--config", self.preset, "--out", str(out), *overrides]


def _preset(name: str) -> dict:
    from sdfn.config import PRESET_DIR

    return json.loads((PRESET_DIR / f"{name}.json").read_text())


def preset_defaults(name: str) -> dict[str, Any]:
    """The Train view's fields as the preset sets them."""
    from sdfn.config import load_config

    cfg = load_config(name)
    return {"catalog": cfg.data.root, "epochs": cfg.optim.epochs, "batch_size": cfg.optim.batch_size,
            "lr": cfg.optim.lr, "pretrain_epochs": cfg.pretrain.epochs}


@dataclass
class TrainingStatus:
    state: str                      # running | finished | failed | cancelled
    out: Path
    fraction: float                 # 0..1, over stage 1 and stage 2 epochs
    phase: str                      # what the run is doing now, in words
    records: list[dict] = field(default_factory=list)
    console: str = ""               # the last lines the run printed
    checkpoint: Path | None = None  # best/ (else last/) once one is written

    @property
    def running(self) -> bool:
        return self.state == "running"


_TQDM = re.compile(r"(stage 1 )?epoch (\d+)/(\d+):\s+(\d+)%")


class TrainingRun:
    """One `python -m sdfn train` subprocess: its folder (log.jsonl, best/, last/), its console output in
    OUT/console.log. A subprocess, not a thread: cancelling is terminating it, and its CPU use cannot stall the
    server's searches (it is left one core fewer than the machine has)."""

    def __init__(self, settings: TrainingSettings, out: Path):
        self.settings, self.out = settings, out
        out.mkdir(parents=True, exist_ok=True)
        self.console_path = out / "console.log"
        self.cancelled = False
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
        env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": str(max(1, cores - 1))}
        with self.console_path.open("wb") as console:
            # a session of its own: cancelling signals the run and its data-loading workers, and nothing else
            self.process = subprocess.Popen(settings.command(out), stdout=console, stderr=subprocess.STDOUT,
                                            cwd=REPO_ROOT, env=env, start_new_session=True)

    def cancel(self) -> None:
        if self.process.poll() is None:
            self.cancelled = True
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()

    def records(self) -> list[dict]:
        """log.jsonl as far as it is written (a line being written is skipped until complete)."""
        path = self.out / "log.jsonl"
        if not path.is_file():
            return []
        records = []
        for line in path.read_text().splitlines():
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                continue
        return records

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
        records, console = self.records(), self.console()
        fraction, phase = self._progress(records, console)
        if state == "finished":
            fraction, phase = 1.0, "finished"
        elif state == "failed":
            phase = f"failed (exit code {code}); the last lines it printed are below"
        elif state == "cancelled":
            phase = "cancelled"
        return TrainingStatus(state, self.out, fraction, phase, records, console, self.checkpoint())

    def _progress(self, records: list[dict], console: str) -> tuple[float, str]:
        """Done epochs over all epochs (stage 1 from the progress bar, stage 2 from log.jsonl)."""
        s = self.settings
        stage1_done, phase = 0.0, "starting (loading data and model)"
        matches = _TQDM.findall(console)
        if matches:
            stage1, epoch, total, percent = matches[-1]
            if stage1:
                stage1_done = int(epoch) - 1 + int(percent) / 100
                phase = f"stage 1 (backbone pre-training): epoch {epoch}/{total}"
            else:
                stage1_done = s.pretrain_epochs
                phase = f"epoch {epoch}/{total}"
        epochs = [r for r in records if r.get("event") == "epoch"]
        steps = [r for r in records if r.get("event") == "step"]
        stage2_done = float(len(epochs))
        if epochs and steps and steps[-1]["step"] > epochs[-1]["step"]:
            per_epoch = epochs[-1]["step"] / len(epochs)
            stage2_done += min(0.99, (steps[-1]["step"] - epochs[-1]["step"]) / max(1.0, per_epoch))
        if records:
            stage1_done = s.pretrain_epochs
        total = s.pretrain_epochs + s.epochs
        return min(1.0, (stage1_done + stage2_done) / max(1, total)), phase

