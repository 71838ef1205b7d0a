"""The Gradio demo, served in-process and driven through gradio_client and raw HTTP: named endpoints answer
correctly, bad input gets a readable message (never a stack trace), concurrent searches are all answered as
sequential ones, the server serves one (model, index) snapshot whatever is rebuilt on disk, only catalog images are
downloadable, the Train view's handlers refuse hostile raw queue requests, training runs in the background and its
model can be served, and demo.py listens where Hugging Face Spaces expects."""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import SimpleNamespace

import httpx
import pytest
import torch
from gradio_client import Client, handle_file
from gradio_client.exceptions import AppError
from helpers import free_port, png_1bit

from sdfn.catalog import build_catalog
from sdfn.demo_app import build_demo, client_message, launch, route_outputs
from sdfn.demo_batching import Batcher
from sdfn.demo_preparing import PREPARING_TITLE
from sdfn.demo_service import DemoService
from sdfn.demo_training import TrainingPolicy, TrainingSettings
from sdfn.errors import ConfigError, DataError, SdfnError
from sdfn.evaluate import join_captions
from sdfn.fusion import FusionConfig
from sdfn.model import SHIPPED_CHECKPOINT, ComposedRetrievalModel, ModelConfig
from sdfn.retrieval import Retriever

ROOT = Path(__file__).resolve().parent.parent


# gradio's own queue code trips pandas 3's deprecation warnings on every event; they say nothing about the demo
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning:gradio.queueing",
                                        "ignore:.*(no_silent_downcasting|copy keyword).*")


@pytest.fixture(scope="module")
def service(served_demo) -> DemoService:
    return served_demo[0]


@pytest.fixture(scope="module")
def catalog(service) -> Path:
    return service.retriever.catalog.root


@pytest.fixture(scope="module")
def client(served_demo) -> Client:
    return Client(served_demo[1], verbose=False)


def search(client: Client, reference: str = "", image=None, text: str = "", k: int = 10, category: str = "") -> dict:
    return client.predict(reference, image, text, k, category, api_name="/search")


def refused(client: Client, api_name: str, *args) -> str:
    with pytest.raises(AppError) as caught:
        client.predict(*args, api_name=api_name)
    message = str(caught.value)
    assert "Traceback" not in message and 'File "' not in message
    return message


class RawClient:
    """A client that ignores the API docs: POST /gradio_api/queue/join by fn_index with a session hash of its
    own, and the answer read from the SSE stream (/gradio_api/queue/data), as any script could."""

    def __init__(self, url: str):
        self.url = url.rstrip("/")
        self.session = uuid.uuid4().hex
        self.config = httpx.get(f"{self.url}/config", timeout=30).json()

    def fn_index(self, elem_id: str, event: str) -> int:
        """The fn_index of the handler that `event` on the component with `elem_id` triggers."""
        ids = {c["id"] for c in self.config["components"] if c.get("props", {}).get("elem_id") == elem_id}
        found = [d["id"] for d in self.config["dependencies"] if any(t[0] in ids and t[1] == event
                                                                      for t in d["targets"])]
        assert len(found) == 1, (elem_id, event, found)
        return found[0]

    def call(self, fn_index: int, data: list, event_data: dict | None = None) -> dict:
        """The process_completed message: {"success": bool, "output": {"data": [...]} or {"error": ...}}."""
        joined = httpx.post(f"{self.url}/gradio_api/queue/join", timeout=30, json={
            "data": data, "fn_index": fn_index, "session_hash": self.session, "event_data": event_data,
            "trigger_id": None})
        assert joined.status_code == 200, joined.text
        event_id = joined.json()["event_id"]
        with httpx.stream("GET", f"{self.url}/gradio_api/queue/data", params={"session_hash": self.session},
                          timeout=120) as stream:
            for line in stream.iter_lines():
                if not line.startswith("data:"):
                    continue
                message = json.loads(line[5:])
                if message.get("event_id") == event_id and message.get("msg") == "process_completed":
                    return message
        raise AssertionError("the queue closed the stream without completing the event")

    def status_text(self, answer: dict, position: int = 3) -> str:
        """The Train view's status markdown (the 4th output of start/cancel, the 2nd of "Use this model") or the
        error a refused event carries."""
        assert "Traceback" not in json.dumps(answer)
        if not answer["success"]:
            return str(answer["output"].get("error"))
        status = answer["output"]["data"][position]
        return status if isinstance(status, str) else json.dumps(status)


def serve(service: DemoService) -> tuple[object, str]:
    port = free_port()
    demo = build_demo(service)
    _, url, _ = launch(demo, service, "127.0.0.1", port, prevent_thread_lock=True, quiet=True)
    return demo, url


def other_checkpoint(folder: Path) -> Path:
    """A random-init model with other weights than the tiny checkpoint (backbone included)."""
    torch.manual_seed(1)
    ComposedRetrievalModel(ModelConfig(fusion=FusionConfig(width=32, heads=2, router_hidden=16))).save(folder)
    return folder


def a_known_pair(catalog: Path) -> dict:
    entry = json.loads((catalog / "captions" / "cap.dress.val.json").read_text())[0]
    return {"reference": entry["candidate"], "target": entry["target"], "text": join_captions(entry["captions"])}


# ---- answers ---------------------------------------------------------------------------------------------------

