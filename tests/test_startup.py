"""Start-up: while the demo prepares (drawing the first catalog, building an index) a page is served at once that
says what it is doing, and every named endpoint answers "still preparing", never a wrong answer; once ready, the
same address answers searches. No timing is asserted here (benchmarks/demo_startup.py measures it)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from gradio_client import Client
from gradio_client.exceptions import AppError
from gradio_client.utils import QueueError
from helpers import free_port
from tqdm import tqdm

from sdfn.demo_preparing import ENDPOINTS, PREPARING_TITLE, serve_preparing, status_html
from sdfn.demo_progress import StartupProgress, reporting_bar_class

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.filterwarnings("ignore:.*(no_silent_downcasting|copy keyword).*")


def test_startup_progress_follows_the_running_bar(tmp_path):
    progress = StartupProgress()
    progress.set("loading the model")
    assert progress.describe().startswith("loading the model (")
    Bar = reporting_bar_class(tqdm, progress.report)
    with (tmp_path / "console").open("w") as console:
        bar = Bar(total=6000, desc="drawing", unit="img", file=console)   # a bar reports when it starts
        assert progress.describe().startswith("drawing the synthetic catalog (once): 0 of 6,000 images")
        bar.update(1500)
        bar.close()                                                        # and when it ends
    assert progress.describe().startswith("drawing the synthetic catalog (once): 1,500 of 6,000 images")
    assert "aria-valuenow='25'" in status_html(progress)


def test_a_bar_cut_short_while_it_starts_closes_quietly():
    """A stop (Ctrl-C, SIGTERM) inside a bar's __init__ leaves it half made; tqdm's __del__ still closes it, and that
    must not print a traceback after the demo's one-line stop (seen in CI: no attribute 'disable')."""
    reports = []
    Bar = reporting_bar_class(tqdm, lambda *record: reports.append(record))
    half_made = Bar.__new__(Bar)           # what __init__ leaves when interrupted before tqdm sets anything
    half_made.close()
    del half_made
    assert reports == []


def test_the_preparing_page_says_what_it_does_and_every_endpoint_refuses():
    progress = StartupProgress()
    progress.report("encoding catalog images", 12, 47, "batch", False)
    page, port = serve_preparing(progress, "127.0.0.1", free_port())
    try:
        url = f"http://127.0.0.1:{port}/"
        assert httpx.get(f"{url}config", timeout=30).json()["title"] == PREPARING_TITLE
        client = Client(url, verbose=False)
        calls = [("/search", ("dress-000004", None, "is red", 10, ""), {}), ("/info", (), {}),
                 # by keyword, with the demo's own parameter names, as its README shows
                 ("/search", (), {"reference": "dress-000004", "text": "is red", "k": 5}),
                 ("/explain", (), {"reference": "dress-000004", "text": "is red"}),
                 ("/compare_models", (), {"reference": "dress-000004", "text": "is red", "k": 5})]
        for name, args, kwargs in calls:
            with pytest.raises(AppError) as caught:
                client.predict(*args, **kwargs, api_name=name)
            message = str(caught.value)
            assert "still preparing" in message
            assert "building the catalog's index (encoding its images): 12 of 47 batches" in message
            assert "Traceback" not in message
        assert {f"/{e}" for e in ENDPOINTS} <= set(client.view_api(print_info=False, return_format="dict")
                                                   ["named_endpoints"])
    finally:
        page.close()


