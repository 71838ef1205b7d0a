"""Writing a sampled catalog into a folder, in FashionIQ's on-disk format plus `catalog.csv`:

    images/<id>.png                          224x224 RGB
    image_splits/split.<category>.<split>.json
    captions/cap.<category>.<split>.json     {"target", "candidate", "captions", "asks"}
    catalog.csv                              one row per item with all attributes (written last)

Every file's bytes depend only on what was sampled: JSON with a fixed layout, PNG with fixed options and
no metadata, each image drawn from its own seed whatever the number of drawing processes.
"""

from __future__ import annotations

import contextlib
import csv
import ctypes
import io
import json
import multiprocessing
import os
import signal
import sys
import threading
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

from PIL import Image
from tqdm import tqdm

from sdfn.data.attributes import ATTRIBUTES, CATEGORIES, NOT_APPLICABLE, NOUNS
from sdfn.data.base import Triplet
from sdfn.data.synth.drawing import item_rng, render_item
from sdfn.data.synth.sampling import SPLITS, Item
from sdfn.data.synth.triplets import caption_file

CATALOG_COLUMNS: tuple[str, ...] = ("id", "image", "category", "split", "title", *ATTRIBUTES)


def write_catalog(folder: Path, items: Sequence[Item], triplets: Mapping[tuple[str, str], list[Triplet]],
                  splits: Sequence[str], seed: int, workers: int, progress: bool) -> None:
    """Write the whole catalog into the empty `folder`; catalog.csv, which marks a complete catalog, last."""
    (folder / "images").mkdir()
    draw_images(items, folder / "images", seed, workers, progress)
    write_splits(items, folder, splits)
    write_captions(triplets, folder)
    write_catalog_csv(items, folder)


def png_bytes(image: Image.Image) -> bytes:
    """PNG with fixed options and no metadata, so that equal pixels give equal bytes."""
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", compress_level=6)
    return buffer.getvalue()


def _draw_job(job: tuple[str, int, str, str, tuple[tuple[str, str], ...]]) -> None:
    """Pool worker (top level so it pickles under "spawn"): draw and write one image."""
    images_dir, seed, item_id, category, attrs = job
    image = render_item(category, dict(attrs), item_rng(seed, item_id))
    Path(images_dir, f"{item_id}.png").write_bytes(png_bytes(image))


_PR_SET_PDEATHSIG = 1  # linux/prctl.h
_STOP_SIGNALS = {signal.SIGINT, signal.SIGTERM}