def test_endpoints_are_named(client):
    named = set(client.view_api(print_info=False, return_format="dict")["named_endpoints"])
    # exactly these: the UI's own events are private (/explain and /compare_models: sdfn.demo_explain)
    assert named == {"/search", "/route", "/route_plot", "/suggestions", "/route_statistics", "/info", "/explain",
                     "/compare_models"}


def test_search_by_catalog_item(client, service):
    answer = search(client, "dress-000004", text="is red and has long sleeves", k=5)
    assert [r["rank"] for r in answer["results"]] == [1, 2, 3, 4, 5]
    assert {"id", "score", "image", "title", "category"} <= set(answer["results"][0])
    assert "dress-000004" not in [r["id"] for r in answer["results"]]
    direct = service.search("dress-000004", "is red and has long sleeves", k=5).result
    assert [r["id"] for r in answer["results"]] == [i.id for i in direct.items]
    assert answer["routing"]["strongest_path"] and answer["target"] is None
    by_name = client.predict(reference="dress-000004", text="is red", api_name="/search")  # the README's call
    assert len(by_name["results"]) == 10


def test_search_by_uploaded_image(client, catalog):
    answer = search(client, image=handle_file(str(catalog / "images" / "shirt-000007.png")), k=3)
    assert answer["query"]["reference"] == "uploaded image" and answer["query"]["mode"] == "image-only"
    assert answer["results"][0]["id"] == "shirt-000007"     # the same garment, found from its pixels
    assert any("image-only" in note for note in answer["query"]["notes"])


def test_known_pair_marks_its_target(client, catalog):
    pair = a_known_pair(catalog)
    answer = search(client, pair["reference"], text=pair["text"], k=100, category="dress")
    target = answer["target"]
    assert target["target"] == pair["target"] and target["split"] == "val" and target["found"]
    assert answer["results"][target["rank"] - 1]["id"] == pair["target"]
    assert f"rank {target['rank']}" in target["message"]
    suggestions = client.predict(pair["reference"], api_name="/suggestions")
    assert any(s["text"] == pair["text"] and s["target"] == pair["target"] for s in suggestions)


def test_route_and_its_figure(client):
    answer = client.predict("toptee-000003", None, "is darker and has no pattern", api_name="/route")
    routing = answer["routing"]
    assert routing["mode"] == "msr" and len(routing["layers"]) == 3 and len(routing["cells"]) == 4
    assert routing["layers"][0]["image"] is not None and routing["layers"][0]["text"] is not None
    assert all(abs(sum(layer) - 1) < 1e-4 for layer in answer["cell_usage"])
    assert all(m["description"] for m in answer["modules"])
    figure = client.predict("toptee-000003", None, "is darker and has no pattern", api_name="/route_plot")
    data = json.loads(figure["plot"])["data"]
    assert [t["type"] for t in data].count("heatmap") == 9      # 3 layers x (image, text, sum)
    assert "self-attention" in json.dumps(data)                 # hover says what a module does


def test_difference_figures_print_rounded_numbers_in_their_cells(service):
    """The page's plotly.js ignores a cell format with a '+' flag and prints the raw float (0.9720427393913269):
    Compare's B − A heatmaps and the statistics' difference panel use plain formats."""
    from sdfn import viz

    a, b = service.routes("dress-000001", ["is red and has longer sleeves", "is darker and has no pattern"])
    stats = service.route_statistics("val")
    figures = [viz.comparison_figure(a.trace, b.trace, "A", "B"), viz.statistics_figure(stats)]
    templates = {t.texttemplate for f in figures for t in f.data if t.type == "heatmap"}
    assert templates and all(re.fullmatch(r"%\{z:\.\d[f%]\}", t) for t in templates), templates
    # the image router reads each module's output, which mixes in the words: its layer-1 gates move with the
    # text too (Compare says so; it used to say only the text router's could)
    moved = (b.trace.image[0] - a.trace.image[0]).abs().amax()
    assert float(moved) > 0


def test_route_statistics_by_kind_of_change(client, service):
    stats = client.predict("val", api_name="/route_statistics")
    kinds = [k["kind"] for k in stats["by_kind"]]
    assert stats["overall"]["queries"] > 0 and {"color", "pattern"} <= set(kinds)
    assert service.route_statistics("val") is service.route_statistics("val")    # cached


def test_info(client, service):
    info = client.predict(api_name="/info")
    assert info["items"] == len(service.retriever.index) and info["fusion"] == "sdfn"
    assert info["model_fingerprint"] == service.retriever.model.fingerprint()
    # no server folder in the answer: the catalog and the checkpoint by their folder names
    assert info["catalog"] == "catalog" and info["checkpoint"] == "sdfn" and "/" not in json.dumps(info)


def test_answers_name_paths_relative_to_the_catalog(client, catalog):
    answer = search(client, "dress-000004", text="is red", k=3)
    assert answer["query"]["reference_image"] == "images/dress-000004.png"
    assert all(r["image"] == f"images/{r['id']}.png" for r in answer["results"])
    route = client.predict("dress-000004", None, "is red", api_name="/route")
    assert route["query"]["reference_image"] == "images/dress-000004.png"
    assert str(catalog) not in json.dumps(answer) + json.dumps(route)


