"""Plotly figures of dynamic routing and training: one query's path weights, how much each operation module is
used, two queries compared, route statistics by kind of change, and a run's loss and recall curves.

Pure functions of library objects (RouterTrace, RouteStatistics, log.jsonl records), so the demo, notebooks and
reports draw the same pictures. Hover text says what each operation module does (the cell's `description`).
"""

from __future__ import annotations

import html
import math
from collections.abc import Sequence

import plotly.graph_objects as go
import torch
from plotly.subplots import make_subplots  # training_figure

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
    layout = {"annotations": [{"text": message, "x": 0.5, "y": 0.5, "xref": "paper", "yref": "paper",
                               "showarrow": False, "font": {**_FONT, "size": 14, "color": "#6b7280"}}],
              "xaxis": {"visible": False}, "yaxis": {"visible": False}}
    return _figure([], {**layout, **_base(height)})


def warm_up_figure() -> go.Figure:
    """A tiny figure with what the route figures draw (a heatmap with text in its cells, a bar chart): drawn
    unseen when the page loads, so the browser has loaded and run Plotly's heatmap code before the Router tab is
    first opened (its first heatmap otherwise costs the visitor several hundred ms)."""
    axes, refs, _ = _grid(1, 2, 10, 0)
    data = [_heatmap([[0.5]], ["a"], ["b"], refs[0][0], "", SEQUENTIAL, 0.0, 1.0, "%{z:.2f}", None),
            {"type": "bar", "x": ["a"], "y": [1], "xaxis": refs[0][1][0], "yaxis": refs[0][1][1]}]
    return _figure(data, {**axes, **_base(10, margin={"l": 0, "r": 0, "t": 0, "b": 0}), "showlegend": False})


def _base(height: int, title: str = "", margin: dict | None = None) -> dict:
    """What every figure's layout shares: its height in pixels, margins, font, a transparent background."""
    return {"height": height, "margin": margin or {"l": 10, "r": 10, "t": 60 if title else 40, "b": 10},
            "font": _FONT, "paper_bgcolor": "rgba(0,0,0,0)", "plot_bgcolor": "rgba(0,0,0,0)",
            "title": {"text": title, "x": 0.01, "font": {"size": 15}} if title else {"text": ""}}


def _styled(fig: go.Figure, height: int, title: str = "") -> go.Figure:
    fig.update_layout(**_base(height, title))
    return fig


def _figure(data: list[dict], layout: dict) -> go.Figure:
    """A figure from plain dicts, without Plotly's per-property validation (a tenth of the time: the demo builds
    figures while a visitor waits); the dicts are written here, so there is nothing to validate."""
    return go.Figure({"data": data, "layout": layout}, _validate=False)


def _grid(rows: int, cols: int, row_px: int, gap_px: int, hgap: float = 0.035
          ) -> tuple[dict, list[list[tuple[str, str]]], float]:
    """Axes for a rows x cols grid of subplots, laid out in pixels (row_px tall, gap_px between rows, room for
    tick labels and an axis title), so titles and labels never run into each other whatever the width. Returns
    the layout's axes, each subplot's (xref, yref), and the grid's height in pixels."""
    height = rows * row_px + (rows - 1) * gap_px
    width = (1 - hgap * (cols - 1)) / cols
    axes: dict = {}
    refs = []
    for r in range(rows):
        top = 1 - r * (row_px + gap_px) / height
        row = []
        for c in range(cols):
            n = r * cols + c + 1
            suffix = "" if n == 1 else str(n)
            left = c * (width + hgap)
            axes[f"xaxis{suffix}"] = {"domain": _span(left, left + width), "anchor": f"y{suffix}",
                                      "automargin": False}
            axes[f"yaxis{suffix}"] = {"domain": _span(top - row_px / height, top), "anchor": f"x{suffix}",
                                      "automargin": False}
            row.append((f"x{suffix}", f"y{suffix}"))
        refs.append(row)
    return axes, refs, height


