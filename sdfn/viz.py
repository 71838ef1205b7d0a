"""Plotly figures of dynamic routing and training: one query's path weights, how much each operation module is
used, two queries compared, route statistics by kind of change, and a run's loss and recall curves.

Pure functions of library objects (RouterTrace, RouteStatistics, log.jsonl records), so the demo, notebooks and
reports draw the same pictures. Hover text says what each operation module does (the cell's `description`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import plotly.graph_objects as go
import torch
from plotly.subplots import make_subplots

from sdfn.fusion import RouterTrace
from sdfn.fusion.cells import CELLS
from sdfn.routes import RouteStatistics, cell_usage

QUERY_COLORS = ("#2563eb", "#ea580c", "#16a34a", "#9333ea")  # one per compared query; colour-blind distinct pair first
SEQUENTIAL = "Blues"
DIVERGING = "RdBu_r"
_FONT = {"family": "system-ui, -apple-system, 'Segoe UI', sans-serif", "size": 12}
_ROW_PX = 230


def cell_description(name: str) -> str:
    """The cell's one-sentence `description`, or '' for a name the library does not know."""
    cell = CELLS.get(name)
    return getattr(cell, "description", "") if cell is not None else ""


def cell_label(name: str) -> str:
    """'cross_modal_refinement' -> 'cross modal<br>refinement': two short lines fit under narrow subplots."""
    words = name.split("_")
    half = math.ceil(len(words) / 2)
    return " ".join(words[:half]) + ("<br>" + " ".join(words[half:]) if words[half:] else "")


def placeholder(message: str, height: int = 220) -> go.Figure:
    """An empty figure that says why there is nothing to draw (an empty state, not a blank box)."""
    fig = go.Figure()
    fig.add_annotation(text=message, x=0.5, y=0.5, xref="paper", yref="paper", showarrow=False,
                       font={**_FONT, "size": 14, "color": "#6b7280"})
    fig.update_xaxes(visible=False)
    fig.update_yaxes(visible=False)
    return _styled(fig, height)


def _styled(fig: go.Figure, height: int, title: str = "") -> go.Figure:
    fig.update_layout(height=height, margin={"l": 10, "r": 10, "t": 60 if title else 40, "b": 10},
                      font=_FONT, paper_bgcolor="rgba(0,0,0,0)", plot_bgcolor="rgba(0,0,0,0)",
                      title={"text": title, "x": 0.01, "font": {"size": 15}} if title else None)
    return fig


def _matrix(xs: list[torch.Tensor], layer: int) -> list[list[float]]:
    return xs[layer][0].detach().double().cpu().tolist()   # one query: [K_in, K_out]


def _parts(trace: RouterTrace) -> list[tuple[str, list[torch.Tensor]]]:
    """What to draw per layer: the image and text routers' parts and their sum (msr), else the path weights and
    the mix each cell receives (a shared or fixed router has no parts to separate)."""
    if trace.image is not None and trace.text is not None:
        return [("image router", trace.image), ("text router", trace.text), ("path weights (sum)", trace.weights)]
    return [("path weights", trace.weights), ("what each cell receives", trace.incoming)]


def _hover(rows: Sequence[str], cols: Sequence[str], z: list[list[float]], what: str) -> list[list[str]]:
    return [[f"<b>{a.replace('_', ' ')}</b> → <b>{b.replace('_', ' ')}</b><br>{what}: {z[i][j]:.3f}"
             f"<br><i>{cell_description(a)}</i>" for j, b in enumerate(cols)] for i, a in enumerate(rows)]


def _targets(trace: RouterTrace, layer: int) -> list[str]:
    return list(trace.cells) if layer < len(trace.weights) - 1 else ["output"]


def route_figure(trace: RouterTrace, title: str = "") -> go.Figure:
    """Per layer (rows), heatmaps of the path weights from each cell (y) to each cell of the next layer (x);
    for modality-specific routers the image router's and the text router's parts are drawn separately."""
    parts, layers, cells = _parts(trace), len(trace.weights), list(trace.cells)
    zmax = max(float(x.max()) for _, xs in parts for x in xs) or 1.0  # one colour scale: parts stay comparable
    fig = make_subplots(rows=layers, cols=len(parts), horizontal_spacing=0.03, vertical_spacing=0.5 / layers,
                        shared_yaxes=True,
                        subplot_titles=[f"layer {r + 1} · {name}" for r in range(layers) for name, _ in parts])
    for r in range(layers):
        targets = _targets(trace, r)
        for c, (name, xs) in enumerate(parts):
            z = _matrix(xs, r)
            fig.add_trace(go.Heatmap(z=z, x=[cell_label(t) for t in targets], y=[cell_label(s) for s in cells],
                                     zmin=0, zmax=zmax, colorscale=SEQUENTIAL, showscale=(r == 0 and c == 0),
                                     colorbar={"title": {"text": "weight"}, "len": 0.5, "y": 1, "yanchor": "top"},
                                     text=_hover(cells, targets, z, name), texttemplate="%{z:.2f}",
                                     hovertemplate="%{text}<extra></extra>"), row=r + 1, col=c + 1)
    fig.update_yaxes(autorange="reversed")
    fig.update_yaxes(title_text="from", title_standoff=2, col=1)
    fig.update_xaxes(title_text="to", title_standoff=2)
    return _styled(fig, 60 + _ROW_PX * layers, title)


