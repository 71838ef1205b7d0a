"""The demo's Train view: start a background training run, follow it, serve its model.

Everything it shows comes from the run's structured records, never from its console text: the progress bars and
the phase from progress.jsonl (every progress bar of the run, written by sdfn.demo_training_worker: drawing the
stage-1 catalog, encoding the catalog, each epoch's steps, ...), the loss and recall charts from log.jsonl
(sdfn.training.runlog). The Start button answers at once ("starting the training process"), so a visitor sees
the run begin within a second, and a second Start while a run is going says so. A refused value names its field,
both in the message and under the field itself.

Its handlers are private (not in the API docs) but still answer raw queue requests, so each one checks what it
is sent: the catalog and the sizes against `service.training_policy`, cancelling and switching models against
the session that started the run (`gr.Request.session_hash`, known only to that browser).
"""

from __future__ import annotations

import html
from collections.abc import Callable, Sequence
from typing import Any

import gradio as gr
import plotly.graph_objects as go

from sdfn import viz
from sdfn.config import list_presets
from sdfn.demo_service import DemoService
from sdfn.demo_training import TrainingFieldError, TrainingSettings, TrainingStatus, preset_defaults
from sdfn.errors import SdfnError

POLL_SECONDS = 1.0
CHART_HEIGHT = 300
EMPTY_HEIGHT = 170               # a chart with nothing yet: its note, not a tall empty box
LOSS_COLOR, RECALL_COLORS = "#2563eb", ("#ea580c", "#16a34a", "#9333ea", "#0891b2")
LR_STEP = 0.0001                 # the learning rate's spinner step (its values are around 1e-3)
NO_RUN = "No run yet: choose the settings and press Start training."
# the fields whose notes a Start answer sets, in this order (TrainingSettings' attribute names)
FIELDS = ("epochs", "batch_size", "lr", "pretrain_epochs", "catalog")
_FONT = {"family": "system-ui, -apple-system, 'Segoe UI', sans-serif", "size": 12}


# ---- what the view draws ---------------------------------------------------------------------------------------

def _bar(fraction: float, label: str, thin: bool = False) -> str:
    percent = max(0.0, min(1.0, fraction)) * 100
    style = " style='height:6px'" if thin else ""
    return (f"<div class='sdfn-progress' role='progressbar' aria-valuenow='{percent:.0f}' aria-valuemin='0' "
            f"aria-valuemax='100' aria-label='{html.escape(label)}'{style}><div style='width:{percent:.1f}%'>"
            "</div></div>")


def _duration(seconds: float) -> str:
    seconds = int(seconds)
    return f"{seconds // 60} min {seconds % 60:02d} s" if seconds >= 60 else f"{seconds} s"


def progress_html(status: TrainingStatus | None, mine: bool = True) -> str:
    """Two bars: the whole run (its epochs) and the phase it is in now (when that phase counts its work)."""
    if status is None:
        return f"<div id='train-progress'>{_bar(0, 'no run')}<div class='sdfn-progress-label'>{NO_RUN}</div></div>"
    whose = "" if mine else " (another visitor's)"
    overall = (f"<b>{status.fraction:.0%}</b> of the run · {html.escape(status.phase)} · "
               f"{_duration(status.elapsed_s)} · run {html.escape(status.out.name)}{whose}")
    parts = [_bar(status.fraction, "whole run"), f"<div class='sdfn-progress-label' id='train-phase'>{overall}</div>"]
    if status.running and status.step is not None:
        parts += [_bar(status.step, "current phase", thin=True),
                  f"<div class='sdfn-progress-label'>this phase: {html.escape(status.step_label)}</div>"]
    return f"<div id='train-progress'>{''.join(parts)}</div>"


def _layout(x_title: str, y_title: str, x_range: list[float], y_range: list[float], title: str) -> dict:
    axis = {"showgrid": True, "gridcolor": "rgba(128,128,128,0.2)", "zeroline": False}
    return {"height": CHART_HEIGHT, "margin": {"l": 60, "r": 20, "t": 40, "b": 50}, "font": _FONT,
            "paper_bgcolor": "rgba(0,0,0,0)", "plot_bgcolor": "rgba(0,0,0,0)",
            "title": {"text": title, "x": 0.01, "font": {"size": 14}},
            "xaxis": {**axis, "title": {"text": x_title}, "range": x_range},
            "yaxis": {**axis, "title": {"text": y_title}, "range": y_range},
            "legend": {"orientation": "h", "y": -0.25}, "showlegend": False}