def _span(low: float, high: float) -> list[float]:
    return [min(max(round(low, 6), 0.0), 1.0), min(max(round(high, 6), 0.0), 1.0)]


def _axis(layout: dict, ref: str) -> dict:
    return layout[("xaxis" if ref[0] == "x" else "yaxis") + ref[1:]]


def _title(text: str, xref: str, yref: str) -> dict:
    """A subplot's title, just above it and inside its own width."""
    return {"text": text, "xref": f"{xref} domain", "yref": f"{yref} domain", "x": 0.5, "y": 1, "yshift": 4,
            "xanchor": "center", "yanchor": "bottom", "showarrow": False, "font": {"size": 13}}


def _heatmap(z: list[list[float]], rows: Sequence[str], cols: Sequence[str], refs: tuple[str, str], what: str,
             scale: str, low: float, high: float, text_format: str, colorbar: dict | None) -> dict:
    trace = {"type": "heatmap", "z": z, "x": [cell_label(c) for c in cols], "y": [cell_label(c) for c in rows],
             "xaxis": refs[0], "yaxis": refs[1], "zmin": low, "zmax": high, "colorscale": scale,
             "text": _hover(rows, cols, z, what), "texttemplate": text_format,
             "hovertemplate": "%{text}<extra></extra>", "showscale": colorbar is not None, "xgap": 1, "ygap": 1}
    if colorbar is not None:
        trace["colorbar"] = {"len": 0.9, "thickness": 14, "y": 0.5, "yanchor": "middle", **colorbar}
    return trace


def _matrix(xs: list[torch.Tensor], layer: int, scale: float = 1.0) -> list[list[float]]:
    return (xs[layer][0].detach().double().cpu() * scale).tolist()   # one query: [K_in, K_out]


GATE_NOTE = ("Each path, from a module to a module of the next layer, has its own gate from 0 (shut) to 1 (fully "
             "open): a row does not sum to 1. With modality-specific routers the image router and the text router "
             "each set a gate and the path weight is their mean, so each router moves a path weight by at most "
             "half its own gate.")
SHARE_NOTE = ("Module usage is the share of a layer's output that leaves through each module (the layer's path "
              "weights normalised, so the bars of a layer add up to 100%).")


def _parts(trace: RouterTrace) -> list[tuple[str, list[torch.Tensor], float]]:
    """What to draw per layer, all on the 0-1 gate scale: the image router's and the text router's gates and the
    path weight (their mean) for modality-specific routers, else the path weights and the mix each cell
    receives (a shared or fixed router has no parts to separate). The trace keeps each router's half of the
    weight, so its gate is twice that."""
    if trace.image is not None and trace.text is not None:
        return [("image router gate", trace.image, 2.0), ("text router gate", trace.text, 2.0),
                ("path weight (mean)", trace.weights, 1.0)]
    return [("path weight", trace.weights, 1.0), ("share each module receives", trace.incoming, 1.0)]


def _hover(rows: Sequence[str], cols: Sequence[str], z: list[list[float]], what: str) -> list[list[str]]:
    return [[f"<b>{a.replace('_', ' ')}</b> → <b>{b.replace('_', ' ')}</b><br>{what}: {z[i][j]:.3f}"
             f"<br><i>{cell_description(a)}</i>" for j, b in enumerate(cols)] for i, a in enumerate(rows)]


def _targets(trace: RouterTrace, layer: int) -> list[str]:
    return list(trace.cells) if layer < len(trace.weights) - 1 else ["output"]


