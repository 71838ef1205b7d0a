"""The demo's Explain tab and its API endpoints (/explain, /compare_models): one query explained for a teacher.

- Words → routes: each word of the change left out in turn (all variants in one batched forward pass,
  sdfn.explain); the words coloured by how far the route moves without them, per layer and router, on a FIXED
  scale in points of path weight, and which paths each word pushes up or down.
- Words → garment regions: the cross-modal refinement cell's word-to-region attention over the reference as the
  model saw it, one overlay per word and layer, on a fixed 0-0.5 scale.
- SDFN vs Combiner: the same query answered by the served model and by the Combiner trained on the same
  backbone (sdfn/assets/sdfn-tiny/combiner), with the annotated target's rank in each.
- Paraphrases: two phrasings of one change and their routes side by side.

Everything shown comes from sdfn.explain; this module only lays it out. Plugged into sdfn.demo_app by
`explain_tab` (inside the Tabs) and `api_endpoints`.
"""

from __future__ import annotations

import html
import logging
import threading
import weakref
from pathlib import Path
from typing import Any

import gradio as gr
import numpy as np
import plotly.graph_objects as go
from PIL import Image
from plotly.subplots import make_subplots

from sdfn.demo_service import GENERIC_CHANGES, KNOWN_TARGET_SPLITS, DemoService, markdown_literal
from sdfn.errors import ConfigError, SdfnError
from sdfn.explain import (
    SHIPPED_COMBINER,
    Explainer,
    Explanation,
    ModelComparison,
    PhrasingComparison,
    cell_abbreviation,
    overlay,
)
from sdfn.retrieval import check_k

log = logging.getLogger(__name__)

WORD_POINTS_RANGE = 5.0      # fixed colour range of a word's route effect: 0-5 points (mean change of path weights)
PATH_POINTS_RANGE = 20.0     # fixed range of one path's change: -20..+20 points
WEIGHT_POINTS_RANGE = 100.0  # path weights drawn 0-100 points (weights lie in [0, 1))
SHIFT_RANGE = 0.05           # fixed range of the query shift (1 - cosine)
ATTENTION_VMAX = 0.5         # overlays saturate at half of a region's attention
OVERLAY_PX = 160
COMPARE_K = 10
_FONT = {"family": "system-ui, -apple-system, 'Segoe UI', sans-serif", "size": 12}

UNITS = (
    "**Units, once for this tab.** A *path weight* says how much of one cell's output is passed to one cell of the "
    "next layer; it lies between 0 and 1 and is the image router's part plus the text router's part (each at most "
    "0.5). We state changes in **points**: 1 point = 0.01 of path weight. *Leaving a word out* re-runs the query "
    "without it (all words at once, one batch); a word's effect on a router in a layer is the mean change over "
    "that layer's paths, in points. *JS* is the Jensen-Shannon divergence (bits, 0 = same, 1 = disjoint) of what "
    "each cell receives. *Query shift* is 1 − cosine between the query vector with and without the word. Colours "
    f"use fixed ranges: words 0–{WORD_POINTS_RANGE:g} points, single paths ±{PATH_POINTS_RANGE:g} points, "
    f"attention 0–{ATTENTION_VMAX:g} of a region's attention; values beyond a range saturate (the numbers say so).")

CSS = """
.sdfn-words { line-height: 2.2em; font-size: 1.15em; overflow-wrap: anywhere; }
.sdfn-words span { padding: 2px 5px; border-radius: 5px; margin-right: 2px; border: 1px solid var(--neutral-300); }
.sdfn-legend { display: inline-block; width: 160px; height: 10px; vertical-align: middle; border-radius: 3px;
               background: linear-gradient(to right, rgba(220,38,38,0), rgba(220,38,38,1));
               border: 1px solid var(--neutral-300); }
/* The table scrolls inside its own box: Gradio's columns are flex items that would otherwise grow to the
   table's width and cut it off at the screen's edge on a phone. */
.sdfn-effects { overflow-x: auto; max-width: min(100%, calc(100vw - 40px)); }
.sdfn-effects table { border-collapse: collapse; font-size: 0.85em; }
.sdfn-effects td, .sdfn-effects th { padding: 2px 6px; border: 1px solid var(--neutral-200); text-align: right; }
.sdfn-effects th { font-weight: 600; }
@media (max-width: 600px) {
  .sdfn-effects table { font-size: 0.72em; }
  .sdfn-effects td, .sdfn-effects th { padding: 1px 3px; }
}
/* phone: the two result lists and the word overlays wrap to 3 columns (5 fixed columns cut results off) */
@media (max-width: 767px) {
  #explain-sdfn .grid-container, #explain-combiner .grid-container, #explain-regions .grid-container {
    grid-template-columns: repeat(3, minmax(0, 1fr)) !important; }
  #explain-sdfn .caption-label, #explain-combiner .caption-label, #explain-regions .caption-label {
    max-width: 96%; font-size: 12px; padding: 2px 5px; }
}
"""

