"""The Space deployment path (sdfn.space_files, README "Hugging Face Spaces") plays a Space start: exactly the
files it uploads, copied to a fresh folder, with SPACE_ID and GRADIO_SERVER_PORT set, serve `python demo.py`,
which answers /search through gradio_client.

A real Space generates the full default catalog on start (a minute or more); here the same default location
($SDFN_HOME/catalogs/synthetic) holds the test session's small catalog instead, so the start takes seconds.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from gradio_client import Client
from helpers import free_port

from sdfn.demo_preparing import PREPARING_TITLE
from sdfn.space_files import MAX_FILE_BYTES, copy_space, space_files

REPO = Path(__file__).resolve().parent.parent
START_TIMEOUT_S = 300
pytestmark = pytest.mark.slow


def test_the_upload_list_is_the_app_and_its_package_and_nothing_generated():
    files = space_files(REPO)
    assert {"README.md", "demo.py", "requirements.txt", "sdfn/__init__.py", "sdfn/configs/tiny-synthetic.json",
            "sdfn/assets/sdfn-tiny/sdfn_config.json", "sdfn/model_configs/sdfn-tiny.json"} <= set(files)
    assert not [f for f in files if f.startswith(("catalogs/", "runs/", "tests/", "benchmarks/", ".venv/"))]
    assert not [f for f in files if "__pycache__" in f or f.endswith(".pyc")]
    assert max((REPO / f).stat().st_size for f in files) <= MAX_FILE_BYTES
    front_matter = (REPO / "README.md").read_text().split("---")[1]
    assert "app_file: demo.py" in front_matter and "sdk: gradio" in front_matter


def test_a_copy_of_the_upload_serves_search_as_a_space(small_catalog, tmp_path):
    space = tmp_path / "space"
    copied = copy_space(space, REPO)
    assert sorted(str(p.relative_to(space)) for p in space.rglob("*") if p.is_file()) == copied
    home = tmp_path / "home"
    shutil.copytree(small_catalog, home / "catalogs" / "synthetic", ignore=shutil.ignore_patterns("index", ".*"))
    port = free_port()
    env = {**os.environ, "SPACE_ID": "sdfn-tests/sdfn-demo", "GRADIO_SERVER_PORT": str(port), "SDFN_HOME": str(home),
           "HF_HUB_OFFLINE": "1", "GRADIO_ANALYTICS_ENABLED": "False", "HF_HUB_DISABLE_TELEMETRY": "1",
           "OMP_NUM_THREADS": "1"}
    env.pop("PYTHONPATH", None)
    where = subprocess.run([sys.executable, "-c", "import sdfn; print(sdfn.__file__)"], cwd=space, env=env,
                           capture_output=True, text=True, check=True).stdout.strip()
    assert Path(where).is_relative_to(space), where           # the copy's package, not the checkout's
    log = (tmp_path / "space.log").open("w")
    server = subprocess.Popen([sys.executable, "demo.py"], cwd=space, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        client = connect(f"http://127.0.0.1:{port}/", server, tmp_path / "space.log")
        answer = client.predict(reference="dress-000000", text="is red", k=5, api_name="/search")
        assert len(answer["results"]) == 5
        assert answer["query"]["reference"] == "dress-000000"
        # on Spaces it listens on every address (0.0.0.0), not only on 127.0.0.1
        with socket.create_connection((socket.gethostbyname(socket.gethostname()), port), timeout=5):
            pass
    finally:
        server.terminate()
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
        log.close()


def connect(url: str, server: subprocess.Popen, log: Path) -> Client:
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if server.poll() is not None:
            pytest.fail(f"demo.py exited with {server.returncode}:\n{log.read_text()[-3000:]}")
        try:
            client = Client(url, verbose=False)
        except Exception:  # noqa: BLE001 (not up yet: connection refused, or the config not served yet)
            time.sleep(2)
            continue
        if client.config.get("title") != PREPARING_TITLE:   # the demo itself, not the page served while it prepares
            return client
        time.sleep(2)
    pytest.fail(f"demo.py did not serve within {START_TIMEOUT_S} s:\n{log.read_text()[-3000:]}")