def _padded(values: Sequence[float], low: float | None = None, high: float | None = None) -> list[float]:
    """A y range with a margin above and below the data, so no line runs along the plot's edge."""
    lo, hi = min(values), max(values)
    pad = (hi - lo) * 0.1 or abs(hi) * 0.1 or 1.0
    lo, hi = lo - pad, hi + pad
    return [max(lo, low) if low is not None else lo, min(hi, high) if high is not None else hi]


def loss_figure(records: Sequence[dict]) -> go.Figure:
    """The training loss at each logged step (log.jsonl "step" records); x from step 0."""
    steps = [r for r in records if r.get("event") == "step" and isinstance(r.get("loss"), int | float)]
    if not steps:
        return viz.placeholder("The training loss appears here<br>after the first logged steps.", EMPTY_HEIGHT)
    xs, ys = [r["step"] for r in steps], [r["loss"] for r in steps]
    trace = {"type": "scatter", "x": xs, "y": ys, "mode": "lines+markers" if len(xs) < 30 else "lines",
             "name": "loss", "line": {"color": LOSS_COLOR}, "marker": {"size": 5},
             "hovertemplate": "step %{x}<br>loss %{y:.4f}<extra></extra>"}
    layout = _layout("training step", "loss (lower is better)", [0, max(xs) * 1.04 + 1], _padded(ys, low=0),
                     "Training loss")
    return go.Figure({"data": [trace], "layout": layout}, _validate=False)


def recall_figure(records: Sequence[dict], epochs: int | None = None, every: int | None = None) -> go.Figure:
    """Validation recall (R@k, in %) after each validated epoch (log.jsonl "epoch" records with "val"); x from
    epoch 0 to the run's last epoch, y from 0."""
    validated = [r for r in records if r.get("event") == "epoch" and isinstance(r.get("val"), dict)]
    names = sorted({k for r in validated for k in r["val"].get("mean", {}) if k.startswith("R@")},
                   key=lambda k: int(k[2:]))
    if not names:
        when = f"<br>(every {every} epochs, and after the last)" if every and every > 1 else ""
        return viz.placeholder(f"Validation recall appears here<br>after the first validation{when}.", EMPTY_HEIGHT)
    traces, top = [], 0.0
    for i, name in enumerate(names):
        points = [(r["epoch"] + 1, r["val"]["mean"][name]) for r in validated if name in r["val"].get("mean", {})]
        top = max([top, *(p[1] for p in points)])
        traces.append({"type": "scatter", "x": [p[0] for p in points], "y": [p[1] for p in points],
                       "mode": "lines+markers", "name": name, "line": {"color": RECALL_COLORS[i % len(RECALL_COLORS)]},
                       "hovertemplate": f"epoch %{{x}}<br>{name} %{{y:.1f}}%<extra></extra>"})
    last = max(epochs or 0, *(r["epoch"] + 1 for r in validated))
    layout = _layout("epoch", "recall on the val split (%)", [0, last + 0.3], [0, min(100.0, top * 1.15 + 2)],
                     "Validation recall")
    layout["showlegend"] = True
    layout["xaxis"]["dtick"] = 1
    return go.Figure({"data": traces, "layout": layout}, _validate=False)


# ---- the view --------------------------------------------------------------------------------------------------

def _field_updates(problems: dict[str, str], notes: dict[str, str | None]) -> tuple:
    """Each field's note: its problem (marked) when it has one, else its usual note."""
    return tuple(gr.update(info=f"⚠ {problems[f]}" if f in problems else notes[f]) for f in FIELDS)