# ---- one Explainer per served snapshot ------------------------------------------------------------------------

_explainers: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_combiners: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_lock = threading.Lock()


def use_combiner(service: DemoService, folder: Path | str | None) -> None:
    """Compare `service`'s model with the Combiner in `folder` (sdfn.explain.save_fusion's format) instead of the
    shipped one; None: no comparison."""
    with _lock:
        _combiners[service] = folder
        _explainers.pop(service, None)


def explainer_for(service: DemoService) -> Explainer:
    """The Explainer of the snapshot `service` serves now (a new one after a model switch)."""
    retriever = service.retriever
    with _lock:
        current = _explainers.get(service)
        if current is None or current.retriever is not retriever:
            current = _explainers[service] = Explainer(retriever, _combiners.get(service, SHIPPED_COMBINER))
        return current


def default_query(service: DemoService) -> tuple[str, str] | None:
    """A fixed example for the tab before any search: the first catalog item (by id) with an annotated val/test
    change whose target is known; None for a catalog without captions."""
    captions = service.captions()
    for item in sorted(captions.by_reference):
        for s in captions.for_reference(item):
            if s.split in KNOWN_TARGET_SPLITS and s.target is not None:
                return item, s.text
    return None


def _engine_reference(reference: dict[str, Any]) -> str | Path:
    return reference["id"] if reference.get("id") else Path(reference["image"])


# ---- words → routes ------------------------------------------------------------------------------------------

def _red(value: float, top: float) -> str:
    alpha = 0.0 if not np.isfinite(value) else min(1.0, max(0.0, value / top))
    return f"rgba(220,38,38,{alpha:.2f})"


def words_html(e: Explanation) -> str:
    """The change's words, each coloured by how far the route moves without it (fixed 0-5 points), then a table
    per layer and router, the query shift, and one sentence with the largest effect in points."""
    if e.trace is None:
        shifts = " ".join(f"<span title='query shift {w.query_shift:.4f}'>{html.escape(w.word)}</span>"
                          for w in e.words)
        return ("<p>This model's fusion is static: it has no route to move. Query shift without each word: "
                + ", ".join(f"{html.escape(w.word)} {w.query_shift:.4f}" for w in e.words)
                + f"</p><div class='sdfn-words'>{shifts}</div>")
    spans = " ".join(f"<span style='background:{_red(w.route_points, WORD_POINTS_RANGE)}' "
                    f"title='{w.route_points:.2f} points'>{html.escape(w.word)}</span>" for w in e.words)
    layers = len(e.words[0].route.points["path"])
    routers = [r for r in ("path", "image", "text") if r in e.words[0].route.points]
    head = "".join(f"<th>{html.escape(w.word)}</th>" for w in e.words)
    rows = []
    names = {"path": "path weight", "image": "image router", "text": "text router"}
    for layer in range(layers):
        for router in routers:
            cells = "".join(
                f"<td style='background:{_red(w.route.points[router][layer], WORD_POINTS_RANGE)}'>"
                f"{w.route.points[router][layer]:.2f}</td>" for w in e.words)
            rows.append(f"<tr><th>layer {layer + 1} · {names[router]}</th>{cells}</tr>")
    js = "".join(f"<td>{1000 * max(w.route.js_bits):.2f}</td>" for w in e.words)
    rows.append(f"<tr><th>JS, largest layer (millibits)</th>{js}</tr>")
    shift = "".join(f"<td style='background:{_red(w.query_shift, SHIFT_RANGE)}'>{w.query_shift:.4f}</td>"
                    for w in e.words)
    rows.append(f"<tr><th>query shift (1 − cos)</th>{shift}</tr>")
    moves = "".join(f"<td>{_move(w.route.largest)}</td>" for w in e.words)
    rows.append(f"<tr><th>path it moves most</th>{moves}</tr>")
    strongest = max(e.words, key=lambda w: w.route_points)
    weakest = min(e.words, key=lambda w: w.route_points)
    big = strongest.route.largest
    beyond = " (beyond the colour range: shown saturated)" if strongest.route_points > WORD_POINTS_RANGE else ""
    sentence = (f"Leaving out <b>“{html.escape(strongest.word)}”</b> moves the path weights most: "
                f"{strongest.route_points:.2f} points on average over the layers{beyond}, and up to "
                f"{abs(big['points']):.1f} points on one path (layer {big['layer']}, "
                f"{big['from'].replace('_', ' ')} → {big['to'].replace('_', ' ')}). The least: "
                f"“{html.escape(weakest.word)}”, {weakest.route_points:.2f} points. For scale: a path weight "
                "spans 0–100 points.")
    legend = (f"<small>colour: 0 <span class='sdfn-legend'></span> {WORD_POINTS_RANGE:g}+ points "
              "(mean change of the layer's path weights without the word)</small>")
    return (f"<div class='sdfn-words'>{spans}</div>{legend}<p>{sentence}</p>"
            f"<div class='sdfn-effects'><table><tr><th></th>{head}</tr>{''.join(rows)}</table></div>")


