"""The Train view follows a run through its structured records (progress.jsonl, log.jsonl), never its console
text; the training worker leaves the searches room (lower priority, fewer threads); bad values name their field;
a second Start says a run is already going. Runs here are tiny or cancelled after their first records."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest
from test_demo import RawClient
from tqdm import tqdm

from sdfn.demo_progress import ProgressLog
from sdfn.demo_train_view import loss_figure, progress_html, recall_figure
from sdfn.demo_training import (
    PROGRESS_FILE,
    TrainingFieldError,
    TrainingPolicy,
    TrainingSettings,
    TrainingStatus,
    describe_phase,
    progress_of,
)
from sdfn.demo_training_worker import NICENESS, run_threads

pytestmark = pytest.mark.filterwarnings("ignore:.*(no_silent_downcasting|copy keyword).*")
START = ["tiny-synthetic", "catalog"]   # preset and catalog as the Train view sends them


def settings(epochs: int = 4, pretrain: int = 0) -> TrainingSettings:
    return TrainingSettings("tiny-synthetic", "catalog", epochs, 32, 1e-3, pretrain)


def bar(phase: str, done: int, total: int | None, unit: str = "step", closed: bool = False) -> dict:
    return {"event": "progress", "phase": phase, "done": done, "total": total, "unit": unit, "closed": closed,
            "time": 0.0}


# ---- progress from records ---------------------------------------------------------------------------------------

def test_progress_comes_from_the_records_not_the_console():
    # the first epoch's bar at 3 of 12 steps: 31% of the epoch shows, before any epoch record exists
    fraction, phase, step, label = progress_of(settings(epochs=4), [bar("starting", None, None),
                                                                    bar("epoch 1/4", 3, 12)], [])
    assert fraction == pytest.approx(0.25 / 4) and step == pytest.approx(0.25)
    assert phase == "training: epoch 1 of 4" and label == "3 / 12 step"
    # two epochs logged, the third at half: 2.5 of 4
    records = [{"event": "epoch", "epoch": 0, "step": 12}, {"event": "epoch", "epoch": 1, "step": 24}]
    fraction, *_ = progress_of(settings(epochs=4), [bar("epoch 3/4", 6, 12)], records)
    assert fraction == pytest.approx(2.5 / 4)
    # an epoch's bar closed: its steps are done, the checkpoint and validation come before the next record
    fraction, phase, *_ = progress_of(settings(epochs=4), [bar("epoch 3/4", 12, 12, closed=True)], records)
    assert fraction == pytest.approx(3 / 4) and phase.startswith("training: epoch 3 of 4 finished: saving")


def test_preparation_phases_show_with_their_counts_and_stage_1_counts_in_the_whole():
    s = settings(epochs=2, pretrain=2)
    fraction, phase, step, label = progress_of(s, [bar("loading", None, None),
                                                   bar("drawing", 1200, 5000, unit="img")], [])
    assert fraction == 0.0 and phase == describe_phase("drawing") and "stage-1 catalog" in phase
    assert step == pytest.approx(0.24) and label == "1,200 / 5,000 img"
    fraction, phase, *_ = progress_of(s, [bar("stage 1 epoch 2/2", 5, 10)], [])
    assert fraction == pytest.approx(1.5 / 4) and phase.startswith("stage 1")
    # stage 2's feature caching: stage 1 is done
    fraction, phase, *_ = progress_of(s, [bar("caching image features", 1, 4, unit="batch")], [])
    assert fraction == pytest.approx(2 / 4) and "encoding every catalog image" in phase
    # a phase without a count (loading) has no phase bar
    _, phase, step, label = progress_of(s, [bar("loading", None, None)], [])
    assert step is None and label == "" and "loading" in phase


def test_the_progress_html_shows_the_whole_run_and_the_current_phase(tmp_path):
    status = TrainingStatus("running", tmp_path / "demo-1", 0.0625, "training: epoch 1 of 4", step=0.25,
                            step_label="3 / 12 step", elapsed_s=75)
    shown = progress_html(status)
    assert "aria-valuenow='6'" in shown and "aria-valuenow='25'" in shown
    assert "training: epoch 1 of 4" in shown and "3 / 12 step" in shown and "1 min 15 s" in shown
    assert "another visitor" in progress_html(status, mine=False)
    assert "No run yet" in progress_html(None)


def test_progress_bars_write_records(tmp_path):
    log = ProgressLog(tmp_path / PROGRESS_FILE)
    Bar = log.bar_class(tqdm)
    with (tmp_path / "console").open("w") as console:
        for _ in Bar(range(5), desc="epoch 1/2", unit="step", file=console):
            pass
    for _ in Bar(range(3), desc="hidden", disable=True):
        pass
    records = log.records()
    assert [r["phase"] for r in records] == ["epoch 1/2", "epoch 1/2"]
    assert (records[0]["done"], records[0]["total"], records[0]["closed"]) == (0, 5, False)
    assert (records[-1]["done"], records[-1]["closed"], records[-1]["unit"]) == (5, True, "step")
    (tmp_path / PROGRESS_FILE).open("a").write('{"event": "progress", "pha')   # a line being written
    assert len(log.records()) == 2


# ---- the charts --------------------------------------------------------------------------------------------------

def test_loss_chart_starts_at_zero_with_room_around_the_line_and_titled_axes():
    steps = [{"event": "step", "step": s, "loss": 5.0 - s / 20} for s in range(10, 60, 10)]   # 4.5 down to 2.5
    fig = loss_figure(steps).to_dict()["layout"]
    assert fig["xaxis"]["range"][0] == 0 and fig["xaxis"]["range"][1] > 50
    low, high = fig["yaxis"]["range"]
    assert 0 <= low < 2.5 and high > 4.5        # room above and below the line, never below 0
    assert fig["yaxis"]["title"]["text"] and fig["xaxis"]["title"]["text"] == "training step"
    assert "recall" not in json.dumps(fig).lower()


def test_recall_has_its_own_chart_and_its_note_until_the_first_validation():
    waiting = json.dumps(recall_figure([], epochs=4, every=2).to_dict())
    assert "after the first validation" in waiting
    assert "after the first validation" not in json.dumps(loss_figure([]).to_dict())
    records = [{"event": "epoch", "epoch": 1, "val": {"mean": {"R@1": 10.0, "R@10": 40.0}}}]
    fig = recall_figure(records, epochs=4, every=2).to_dict()
    assert [t["name"] for t in fig["data"]] == ["R@1", "R@10"]
    assert fig["layout"]["xaxis"]["range"][0] == 0 and fig["layout"]["xaxis"]["range"][1] >= 4
    assert fig["layout"]["yaxis"]["range"][0] == 0 and fig["layout"]["yaxis"]["range"][1] > 40
    assert "recall" in fig["layout"]["yaxis"]["title"]["text"]


# ---- field messages ----------------------------------------------------------------------------------------------

def test_every_refused_field_is_named(small_catalog):
    policy = TrainingPolicy([small_catalog])
    problems = {p.field: str(p) for p in policy.problems(TrainingSettings("tiny-synthetic", "synthetic", 0, 1,
                                                                          float("inf"), 9))}
    assert set(problems) == {"epochs", "batch_size", "lr", "pretrain_epochs"}
    assert problems["epochs"].startswith("epochs must be a whole number from 1 to 20, got 0")
    assert problems["batch_size"].startswith("batch size") and problems["lr"].startswith("learning rate")
    assert problems["pretrain_epochs"].startswith("stage-1 epochs")
    with pytest.raises(TrainingFieldError) as caught:
        policy.check(TrainingSettings("tiny-synthetic", "elsewhere", 1, 32, 1e-3, 0))
    assert caught.value.field == "catalog"
    assert policy.problems(TrainingSettings("tiny-synthetic", "synthetic", 2.0, 32, 1e-3, 0)) == []


# ---- through the served view -------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def view(served_demo):
    """The served demo and a raw client with the Train view's start/cancel handlers."""
    service, url = served_demo
    client = RawClient(url)
    yield service, client, client.fn_index("train-start", "click"), client.fn_index("train-cancel", "click")
    if service.training is not None:
        service.training.cancel()