def test_static_fusion_says_it_has_no_route(tiny_checkpoint, catalog, tmp_path):
    combiner = ComposedRetrievalModel(ModelConfig(fusion=FusionConfig(name="combiner", width=32)))
    combiner.backbone.load_state_dict(ComposedRetrievalModel.load(tiny_checkpoint).backbone.state_dict())
    combiner.save(tmp_path / "combiner")
    shutil.copytree(catalog, tmp_path / "catalog")      # with its index: the same backbone's features are reused
    static = DemoService(tmp_path / "combiner", tmp_path / "catalog", threads=1, progress=False).load()
    summary, routes, usage = route_outputs(static, static.search("dress-000004", "is red", k=3).result)
    assert "static" in summary and "static" in json.dumps(routes.to_plotly_json())
    assert static.route_statistics("val") is None


def test_typed_text_shows_literally_in_the_status_and_router_lines(service):
    """A change with Markdown or HTML in it reads as typed: no bold, no link, no tag; one result is 'result'."""
    from sdfn.demo_app import _status_line

    typed = "**bold** [link](http://x) <b>tag</b>"
    result = service.search("dress-000004", typed, k=1).result
    status = _status_line(result, total=200)
    summary, _, _ = route_outputs(service, result)
    for shown in (status, summary):
        assert "**bold**" not in shown and "[link](" not in shown and "<b>" not in shown, shown
        assert r"\*\*bold\*\*" in shown and "&lt;b&gt;" in shown
    assert ": 1 result ·" in status
    assert "read as" not in status                       # read as typed: said once


def test_the_status_line_says_the_change_as_typed_and_as_the_model_read_it(service):
    """A rewritten request (sdfn.reading) is quoted as the visitor typed it, then as read, so the answer is not
    credited to words they never typed; the notes say each rewrite."""
    from dataclasses import replace

    from sdfn.demo_app import _status_line

    result = service.search("dress-000004", "is red", k=3).result
    read = replace(result, query=replace(result.query, text="same but  not so long", text_used="same but shorter"))
    assert "“same but not so long”, read as “same but shorter”" in _status_line(read, total=200)


# ---- bad input: a message that says what to do ----------------------------------------------------------------

def test_error_messages_shorten_the_catalog_folder_only_where_a_path_ends_there(tmp_path):
    """The catalog root is cut from messages only as a whole path part: a sibling folder whose name starts with
    the catalog's is another folder, named by its last part like any other server path."""
    root = tmp_path / "cat"
    service = SimpleNamespace(retriever=SimpleNamespace(catalog=SimpleNamespace(root=root)))

    def shown(text: str) -> str:
        return client_message(service, DataError(text))

    assert shown(f"cannot read {root}/images/a.jpg: truncated") == "cannot read images/a.jpg: truncated"
    assert shown(f"the index of catalog {root} is stale.") == "the index of catalog cat is stale."
    assert shown(f"see {root}") == "see cat"
    for sibling in (f"{root}alogs/other/b.jpg", f"{root}.bak/b.jpg", f"{root}-old/b.jpg", f"{root}_2/b.jpg"):
        assert shown(f"cannot read {sibling}.") == "cannot read b.jpg.", sibling
    assert str(tmp_path) not in shown(f"{root}alogs/other/b.jpg and {root}/c.jpg")


def test_error_messages_quote_a_huge_input_shortly(tmp_path):
    service = SimpleNamespace(retriever=SimpleNamespace(catalog=SimpleNamespace(root=tmp_path / "cat")))
    message = client_message(service, DataError(f"unknown item id '{'x' * 20_000_000}' in catalog cat. Give an id "
                                                "from the `id` column of catalog.csv."))
    assert len(message) < 300 and "(20,000,000 characters)" in message and message.endswith("catalog.csv.")
    assert client_message(service, DataError("word " * 10_000 + "do this")).endswith("do this")
    assert len(client_message(service, DataError("word " * 10_000))) <= 2000


def test_a_photo_that_cannot_be_read_gets_advice_for_whoever_sent_it(client, tmp_path):
    empty = tmp_path / "empty.jpg"
    empty.write_bytes(b"")
    message = refused(client, "/search", "", handle_file(str(empty)), "is red", 10, "")
    assert "empty.jpg: an empty file (0 bytes)" in message and "send a photo as JPEG, PNG" in message
    assert "remove the file" not in message


def test_route_statistics_name_an_unknown_split(client):
    message = refused(client, "/route_statistics", "x" * 5000)
    assert "unknown split" in message and "val, test, train" in message and len(message) < 300


def test_visitors_uploads_leave_gradio_s_cache_within_two_hours(service):
    """Gradio deletes cached uploads older than an hour, looking every hour: a public demo's disk does not fill."""
    assert build_demo(service, allow_training=False).delete_cache == (3600, 3600)


def test_search_without_a_reference(client):
    assert "give a reference" in refused(client, "/search", "", None, "is red", 10, "")


def test_unknown_item_names_close_matches(client):
    message = refused(client, "/search", "dress-00004", None, "is red", 10, "")
    assert "unknown item id 'dress-00004'" in message and "Close matches: dress-0000" in message


def test_errors_name_no_server_folder(client, catalog, tmp_path):
    """Whatever a remote client gets wrong, the message names the catalog by its name and its files relative to
    it, never a folder of the server, and tells a remote client how to send an image (not "a file path")."""
    unknown = refused(client, "/search", "nosuch", None, "is red", 10, "")
    assert f"in catalog {catalog.name}." in unknown and "`id` column of catalog.csv" in unknown
    assert "a file path" not in unknown and "handle_file" in unknown
    notes = tmp_path / "notes.txt"
    notes.write_text("not a picture")
    messages = [unknown,
                refused(client, "/search", "dress-000004", None, "is red", 5, "hats"),
                refused(client, "/route", "nosuch", None, "is red"),
                refused(client, "/route_plot", "nosuch", None, "is red"),
                refused(client, "/suggestions", "nosuch"),
                refused(client, "/route_statistics", "../../etc"),
                refused(client, "/route_statistics", str(catalog)),
                refused(client, "/search", "", handle_file(str(notes)), "is red", 10, "")]
    for message in messages:
        assert str(catalog.parent) not in message and str(tmp_path) not in message, message
        assert not re.search(r"(^|[\s'\"(])/[^\s/]+/", message), message    # no absolute path of any kind