def _move(largest: dict) -> str:
    sign = "−" if largest["points"] > 0 else "+"   # RouteChange: without − with; the word's own push is the opposite
    to = "out" if largest["to"] == "output" else cell_abbreviation(largest["to"])
    return f"L{largest['layer']} {cell_abbreviation(largest['from'])}→{to} {sign}{abs(largest['points']):.1f}"


def path_figure(e: Explanation) -> go.Figure:
    """Words × paths: how much each word pushes each path's weight up (red) or down (blue), in points, on a fixed
    ±PATH_POINTS_RANGE scale. Different words lighting up different columns = different paths."""
    if e.path_effects is None:
        return _placeholder("This model's fusion is static: no paths to move.")
    words = [f"{i + 1}. {w.word}" for i, w in enumerate(e.words)]
    z = e.path_effects
    fig = go.Figure(go.Heatmap(
        z=z, x=e.path_labels, y=words, zmin=-PATH_POINTS_RANGE, zmax=PATH_POINTS_RANGE, colorscale="RdBu_r",
        colorbar={"title": {"text": "points", "side": "right"}, "thickness": 12},
        hovertemplate="%{y} on %{x}: %{z:+.2f} points<extra></extra>"))
    fig.update_yaxes(autorange="reversed", title_text="word left out")
    fig.update_xaxes(title_text="path (layer, from cell → to cell)", tickangle=-60, tickfont={"size": 9})
    top = float(np.abs(z).max()) if z.size else 0.0
    note = ", shown saturated" if top > PATH_POINTS_RANGE else ""
    title = (f"Path weight with the word − without it, points<br>(fixed ±{PATH_POINTS_RANGE:g}; largest "
             f"{top:.1f}{note})")
    return _styled(fig, 170 + 26 * len(words), title)


def _styled(fig: go.Figure, height: int, title: str) -> go.Figure:
    fig.update_layout(height=height, margin={"l": 10, "r": 10, "t": 64, "b": 10}, font=_FONT,
                      paper_bgcolor="rgba(0,0,0,0)", plot_bgcolor="rgba(0,0,0,0)",
                      title={"text": title, "x": 0.01, "font": {"size": 13}})
    return fig


def _placeholder(message: str, height: int = 160) -> go.Figure:
    fig = go.Figure()
    fig.add_annotation(text=message, x=0.5, y=0.5, xref="paper", yref="paper", showarrow=False,
                       font={**_FONT, "size": 14, "color": "#6b7280"})
    fig.update_xaxes(visible=False)
    fig.update_yaxes(visible=False)
    return _styled(fig, height, "")


# ---- words → regions -----------------------------------------------------------------------------------------

def word_overlays(e: Explanation, view: Image.Image) -> list[tuple[Image.Image, str]]:
    """One overlay per word and layer (word by word, layers in order), each captioned with its peak share."""
    out = []
    for w in e.words:
        for layer in e.attention:
            heat = layer.maps[w.index]
            out.append((overlay(view, heat, OVERLAY_PX, ATTENTION_VMAX),
                        f"“{w.word}” · layer {layer.layer} · peak {heat.max():.2f}, mean {heat.mean():.2f}"))
    return out