def infos(answer: dict) -> list[str | None]:
    """The field notes a Start answer sets: epochs, batch size, learning rate, stage-1 epochs, catalog."""
    return [update.get("info") for update in answer["output"]["data"][-5:]]


def test_a_bad_field_is_named_in_the_message_and_under_the_field(view):
    service, client, start, _ = view
    answer = client.call(start, [*START, 0, 32, 1e-3, 0])
    assert answer["success"], answer            # a message, not an error (no red Error badges)
    assert "epochs must be a whole number from 1 to 20, got 0" in client.status_text(answer)
    notes = infos(answer)
    assert notes[0].startswith("⚠ epochs must be") and not any("⚠" in (n or "") for n in notes[1:])
    answer = client.call(start, [*START, 2, 1, 5e-4, 0])
    assert "batch size must be" in client.status_text(answer) and infos(answer)[1].startswith("⚠ batch size")
    assert not infos(answer)[0].startswith("⚠")  # the epochs field's warning went with its cause
    assert service.training is None


def test_start_answers_at_once_and_a_second_start_says_a_run_is_going(view):
    service, client, start, cancel = view
    answer = client.call(start, [*START, 20, 32, 1e-3, 0])
    assert "Started run" in client.status_text(answer)
    progress = answer["output"]["data"][0]
    assert "starting the training process" in progress       # feedback before the process has started
    run = service.training
    try:
        again = client.call(start, [*START, 0, 32, 1e-3, 0])  # even with a bad field: the run is what matters
        assert "already going" in client.status_text(again) and "cancel it" in client.status_text(again)
        other = RawClient(client.url)
        assert "another visitor" in other.status_text(other.call(start, [*START, 1, 32, 1e-3, 0]))
        # the worker writes its own first record before importing torch; then its bars follow
        deadline = time.time() + 120
        while not any(r["phase"] == "loading" for r in run.progress()) and time.time() < deadline:
            time.sleep(0.2)
        assert "loading torch" in run.poll().phase or run.poll().step is not None
        # it runs at a lower priority than the demo, with torch on fewer threads than the cores
        stat = Path(f"/proc/{run.process.pid}/stat").read_text()
        nice = int(stat[stat.rindex(")") + 2:].split()[16])
        assert nice >= NICENESS
        environ = Path(f"/proc/{run.process.pid}/environ").read_bytes().split(b"\0")
        cores = len(os.sched_getaffinity(0))
        assert f"OMP_NUM_THREADS={run_threads()}".encode() in environ and run_threads() == max(1, cores - 1)
    finally:
        client.call(cancel, [])
    assert run.poll().state == "cancelled"
    progress = (run.out / PROGRESS_FILE).read_text().splitlines()
    assert json.loads(progress[0])["phase"] == "starting"