def test_suggestions_refuse_an_unknown_item_as_search_does(client):
    assert "unknown item id 'dress-00004'" in refused(client, "/suggestions", "dress-00004")
    assert "give a reference" in refused(client, "/suggestions", "")
    assert isinstance(client.predict("dress-000004", api_name="/suggestions"), list)


def test_non_image_upload(client, tmp_path):
    notes = tmp_path / "notes.txt"
    notes.write_text("not a picture")
    message = refused(client, "/search", "", handle_file(str(notes)), "is red", 10, "")
    assert "notes.txt" in message and "gradio" not in message   # the visitor's file name, not a server path


def test_huge_image_is_refused_before_decoding(client, tmp_path):
    bomb = tmp_path / "huge.png"
    bomb.write_bytes(png_1bit(20_000, 20_000))
    message = refused(client, "/search", "", handle_file(str(bomb)), "is red", 10, "")
    assert "huge.png" in message and "400,000,000" in message


def test_empty_text_is_an_image_only_search(client):
    answer = search(client, "skirt-000002", text="   ", k=4)
    assert answer["query"]["mode"] == "image-only" and answer["routing"] is None and len(answer["results"]) == 4


def test_bad_k_and_category(client):
    assert "k must be" in refused(client, "/search", "dress-000004", None, "is red", 0, "")
    assert "categories" in refused(client, "/search", "dress-000004", None, "is red", 5, "hats").lower()


def test_k_must_be_a_whole_number_in_range(client):
    huge = refused(client, "/search", "dress-000004", None, "is red", 1e300, "")
    assert "k must be a whole number from 1 to 1,000" in huge and "1e+300" in huge
    assert "k must be a whole number" in refused(client, "/search", "dress-000004", None, "is red", 2.7, "")
    assert len(search(client, "dress-000004", text="is red", k=3.0)["results"]) == 3   # 3.0 is a whole number


# ---- concurrency -----------------------------------------------------------------------------------------------

def test_concurrent_searches_all_answered_as_sequential(client, service):
    queries = [(f"{c}-{i:06d}", text) for i, (c, text) in enumerate(
        [(c, t) for c in ("dress", "shirt", "toptee", "skirt", "trousers")
         for t in ("is red", "is darker and striped", "has a belt", "")][:20])]
    sequential = [search(client, ref, text=text, k=5) for ref, text in queries]
    with ThreadPoolExecutor(20) as pool:
        jobs = [client.submit(ref, None, text, 5, "", api_name="/search") for ref, text in queries]
        concurrent = list(pool.map(lambda job: job.result(timeout=120), jobs))
    assert len(concurrent) == 20
    for seq, con in zip(sequential, concurrent, strict=True):
        assert [r["id"] for r in con["results"]] == [r["id"] for r in seq["results"]]
        assert [r["score"] for r in con["results"]] == pytest.approx([r["score"] for r in seq["results"]], abs=1e-5)


def test_a_bad_query_fails_only_its_caller_and_the_good_ones_stay_one_batch(service, monkeypatch):
    """Queries are checked on their caller's thread: a bad one never joins the batch, so the good ones queued
    beside it run as one batch (not one by one) and answer as they would alone."""
    retriever = service.retriever
    good = [(i, text) for i, text in zip(retriever.catalog.ids[:3], ("is red", "has a belt", ""), strict=True)]
    alone = [retriever.search(ref, text, k=5) for ref, text in good]
    run_batch, release, batches = retriever.run_batch, threading.Event(), []

    def counted(prepared):
        batches.append(len(prepared))
        release.wait(30)                       # the first batch holds the worker while the others queue up
        return run_batch(prepared)

    monkeypatch.setattr(retriever, "run_batch", counted)
    with ThreadPoolExecutor(len(good) + 3) as pool:
        first = pool.submit(service.search, good[0][0], "is red", 5)
        while not batches:
            time.sleep(0.01)
        jobs = [pool.submit(service.search, ref, text, 5) for ref, text in good]
        bad_k = pool.submit(service.search, good[0][0], "is red", 2.5)
        unknown = pool.submit(service.search, "no-such-item-000001", "is red", 5)
        with pytest.raises(ConfigError, match="k must be a whole number from 1 to 1,000, got 2.5"):
            bad_k.result(30)
        with pytest.raises(SdfnError, match="no-such-item-000001"):
            unknown.result(30)
        while service._batcher._queue.qsize() < len(good):
            time.sleep(0.01)
        release.set()
        assert first.result(30).result.items
        answers = [job.result(30).result for job in jobs]
    assert batches == [1, len(good)]             # the good three ran as one batch, the bad ones never did
    for one, batched in zip(alone, answers, strict=True):
        assert [r.id for r in batched.items] == [r.id for r in one.items]
        assert [r.score for r in batched.items] == pytest.approx([r.score for r in one.items], abs=1e-5)


# ---- one snapshot: what answers is what /info names ------------------------------------------------------------