def _route_grid(layers: int, columns: list[str], title: str
                ) -> tuple[dict, list[list[tuple[str, str]]], int, dict]:
    """The heatmap grid shared by the route and comparison figures: one row per layer, column titles over the
    top row only, "layer r · from" on the left of each row, "to" under every heatmap."""
    axes, refs, grid_px = _grid(layers, len(columns), _ROW_PX, 78)
    top = 70 if title else 40
    layout = {**axes, "annotations": [_title(name, *refs[0][c]) for c, name in enumerate(columns)]}
    for r, row in enumerate(refs):
        for c, (x, y) in enumerate(row):
            _axis(layout, x).update({"title": {"text": "to", "standoff": 2, "font": {"size": 11}},
                                     "tickfont": {"size": 10}, "tickangle": 0, "side": "bottom"})
            _axis(layout, y).update({"autorange": "reversed", "tickfont": {"size": 10}, "showticklabels": c == 0,
                                     "title": {"text": f"layer {r + 1} · from" if c == 0 else "",
                                               "font": {"size": 11}}})
    return layout, refs, top + grid_px + 60, {"l": 120, "r": 70, "t": top, "b": 60}


def route_figure(trace: RouterTrace, title: str = "") -> go.Figure:
    """Per layer (rows), heatmaps of the gate of every path from each cell (y) to each cell of the next layer (x),
    on one fixed 0-1 colour scale; for modality-specific routers the image router's gate, the text router's gate
    and the path weight (their mean) side by side. See GATE_NOTE for the units."""
    parts, layers, cells = _parts(trace), len(trace.weights), list(trace.cells)
    layout, refs, height, margin = _route_grid(layers, [name for name, _, _ in parts], title)
    data = []
    for r in range(layers):
        targets = _targets(trace, r)
        for c, (name, xs, scale) in enumerate(parts):
            bar = {"title": {"text": "gate<br>0 shut<br>1 open", "side": "top"}, "tickvals": [0, 0.5, 1]}
            data.append(_heatmap(_matrix(xs, r, scale), cells, targets, refs[r][c], name, SEQUENTIAL, 0.0, 1.0,
                                 "%{z:.2f}", bar if r == 0 and c == 0 else None))
    return _figure(data, {**layout, **_base(height, title, margin)})


def usage_figure(traces: Sequence[RouterTrace], labels: Sequence[str], title: str = "") -> go.Figure:
    """Bar charts, one per layer, of the share of the layer's output that leaves through each operation module
    (sdfn.routes.cell_usage), on a fixed 0-100% axis; one colour per query, so two queries' routes can be
    compared bar by bar."""
    cells, layers = list(traces[0].cells), len(traces[0].weights)
    descriptions = [cell_description(c) for c in cells]
    axes, refs, grid_px = _grid(1, layers, 170, 0, hgap=0.03)
    layout = {**axes, "annotations": [_title(f"layer {r + 1}", *refs[0][r]) for r in range(layers)],
              "barmode": "group", "showlegend": len(traces) > 1,
              "legend": {"orientation": "h", "y": -0.45, "x": 0}}
    for r, (x, y) in enumerate(refs[0]):
        _axis(layout, x).update({"tickfont": {"size": 10}, "tickangle": 0})
        _axis(layout, y).update({"range": [0, 1], "tickformat": ".0%", "tickvals": [0, 0.25, 0.5, 0.75, 1],
                                 "showticklabels": r == 0, "gridcolor": "#e5e7eb",
                                 "title": {"text": "share of the<br>layer's output" if r == 0 else "",
                                           "font": {"size": 11}}})
    data = []
    for q, (trace, label) in enumerate(zip(traces, labels, strict=True)):
        usage = cell_usage(trace)[0].tolist()                               # [R, K]
        for r in range(layers):
            data.append({"type": "bar", "x": [cell_label(c) for c in cells], "y": usage[r], "name": label,
                         "xaxis": refs[0][r][0], "yaxis": refs[0][r][1],
                         "marker": {"color": QUERY_COLORS[q % len(QUERY_COLORS)]}, "legendgroup": str(q),
                         "showlegend": r == 0, "customdata": descriptions,
                         "hovertemplate": f"<b>%{{x}}</b><br>{_escape(label)}: %{{y:.0%}} of layer {r + 1}'s "
                                          "output<br><i>%{customdata}</i><extra></extra>"})
    bottom = 110 if len(traces) > 1 else 60
    top = 70 if title else 40
    return _figure(data, {**layout, **_base(top + grid_px + bottom, title,
                                            {"l": 120, "r": 70, "t": top, "b": bottom})})


