"""What the demo needs around the retrieval engine, with no UI in it: browsing the catalog, caption suggestions and
known targets from the catalog's annotations, searches (concurrent ones answered in batches) with their ground
truth, route statistics cached per model and catalog, the catalog images the web server may hand out, and
switching to a new checkpoint while searches keep being answered. The background training run and what a visitor
may ask of it live in sdfn.demo_training.

The service serves one (model, index) snapshot at a time: a `Retriever` opens everything it needs when it is made,
every call reads `self._retriever` once and uses only that object, and `use_checkpoint` makes a whole new
Retriever (its index built beside the old one and published atomically) before swapping it in. So an answer and
the fingerprint `/info` reports always come from the same snapshot, whatever is rebuilt on disk meanwhile.

    service = DemoService(checkpoint=None, catalog=None)   # as Retriever: shipped model, default synthetic catalog
    service.load()
    outcome = service.search("dress-000041", "is red and has longer sleeves", k=10)
    outcome.result.items, outcome.target       # target: the annotated answer when (reference, text) is a known pair
"""

from __future__ import annotations

import atexit
import contextlib
import hashlib
import html
import logging
import random
import re
import secrets
import tempfile
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image

from sdfn.data.base import open_dataset
from sdfn.data.images import load_image
from sdfn.demo_batching import Batcher
from sdfn.demo_training import TrainingPolicy, TrainingRun, TrainingSettings
from sdfn.encode import ImageFeatureTable
from sdfn.errors import ConfigError, DataError
from sdfn.evaluate import join_captions
from sdfn.fsio import atomic_write_bytes, staging_folder
from sdfn.paths import default_catalog, sdfn_home
from sdfn.retrieval import PreparedQuery, Retriever, SearchResult
from sdfn.routes import RouteStatistics, route_statistics
from sdfn.scope import CategoryPrediction

log = logging.getLogger(__name__)

GENERIC_CHANGES = ("is red and has longer sleeves", "is darker and has no pattern", "is shorter and more fitted",
                   "has a v-neck and a belt", "is striped instead of plain", "is looser and lighter in color")
KNOWN_TARGET_SPLITS = ("val", "test")   # train pairs are what the model learnt from: no honest check there
SERVED_IMAGE_SIDE = 512                 # catalog images larger than this are served as thumbnails
BROWSER_FORMATS = {"PNG", "JPEG", "WEBP", "GIF"}
MAX_BATCH = 64
_STRIP = " .?,!;:"


# ---- caption suggestions and known targets ---------------------------------------------------------------

ROUTE_SPLITS = ("val", "test", "train")   # the caption splits route statistics may cover (FashionIQ layout)


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


_MARKDOWN_SPECIAL = re.compile(r"([\\`*_{}\[\]()#+\-.!|~>])")


def markdown_literal(text: str) -> str:
    """A visitor's text as it reads inside a Markdown component: shown literally, never as bold, a link or HTML."""
    return _MARKDOWN_SPECIAL.sub(r"\\\1", html.escape(text, quote=False))


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
        """The engine's JSON plus the target check. Images are named as Catalog.image_name names them (relative
        to the catalog folder; an image outside it, or an upload, by its file name): no folder of the server."""
        return {**self.result.to_json(), "target": self.target.to_json() if self.target else None}


@dataclass
class Page:
    ids: list[str]
    page: int        # 1-based, clamped to the pages there are
    pages: int
    total: int


# ---- the images the web server may hand out ---------------------------------------------------------------------