def test_index_rebuilt_from_outside_does_not_change_the_answers(small_catalog, tiny_checkpoint, tmp_path):
    """A demo serves one (model, index) snapshot: rebuilding its catalog's index with another model (as
    `sdfn index --catalog ... --checkpoint OTHER` does) changes neither its answers nor what /info reports."""
    shutil.copytree(small_catalog, tmp_path / "catalog", ignore=shutil.ignore_patterns("index"))
    expected = Retriever(tiny_checkpoint, tmp_path / "catalog", threads=1, progress=False).search(
        "dress-000001", "is red", k=5)      # builds the index for the tiny model; the demo then opens it
    service = DemoService(tiny_checkpoint, tmp_path / "catalog", threads=1, progress=False,
                          runs=tmp_path / "runs").load()
    demo, url = serve(service)
    try:
        client = Client(url, verbose=False)
        served = client.predict(api_name="/info")["model_fingerprint"]
        # before the demo's first search (a lazy server would read the cached features only now)
        other = Retriever(other_checkpoint(tmp_path / "other"), tmp_path / "catalog", threads=1,
                          progress=False)   # rebuilds CATALOG/index for the other model
        assert other.model.fingerprint() != served and other.index_status.action != "reused"
        after = search(client, "dress-000001", text="is red", k=5)
        assert [r["id"] for r in after["results"]] == [i.id for i in expected.items]
        assert [r["score"] for r in after["results"]] == pytest.approx([i.score for i in expected.items], abs=1e-5)
        assert client.predict(api_name="/info")["model_fingerprint"] == served
    finally:
        demo.close()