def _escape(text: str) -> str:
    """A label inside a hovertemplate: braces and percent signs would read as template syntax."""
    return text.replace("%", "%%").replace("{", "(").replace("}", ")").replace("<", "&lt;")


def _difference_parts(a: RouterTrace, b: RouterTrace) -> list[tuple[str, list[torch.Tensor], list[torch.Tensor],
                                                                     float]]:
    pa, pb = _parts(a), _parts(b)
    if a.image is not None and a.text is not None and b.image is not None and b.text is not None:
        return [(name, xa, xb, scale) for (name, xa, scale), (_, xb, _) in zip(pa[:2], pb[:2], strict=True)]
    return [(pa[0][0], pa[0][1], pb[0][1], pa[0][2])]


def largest_difference(a: RouterTrace, b: RouterTrace) -> str:
    """One sentence: the largest change of a gate from query A to query B, per router, in points of the 0-1
    gate (0.07 = 7 points), so a small difference reads as small."""
    said = []
    for name, xa, xb, scale in _difference_parts(a, b):
        best, where = 0.0, ""
        for r, (p, q) in enumerate(zip(xa, xb, strict=True)):
            diff = (q[0] - p[0]).double() * scale
            i, j = divmod(int(diff.abs().argmax()), diff.shape[1])
            if abs(float(diff[i, j])) > abs(best):
                best = float(diff[i, j])
                where = (f"layer {r + 1}, {a.cells[i].replace('_', ' ')} → "
                         f"{_targets(a, r)[j].replace('_', ' ')}")
        said.append(f"{name.replace(' gate', '')}: {abs(best) * 100:.0f} points" + (f" ({where})" if where else ""))
    return ("Largest change of a gate from A to B, in points of the 0-1 scale (100 points = shut to fully open): "
            + "; ".join(said) + ".")


def comparison_figure(a: RouterTrace, b: RouterTrace, label_a: str, label_b: str) -> go.Figure:
    """Per layer, B − A of each router's gates (the image router's and the text router's separately; the path
    weights for a shared router), on a fixed −1 to +1 colour scale (the whole range a gate can move), so a reader
    sees which router moves which path when only the change's text differs. `largest_difference` says it in
    one sentence."""
    parts, layers, cells = _difference_parts(a, b), len(a.weights), list(a.cells)
    layout, refs, height, margin = _route_grid(layers, [f"{name}: B − A" for name, _, _, _ in parts], "title")
    data = []
    for r in range(layers):
        targets = _targets(a, r)
        for c, (name, xa, xb, scale) in enumerate(parts):
            za, zb = _matrix(xa, r, scale), _matrix(xb, r, scale)
            diff = [[q - p for p, q in zip(ra, rb, strict=True)] for ra, rb in zip(za, zb, strict=True)]
            bar = {"title": {"text": "B − A<br>gate", "side": "top"}, "tickvals": [-1, -0.5, 0, 0.5, 1]}
            data.append(_heatmap(diff, cells, targets, refs[r][c], f"{name}, B − A", DIVERGING, -1.0, 1.0,
                                 "%{z:.2f}", bar if r == 0 and c == 0 else None))
    title = f"A: “{html.escape(label_a)}”   vs   B: “{html.escape(label_b)}”"
    return _figure(data, {**layout, **_base(height, title, margin)})


STATISTICS_DIFF_POINTS = 10   # the difference panel's fixed colour range, ± percentage points
# cell text formats carry no '+' flag: the page's plotly.js ignores a format with one and prints the raw float
# ("0.9720427393913269"); a negative value keeps its minus sign