def regions_note(e: Explanation) -> str:
    if not e.attention:
        return "*No word-to-region attention: this model has no cross-modal refinement cell (or its tokenizer " \
               "cannot map words to tokens).*"
    gh, gw = e.grid
    best = max((layer.maps[w.index].max(), w.word, layer.layer) for w in e.words for layer in e.attention)
    return (f"Each image shows the reference as the model sees it (its {gh}×{gw} patch grid), greyed, with the "
            "patches tinted red by the share of their attention that goes to the word (fixed scale: 0 = none, "
            f"{ATTENTION_VMAX:g} or more = full red; every patch's shares over all tokens sum to 1). "
            f"Largest share: “{markdown_literal(best[1])}” in layer {best[2]}, {best[0]:.2f}.")


# ---- SDFN vs Combiner ------------------------------------------------------------------------------------------

def comparison_outputs(service: DemoService, c: ModelComparison) -> tuple[list, list, str]:
    def gallery(answer) -> list[tuple[str, str]]:
        return [(str(service.served_image(item["id"])),
                 ("✓ target " if item["id"] == c.target else "") + f"#{item['rank']}")
                for item in answer.items]

    a, b = c.answers
    lines = [f"**{html.escape(c.text)}** on {c.reference}, {c.searched:,} items searched"
             + (f" (category {c.category})" if c.category else "") + ". " + c.summary()]
    lines.append("Scores and the full lists: the `/compare_models` endpoint.")
    if c.target is None:
        lines.append("Not an annotated val/test pair, so no target rank: pick a suggested caption marked "
                     "“target known ✓” to see where routing helps.")
    if a.route:
        lines.append(f"{a.model}'s strongest path: " + " → ".join(x.replace("_", " ") for x in
                                                                  a.route["strongest_path"]) + "; the Combiner "
                     "has no route: it mixes the global image and text embeddings the same way for every query.")
    return gallery(a), gallery(b), "\n\n".join(lines)


# ---- paraphrases ------------------------------------------------------------------------------------------------

def phrasing_figure(p: PhrasingComparison) -> go.Figure:
    """Per layer: phrasing A's and B's path weights (0-100 points) and B − A (±PATH_POINTS_RANGE points)."""
    a, b = p.traces
    layers = len(a.weights)
    cells = [cell_abbreviation(c) for c in a.cells]
    titles = []
    for r in range(layers):
        titles += [f"layer {r + 1} · A", f"layer {r + 1} · B", f"layer {r + 1} · B − A"]
    fig = make_subplots(rows=layers, cols=3, subplot_titles=titles, horizontal_spacing=0.08, vertical_spacing=0.12)
    for r in range(layers):
        wa, wb = a.weights[r][0].numpy() * 100, b.weights[r][0].numpy() * 100
        to = cells if wa.shape[1] == len(cells) else ["out"]
        for col, (z, zmin, zmax, scale) in enumerate(((wa, 0, WEIGHT_POINTS_RANGE, "Blues"),
                                                      (wb, 0, WEIGHT_POINTS_RANGE, "Blues"),
                                                      (wb - wa, -PATH_POINTS_RANGE, PATH_POINTS_RANGE, "RdBu_r"))):
            bar = {"title": {"text": "points", "side": "right"}, "thickness": 10, "len": 0.3,
                   "y": 1 - (r + 0.5) / layers, "x": 1.0 if col == 2 else 0.64}
            fig.add_trace(go.Heatmap(z=z, x=to, y=cells, zmin=zmin, zmax=zmax, colorscale=scale,
                                     showscale=(col != 0), colorbar=bar,
                                     hovertemplate="from %{y} to %{x}: %{z:.1f} points<extra></extra>"),
                          row=r + 1, col=col + 1)
            fig.update_yaxes(autorange="reversed", row=r + 1, col=col + 1,
                             title_text="from" if col == 0 else None)
            fig.update_xaxes(title_text="to", row=r + 1, col=col + 1)
    title = "Two phrasings' path weights (fixed 0–100 points)<br>and B − A (fixed ±" f"{PATH_POINTS_RANGE:g})"
    return _styled(fig, 250 * layers + 60, title)