class ServedImages:
    """The catalog images a visitor may fetch, and nothing else, in one folder of their own.

    The web server is allowed to serve only this folder (never the catalog's: it also holds the index, the
    manifest, caption files with the test split's targets, and whatever else was left there). An item's image
    is placed here the first time it is shown: copied (fsio.atomic_write_bytes) when it is a small browser
    image, else as a PNG thumbnail with its long side SERVED_IMAGE_SIDE. Catalog images outside the catalog folder
    (`sdfn catalog build --images ~/photos`) are served the same way. Entries are named by a hash of the source
    path, size and mtime, so a changed image gets a new entry and no name comes from the catalog's text.
    """

    def __init__(self, folder: Path | str | None = None, max_side: int = SERVED_IMAGE_SIDE):
        if folder is None:
            folder = _private_served_folder()
        self.folder = Path(folder).resolve()
        self.folder.mkdir(parents=True, exist_ok=True)
        self.max_side = max_side

    def path(self, source: Path | str) -> Path:
        """The served copy of the image file `source` (made now if it is not there yet)."""
        source = Path(source)
        try:
            stat = source.stat()
        except OSError as err:
            raise DataError(f"catalog image {source.name} cannot be read ({err.strerror}); "
                            "check the catalog's image files.") from err
        key = hashlib.sha256(f"{source.resolve()}\t{stat.st_size}\t{stat.st_mtime_ns}".encode()).hexdigest()[:24]
        suffix = source.suffix.lower() if source.suffix.lower() in (".png", ".jpg", ".jpeg", ".webp", ".gif") \
            else ".png"
        for done in (self.folder / f"{key}{suffix}", self.folder / f"{key}.thumb.png"):
            if done.is_file():
                return done
        return self._publish(source, key, suffix)

    def _publish(self, source: Path, key: str, suffix: str) -> Path:
        try:
            with Image.open(source) as probe:
                as_is = probe.format in BROWSER_FORMATS and max(probe.size) <= self.max_side
        except (OSError, ValueError, SyntaxError):
            as_is = False
        if as_is:
            target = self.folder / f"{key}{suffix}"
            atomic_write_bytes(target, source.read_bytes())
            return target
        target = self.folder / f"{key}.thumb.png"
        thumbnail = load_image(source, max_side=self.max_side)   # ImageError names the file
        buffer = _png_bytes(thumbnail)
        atomic_write_bytes(target, buffer)
        return target


def _warm_up(retriever: Retriever) -> None:
    """One search on the first catalog item, its answer thrown away: the model's first call (allocations, lazy
    initialisation) is paid here rather than by the first visitor; then the catalog image profile an upload's
    category prediction needs (Retriever.category_profile, seconds), so the first upload does not wait for it.
    Nothing it does is needed: any error is only logged."""
    try:
        first = retriever.index.ids[0]
        retriever.search_batch([{"reference": first, "text": GENERIC_CHANGES[0], "k": 1}])
        retriever.category_profile()
    except Exception as err:   # noqa: BLE001  (a warm-up must never take the server down)
        log.debug("warm-up search failed: %s", err)


def _private_served_folder() -> Path:
    """A new folder for this process's served images under the system's temporary folder, named as an fsio
    staging folder (it carries this process's id): removed at exit, and, when the demo was killed before it could
    remove it (kill -9, a crash), by the next demo that starts."""
    stack = contextlib.ExitStack()
    folder = stack.enter_context(staging_folder(Path(tempfile.gettempdir()) / "sdfn-demo-images", publish=False))
    atexit.register(stack.close)
    return folder


def _png_bytes(image: Image.Image) -> bytes:
    import io

    out = io.BytesIO()
    image.save(out, format="PNG", optimize=False)
    return out.getvalue()


# ---- the service -------------------------------------------------------------------------------------------

