"""sdfn demo: language-based fashion retrieval with a look inside the router. Also the Hugging Face Spaces app_file.

    python demo.py [--host 127.0.0.1] [--port 7860] [--catalog DIR] [--checkpoint DIR] [--no-training]
                   [--train-root DIR] [--threads N] [--max-batch N]

On a fresh clone it generates the default synthetic catalog (catalogs/synthetic, once; installed: under $SDFN_HOME
or ~/.cache/sdfn, see catalogs/README.md), builds its index (cached on disk, so later starts only load it), loads
the shipped model (sdfn/assets/sdfn-tiny) and serves. That first start takes about a minute: the page is served at
once meanwhile (sdfn.demo_preparing: what it is doing, with counts; the API answers "still preparing"), the
libraries are imported while the catalog is drawn, and the page turns into the demo when it is ready. On Hugging Face
Spaces (SPACE_ID is set) it listens on 0.0.0.0 and GRADIO_SERVER_PORT (default 7860), and training is off unless
the Space sets SDFN_DEMO_TRAINING=1. The layout and handlers are in sdfn/demo_app.py; what the server exposes and
how to run it publicly: README, "Security and limits".
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import signal
import socket
import sys
import threading
import time
from pathlib import Path
from typing import Any

from sdfn.demo_progress import StartupProgress, report_progress_bars
from sdfn.errors import SdfnError
from sdfn.paths import SHIPPED_CHECKPOINT, default_catalog

SPACES_PORT = 7860


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Serve the sdfn demo (Gradio).")
    parser.add_argument("--host", default=None,
                        help="address to listen on (default 127.0.0.1; 0.0.0.0 on Hugging Face Spaces)")
    parser.add_argument("--port", type=int, default=None,
                        help="port (default: GRADIO_SERVER_PORT, else 7860 on Spaces, else the first free from 7860)")
    parser.add_argument("--catalog", default=None,
                        help="catalog folder (default: SDFN_HOME/catalogs/synthetic, generated when missing)")
    parser.add_argument("--checkpoint", default=None, help="checkpoint folder (default: the shipped sdfn-tiny)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads for searches (default: all cores)")
    parser.add_argument("--no-training", action="store_true", help="hide the Train view's controls")
    parser.add_argument("--train-root", default=None,
                        help="a folder whose catalogs visitors may also train on (default: only the served catalog)")
    parser.add_argument("--max-batch", type=int, default=64,
                        help="concurrent searches answered together in one batch at most (1: one at a time)")
    return parser.parse_args(argv)


def on_spaces() -> bool:
    return bool(os.environ.get("SPACE_ID"))


def address(args: argparse.Namespace) -> tuple[str, int | None]:
    """Where to listen: the arguments, else what Spaces expects there, else local defaults. A port that cannot be
    listened on (out of range, taken, not a number) is refused here, in one line, before anything is loaded."""
    env_port = os.environ.get("GRADIO_SERVER_PORT")
    if env_port is not None and not env_port.strip().isdigit():
        raise SdfnError(f"GRADIO_SERVER_PORT={env_port!r} is not a port number: set it to one from 1 to 65535, "
                        "or unset it and give --port")
    if on_spaces():
        host, port = args.host or "0.0.0.0", args.port or int(env_port or SPACES_PORT)
    else:
        host, port = args.host or "127.0.0.1", args.port or (int(env_port) if env_port else None)
    if port is not None:
        check_port(host, port)
    return host, port


def check_port(host: str, port: int) -> None:
    """Refuse a port out of range or one another program already listens on (SdfnError naming what to do)."""
    if not 1 <= port <= 65535:
        raise SdfnError(f"port {port} is out of range: give --port a number from 1 to 65535")
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as err:
        raise SdfnError(f"cannot listen on host {host!r} ({err.strerror}): give --host an address of this machine, "
                        "e.g. 127.0.0.1 or 0.0.0.0") from None
    family, kind, proto, _, where = infos[0]
    with socket.socket(family, kind, proto) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)   # as the server binds it
        try:
            probe.bind(where)
        except OSError as err:
            raise SdfnError(f"cannot listen on {host}:{port} ({err.strerror}): another server may be using it; "
                            "give another port with --port, or stop that server") from None


def training_allowed(args: argparse.Namespace) -> bool:
    # a public Space is shared by every visitor: one visitor's training run would slow everyone's searches
    return not args.no_training and (not on_spaces() or os.environ.get("SDFN_DEMO_TRAINING") == "1")


def stop_on_sigterm() -> None:
    """SIGTERM (how systemd, docker and Spaces stop a service) stops the demo as Ctrl-C does: the server closes,
    then the exit handlers run (the training run is cancelled, the served-image folder removed)."""
    def stop(signum: int, frame: object) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, stop)


def needs_index(catalog: Path, checkpoint: str | None = None) -> bool:
    """A catalog whose index is not built yet, or was built for other weights than the checkpoint's, or whose
    manifest cannot be read (sdfn.index.manifest.INDEX_DIR; other damage is found only when the index is
    opened): building it takes a while, so the preparing page is served meanwhile."""
    if not (catalog / "catalog.csv").is_file():
        return False
    try:
        built_for = json.loads((catalog / "index" / "manifest.json").read_text(encoding="utf-8"))["model"]
    except (OSError, ValueError, KeyError, TypeError):
        return True
    try:
        config = Path(checkpoint) if checkpoint is not None else SHIPPED_CHECKPOINT
        wanted = json.loads((config / "sdfn_config.json").read_text(encoding="utf-8")).get("fingerprint")
    except (OSError, ValueError, AttributeError):
        return False    # the checkpoint's own check names the problem when it is loaded
    return not isinstance(built_for, dict) or (wanted is not None and built_for.get("fingerprint") != wanted)


class _Preparing(threading.Thread):
    """Import gradio, serve the preparing page, then import what the demo needs (torch, the model code, the app):
    while the main thread draws the first catalog (in worker processes), none of it waits for the drawing."""

    def __init__(self, progress: StartupProgress, host: str, port: int | None):
        super().__init__(name="sdfn-demo-preparing", daemon=True)
        self.progress, self.host, self.port = progress, host, port
        self.page: Any = None
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            from sdfn.demo_preparing import serve_preparing

            self.page, self.port = serve_preparing(self.progress, self.host, self.port)
            print(f"sdfn demo: preparing; the page is served meanwhile at http://{self.host}:{self.port}/",
                  file=sys.stderr, flush=True)
            import sdfn.demo_app  # noqa: F401  (imported now, while the catalog is drawn)
            import sdfn.demo_service  # noqa: F401
        except BaseException as err:   # handed to the main thread, which raises it
            self.error = err

    def finish(self) -> int | None:
        """Wait for the imports; the port the page was served on (the demo takes it over)."""
        self.join()
        if self.error is not None:
            raise self.error
        return self.port

    def close(self) -> None:
        if self.page is not None:
            self.page.close()
            self.page = None


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    stop_on_sigterm()
    logging.basicConfig(level=logging.WARNING, format="sdfn demo: %(name)s: %(message)s")
    logging.getLogger("sdfn").setLevel(logging.INFO)
    start = time.perf_counter()
    progress = StartupProgress()
    report_progress_bars(progress.report)   # before sdfn's modules bind tqdm's class: the page shows the counts
    try:
        host, port = address(args)
    except SdfnError as err:
        print(f"sdfn demo: error: {err}", file=sys.stderr)
        return 2
    preparing = None
    try:
        catalog = Path(args.catalog) if args.catalog is not None else default_catalog()
        draw = args.catalog is None and not (catalog / "catalog.csv").is_file()
        if draw or needs_index(catalog, args.checkpoint):
            preparing = _Preparing(progress, host, port)
            preparing.start()
        if draw:
            print("sdfn demo: first start: drawing the synthetic catalog (once, about a minute)…", file=sys.stderr,
                  flush=True)
            progress.set("drawing the synthetic catalog (once)")
            from sdfn.data.synth import generate_catalog

            generate_catalog(catalog, seed=0, progress=True)
        if preparing is not None:
            port = preparing.finish()
        print("sdfn demo: loading the model, the catalog and its index…", file=sys.stderr, flush=True)
        progress.set("loading the model, the catalog and its index")
        from sdfn.demo_app import build_demo, launch
        from sdfn.demo_service import DemoService

        service = DemoService(args.checkpoint, args.catalog, threads=args.threads, train_root=args.train_root,
                              max_batch=args.max_batch).load()
        progress.set("starting the demo's page")
        demo = build_demo(service, allow_training=training_allowed(args))
    except (SdfnError, OSError) as err:   # a bad catalog or checkpoint, an unwritable data folder: one line
        print(f"sdfn demo: error: {err}", file=sys.stderr)
        return 2
    finally:
        if preparing is not None:
            preparing.close()   # the demo takes its port over
    print(f"sdfn demo: ready in {time.perf_counter() - start:.1f} s", file=sys.stderr, flush=True)
    with contextlib.suppress(KeyboardInterrupt):   # outside Gradio's own wait (e.g. while it starts): same stop
        launch(demo, service, host, port)
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:   # Ctrl-C or SIGTERM before the server runs (imports, catalog, index): no traceback
        print("sdfn demo: stopped", file=sys.stderr)
        sys.exit(130)