def phrasing_summary(p: PhrasingComparison) -> str:
    c = p.change
    big = c.largest
    parts = ", ".join(f"layer {r + 1} {c.points['path'][r]:.2f}" for r in range(len(c.points["path"])))
    routers = ""
    if "text" in c.points:
        routers = (f" The text router accounts for {np.mean(c.points['text']):.2f} points of it on average, the image "
                   f"router for {np.mean(c.points['image']):.2f}.")
    return (f"**A:** “{markdown_literal(p.texts[0])}” · **B:** “{markdown_literal(p.texts[1])}”\n\n"
            f"Mean change of the path weights from A to B: {parts} points; largest single path "
            f"{big['points']:+.1f} points (layer {big['layer']}, {big['from'].replace('_', ' ')} → "
            f"{big['to'].replace('_', ' ')}); JS of the incoming mixes at most {1000 * max(c.js_bits):.2f} millibits."
            f"{routers} Query cosine A·B = {p.query_cosine:.3f}.{_contrast(p)} Self path distillation trains the "
            "routes to depend on what is asked, not on how it is worded: for a paraphrase, small numbers here "
            "are the goal.")


def _contrast(p: PhrasingComparison) -> str:
    if p.contrast_change is None:
        return ""
    mean_b, mean_c = np.mean(p.change.points["path"]), np.mean(p.contrast_change.points["path"])
    return (f" For scale, a change asking for something else, “{markdown_literal(p.contrast)}”, moves A's path weights "
            f"by {mean_c:.2f} points on average over the layers (B: {mean_b:.2f}).")


def contrast_for(*texts: str) -> str:
    """A generic change that is neither of `texts` (the scale a paraphrase is compared with)."""
    from sdfn.demo_service import normalise

    taken = {normalise(t) for t in texts}
    return next(c for c in GENERIC_CHANGES if normalise(c) not in taken)


# ---- the tab ----------------------------------------------------------------------------------------------------