class DemoService:
    """One retriever shared by every visitor (swapped whole when the model changes), plus what the demo shows
    around it. Thread-safe: Gradio calls it from many worker threads; searches from all of them are answered in
    batches (sdfn.demo_batching).

    runs: where training runs go (default SDFN_HOME/runs); train_root: a folder whose catalogs visitors may also
    train on (default: only the served catalog); images: the folder of served images (default: a new temporary
    folder, removed at exit).
    """

    def __init__(self, checkpoint: Path | str | None = None, catalog: Path | str | None = None,
                 threads: int | None = None, progress: bool = True, runs: Path | str | None = None,
                 train_root: Path | str | None = None, images: Path | str | None = None,
                 max_batch: int = MAX_BATCH):
        self.threads, self.progress = threads, progress
        self.runs = Path(runs).resolve() if runs is not None else sdfn_home() / "runs"
        self.train_root = Path(train_root) if train_root is not None else None
        self._checkpoint, self._catalog = checkpoint, catalog
        self._retriever: Retriever | None = None
        self._lock = threading.Lock()
        self._captions: Captions | None = None
        self._statistics: dict[tuple[str, str, str], RouteStatistics | None] = {}
        self._statistics_lock = threading.Lock()
        self._statistics_locks: dict[tuple, threading.Lock] = {}
        self._training: TrainingRun | None = None
        self._policy: TrainingPolicy | None = None
        self.images = ServedImages(images)
        self._batcher: Batcher[tuple[Retriever, PreparedQuery], SearchResult] = Batcher(
            self._search_batch, max_batch, name="search")

    # the engine ---------------------------------------------------------------------------------------------

    @property
    def retriever(self) -> Retriever:
        """The snapshot being served now (load() first)."""
        if self._retriever is None:
            raise ConfigError("DemoService.load() has not been called yet.")
        return self._retriever

    def load(self) -> DemoService:
        """Load model, catalog and index (generating the default catalog, building the index when needed).

        The catalog's captions are read on a thread of their own meanwhile (when the catalog is already there),
        and once everything is loaded one search runs in the background, so the first visitor's search does not
        pay for the model's first call (the server builds its page meanwhile)."""
        with self._lock:
            if self._retriever is None:
                root = Path(self._catalog).resolve() if self._catalog is not None else default_catalog()
                with ThreadPoolExecutor(1, thread_name_prefix="sdfn-captions") as pool:
                    early = pool.submit(Captions, root) if (root / "catalog.csv").is_file() else None
                    # A server checks every index checksum once at start (~0.3 s at 6k items): a file damaged with
                    # its size and time kept would otherwise be served until a search hits it.
                    retriever = Retriever(self._checkpoint, self._catalog, threads=self.threads,
                                          progress=self.progress, verify="full")
                    # read by every query without a lock: made once (a model switch keeps the catalog, and so
                    # these)
                    self._captions = early.result() if early is not None and retriever.catalog.root == root \
                        else Captions(retriever.catalog.root)
                self._policy = TrainingPolicy([retriever.catalog.root], self.train_root)
                self._retriever = retriever
                # not a daemon: a process stopped during the warm-up waits for it (seconds) rather than ending
                # while torch runs on that thread (which aborts: "terminate called without an active exception")
                threading.Thread(target=_warm_up, args=(retriever,), name="sdfn-warm-up").start()
        return self

    @property
    def training_policy(self) -> TrainingPolicy:
        self.retriever   # noqa: B018  (raises when not loaded)
        return self._policy

    def captions(self) -> Captions:
        """The served catalog's annotated captions (suggestions, known targets), made once by load()."""
        if self._captions is None:
            raise ConfigError("DemoService.load() has not been called yet.")
        return self._captions

    def describe(self) -> dict[str, Any]:
        """What is being served: model, catalog and index, for the page header and the API. Paths are relative
        (the checkpoint by its folder name, the catalog by its folder name); the fingerprint is the served
        model's own, from the same snapshot that answers searches."""
        retriever = self.retriever
        manifest = retriever.index.manifest
        checkpoint = retriever.checkpoint
        if checkpoint is None:
            name = "sdfn-tiny (shipped)"
        else:   # a training run's best/ or last/ by its run folder too
            name = "/".join(checkpoint.parts[-2:]) if checkpoint.name in ("best", "last") else checkpoint.name
        return {"checkpoint": name,
                "backbone": manifest["model"]["backbone"], "fusion": manifest["model"]["fusion"],
                "router": retriever.model.cfg.fusion.router, "model_fingerprint": retriever.model.fingerprint(),
                "index_fingerprint": manifest["model"]["fingerprint"],
                "catalog": retriever.catalog.root.name, "items": len(retriever.index),
                "categories": retriever.catalog.category_counts(), "index": retriever.index.index_type,
                "index_status": (retriever.index_status.message if retriever.index_status else "").replace(
                    str(retriever.catalog.root), retriever.catalog.root.name)}

    def categories(self) -> dict[str, int]:
        return self.retriever.catalog.category_counts()

    def browse(self, category: str | None = None, seed: int | None = None, page: int = 1,
               per_page: int = 12) -> Page:
        """One page of catalog items, of one category or all, in catalog order or shuffled by `seed`."""
        catalog = self.retriever.catalog
        rows = catalog.rows_in_category(category) if category else range(len(catalog))
        ids = [catalog.rows[r]["id"] for r in rows]
        if seed is not None:
            random.Random(seed).shuffle(ids)
        pages = max(1, -(-len(ids) // per_page))
        page = min(max(1, int(page)), pages)
        return Page(ids[(page - 1) * per_page:page * per_page], page, pages, len(ids))

    def item(self, item_id: str) -> tuple[Path, dict[str, str]]:
        """An item's image file and metadata; an unknown id is an error naming close matches."""
        catalog = self.retriever.catalog
        row = catalog.find(item_id)
        return catalog.image_path(row), catalog.metadata(row)

    def served_image(self, item_id: str) -> Path:
        """The file the web server hands out for a catalog item's image (see ServedImages)."""
        return self.images.path(self.item(item_id)[0])

    def check_upload(self, path: Path | str) -> Image.Image:
        """Decode an uploaded file as the engine will (size checked before decoding): a PIL image, or an
        ImageError that names the file and what is wrong with it."""
        return self.retriever.decode_image(path)

    def predict_category(self, path: Path | str) -> CategoryPrediction:
        """An uploaded image's predicted category, its confidence and whether it is out of catalog
        (Retriever.predict_category); a search of it without a category asked uses the prediction's scope."""
        return self.retriever.predict_category(Path(path))

    # searching ---------------------------------------------------------------------------------------------

    def search(self, reference: str | Path, text: str = "", k: int = 10, category: str | None = None) -> SearchOutcome:
        """Search, and where (reference, text) is an annotated val/test pair, say where its target landed.

        k must be a whole number from 1 to sdfn.retrieval.MAX_K (2.0 is 2; 2.5 and 1e300 are refused, by the
        engine's own check). Concurrent calls are answered together in one batch."""
        retriever = self.retriever    # the snapshot this query is prepared against, and answered by
        # Checked, resolved and (an upload) decoded here, on the caller's thread: a bad query fails only its own
        # caller, and uploads decode in parallel (under sdfn.data.images' decode budget), not on the batch thread.
        prepared = retriever.prepare(reference, text, k, category)
        result = self._batcher.submit((retriever, prepared))
        reference_id = reference if isinstance(reference, str) else None
        known = self.captions().known_target(reference_id, text)
        check = None
        if known is not None:
            ranks = [item.rank for item in result.items if item.id == known.target]
            check = TargetCheck(known.target, known.split, ranks[0] if ranks else None, len(result.items))
        return SearchOutcome(result, check)

    @staticmethod
    def _search_batch(queries: Sequence[tuple[Retriever, PreparedQuery]]) -> list[SearchResult]:
        """Run prepared queries, one batch per retriever they were prepared against (a model switch between two
        queries' preparing leaves two snapshots in one batch; index rows belong to their own)."""
        groups: dict[int, list[int]] = {}
        for position, (retriever, _) in enumerate(queries):
            groups.setdefault(id(retriever), []).append(position)
        answers: list[SearchResult | None] = [None] * len(queries)
        for positions in groups.values():
            retriever = queries[positions[0]][0]
            results = retriever.run_batch([queries[p][1] for p in positions])
            for position, result in zip(positions, results, strict=True):
                answers[position] = result
        return answers  # type: ignore[return-value]  (every position is in one group)

    def routes(self, reference: str | Path, texts: Sequence[str]) -> list[SearchResult]:
        """The router traces of several texts on one reference (one batch; results trimmed to one item)."""
        return self.retriever.search_batch([{"reference": reference, "text": t, "k": 1} for t in texts])

    def route_statistics(self, split: str = "val") -> RouteStatistics | None:
        """Route usage over a split's annotated queries by kind of change; None for a static fusion.

        Cached per model fingerprint + catalog fingerprint + split (it takes seconds); the references' features
        come from the index's feature cache, so no image is encoded again.
        """
        if split not in ROUTE_SPLITS:
            raise DataError(f"unknown split {split!r}: route statistics cover {', '.join(ROUTE_SPLITS)}")
        retriever = self.retriever
        index = retriever.index
        key = (index.manifest["model"]["fingerprint"], index.manifest["catalog"]["fingerprint"], split)
        with self._statistics_lock:     # one lock per split: a train split's minute never holds up val's seconds
            lock = self._statistics_locks.setdefault(key, threading.Lock())
        with lock:
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
            raise DataError(f"no {split} query of catalog {root.name} has a searchable reference image; "
                            "rebuild the index with `sdfn index`.")
        references = sorted({t.reference for t in triplets})
        table = ImageFeatureTable([dataset.image_path(r) for r in references],
                                  index.cache.features([index.row_of[r] for r in references]), {})
        return route_statistics(retriever.model, dataset, split, triplets=triplets, table=table)

    def use_checkpoint(self, checkpoint: Path | str) -> str:
        """Serve another checkpoint on the same catalog. A whole new Retriever is made first (its index built in
        a staging folder beside the old one and published atomically, never rewritten in place); searches keep
        being answered by the old snapshot, which keeps its opened files, until the new one replaces it."""
        old = self.retriever
        retriever = Retriever(checkpoint, old.catalog_path, threads=self.threads, progress=self.progress,
                              verify="full")
        with self._lock:
            self._retriever = retriever
        log.info("now serving %s (model %s)", checkpoint, retriever.model.fingerprint())
        return retriever.index_status.message if retriever.index_status else "model loaded"

    # training ------------------------------------------------------------------------------------------------

    @property
    def training(self) -> TrainingRun | None:
        return self._training

    def start_training(self, settings: TrainingSettings, session: str | None = None) -> TrainingRun:
        """Start `python -m sdfn train` in the background for `session` (its owner); one run at a time. The
        settings are checked against the training policy first (catalogs, bounds): nothing is created for a
        refused request."""
        checked = self.training_policy.check(settings)
        with self._lock:
            if self._training is not None and self._training.poll().running:
                raise ConfigError("a training run is already going; wait for it to finish"
                                  + (" or cancel it first." if self._training.owned_by(session) else "."))
            out = self.runs / (time.strftime("demo-%Y%m%d-%H%M%S-") + secrets.token_hex(3))
            home = sdfn_home()   # the preset's relative paths (its stage-1 catalog) resolve there, as for `sdfn train`
            home.mkdir(parents=True, exist_ok=True)
            self._training = TrainingRun(checked, out, owner=session, cwd=home)
            # the run has a session of its own, so stopping the demo would not stop it: end it on the way out
            atexit.register(self._training.cancel)
            return self._training

    def cancel_training(self, session: str | None = None) -> TrainingRun | None:
        """Cancel the current run; only the session that started it may."""
        run = self._training
        if run is None:
            return None
        if not run.owned_by(session):
            raise ConfigError("this training run was started by another visitor: only they can cancel it.")
        run.cancel()
        return run

    def use_trained_model(self, session: str | None = None) -> tuple[Path, str]:
        """Serve the current run's checkpoint (see use_checkpoint); only the session that started the run may."""
        run = self._training
        status = run.poll() if run is not None else None
        if status is None or status.running or status.checkpoint is None:
            raise ConfigError("no finished run with a checkpoint to use yet.")
        if status.state != "finished":   # a failed or cancelled run may have left last/: not a model to serve
            raise ConfigError(f"the training run {status.state}: its checkpoint is not a finished model; "
                              "start a new run.")
        checkpoint = status.checkpoint
        if not run.owned_by(session):
            raise ConfigError("this model was trained by another visitor: only they can switch the demo to it.")
        return checkpoint, self.use_checkpoint(checkpoint)