def train_tab(service: DemoService, header: gr.Markdown, allow_training: bool
              ) -> tuple[Callable[..., tuple], list[Any]] | None:
    """The Train view (inside a gr.Tab). Returns the handler and outputs a page load runs, so that a page opened
    during a run follows it; None when training is switched off on this server."""
    from sdfn.demo_app import _header_markdown, client_message  # the app imports this module: late import

    if not allow_training:
        gr.Markdown("Training is switched off on this server (on Hugging Face Spaces unless the Space sets "
                    "`SDFN_DEMO_TRAINING=1`). Run the demo locally, or use `sdfn train --config tiny-synthetic`.")
        return None
    policy = service.training_policy
    presets = list_presets()
    preset_name = "tiny-synthetic" if "tiny-synthetic" in presets else presets[0]
    defaults = preset_defaults(preset_name)
    gr.Markdown("Train a model in the background (`sdfn train`, one run at a time) while searches keep working: the "
                "run has a lower CPU priority than searches. When it is done, **Use this model** serves the new "
                "checkpoint; the catalog's index is rebuilt for it beside the old one. Limits: up to "
                f"{policy.max_epochs} epochs, {policy.max_pretrain_epochs} stage-1 epochs, batch size "
                f"{policy.max_batch_size}; only the catalogs listed; only the visitor who started a run can cancel "
                "it or serve its model.")
    choices = policy.choices()
    notes: dict[str, str | None] = {
        "epochs": "passes over the training triplets", "batch_size": "triplets per step",
        "lr": "the fusion network's; e.g. 0.001", "pretrain_epochs": "backbone pre-training first; 0 skips it",
        "catalog": f"or a catalog folder inside {policy.root.name}/" if policy.root else None}
    with gr.Row(equal_height=True):
        preset = gr.Dropdown(presets, value=preset_name, label="Preset", scale=1)
        # custom values reach the handler, so the policy (not Gradio's list check) answers with its message
        catalog = gr.Dropdown(choices, value=choices[0], label="Catalog (FashionIQ format)", scale=3,
                              allow_custom_value=True, info=notes["catalog"], elem_id="train-catalog")
    with gr.Row(equal_height=True):
        # no minimum/maximum/precision: Gradio would refuse (or round 2.5 to 2) before the policy's message
        epochs = gr.Number(min(defaults["epochs"], 5), label=f"Epochs (1-{policy.max_epochs})",
                           info=notes["epochs"], elem_id="train-epochs")
        batch = gr.Number(defaults["batch_size"], label=f"Batch size (2-{policy.max_batch_size})",
                          info=notes["batch_size"], elem_id="train-batch")
        lr = gr.Number(defaults["lr"], label="Learning rate (up to 1)", step=LR_STEP, info=notes["lr"],
                       elem_id="train-lr")
        pretrain = gr.Number(defaults["pretrain_epochs"], label=f"Stage-1 epochs (0-{policy.max_pretrain_epochs})",
                             info=notes["pretrain_epochs"], elem_id="train-pretrain")
    fields = [epochs, batch, lr, pretrain, catalog]
    with gr.Row():
        start = gr.Button("Start training", variant="primary", elem_id="train-start")
        cancel = gr.Button("Cancel", variant="stop", interactive=False, elem_id="train-cancel")
        use = gr.Button("Use this model", interactive=False, elem_id="train-use")
    progress = gr.HTML(progress_html(None), elem_id="train-progress-box")
    status = gr.Markdown("", elem_classes="sdfn-status", elem_id="train-status")
    with gr.Row(equal_height=True):
        loss = gr.Plot(loss_figure([]), show_label=False, elem_id="train-loss")
        recall = gr.Plot(recall_figure([], every=_validation_every(preset_name)), show_label=False,
                         elem_id="train-recall")
    console = gr.Textbox(label="Console (the last lines the run printed)", lines=8, max_lines=8, interactive=False,
                         autoscroll=True, elem_id="train-console")
    drawn = gr.State(-1)    # how many log records the charts on this page show (redrawn only when it changes)
    timer = gr.Timer(POLL_SECONDS, active=False)
    private = {"api_visibility": "private"}

    def fill(name: str) -> tuple:
        try:
            d = preset_defaults(name)
        except SdfnError:
            return gr.skip(), gr.skip(), gr.skip(), gr.skip()
        return min(d["epochs"], 5), d["batch_size"], d["lr"], d["pretrain_epochs"]

    preset.change(fill, preset, [epochs, batch, lr, pretrain], queue=False, **private)

    def show(session: str | None, message: str | None = None, drawn_count: int = -1) -> tuple:
        """The view's outputs for the current run. `message` answers the visitor's last action and stays until
        the next one (None: keep what is shown, "" while no run: clear it)."""
        run = service.training
        if run is None:
            return (progress_html(None), gr.skip(), gr.skip(), message if message is not None else gr.skip(),
                    gr.Timer(active=False), gr.Button(interactive=False), gr.Button(interactive=False), gr.skip(),
                    drawn_count)
        s: TrainingStatus = run.poll()
        mine = run.owned_by(session)
        done = s.state == "finished" and s.checkpoint is not None
        if message is None and not s.running:
            message = {"finished": f"Done: checkpoint {s.out.name}/{s.checkpoint.name}." if done else "Done.",
                       "failed": _warning("The run failed; see the console below."),
                       "cancelled": "Cancelled."}[s.state]
        charts: tuple = (gr.skip(), gr.skip())
        if len(s.records) != drawn_count:
            charts = (loss_figure(s.records), recall_figure(s.records, run.settings.epochs,
                                                            _validation_every(run.settings.preset)))
        return (progress_html(s, mine), charts[0], s.console, message if message is not None else gr.skip(),
                gr.Timer(active=s.running), gr.Button(interactive=s.running and mine),
                gr.Button(interactive=done and mine), charts[1], len(s.records))

    outputs = [progress, loss, console, status, timer, cancel, use, recall, drawn]

    def begin(name: str, folder: str, e: float | None, b: float | None, rate: float | None, p: float | None,
              request: gr.Request) -> tuple:
        session = request.session_hash
        run = service.training
        if run is not None and run.poll().running:   # said first: whatever the fields, one run at a time
            mine = run.owned_by(session)
            return (*show(session, _warning(f"A training run is already going (run {run.out.name}"
                                            + (", yours): wait for it to finish or cancel it." if mine
                                               else ", another visitor's): wait for it to finish."))),
                    *_field_updates({}, notes))
        settings = TrainingSettings(name, folder, e, b, rate, p)
        problems = {problem.field: str(problem) for problem in policy.problems(settings)}
        if not problems:
            try:
                run = service.start_training(settings, session=session)
            except TrainingFieldError as err:
                problems = {err.field: client_message(service, err)}
            except SdfnError as err:   # e.g. a run started by another visitor a moment ago
                return (*show(session, _warning(client_message(service, err))), *_field_updates({}, notes))
        if problems:
            # the view keeps following the run there is, if any; each refused field says why under itself
            text = " ".join(problems.get(f, "") for f in (*FIELDS, "preset") if f in problems)
            return (*show(session, _warning(text)), *_field_updates(problems, notes))
        return (*show(session, f"Started run {run.out.name}: starting the training process…"),
                *_field_updates({}, notes))

    def poll(drawn_count: int, request: gr.Request) -> tuple:
        return show(request.session_hash, None, drawn_count)

    def load(request: gr.Request) -> tuple:
        return show(request.session_hash, None, -1)

    def stop(request: gr.Request) -> tuple:
        try:
            service.cancel_training(request.session_hash)
        except SdfnError as err:
            return show(request.session_hash, _warning(client_message(service, err)))
        return show(request.session_hash)

    def switch(request: gr.Request, progress_bar: gr.Progress = gr.Progress()) -> tuple:  # noqa: B008
        progress_bar(0.1, desc="Loading the new model and building the catalog's index for it…")
        try:
            checkpoint, message = service.use_trained_model(request.session_hash)
        except SdfnError as err:
            return gr.skip(), _warning(client_message(service, err))
        return _header_markdown(service), f"Now serving {checkpoint.parent.name}/{checkpoint.name}. {message}"

    start.click(begin, [preset, catalog, epochs, batch, lr, pretrain], [*outputs, *fields], concurrency_id="train",
                **private)
    timer.tick(poll, drawn, outputs, queue=False, **private)
    cancel.click(stop, None, outputs, concurrency_id="train", **private)
    use.click(switch, None, [header, status], concurrency_id="train", **private)
    return load, outputs


def _warning(message: str) -> str:
    return f"**⚠ {message}**"


def _validation_every(preset: str) -> int | None:
    from sdfn.config import load_config

    try:
        return load_config(preset).eval.every
    except SdfnError:
        return None