def explain_tab(service: DemoService, reference_state: gr.State, text_box: gr.Textbox) -> _Opener:
    """The Explain tab's contents (call inside `gr.Tab`); it explains the Search tab's garment (reference_state)
    and change (text_box), or a fixed example before the first pick. Wire the returned opener to the tab
    (`opener.wire(tab)`): opening the tab explains the current query."""
    example = default_query(service)
    gr.HTML(f"<style>{CSS}</style>", padding=False)
    gr.Markdown("### Explain this query\nWhich words move the route, which garment regions each word is read by, "
                "what a static Combiner on the same backbone answers, and how two phrasings are routed.")
    with gr.Accordion("Units and scales", open=False):
        gr.Markdown(UNITS)
    with gr.Row(equal_height=True):
        change = gr.Textbox(example[1] if example else "", label="Change to explain", max_lines=2, scale=4,
                            elem_id="explain-text")
        run = gr.Button("Explain", variant="primary", scale=1, elem_id="explain-button")
    asked = gr.Markdown("", elem_id="explain-query")
    target = gr.State(None)
    query = gr.State({"reference": example[0], "image": None} if example else None)
    with gr.Tabs(overflow_behavior="wrap"):      # on a phone all four stay in sight (no "⋯" menu)
        with gr.Tab("Words → routes"):
            words = gr.HTML("", elem_id="explain-words")
            paths = gr.Plot(show_label=False, elem_id="explain-paths")
        with gr.Tab("Words → garment regions"):
            regions_text = gr.Markdown("")
            regions = gr.Gallery(columns=3, height="auto", allow_preview=True, object_fit="contain", show_label=False,
                                 elem_id="explain-regions", buttons=[])
        with gr.Tab("SDFN vs Combiner"):
            compare_text = gr.Markdown("", elem_id="explain-compare")
            with gr.Row():
                served = gr.Gallery(label="served model (SDFN)", columns=5, height="auto", allow_preview=False,
                                    object_fit="contain", elem_id="explain-sdfn", buttons=[])
                combiner = gr.Gallery(label="Combiner (same backbone)", columns=5, height="auto", allow_preview=False,
                                      object_fit="contain", elem_id="explain-combiner", buttons=[])
        with gr.Tab("Paraphrases"):
            gr.Markdown("Phrasing A is the change above; write B, or take one generated from the annotated target's "
                        "attributes (sdfn.data.synth.phrasing) when the query is an annotated pair.")
            with gr.Row(equal_height=True):
                other = gr.Textbox("", label="Phrasing B", max_lines=2, scale=4, elem_id="explain-other")
                generate = gr.Button("Generate B", scale=1, elem_id="explain-generate")
                compare = gr.Button("Compare A and B", scale=1, elem_id="explain-compare-phrasings")
            phrasing_text = gr.Markdown("", elem_id="explain-phrasing")
            phrasing_plot = gr.Plot(show_label=False)
    private = {"api_visibility": "private"}

    def show_explanation(q: dict | None, text: str) -> tuple:
        if q is None:
            return (_warn("Pick a garment on the Search tab first."), *(gr.skip(),) * 9)
        reference = q["reference"] if q.get("reference") else Path(q["image"])
        try:
            ex = explainer_for(service)
            e, view = ex.explain(reference, text or "")
        except SdfnError as err:
            return (_warn(_message(service, err)), *(gr.skip(),) * 9)
        known = service.captions().known_target(q.get("reference"), text or "")
        try:   # the comparison may be refused (a Combiner of another backbone): the explanation still shows
            category = service.item(q["reference"])[1].get("category") if q.get("reference") else None
            c = ex.compare_models(reference, text or "", COMPARE_K, category, known.target if known else None)
            left, right, note = comparison_outputs(service, c)
            served_label = f"{c.answers[0].model} (served)"
        except SdfnError as err:
            left, right, note, served_label = [], [], _warn(_message(service, err)), "served model"
        overlays = gr.Gallery(word_overlays(e, view), columns=max(1, len(e.attention)))
        # an upload by its file name (as the Search tab names it), so one can tell which photo is explained
        asked = e.reference if q.get("reference") else f"your photo ({Path(q['image']).name})"
        head = (f"**Query:** {markdown_literal(asked)} + “{markdown_literal(e.text)}” · explained in "
                f"{e.timings_ms['total']:.0f} ms (the {len(e.words)} leave-one-out variants in one batch)")
        head += "".join(f"\n\nNote: {n}" for n in e.notes)
        return (head, words_html(e), path_figure(e), regions_note(e), overlays, note,
                gr.Gallery(left, label=served_label), right,
                known.target if known else None, gr.skip())

    outputs = [asked, words, paths, regions_text, regions, compare_text, served, combiner, target, other]

    def from_search(reference: dict | None, text: str, shown: dict | None, current: str) -> tuple:
        """Opening the tab: the Search tab's garment (a catalog pick or an uploaded photo) with its change, or the
        change shown here when none is typed there; what is shown when no garment is picked."""
        if reference is not None:
            q = {"reference": reference.get("id"), "image": None if reference.get("id") else reference["image"]}
            return q, text if (text or "").strip() else current
        return shown, current

    def generate_b(q: dict | None, text: str, known: str | None) -> tuple:
        if q is None or not q.get("reference") or known is None:
            return gr.skip(), _warn("Generating B needs an annotated pair (a suggested caption marked “target "
                                    "known ✓”); type B yourself otherwise.")
        try:
            found = explainer_for(service).paraphrases(q["reference"], known, n=3)
        except SdfnError as err:
            return gr.skip(), _warn(_message(service, err))
        fresh = [t for t in found if t != text]
        return (fresh[0] if fresh else gr.skip()), ""

    def compare_b(q: dict | None, text: str, b: str) -> tuple:
        if q is None:
            return _warn("Pick a garment on the Search tab first."), gr.skip()
        reference = q["reference"] if q.get("reference") else Path(q["image"])
        try:
            p = explainer_for(service).compare_phrasings(reference, text or "", b or "",
                                                         contrast_for(text or "", b or ""))
        except SdfnError as err:
            return _warn(_message(service, err)), gr.skip()
        return phrasing_summary(p), phrasing_figure(p)

    run.click(show_explanation, [query, change], outputs, concurrency_id="explain", concurrency_limit=2, **private)
    change.submit(show_explanation, [query, change], outputs, concurrency_id="explain", concurrency_limit=2, **private)
    generate.click(generate_b, [query, change, target], [other, phrasing_text], queue=False, **private)
    compare.click(compare_b, [query, change, other], [phrasing_text, phrasing_plot], concurrency_id="explain",
                  concurrency_limit=2, **private)
    return _Opener(from_search, show_explanation, [reference_state, text_box, query, change], [query, change],
                   [query, change], outputs)