def usage_figure(traces: Sequence[RouterTrace], labels: Sequence[str], title: str = "") -> go.Figure:
    """Bar charts, one per layer, of the share of the layer's output that leaves through each operation module
    (sdfn.routes.cell_usage); one colour per query, so two queries' routes can be compared bar by bar."""
    cells, layers = list(traces[0].cells), len(traces[0].weights)
    descriptions = [cell_description(c) for c in cells]
    fig = make_subplots(rows=1, cols=layers, shared_yaxes=True, horizontal_spacing=0.03,
                        subplot_titles=[f"layer {r + 1}" for r in range(layers)])
    for q, (trace, label) in enumerate(zip(traces, labels, strict=True)):
        usage = cell_usage(trace)[0].tolist()                               # [R, K]
        for r in range(layers):
            fig.add_trace(go.Bar(x=[cell_label(c) for c in cells], y=usage[r], name=label,
                                 marker_color=QUERY_COLORS[q % len(QUERY_COLORS)], legendgroup=str(q),
                                 showlegend=(r == 0 and len(traces) > 1), customdata=descriptions,
                                 hovertemplate=f"<b>%{{x}}</b><br>{_escape(label)}: %{{y:.0%}} of layer {r + 1}'s "
                                               "output<br><i>%{customdata}</i><extra></extra>"), row=1, col=r + 1)
    fig.update_yaxes(tickformat=".0%", rangemode="tozero")
    fig.update_yaxes(title_text="share of the layer's output", row=1, col=1)
    fig.update_layout(barmode="group", legend={"orientation": "h", "y": -0.25})
    return _styled(fig, 320 if len(traces) > 1 else 290, title)


def _escape(text: str) -> str:
    """A label inside a hovertemplate: braces and percent signs would read as template syntax."""
    return text.replace("%", "%%").replace("{", "(").replace("}", ")").replace("<", "&lt;")


def comparison_figure(a: RouterTrace, b: RouterTrace, label_a: str, label_b: str) -> go.Figure:
    """Per layer: the route of query A, of query B (the mix each cell receives, columns sum to 1) and B - A,
    so a reader sees where two captions on the same garment send the features differently."""
    layers, cells = len(a.incoming), list(a.cells)
    titles = [f"layer {r + 1} · {t}" for r in range(layers) for t in ("A", "B", "B − A")]
    fig = make_subplots(rows=layers, cols=3, horizontal_spacing=0.03, vertical_spacing=0.5 / layers,
                        shared_yaxes=True, subplot_titles=titles)
    limit = max(float((y - x).abs().max()) for x, y in zip(a.incoming, b.incoming, strict=True)) or 1e-3
    top = max(float(x.max()) for x in [*a.incoming, *b.incoming]) or 1.0
    for r in range(layers):
        targets = _targets(a, r)
        za, zb = _matrix(a.incoming, r), _matrix(b.incoming, r)
        diff = [[q - p for p, q in zip(ra, rb, strict=True)] for ra, rb in zip(za, zb, strict=True)]
        panels = ((za, label_a, SEQUENTIAL, 0.0, top), (zb, label_b, SEQUENTIAL, 0.0, top),
                  (diff, "B − A", DIVERGING, -limit, limit))
        for c, (z, what, scale, low, high) in enumerate(panels):
            fig.add_trace(go.Heatmap(z=z, x=[cell_label(t) for t in targets], y=[cell_label(s) for s in cells],
                                     zmin=low, zmax=high, colorscale=scale, showscale=(r == 0 and c != 0),
                                     colorbar={"len": 0.45, "y": 1, "yanchor": "top", "x": 1.0 + 0.07 * (c - 1),
                                               "title": {"text": "B − A" if c == 2 else "share"}},
                                     text=_hover(cells, targets, z, _escape(what)), texttemplate="%{z:.2f}",
                                     hovertemplate="%{text}<extra></extra>"), row=r + 1, col=c + 1)
    fig.update_yaxes(autorange="reversed")
    return _styled(fig, 60 + _ROW_PX * layers, f"A: “{label_a}”   vs   B: “{label_b}”")