def test_demo_serves_while_it_builds_the_index_then_answers(small_catalog, tiny_checkpoint, tmp_path):
    """demo.py on a catalog with no index yet: the preparing page first, then the demo at the same address."""
    catalog = tmp_path / "catalog"
    shutil.copytree(small_catalog, catalog, ignore=shutil.ignore_patterns("index"))
    port = free_port()
    env = {**os.environ, "TMPDIR": str(tmp_path), "SDFN_HOME": str(tmp_path / "home")}
    env.pop("SPACE_ID", None)
    log = tmp_path / "demo.log"
    with log.open("w") as out:
        demo = subprocess.Popen([sys.executable, str(ROOT / "demo.py"), "--catalog", str(catalog), "--checkpoint",
                                 str(tiny_checkpoint), "--port", str(port), "--no-training", "--threads", "1"],
                                env=env, cwd=tmp_path, stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/"
    try:
        answer, titles = None, set()
        deadline = time.time() + 300
        while answer is None and time.time() < deadline:
            assert demo.poll() is None, log.read_text()
            try:
                titles.add(httpx.get(f"{url}config", timeout=10).json()["title"])
                answer = Client(url, verbose=False).predict("dress-000004", None, "is red", 3, "",
                                                            api_name="/search")
            except AppError as err:     # the preparing page: it must say so
                assert "still preparing" in str(err)
                time.sleep(0.5)
            except (httpx.HTTPError, ValueError, OSError):   # not serving yet, or between the two servers
                time.sleep(0.5)
            except QueueError:   # the preparing page closing: its stopped queue answers 503 (read as "full")
                time.sleep(0.5)
            except KeyError as err:
                # the preparing page closing while this request's stream is open: Gradio sends "unexpected_error"
                # ("Server stopped unexpectedly."), a message gradio_client 2.7 has no status for
                assert "unexpected_error" in str(err)
                time.sleep(0.5)
        assert answer is not None, log.read_text()
        assert len(answer["results"]) == 3
        assert "the page is served meanwhile" in log.read_text()
        assert PREPARING_TITLE not in titles or len(titles) == 2   # if the preparing page was seen, so was the demo
    finally:
        demo.terminate()
        demo.wait(60)


def test_a_port_it_cannot_listen_on_is_refused_in_one_line_before_loading(tmp_path):
    """A taken port, one out of range or a GRADIO_SERVER_PORT that is not a number: exit 2 with one line that
    says what to do, before the model or the catalog is loaded (no traceback)."""
    import socket

    env = {**os.environ, "HF_HUB_OFFLINE": "1", "GRADIO_ANALYTICS_ENABLED": "False", "SDFN_HOME": str(tmp_path)}
    env.pop("SPACE_ID", None)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        runs = [(["--port", str(port)], {}, f"cannot listen on 127.0.0.1:{port}"),
                (["--port", "99999"], {}, "port 99999 is out of range"),
                ([], {"GRADIO_SERVER_PORT": "78x"}, "GRADIO_SERVER_PORT='78x' is not a port number")]
        for args, extra, said in runs:
            done = subprocess.run([sys.executable, "demo.py", "--catalog", str(tmp_path / "none"), *args],
                                  cwd=ROOT, env={**env, **extra}, capture_output=True, text=True, timeout=120)
            assert done.returncode == 2, done.stderr[-2000:]
            assert said in done.stderr and "Traceback" not in done.stderr
            assert "loading the model" not in done.stderr


def test_an_index_it_must_rebuild_gets_the_preparing_page(tmp_path):
    """needs_index: no index, an unreadable manifest, or one built for other weights than the checkpoint's (the
    rebuild takes a while: the page is served meanwhile); an index of these weights, or no catalog yet, does not."""
    sys.path.insert(0, str(ROOT))
    import demo

    catalog, checkpoint = tmp_path / "cat", tmp_path / "ckpt"
    (catalog / "index").mkdir(parents=True)
    checkpoint.mkdir()
    (checkpoint / "sdfn_config.json").write_text('{"fingerprint": "abc"}')
    assert not demo.needs_index(catalog, str(checkpoint))                     # no catalog.csv: drawn first
    (catalog / "catalog.csv").write_text("id,image,category\n")
    assert demo.needs_index(catalog, str(checkpoint))                         # no manifest
    manifest = catalog / "index" / "manifest.json"
    manifest.write_text('{"model": {"fingerprint": "ab')                     # cut short by a kill -9
    assert demo.needs_index(catalog, str(checkpoint))
    manifest.write_text('{"model": {"fingerprint": "old"}}')                 # another model's index
    assert demo.needs_index(catalog, str(checkpoint))
    manifest.write_text('{"model": {"fingerprint": "abc"}}')
    assert not demo.needs_index(catalog, str(checkpoint))