def test_a_server_start_checks_every_index_checksum(small_catalog, tiny_checkpoint, tmp_path):
    """A file of the index altered with its size and modification time kept (bit rot, a careless copy) passes the
    cheap checks a one-off search makes; a server checks every checksum when it starts, so it rebuilds instead
    of serving the damage."""
    shutil.copytree(small_catalog, tmp_path / "catalog", ignore=shutil.ignore_patterns("index"))
    Retriever(tiny_checkpoint, tmp_path / "catalog", threads=1, progress=False)      # builds the index
    vectors = tmp_path / "catalog" / "index" / "vectors.faiss"
    stat = vectors.stat()
    with open(vectors, "r+b") as handle:
        handle.seek(stat.st_size - 64 * 4 + 3)
        byte = handle.read(1)[0]
        handle.seek(-1, os.SEEK_CUR)
        handle.write(bytes([byte ^ 0x40]))
    os.utime(vectors, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    service = DemoService(tiny_checkpoint, tmp_path / "catalog", threads=1, progress=False,
                          runs=tmp_path / "runs").load()
    status = service.retriever.index_status
    assert status.action == "rebuilt" and "vectors.faiss" in status.message, status.message


# ---- what the web server hands out ----------------------------------------------------------------------------

def test_only_catalog_images_are_downloadable(served_demo, catalog):
    service, url = served_demo
    leftover = catalog / ".index.tmp-leftover"                       # as a killed index build leaves one
    leftover.mkdir(exist_ok=True)
    (leftover / "manifest.json").write_text("{}")
    secret = [catalog / "catalog.csv", catalog / "index" / "manifest.json", leftover / "manifest.json",
              catalog / "captions" / "cap.dress.test.json", *sorted((catalog / "index").glob("*.safetensors"))[:1],
              catalog / "images" / "dress-000004.png"]   # served only as its copy among the served images
    for path in secret:
        assert path.is_file(), path
        assert httpx.get(f"{url}gradio_api/file={path}").status_code == 403, path
    served = service.served_image("dress-000004")
    fetched = httpx.get(f"{url}gradio_api/file={served}")
    assert fetched.status_code == 200
    assert fetched.content == (catalog / "images" / "dress-000004.png").read_bytes()
    assert {p.suffix for p in service.images.folder.iterdir()} <= {".png", ".jpg", ".jpeg", ".webp", ".gif"}
    shutil.rmtree(leftover)


def test_catalog_images_outside_the_catalog_folder_show_in_the_search_view(small_catalog, tiny_checkpoint,
                                                                            tmp_path):
    """`sdfn catalog build --images ~/photos --out catalogs/photos`: the images stay outside the catalog folder;
    picking one and searching shows the reference and the results (Gradio refused those paths before)."""
    photos = tmp_path / "photos"
    for category in ("dress", "shirt"):
        (photos / category).mkdir(parents=True)
        for i in range(6):
            shutil.copy(small_catalog / "images" / f"{category}-{i:06d}.png", photos / category / f"{i}.png")
    build_catalog(photos, tmp_path / "catalogs" / "photos", progress=False)
    service = DemoService(tiny_checkpoint, tmp_path / "catalogs" / "photos", threads=1, progress=False,
                          runs=tmp_path / "runs").load()
    demo, url = serve(service)
    try:
        raw = RawClient(url)
        # inputs: the page's ids and the results shown (both session state, held by the server)
        picked = raw.call(raw.fn_index("catalog-browser", "select"), [None, None], {"index": 2, "value": None,
                                                                                     "selected": True})
        assert picked["success"], picked
        assert "Picked dress/2.png" in json.dumps(picked["output"]["data"])
        found = raw.call(raw.fn_index("search-button", "click"), [None, "is red", 4, "all"])
        assert found["success"], found
        gallery = found["output"]["data"][0]["value"]
        assert len(gallery) == 4
        for entry in gallery:
            image = httpx.get(f"{url}gradio_api/file={entry['image']['path']}")
            assert image.status_code == 200 and image.content.startswith(b"\x89PNG")
    finally:
        demo.close()


def call_by_curl(url: str, api_name: str, data) -> str:
    """POST /gradio_api/call/<api_name> and the SSE answer, as a curl user does: the error text, or 'complete'."""
    event = httpx.post(f"{url.rstrip('/')}/gradio_api/call/{api_name}", json={"data": data}, timeout=30).json()
    answer = httpx.get(f"{url.rstrip('/')}/gradio_api/call/{api_name}/{event['event_id']}", timeout=60).text
    kind, _, payload = answer.partition("\ndata: ")
    return "complete" if kind.strip() == "event: complete" else str(json.loads(payload.splitlines()[0])["error"])


def test_values_gradio_cannot_take_get_a_message_not_a_silent_error(served_demo):
    url = served_demo[1]
    assert call_by_curl(url, "search", ["dress-000003", None, "is red", 5, "all"]) == "complete"
    too_few = call_by_curl(url, "search", [1])
    assert "/search takes 5 input values in this order: reference, image, text, k, category; 1 was sent" in too_few
    too_many = call_by_curl(url, "search", ["dress-000003", None, "is red", 5, "all", "extra"])
    assert "6 were sent: send exactly 5" in too_many            # an extra value is never silently dropped
    assert "takes no input values; 1 was sent" in call_by_curl(url, "info", [3])
    for image in ("notafile", {"path": "/etc/passwd"}):
        message = call_by_curl(url, "search", ["", image, "is red", 5, "all"])
        assert "the 'image' input could not be read as sent" in message and "handle_file" in message, message
        assert "/etc" not in message


# ---- hostile clients: the Train view's handlers through the raw queue --------------------------------------------

def test_train_handlers_refuse_hostile_queue_requests(served_demo, catalog, tmp_path):
    service, url = served_demo
    attacker, owner = RawClient(url), RawClient(url)
    start, cancel = attacker.fn_index("train-start", "click"), attacker.fn_index("train-cancel", "click")

    def begin(client: RawClient, folder: str, epochs: float = 1) -> str:
        return client.status_text(client.call(start, ["tiny-synthetic", folder, epochs, 32, 1e-3, 0]))

    outside = tmp_path / "evil_target" / "sub" / "catalog"
    for folder in (str(outside), "~/evil_target", "../evil_target", str(catalog / "index")):
        assert "is not one this server trains on" in begin(attacker, folder)
    assert not (tmp_path / "evil_target").exists() and service.training is None
    assert "epochs must be a whole number from 1 to 20, got 1000" in begin(attacker, str(catalog), 1000)
    assert "epochs must be" in begin(attacker, "catalog", 2.5)
    assert service.training is None

    assert "Started run" in begin(owner, "catalog", 20)            # the served catalog, by its listed name
    run = service.training
    assert run is not None and run.settings.catalog_path == catalog and run.out.parent == service.runs
    assert "another visitor" in attacker.status_text(attacker.call(cancel, []))
    assert run.poll().running
    assert "already going" in begin(attacker, "catalog")
    owner.status_text(owner.call(cancel, []))
    assert run.poll().state == "cancelled"


def test_training_policy_with_a_root_allows_only_existing_catalogs_inside_it(small_catalog, tmp_path):
    root, served = tmp_path / "trainable", tmp_path / "served"
    shutil.copytree(small_catalog, root / "mine", ignore=shutil.ignore_patterns("index", "images"))
    served.mkdir()
    (root / "empty").mkdir()
    (root / "escape").symlink_to(small_catalog)               # inside by name, outside once resolved
    policy = TrainingPolicy([served], root)
    assert policy.catalog("served") == served.resolve()
    assert policy.catalog("mine") == policy.catalog(str(root / "mine")) == (root / "mine").resolve()
    for asked in ("empty", "escape", "missing", ".", "..", "mine/../..", str(small_catalog), "~"):
        with pytest.raises(ConfigError, match="not one this server trains on"):
            policy.catalog(asked)
    assert sorted(p.name for p in root.iterdir()) == ["empty", "escape", "mine"]    # nothing was created
    with pytest.raises(ConfigError, match="batch size must be a whole number from 2 to 512"):
        policy.check(TrainingSettings("tiny-synthetic", "mine", 1, 4096, 1e-3, 0))
    with pytest.raises(ConfigError, match="learning rate"):
        policy.check(TrainingSettings("tiny-synthetic", "mine", 1, 32, float("nan"), 0))
    with pytest.raises(ConfigError, match="stage-1 epochs must be"):
        policy.check(TrainingSettings("tiny-synthetic", "mine", 1, 32, 1e-3, 50))
    with pytest.raises(ConfigError, match="unknown preset"):
        policy.check(TrainingSettings("../../etc/passwd", "mine", 1, 32, 1e-3, 0))
    checked = policy.check(TrainingSettings("tiny-synthetic", "mine", 2.0, 32, 1e-3, 0))
    assert checked.epochs == 2 and checked.catalog_path == (root / "mine").resolve()
    command = checked.command(tmp_path / "out")
    assert f"data.root={(root / 'mine').resolve()}" in command and "data.synthesize=false" in command
    assert "data.phrasing_variants=0" not in command     # a synthetic catalog: the preset's everyday requests too
    shutil.copytree(root / "mine", root / "plain")
    # a catalog.csv without attribute columns (id, image, category, split), as an image folder's catalog has
    rows = (root / "plain" / "catalog.csv").read_text().splitlines()
    (root / "plain" / "catalog.csv").write_text("\n".join(",".join(r.split(",")[:4]) for r in rows) + "\n")
    plain = TrainingPolicy([served], root).check(TrainingSettings("tiny-synthetic", "plain", 1, 32, 1e-3, 0)).command(
        tmp_path / "out")
    assert "data.phrasing_variants=0" in plain           # no attribute columns to phrase from: captions alone


def test_batcher_answers_each_caller_with_its_own_answer_or_error():
    """Requests that queue up while a batch runs form the next batch; one bad item fails only its own caller."""
    release, batches = threading.Event(), []

    def run(items):
        batches.append(list(items))
        release.wait(30)                       # the first batch holds the worker while the others queue up
        if any(i < 0 for i in items):
            raise ValueError("negative item")
        return [i * 10 for i in items]

    batcher = Batcher(run, max_batch=8)
    items = [1, 2, 3, -4, 5, 6]
    with ThreadPoolExecutor(len(items) + 1) as pool:
        first = pool.submit(batcher.submit, 0)
        while not batches:
            time.sleep(0.01)
        jobs = [pool.submit(batcher.submit, i) for i in items]
        while batcher._queue.qsize() < len(items):
            time.sleep(0.01)
        release.set()
        assert first.result(30) == 0
        for i, job in zip(items, jobs, strict=True):
            if i < 0:
                with pytest.raises(ValueError, match="negative"):
                    job.result(30)
            else:
                assert job.result(30) == i * 10
    assert sorted(batches[1]) == sorted(items)      # all six were answered as one batch first
    batcher.close()
    with pytest.raises(RuntimeError, match="closed"):  # refused at once, not queued behind the stop forever
        batcher.submit(7, timeout=30)


# ---- training in the background -------------------------------------------------------------------------------

def test_training_runs_in_the_background_and_its_model_is_served(served_demo, service, catalog):
    """Started from the Train view (through the queue, as a browser does); only the session that started it may
    serve its model, which is swapped in whole while the old snapshot keeps answering."""
    owner, other = RawClient(served_demo[1]), RawClient(served_demo[1])
    start, use = owner.fn_index("train-start", "click"), owner.fn_index("train-use", "click")
    with pytest.raises(ConfigError, match="epochs must be"):
        service.start_training(TrainingSettings("tiny-synthetic", str(catalog), 0, 32, 1e-3, 0))
    assert "Started run" in owner.status_text(owner.call(start, ["tiny-synthetic", "catalog", 1, 32, 1e-3, 0]))
    run = service.training
    with pytest.raises(ConfigError, match="already going"):
        service.start_training(TrainingSettings("tiny-synthetic", str(catalog), 1, 32, 1e-3, 0))
    assert service.search("dress-000004", "is red", k=3).result.items   # searches answered while it trains
    deadline = time.time() + 240
    while (status := run.poll()).running and time.time() < deadline:
        time.sleep(1)
    assert status.state == "finished", status.console
    assert status.fraction == 1.0 and status.checkpoint is not None
    assert any(r.get("event") == "epoch" and "val" in r for r in status.records)
    before, old = service.describe()["model_fingerprint"], service.retriever
    answered = [i.id for i in old.search("dress-000004", "is red", k=5).items]
    assert "another visitor" in other.status_text(other.call(use, []), 1)
    assert service.describe()["model_fingerprint"] == before
    assert "Now serving" in owner.status_text(owner.call(use, []), 1)
    assert service.describe()["model_fingerprint"] != before
    assert service.describe()["model_fingerprint"] == service.retriever.model.fingerprint()
    assert len(service.search("dress-000004", "is red", k=3).result.items) == 3
    # the new index was built beside the old snapshot, not under it: the old one answers as before
    assert [i.id for i in old.search("dress-000004", "is red", k=5).items] == answered


def test_cancel_stops_the_run(service, catalog):
    run = service.start_training(TrainingSettings("tiny-synthetic", str(catalog), 20, 32, 1e-3, 0))
    run.cancel()
    assert run.poll().state == "cancelled"
    run.cancel()                                   # again, the run long gone: nothing to signal, no error
    # a cancelled (or failed) run may have saved last/ after an epoch: it is not a finished model to serve
    (run.out / "last").mkdir(exist_ok=True)
    (run.out / "last" / "sdfn_config.json").write_text("{}")
    assert run.poll().checkpoint == run.out / "last"
    with pytest.raises(ConfigError, match="the training run cancelled: its checkpoint is not a finished model"):
        service.use_trained_model()


# ---- the entry point -------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def entry():
    spec = importlib.util.spec_from_file_location("demo_entry", ROOT / "demo.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_spaces_binding(entry, monkeypatch):
    monkeypatch.delenv("GRADIO_SERVER_PORT", raising=False)
    monkeypatch.delenv("SPACE_ID", raising=False)
    assert entry.address(entry.parse_args([])) == ("127.0.0.1", None)
    assert entry.address(entry.parse_args(["--port", "7999"])) == ("127.0.0.1", 7999)
    monkeypatch.setenv("SPACE_ID", "someone/sdfn")
    assert entry.address(entry.parse_args([])) == ("0.0.0.0", 7860)
    monkeypatch.setenv("GRADIO_SERVER_PORT", "8080")
    assert entry.address(entry.parse_args([])) == ("0.0.0.0", 8080)
    assert not entry.training_allowed(entry.parse_args([]))
    monkeypatch.setenv("SDFN_DEMO_TRAINING", "1")
    assert entry.training_allowed(entry.parse_args([]))


def test_missing_checkpoint_is_one_readable_line(entry, tmp_path, catalog, capsys):
    assert entry.main(["--checkpoint", str(tmp_path / "nowhere"), "--catalog", str(catalog)]) == 2
    err = capsys.readouterr().err
    assert "sdfn demo: error:" in err and "nowhere" in err and "Traceback" not in err


def _children(pid: int) -> list[int]:
    """The live (not zombie) processes whose parent is `pid`."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            state, ppid = stat[stat.rindex(")") + 2:].split()[:2]
            if int(ppid) == pid and state != "Z":
                found.append(int(entry.name))
    return found


def _alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rindex(")") + 2:].split()[0] != "Z"


def _start_demo_with_a_training_run(catalog: Path, checkpoint: Path, tmp: Path) -> tuple[subprocess.Popen, int]:
    """demo.py as its own process (temp folder and SDFN_HOME under `tmp`), with a long training run started from
    the Train view; returns the demo and the training run's pid."""
    port = free_port()
    env = {**os.environ, "TMPDIR": str(tmp), "SDFN_HOME": str(tmp / "home")}
    env.pop("SPACE_ID", None)
    demo = subprocess.Popen([sys.executable, str(ROOT / "demo.py"), "--catalog", str(catalog), "--checkpoint",
                             str(checkpoint), "--port", str(port), "--threads", "1"], env=env, cwd=tmp,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 300
        while time.time() < deadline:
            assert demo.poll() is None, "the demo exited while starting"
            try:
                page = httpx.get(f"{url}/config", timeout=5)
                # the demo itself, not the page served while it re-indexes the catalog for this checkpoint
                if page.status_code == 200 and page.json().get("title") != PREPARING_TITLE:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(1)
        raw = RawClient(url)
        answer = raw.call(raw.fn_index("train-start", "click"), ["tiny-synthetic", catalog.name, 20, 32, 1e-3, 0])
        assert "Started run" in raw.status_text(answer)
        children = [p for p in _children(demo.pid) if "train" in Path(f"/proc/{p}/cmdline").read_text()]
        assert len(children) == 1, children
    except BaseException:   # a failed start leaves no demo (and its training run) behind
        for pid in _children(demo.pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        demo.kill()
        demo.wait(30)
        raise
    return demo, children[0]


def test_sigterm_and_kill_leave_no_training_run_nor_served_images(catalog, tiny_checkpoint, tmp_path):
    """How systemd and docker stop a service (SIGTERM), and a hard kill: the training run dies with the demo, the
    served-image folder goes at exit, and one left by a killed demo goes when the next demo starts."""
    served = lambda: sorted(p.name for p in tmp_path.glob(".sdfn-demo-images*"))  # noqa: E731
    killed, killed_run = _start_demo_with_a_training_run(catalog, tiny_checkpoint, tmp_path)
    assert len(served()) == 1 and str(killed.pid) in served()[0]
    killed.kill()
    killed.wait(30)
    deadline = time.time() + 30
    while _alive(killed_run) and time.time() < deadline:
        time.sleep(0.2)
    assert not _alive(killed_run), "the training run outlived the killed demo"
    left = served()
    assert len(left) == 1                     # nothing could remove it: the next start does

    stopped, stopped_run = _start_demo_with_a_training_run(catalog, tiny_checkpoint, tmp_path)
    assert left[0] not in served() and len(served()) == 1
    stopped.send_signal(signal.SIGTERM)
    assert stopped.wait(60) == 0
    assert not _alive(stopped_run), "the training run outlived the stopped demo"
    assert served() == []


def test_a_demo_stopped_while_it_draws_its_first_catalog_says_so_and_leaves_nothing(tmp_path):
    """The first start draws the default catalog (a minute); SIGTERM or Ctrl-C then is a one-line stop, not a
    traceback, and no half-drawn catalog is left for the next start."""
    home = tmp_path / "home"
    env = {**os.environ, "SDFN_HOME": str(home)}
    env.pop("SPACE_ID", None)
    demo = subprocess.Popen([sys.executable, str(ROOT / "demo.py"), "--port", str(free_port()), "--no-training"],
                            env=env, stderr=subprocess.PIPE, text=True, cwd=tmp_path)
    drawing = home / "catalogs"
    deadline = time.time() + 120
    while not any((p / "images").is_dir() for p in drawing.glob(".synthetic.tmp-*")) and time.time() < deadline:
        assert demo.poll() is None, demo.stderr.read()
        time.sleep(0.1)
    demo.send_signal(signal.SIGTERM)
    _, err = demo.communicate(timeout=60)
    assert demo.returncode == 130 and "sdfn demo: stopped" in err and "Traceback" not in err, err
    assert sorted(p.name for p in drawing.iterdir()) == []


@pytest.mark.skipif(not (SHIPPED_CHECKPOINT / "sdfn_config.json").is_file(),
                    reason="the shipped assets/sdfn-tiny checkpoint is not trained yet")
def test_shipped_model_serves_the_demo(catalog, tmp_path):
    local = tmp_path / "catalog"
    shutil.copytree(catalog, local, ignore=shutil.ignore_patterns("index"))
    shipped = DemoService(None, local, threads=1, progress=False).load()
    assert shipped.search("dress-000004", "is red", k=5).result.items