def statistics_figure(stats: RouteStatistics) -> go.Figure:
    """Mean cell usage per kind of change (rows) and layer · cell (columns), and each kind's difference from all
    queries: the teaching view of whether the routers treat a colour change differently from a sleeve change."""
    cells, layers = list(stats.cells), stats.overall.usage.shape[0]
    columns = [[f"layer {r + 1}" for r in range(layers) for _ in cells],    # grouped axis: layer, then cell
               [cell_label(c) for _ in range(layers) for c in cells]]
    hover_cells = [f"layer {r + 1} · {c.replace('_', ' ')}<br><i>{cell_description(c)}</i>"
                   for r in range(layers) for c in cells]
    kinds = [stats.overall, *stats.by_kind]
    rows = [f"{k.kind} ({k.queries})" for k in kinds]
    usage = [k.usage.flatten().tolist() for k in kinds]
    overall = usage[0]
    diff = [[u - o for u, o in zip(row, overall, strict=True)] for row in usage]
    limit = max((abs(v) for row in diff for v in row), default=0.0) or 1e-3
    fig = make_subplots(rows=2, cols=1, vertical_spacing=0.2,
                        subplot_titles=["cell usage: share of each layer's output (queries in brackets)",
                                        "difference from all queries (percentage points)"])
    panels = ((usage, SEQUENTIAL, 0.0, max(max(usage)), "%{z:.0%}", "usage {:.1%}", 0.78),
              (diff, DIVERGING, -limit, limit, "%{z:+.1%}", "vs all queries {:+.1%}", 0.2))
    for c, (z, scale, low, high, cell_text, hover, bar_y) in enumerate(panels):
        text = [[f"<b>{rows[i]}</b> · {hover_cells[j]}<br>{hover.format(z[i][j])}" for j in range(len(hover_cells))]
                for i in range(len(rows))]
        fig.add_trace(go.Heatmap(z=z, x=columns, y=rows, zmin=low, zmax=high, colorscale=scale, text=text,
                                 hovertemplate="%{text}<extra></extra>", texttemplate=cell_text,
                                 colorbar={"y": bar_y, "len": 0.4, "tickformat": ".0%" if c == 0 else "+.0%"}),
                      row=c + 1, col=1)
    fig.update_yaxes(autorange="reversed")
    fig.update_xaxes(tickfont={"size": 10})
    return _styled(fig, 260 + 2 * 30 * len(rows), f"Routes by kind of change · {stats.split} split · "
                                                  f"router {stats.mode}")


def training_figure(records: Sequence[dict]) -> go.Figure:
    """A run's training loss per step and validation recall per epoch, from its log.jsonl records."""
    steps = [r for r in records if r.get("event") == "step" and "loss" in r]
    epochs = [r for r in records if r.get("event") == "epoch" and isinstance(r.get("val"), dict)]
    if not steps and not epochs:
        return placeholder("No training steps logged yet: the curves appear after the first steps.", 300)
    fig = make_subplots(rows=1, cols=2, horizontal_spacing=0.1, subplot_titles=["training loss", "validation recall"])
    fig.add_trace(go.Scatter(x=[r["step"] for r in steps], y=[r["loss"] for r in steps], mode="lines",
                             name="loss", line={"color": QUERY_COLORS[0]},
                             hovertemplate="step %{x}<br>loss %{y:.4f}<extra></extra>"), row=1, col=1)
    names = sorted({k for r in epochs for k in r["val"].get("mean", {}) if k.startswith("R@")},
                   key=lambda k: int(k[2:]))
    for i, name in enumerate(names):
        points = [(r["epoch"] + 1, r["val"]["mean"][name]) for r in epochs if name in r["val"].get("mean", {})]
        fig.add_trace(go.Scatter(x=[p[0] for p in points], y=[p[1] for p in points], mode="lines+markers",
                                 name=name, line={"color": QUERY_COLORS[(i + 1) % len(QUERY_COLORS)]},
                                 hovertemplate=f"epoch %{{x}}<br>{name} %{{y:.2f}}<extra></extra>"), row=1, col=2)
    if not epochs:
        fig.add_annotation(text="recall appears after the first validation", x=0.5, y=0.5, showarrow=False,
                           xref="x2 domain", yref="y2 domain", font={"color": "#6b7280"})
    fig.update_xaxes(title_text="step", row=1, col=1)
    fig.update_xaxes(title_text="epoch", dtick=1, row=1, col=2)
    fig.update_layout(legend={"orientation": "h", "y": -0.2})
    return _styled(fig, 320)