# ---- in a real browser -------------------------------------------------------------------------------------------

CHROMIUM = Path("/usr/bin/chromium")
WAIT_MS = 60_000      # a loaded machine: the page and its handlers may take a while, never this long


@pytest.mark.skipif(not CHROMIUM.is_file(), reason="needs Debian's chromium at /usr/bin/chromium")
def test_the_train_view_in_a_browser(view):
    """As a visitor: the learning rate steps by 0.0001, epochs=0 is named under its field with no Error badge, a
    run shows its phase at once, a second Start says a run is going, Cancel ends it."""
    sync_api = pytest.importorskip("playwright.sync_api")
    service, client, _, _ = view
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=[
            "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"])
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.set_default_timeout(WAIT_MS)
            page.goto(client.url)
            page.get_by_role("tab", name="Train").click()
            expect = sync_api.expect
            lr = page.locator("#train-lr input")
            lr.fill("0.001")
            lr.press("ArrowUp")
            assert float(lr.input_value()) == pytest.approx(0.0011)
            expect(page.locator("#train-recall")).to_contain_text("after the first validation", timeout=WAIT_MS)
            expect(page.locator("#train-loss")).not_to_contain_text("validation", timeout=WAIT_MS)

            page.locator("#train-epochs input").fill("0")
            page.locator("#train-start").click()
            expect(page.locator("#train-status")).to_contain_text("epochs must be a whole number from 1 to 20",
                                                                  timeout=WAIT_MS)
            expect(page.locator("#train-epochs")).to_contain_text("⚠ epochs must be", timeout=WAIT_MS)
            expect(page.locator("#train-batch")).not_to_contain_text("⚠", timeout=WAIT_MS)
            assert page.get_by_text("Error", exact=True).count() == 0

            page.locator("#train-epochs input").fill("20")
            page.locator("#train-start").click()
            expect(page.locator("#train-phase")).to_contain_text("of the run", timeout=WAIT_MS)
            # the warning went with its cause
            expect(page.locator("#train-epochs")).not_to_contain_text("⚠", timeout=WAIT_MS)
            page.locator("#train-start").click()
            expect(page.locator("#train-status")).to_contain_text("already going", timeout=WAIT_MS)
            page.locator("#train-cancel").click()
            expect(page.locator("#train-status")).to_contain_text("Cancelled", timeout=WAIT_MS)
        finally:
            browser.close()
            if service.training is not None:
                service.training.cancel()