def statistics_note(stats: RouteStatistics) -> str:
    """One sentence: the largest difference of a kind of change from all queries, in percentage points."""
    cells, layers = list(stats.cells), stats.overall.usage.shape[0]
    best, where = 0.0, ""
    for kind in stats.by_kind:
        diff = (kind.usage - stats.overall.usage).double()
        r, c = divmod(int(diff.abs().argmax()), len(cells))
        if abs(float(diff[r, c])) > abs(best):
            best = float(diff[r, c])
            where = f"{kind.kind}, layer {r + 1} · {cells[c].replace('_', ' ')}"
    if not where:
        return "There is one kind of change only: nothing to compare."
    size = "small" if abs(best) < 0.05 else "clear"
    return (f"The kinds of change differ from all queries by at most {abs(best) * 100:.1f} percentage points "
            f"({where}; {best * 100:+.1f}): a {size} difference. The colour scale of the difference panel is fixed "
            f"at ±{STATISTICS_DIFF_POINTS} points, usage at 0-100%, over {layers} layers.")


def statistics_figure(stats: RouteStatistics) -> go.Figure:
    """Mean cell usage per kind of change (rows) and layer · cell (columns), and each kind's difference from all
    queries (percentage points): the teaching view of whether the routers treat a colour change differently
    from a sleeve change. Fixed colour ranges: usage 0-100%, difference ±STATISTICS_DIFF_POINTS points."""
    cells, layers = list(stats.cells), stats.overall.usage.shape[0]
    columns = [[f"layer {r + 1}" for r in range(layers) for _ in cells],    # grouped axis: layer, then cell
               [cell_label(c) for _ in range(layers) for c in cells]]
    hover_cells = [f"layer {r + 1} · {c.replace('_', ' ')}<br><i>{cell_description(c)}</i>"
                   for r in range(layers) for c in cells]
    kinds = [stats.overall, *stats.by_kind]
    rows = [f"{k.kind} ({k.queries})" for k in kinds]
    usage = [k.usage.flatten().tolist() for k in kinds]
    diff = [[(u - o) * 100 for u, o in zip(row, usage[0], strict=True)] for row in usage]
    row_px = 30 * len(rows)
    axes, refs, grid_px = _grid(2, 1, row_px, 110)
    titles = ["module usage: share of each layer's output (queries in brackets)",
              "difference from all queries (percentage points)"]
    layout = {**axes, "annotations": [_title(t, *refs[i][0]) for i, t in enumerate(titles)]}
    limit = STATISTICS_DIFF_POINTS
    panels = ((usage, SEQUENTIAL, 0.0, 1.0, "%{z:.0%}", "usage {:.1%}",
               {"tickformat": ".0%", "tickvals": [0, 0.5, 1], "title": {"text": "usage"}}),
              (diff, DIVERGING, -limit, limit, "%{z:.1f}", "vs all queries {:+.1f} points",
               {"tickvals": [-limit, 0, limit], "title": {"text": "points"}}))
    data = []
    for c, (z, scale, low, high, cell_text, hover, bar) in enumerate(panels):
        x, y = refs[c][0]
        _axis(layout, x).update({"tickfont": {"size": 10}, "tickangle": 0, "type": "multicategory"})
        _axis(layout, y).update({"autorange": "reversed", "tickfont": {"size": 11}})
        text = [[f"<b>{rows[i]}</b> · {hover_cells[j]}<br>{hover.format(z[i][j])}" for j in range(len(hover_cells))]
                for i in range(len(rows))]
        top = 1 - c * (row_px + 110) / grid_px
        data.append({"type": "heatmap", "z": z, "x": columns, "y": rows, "xaxis": x, "yaxis": y, "zmin": low,
                     "zmax": high, "colorscale": scale, "text": text, "hovertemplate": "%{text}<extra></extra>",
                     "texttemplate": cell_text, "xgap": 1, "ygap": 1,
                     "colorbar": {**bar, "len": row_px / grid_px, "y": top, "yanchor": "top", "thickness": 14}})
    title = f"Routes by kind of change · {stats.split} split · router {stats.mode}"
    return _figure(data, {**layout, **_base(80 + grid_px + 70, title, {"l": 150, "r": 70, "t": 80, "b": 70})})


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