class _Opener:
    """What build_demo wires to the tab's select event: copy the Search tab's query, then explain it."""

    def __init__(self, copy, explain, copy_inputs, copy_outputs, explain_inputs, explain_outputs):
        self.copy, self.explain = copy, explain
        self.copy_inputs, self.copy_outputs = copy_inputs, copy_outputs
        self.explain_inputs, self.explain_outputs = explain_inputs, explain_outputs

    def wire(self, tab: gr.Tab) -> None:
        private = {"api_visibility": "private"}
        tab.select(self.copy, self.copy_inputs, self.copy_outputs, queue=False, **private).then(
            self.explain, self.explain_inputs, self.explain_outputs, concurrency_id="explain", concurrency_limit=2,
            **private)


def _warn(message: str) -> str:
    return f"**⚠ {message}**"


def _message(service: DemoService, err: SdfnError, upload: str | None = None) -> str:
    from sdfn.demo_app import client_message  # the app's wording of errors, never naming a server folder

    return client_message(service, err, upload)


# ---- API endpoints ---------------------------------------------------------------------------------------------

def api_endpoints(service: DemoService) -> None:
    """/explain and /compare_models (JSON in, JSON out), beside the app's other endpoints."""
    from sdfn.demo_app import _api_reference  # the same reference rules (and messages) as /search

    with gr.Column(visible=False):
        reference = gr.Textbox(label="reference")
        image = gr.File(label="image", type="filepath")
        text = gr.Textbox(label="text")
        other = gr.Textbox(label="other")
        k = gr.Number(COMPARE_K, precision=None, label="k")
        category = gr.Textbox(label="category")
        answer = gr.JSON(label="answer")
        trigger = gr.Button("explain-api")

    def explain(reference: str | None = None, image: str | None = None, text: str | None = None,
                other: str | None = None) -> dict:
        """Explain one query: per word of `text`, how far the route moves when the word is left out (points of
        path weight per layer and router, JS bits, query shift; all variants in one batch), the cross-modal
        refinement cell's word-to-region attention per layer on the image patch grid, the route, and, when
        `other` (a second phrasing) is given, both phrasings' routes, their difference and, for scale, how far a
        generic different change moves the first one's route."""
        try:
            ref = _api_reference(service, reference, image)
            ex = explainer_for(service)
            e, _ = ex.explain(ref, text or "", view=False)
            out = e.to_json()
            if (other or "").strip():
                out["phrasing"] = ex.compare_phrasings(ref, text or "", other, contrast_for(text or "", other)
                                                       ).to_json()
            return out
        except SdfnError as err:
            raise gr.Error(_message(service, err, image), print_exception=False) from None

    def compare_models(reference: str | None = None, image: str | None = None, text: str | None = None,
                       k: float | None = None, category: str | None = None) -> dict:
        """The same query answered by the served model and by the Combiner trained on the same backbone: each
        one's top-k over the same items (category, default the reference's; "all" for the whole catalog) and,
        for an annotated val/test pair, the target's exact rank in each."""
        try:
            ref = _api_reference(service, reference, image)
            k = check_k(COMPARE_K if k is None else k)
            scope = (category or "").strip() or None
            if scope is None and isinstance(ref, str):
                scope = service.item(ref)[1].get("category")
            if scope == "all":
                scope = None
            known = service.captions().known_target(ref if isinstance(ref, str) else None, text or "")
            c = explainer_for(service).compare_models(ref, text or "", k, scope, known.target if known else None)
            return c.to_json()
        except SdfnError as err:
            raise gr.Error(_message(service, err, image), print_exception=False) from None
        except ValueError as err:   # a malformed number reaching int()
            raise gr.Error(str(ConfigError(f"k: {err}")), print_exception=False) from None

    trigger.click(explain, [reference, image, text, other], answer, api_name="explain",
                  api_description=explain.__doc__, concurrency_limit=2, concurrency_id="explain-api")
    trigger.click(compare_models, [reference, image, text, k, category], answer, api_name="compare_models",
                  api_description=compare_models.__doc__, concurrency_limit=2, concurrency_id="explain-api")