def _init_worker(parent: int) -> None:
    """Drawing-process set-up. Ctrl-C reaches the whole process group: the parent handles it (leaving the pool
    ends the workers), so workers ignore SIGINT instead of each printing a KeyboardInterrupt traceback. A worker
    whose parent is killed (kill -9) ends at once and quietly (Linux: the kernel sends it SIGTERM), instead of
    drawing on and printing BrokenPipeError tracebacks."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    if os.getppid() != parent:  # the parent was gone before the line above took effect
        os._exit(0)


@contextlib.contextmanager
def _stop_signals_deferred() -> Iterator[list[int]]:
    """Ctrl-C and SIGTERM that arrive inside the block are noted instead of acted on (main thread only, where
    Python runs signal handlers); the caller re-raises them where it can clean up."""
    if threading.current_thread() is not threading.main_thread():
        yield []
        return
    caught: list[int] = []
    previous = {s: signal.signal(s, lambda signum, frame: caught.append(signum)) for s in _STOP_SIGNALS}
    try:
        yield caught
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


@contextlib.contextmanager
def _workers_born_ignoring_ctrl_c() -> Iterator[None]:
    """Processes started inside the block ignore SIGINT from their first instruction: a spawned worker inherits an
    ignored signal (not the signal mask, which the spawn start resets), and Python keeps an inherited SIG_IGN, so
    one still importing when Ctrl-C reaches the process group prints no KeyboardInterrupt traceback. A Ctrl-C sent
    to this process meanwhile stays pending (Linux keeps a blocked signal even while it is ignored) and reaches the
    handler in place before the block once it ends. Main thread only, as signal handlers are."""
    if threading.current_thread() is not threading.main_thread() or not hasattr(signal, "pthread_sigmask"):
        yield
        return
    mask = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    handler = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, handler)
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)


def _draw_in_processes(jobs: list[tuple], workers: int, bar: tqdm) -> None:
    """Draw `jobs` in a pool of "spawn" processes (spawn never copies the caller's threads or locks, torch's and
    tqdm's, as fork does). Stopping it (Ctrl-C, SIGTERM) must leave no worker to print a traceback: a stop waits
    while the pool starts its workers (one half-started would read its set-up from a closed pipe), and on any
    stop every worker still alive is killed and reaped before the pool's locks go away."""
    with _stop_signals_deferred() as caught, _workers_born_ignoring_ctrl_c():
        pool = multiprocessing.get_context("spawn").Pool(workers, _init_worker, (os.getpid(),))
    try:
        for signum in caught:   # a stop that came while the pool started lands here
            signal.raise_signal(signum)
        for _ in pool.imap_unordered(_draw_job, jobs, chunksize=16):
            bar.update()
    except BaseException:
        pool.terminate()
        for child in multiprocessing.active_children():   # workers the pool started while it was ending
            child.kill()
            child.join(10)
        raise
    finally:
        pool.terminate()


def draw_images(items: Sequence[Item], images_dir: Path, seed: int, workers: int, progress: bool) -> None:
    """Draw all images, in `workers` processes when more than one."""
    jobs = [(str(images_dir), seed, item.id, item.category, tuple(item.attrs.items())) for item in items]
    bar = tqdm(total=len(jobs), desc="drawing", unit="img", disable=not progress)
    if workers == 1:
        for job in jobs:
            _draw_job(job)
            bar.update()
    else:
        _draw_in_processes(jobs, workers, bar)
    bar.close()


def item_title(item: Item) -> str:
    """A plain, canonical description for the catalog table: "fitted navy striped long-sleeve shirt
    with a v-neck, no buttons"."""
    a = item.attrs
    noun = NOUNS[item.category][0]
    words = [a["fit"]]
    if item.category == "trousers":  # short trousers are shorts, knee-length ones cropped
        noun = "shorts" if a["length"] == "short" else noun
        words += {"short": [], "knee": ["cropped"], "long": ["full-length"]}[a["length"]]
    elif a["length"] != NOT_APPLICABLE:
        words.append({"short": "short", "knee": "knee-length", "long": "full-length"}[a["length"]])
    words += [a["color"], {"polka dot": "polka-dot"}.get(a["pattern"], a["pattern"])]
    if a["sleeve"] != NOT_APPLICABLE:
        words.append({"sleeveless": "sleeveless", "short": "short-sleeve", "long": "long-sleeve"}[a["sleeve"]])
    words.append(noun)
    extras = []
    if a["neckline"] != NOT_APPLICABLE:
        extras.append({"round": "a round neck", "v-neck": "a v-neck", "collar": "a collar"}[a["neckline"]])
    if a["buttons"] != NOT_APPLICABLE:
        extras.append("buttons" if a["buttons"] == "yes" else "no buttons")
    if a["belt"] != NOT_APPLICABLE:
        extras.append("a belt" if a["belt"] == "yes" else "no belt")
    if not extras:
        return " ".join(words)
    listed = extras[0] if len(extras) == 1 else ", ".join(extras[:-1]) + " and " + extras[-1]
    return " ".join(words) + " with " + listed


def _write_json(path: Path, data: object) -> None:
    # FashionIQ's files are indented by 4; keep the layout so diffs against them read the same.
    path.write_text(json.dumps(data, indent=4) + "\n", encoding="utf-8")


def write_splits(items: Sequence[Item], out: Path, splits: Sequence[str] = SPLITS) -> None:
    folder = out / "image_splits"
    folder.mkdir()
    for category in CATEGORIES:
        for split in splits:
            ids = [item.id for item in items if item.category == category and item.split == split]
            _write_json(folder / f"split.{category}.{split}.json", ids)


def write_captions(triplets: Mapping[tuple[str, str], list[Triplet]], out: Path) -> None:
    (out / "captions").mkdir()
    for (category, split), entries in triplets.items():
        data = [{"target": t.target, "candidate": t.reference, "captions": list(t.captions),
                 "asks": {attribute: list(values) for attribute, values in (t.asks or {}).items()}}
                for t in entries]
        _write_json(out / caption_file(category, split), data)


def write_catalog_csv(items: Sequence[Item], out: Path) -> None:
    with (out / "catalog.csv").open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(CATALOG_COLUMNS)
        for item in items:
            writer.writerow([item.id, f"images/{item.id}.png", item.category, item.split, item_title(item),
                             *(item.attrs[a] for a in ATTRIBUTES)])
