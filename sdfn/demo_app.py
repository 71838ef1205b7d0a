"""The Gradio app: the Blocks layout, built from one small function per view, and its event handlers.

Everything a handler computes comes from the library (sdfn.demo_service for searches, captions, route statistics
and training; sdfn.viz for figures); this module only turns those into components and messages. `demo.py` is the
entry point (and the Hugging Face Spaces app_file); tests build the same app with `build_demo`.

Named API endpoints (JSON in, JSON out; see `api_endpoints`): /search, /route, /route_plot, /suggestions,
/route_statistics, /info. Every refused input answers with a message that says what to do.

What the server hands out and accepts (see README, "Security and limits"): files only from the service's folder
of served catalog images (`DemoService.images`) and Gradio's own upload cache; the Train view's handlers, which
also answer raw queue requests by fn_index, check everything against the training policy
(sdfn.demo_training) and the caller's session.
"""

from __future__ import annotations

import html
import math
import os
import random
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import gradio as gr
import pandas as pd
import plotly.graph_objects as go

from sdfn import demo_explain, viz
from sdfn.data.images import FILE_FIX, PIXELS_FIX
from sdfn.demo_service import GENERIC_CHANGES, KNOWN_TARGET_SPLITS, DemoService, SearchOutcome, markdown_literal
from sdfn.demo_train_view import train_tab
from sdfn.errors import ConfigError, SdfnError
from sdfn.retrieval import SearchResult, strongest_path, trace_to_json
from sdfn.routes import cell_usage
from sdfn.scope import MIN_CONFIDENCE

TITLE = "sdfn · language-based fashion retrieval"
PER_PAGE = 12
MAX_K = 100             # the Search view's slider; the API allows up to sdfn.retrieval.MAX_K
SEARCH_CONCURRENCY = 64  # search events in flight at once: they wait together for one batch (DemoService.search)
MAX_UPLOAD = "50mb"
SAME, ALL = "same", "all"
EMPTY_RESULTS = "*Results appear here: pick a garment, describe a change and press Search.*"
THEME = gr.themes.Soft(primary_hue="indigo", secondary_hue="orange", neutral_hue="slate",
                       # system fonts: the page needs nothing from a font CDN, so it works offline
                       font=["system-ui", "-apple-system", "Segoe UI", "Roboto", "sans-serif"],
                       font_mono=["ui-monospace", "SFMono-Regular", "Menlo", "Consolas", "monospace"])
CSS = """
.sdfn-header h1 { margin-bottom: 0.1em; }
.sdfn-header p { margin-top: 0.2em; color: var(--body-text-color-subdued); }
.sdfn-step h3 { margin: 0.2em 0 0.1em 0; }
.sdfn-status p { margin: 0.2em 0; }
.sdfn-progress { height: 14px; border-radius: 7px; background: var(--neutral-200); overflow: hidden; }
.sdfn-progress > div { height: 100%; background: var(--primary-500); transition: width 0.6s; }
.sdfn-progress-label { font-size: 0.9em; color: var(--body-text-color-subdued); margin-top: 4px; }
#results-gallery .grid-wrap, #catalog-browser .grid-wrap { min-height: 0; max-height: none; overflow-y: visible; }
.sdfn-chain-title { font-weight: 600; margin-bottom: 6px; }
.sdfn-chain { display: flex; align-items: center; gap: 10px; overflow-x: auto; padding-bottom: 4px; }
.sdfn-chain figure { margin: 0; text-align: center; flex: none; }
.sdfn-chain img { width: 96px; height: 96px; object-fit: contain; border-radius: 8px;
                  background: var(--neutral-100); }
.sdfn-chain figcaption { font-size: 0.8em; color: var(--body-text-color-subdued); }
.sdfn-arrow { flex: none; max-width: 160px; text-align: center; font-size: 0.9em; font-style: italic; }
#results-gallery.sdfn-stale { opacity: 0.45; filter: grayscale(0.6); }
#plotly-warm { height: 0 !important; min-height: 0 !important; overflow: hidden; visibility: hidden; margin: 0;
               padding: 0; border: 0; }
.sdfn-narrow { display: none; }
#pager { flex-wrap: nowrap; }
#pager .sdfn-status { min-width: 140px; }
/* phone (the columns stack below ~770 px): 3 catalog columns, 2-3 result columns, the pager's label on its own
   line, no overlay labels over the grids */
@media (max-width: 767px) {
  .sdfn-wide { display: none; }
  .sdfn-narrow { display: inline; }
  #catalog-browser .grid-container { grid-template-columns: repeat(3, minmax(0, 1fr)) !important; }
  #results-gallery .grid-container { grid-template-columns: repeat(3, minmax(0, 1fr)) !important; }
  #results-gallery .caption-label { max-width: 96%; font-size: 12px; padding: 2px 5px; }
  #pager { flex-wrap: wrap; }
  #pager .sdfn-status { flex: 1 1 100%; order: -1; }
  .gradio-container { padding-left: 8px !important; padding-right: 8px !important; }
  /* the route, usage, Compare and statistics figures keep their desktop width (their subplots' titles, tick labels
     and cell numbers need it) and scroll sideways inside their own box; the refine chain wraps onto more lines,
     so its "now:" garment is on screen */
  #route-plot, #usage-plot, #compare-usage, #compare-routes, #stats-plot { overflow-x: auto !important; }
  #route-plot .js-plotly-plot, #usage-plot .js-plotly-plot, #compare-usage .js-plotly-plot,
  #compare-routes .js-plotly-plot, #stats-plot .js-plotly-plot { min-width: 1100px; }
  .sdfn-chain { flex-wrap: wrap; overflow-x: visible; }
}
@media (max-width: 359px) {
  #results-gallery .grid-container { grid-template-columns: repeat(2, minmax(0, 1fr)) !important; }
}
"""
# the Search button remembers when it was pressed, and the status line then says how long the visitor waited
# (click → results on screen: the answer's images in view loaded), measured in the browser, not only the model's
# time. Searches can overlap (a second click while the first answer's images still load): each click takes a
# sequence number (window.sdfnSearchSeq) and queues it with its time; each status takes the oldest click (answers
# come back in click order), and a measurement that ends after a newer click changes nothing (it returns
# Gradio's empty update): it never writes its old status back over a newer search's, and the wait said is always
# the search's own. A k typed above the box's maximum is clamped by the page when the box loses focus, before it
# is sent, with no word: K_WATCH_JS remembers what was typed, the click notes it, and the status says k was capped.
K_WATCH_JS = """() => {
  document.addEventListener('input', e => {
    if (e.target && e.target.closest && e.target.closest('#top-k')) window.sdfnKTyped = Number(e.target.value);
  }, true);
}"""
CLICK_JS = """(...args) => {
  const box = document.querySelector('#top-k input[type=number]');
  const asked = window.sdfnKTyped, most = box ? Number(box.max) : NaN;
  window.sdfnKTyped = undefined;
  const note = asked > most ? `Note: k = ${asked} asked; k was capped at ${most}, the most results this view shows `
    + '(the /search API allows more).' : '';
  const seq = window.sdfnSearchSeq = (window.sdfnSearchSeq || 0) + 1;
  (window.sdfnSearchClicks = window.sdfnSearchClicks || []).push({seq, t: performance.now(), note});
  return args;
}"""
WAITED_JS = """async (status) => {
  const click = (window.sdfnSearchClicks || []).shift();
  const unchanged = {__type__: 'update'};
  if (click === undefined || !status || !status.startsWith('Searched')) return unchanged;
  const newer = () => window.sdfnSearchSeq !== click.seq;   // the visitor searched again meanwhile
  const onScreen = i => i.getBoundingClientRect().top < window.innerHeight;   // lazy images below wait for a scroll
  await new Promise(r => requestAnimationFrame(r));
  const gallery = document.querySelector('#results-gallery'), said = document.querySelector('#search-status');
  if (!newer() && gallery && said) {   // results starting low or below the screen (a phone): bring them up,
    const top = gallery.getBoundingClientRect().top, from = said.getBoundingClientRect().top;   // status first
    if (top > window.innerHeight * 0.6) {                          // if it leaves the results room, else them
      const to = top - from < window.innerHeight * 0.5 ? from - 8 : top - 56;
      if (to > 0) window.scrollBy({top: to, behavior: 'instant'});
    }
  }
  const deadline = performance.now() + 10000;
  while (performance.now() < deadline && !newer()) {
    await new Promise(r => requestAnimationFrame(r));
    const images = [...document.querySelectorAll('#results-gallery img')];
    if (images.every(i => i.complete || !onScreen(i))) break;
  }
  if (newer()) return unchanged;
  const waited = Math.round(performance.now() - click.t);
  const cut = status.indexOf('\\n\\n') < 0 ? status.length : status.indexOf('\\n\\n');
  return status.slice(0, cut) + ` · **you waited ${waited} ms** (click → results on screen)`
    + (click.note ? '\\n\\n' + click.note : '') + status.slice(cut);
}"""


# ---- small helpers ------------------------------------------------------------------------------------------

def _warning(message: str) -> str:
    return f"**⚠ {message}**"


def _reference_for(service: DemoService, item_id: str) -> dict[str, Any]:
    _, meta = service.item(item_id)
    return {"id": item_id, "image": str(service.served_image(item_id)), "label": item_id,
            "category": meta.get("category"), "title": meta.get("title", ""), "split": meta.get("split", "")}


def _engine_reference(reference: dict[str, Any]) -> str | Path:
    """A catalog item searches by id (its features are cached); an upload by its file."""
    return reference["id"] if reference.get("id") else Path(reference["image"])


def _reference_markdown(reference: dict[str, Any] | None) -> str:
    if reference is None:
        return ("**No garment picked yet.**\n\nPick one from the catalog <span class='sdfn-wide'>on the left"
                "</span><span class='sdfn-narrow'>above</span>, or upload a photo.")
    if not reference.get("id"):
        return f"**{reference['label']}**\n\n{_prediction_markdown(reference.get('prediction'))}"
    where = f" · {reference['split']} split" if reference.get("split") else ""
    return f"**{reference['id']}** · {reference['category']}{where}\n\n{reference.get('title', '')}"


def _suggestion_samples(service: DemoService, reference: dict[str, Any] | None) -> list[list[str]]:
    found = service.captions().for_reference(reference.get("id") if reference else None)
    if not found:
        return [[text, "example"] for text in GENERIC_CHANGES]
    return [[s.text, f"{s.split} caption" + (" · target known ✓" if s.split in KNOWN_TARGET_SPLITS and s.target
                                             else "")] for s in found]


def _scope_category(reference: dict[str, Any], scope: str) -> str | None:
    """The engine's category for a scope choice: “Same category” is its default (a catalog item's own category, an
    upload's predicted one), “All categories” is "all" (ALL), a name is that category."""
    return None if scope == SAME else scope


def _prediction_markdown(prediction: dict[str, Any] | None) -> str:
    """What the engine made of an uploaded photo: its predicted category, or a warning that it is out of catalog."""
    if prediction is None:
        return "An uploaded photo."
    if prediction["out_of_catalog"]:
        return ("⚠ **This photo looks unlike every catalog item**: results will be the nearest items there are, "
                "not matches. “Same category” searches the whole catalog; a photo of one garment on a plain "
                "background works best.")
    guess = f"**{prediction['category']}** ({prediction['confidence']:.0%} sure)"
    if prediction["confidence"] < MIN_CONFIDENCE:
        return f"An uploaded photo; its category is uncertain ({guess}): “Same category” searches the whole catalog."
    return (f"An uploaded photo; predicted category {guess}: “Same category” searches it (change it in “Search "
            "in”).")


def _header_markdown(service: DemoService) -> str:
    d = service.describe()
    categories = ", ".join(d["categories"])
    return (f"# {TITLE}\n"
            "Pick a garment, say what to change (“is red and has longer sleeves”), and get the catalog items that "
            "match. The Self-distilled Dynamic Fusion Network routes every query through its own mix of operation "
            "modules: the **Router** tab shows that route layer by layer.\n\n"
            f"<small>**Model** `{d['backbone']}` + `{d['fusion']}` fusion ({d['router']} routers), fingerprint "
            f"`{d['model_fingerprint']}` · **Catalog** {Path(d['catalog']).name}: {d['items']:,} items "
            f"({categories}) · {d['index']} index</small>")


# ---- search view --------------------------------------------------------------------------------------------

@dataclass
class SearchView:
    """The Search tab's components that other views read or update."""

    reference: gr.State
    last_query: gr.State
    chain: gr.State
    result_ids: gr.State
    reference_image: gr.Image
    reference_info: gr.Markdown
    text: gr.Textbox
    suggestions: gr.Dataset
    k: gr.Slider
    scope: gr.Dropdown
    search: gr.Button
    status: gr.Markdown
    chain_box: gr.Group
    chain_strip: gr.HTML
    back: gr.Button
    target: gr.Markdown
    results: gr.Gallery
    table: gr.Dataframe
    route: gr.State | None = None         # the last search's SearchResult: the Router tab draws its trace


@dataclass
class RouterView:
    summary: gr.Markdown
    routes: gr.Plot
    usage: gr.Plot
    drawn: gr.State                       # [reference, text] of the route on screen
    compare_status: gr.Markdown | None
    compare_a: gr.Textbox | None = None   # Compare's change A: a search puts its change there
    compare_plots: tuple[gr.Plot, gr.Plot] | None = None


def _highlight(ids: list[str], reference: dict[str, Any] | None) -> int | None:
    """The catalog grid's slot of the picked garment, None where it is not on the page shown: the highlight follows
    the garment, never a slot."""
    item = reference.get("id") if reference else None
    return ids.index(item) if item in ids else None


def _browser(service: DemoService, reference: gr.State) -> tuple[gr.Gallery, gr.State, gr.UploadButton]:
    """The catalog browser (category filter, paging, shuffle) and the upload button. Returns the gallery, the ids
    it shows and the upload button."""
    counts = service.categories()
    category = gr.Dropdown([("All categories", "")] + [(f"{c} ({n})", c) for c, n in counts.items()], value="",
                           label="Category", elem_id="catalog-category")
    first = service.browse(None, None, 1, PER_PAGE)
    gallery = gr.Gallery(_page_items(service, first.ids), columns=4, height="auto", allow_preview=False,
                         fit_columns=False, object_fit="contain", show_label=False, elem_id="catalog-browser",
                         buttons=[])
    ids = gr.State(first.ids)
    state = gr.State({"category": "", "seed": None, "page": 1})
    with gr.Row(equal_height=True, elem_id="pager"):
        previous = gr.Button("◀ Previous", size="sm", min_width=80)
        page_label = gr.Markdown(_page_label(first.page, first.pages, first.total), elem_classes="sdfn-status")
        following = gr.Button("Next ▶", size="sm", min_width=80)
        shuffle = gr.Button("Shuffle", size="sm", min_width=80)
    upload = gr.UploadButton("Upload your own photo", variant="secondary", size="md", elem_id="upload-button")

    def show(category: str, seed: int | None, page: int, picked: dict | None) -> tuple:
        found = service.browse(category or None, seed, page, PER_PAGE)
        return (gr.Gallery(_page_items(service, found.ids), selected_index=_highlight(found.ids, picked)), found.ids,
                {"category": category, "seed": seed, "page": found.page},
                _page_label(found.page, found.pages, found.total))

    outputs = [gallery, ids, state, page_label]
    private = {"api_visibility": "private", "queue": False}
    category.change(lambda c, r: show(c, None, 1, r), [category, reference], outputs, **private)
    shuffle.click(lambda s, r: show(s["category"], random.randrange(1 << 30), 1, r), [state, reference], outputs,
                  **private)
    previous.click(lambda s, r: show(s["category"], s["seed"], s["page"] - 1, r), [state, reference], outputs,
                   **private)
    following.click(lambda s, r: show(s["category"], s["seed"], s["page"] + 1, r), [state, reference], outputs,
                    **private)
    return gallery, ids, upload


def _page_items(service: DemoService, ids: list[str]) -> list[str]:
    return [str(service.served_image(i)) for i in ids]   # no captions: ids mean nothing to a shopper


def _page_label(page: int, pages: int, total: int) -> str:
    return f"<center>page {page} of {pages} · {total:,} items</center>"


def _search_tab(service: DemoService) -> tuple[SearchView, gr.Gallery, gr.State, gr.UploadButton]:
    picked = gr.State(None)
    with gr.Row(equal_height=False):
        with gr.Column(scale=5, min_width=340):
            gr.Markdown("### 1 · Pick a garment", elem_classes="sdfn-step")
            browser, browser_ids, upload = _browser(service, picked)
        with gr.Column(scale=6, min_width=380):
            gr.Markdown("### 2 · Describe the change", elem_classes="sdfn-step")
            with gr.Row(equal_height=False):
                reference_image = gr.Image(label="Reference", interactive=False, height=230, scale=2,
                                           min_width=160, elem_id="reference-image", buttons=[])
                reference_info = gr.Markdown(_reference_markdown(None), elem_id="reference-info")
            text = gr.Textbox(label="Change", placeholder="e.g. is red and has longer sleeves", max_lines=2,
                              elem_id="change-text", submit_btn=False)
            suggestions = gr.Dataset(components=["textbox", "textbox"], headers=["suggested change", "from"],
                                     samples=_suggestion_samples(service, None), samples_per_page=5,
                                     label="Suggestions: click one to use it", layout="table")
            with gr.Row(equal_height=True):
                k = gr.Slider(1, MAX_K, value=10, step=1, label="Results (top-k)", scale=3, min_width=200,
                              elem_id="top-k")
                scope = gr.Dropdown([("Same category", SAME), ("All categories", ALL)]
                                    + [(c, c) for c in service.categories()], value=SAME, label="Search in", scale=2,
                                    min_width=180, elem_id="scope")
            search = gr.Button("Search", variant="primary", elem_id="search-button")
            status = gr.Markdown("", elem_id="search-status", elem_classes="sdfn-status")
    # an invisible plot: the page loads Plotly (~1 MB of script) while the visitor is on the Search tab, not when
    # the Router tab is first opened (a hidden tab's components are only mounted when it is shown)
    gr.Plot(viz.warm_up_figure(), show_label=False, elem_id="plotly-warm", container=False)
    gr.Markdown("### 3 · Results: click one to refine the search from it", elem_classes="sdfn-step")
    with gr.Group(visible=False) as chain_box:
        chain_strip = gr.HTML("", elem_id="chain", padding=True)
        back = gr.Button("Step back", size="sm", elem_id="step-back")
    target = gr.Markdown(EMPTY_RESULTS, elem_id="target-note")
    # no overlay label: on a phone it covers the first row
    results = gr.Gallery(show_label=False, columns=6, height="auto", fit_columns=False, allow_preview=False,
                         object_fit="contain", elem_id="results-gallery", visible=False, buttons=[])
    with gr.Accordion("Results as a table (scores and attributes)", open=False):
        table = gr.Dataframe(interactive=False, wrap=False, max_height=520, pinned_columns=3, buttons=["copy"],
                             elem_id="results-table")
    view = SearchView(picked, gr.State(None), gr.State([]), gr.State([]), reference_image, reference_info,
                      text, suggestions, k, scope, search, status, chain_box, chain_strip, back, target, results,
                      table, gr.State(None))
    return view, browser, browser_ids, upload


def _results_gallery(service: DemoService, outcome: SearchOutcome) -> list[tuple[str, str]]:
    target = outcome.target.target if outcome.target else None
    return [(str(service.images.path(item.file)),
             ("✓ target · " if item.id == target else "") + f"#{item.rank} · {item.score:.3f}")
            for item in outcome.result.items]


def _results_table(outcome: SearchOutcome) -> pd.DataFrame:
    target = outcome.target.target if outcome.target else None
    rows = [{"rank": i.rank, "score": round(i.score, 4), "✓": "target" if i.id == target else "", "id": i.id,
             **i.metadata} for i in outcome.result.items]
    return pd.DataFrame(rows)


STATUS_TYPED_CHARS = 200   # a rewritten request is quoted as typed up to here in the status line


def _status_line(result: SearchResult, total: int) -> str:
    q = result.query
    what = f"“{markdown_literal(q.text_used)}”" if q.text_used else "no text (image only)"
    typed = " ".join(q.text.split())
    if q.text_used and typed != q.text_used:    # said as typed, then as the model read it (the notes say why)
        typed = typed if len(typed) <= STATUS_TYPED_CHARS else typed[:STATUS_TYPED_CHARS - 1] + "…"
        what = f"“{markdown_literal(typed)}”, read as {what}"
    where = f"category {q.category}" if q.category else f"all {total:,} items"
    where += " (predicted from the photo)" if q.category_source == "predicted" else ""
    # the browser appends the time the visitor waited (WAITED_JS); the server's share is said as such
    lines = [f"Searched {where} for {markdown_literal(q.reference)} + {what}: {len(result.items)} "
             f"{'result' if len(result.items) == 1 else 'results'} · server "
             f"{result.timings_ms.get('total', 0):.0f} ms"]
    lines += [f"⚠ **Warning: {q.warning}**"] if q.warning else []
    lines += [f"Note: {note}" for note in q.notes]
    return "\n\n".join(lines)


def route_outputs(service: DemoService, result: SearchResult) -> tuple[str, go.Figure, go.Figure]:
    """The Router tab's summary and figures for a query, or a figure that says why there is no route."""
    q = result.query
    reference = markdown_literal(q.reference)
    asked = f"{reference} + “{markdown_literal(q.text_used)}”" if q.text_used else f"{reference} (no text)"
    if result.trace is None:
        why = ("This model's fusion is static: every query takes the same path, so there is no route to show."
               if not service.retriever.model.fusion.has_routes else
               "An image-only search (empty text) skips the fusion network: type a change to see its route.")
        return f"**Query:** {asked}\n\n{why}", viz.placeholder(why), viz.placeholder(why)
    path = " → ".join(c.replace("_", " ") for c in strongest_path(result.trace))
    summary = (f"**Query:** {asked} · router mode **{result.trace.mode}**\n\n"
               f"**Strongest path:** {path} → output")
    label = q.text_used if len(q.text_used) < 40 else q.text_used[:37] + "…"
    return (summary, viz.route_figure(result.trace, "Path weights, layer by layer"),
            viz.usage_figure([result.trace], [label], "How much each operation module is used"))


def _chain_html(chain: list[dict], reference: dict[str, Any] | None) -> str:
    """The refinement chain as a strip: each reference, then the change asked of it as an arrow to the next."""
    def figure(ref: dict[str, Any], caption: str) -> str:
        # Gradio serves the served-images folder (allowed_paths) and uploads at gradio_api/file=; relative, so a
        # proxy's root path (Spaces) is kept
        return (f"<figure><img src='gradio_api/file={quote(ref['image'])}' alt='{html.escape(ref['label'])}'>"
                f"<figcaption>{html.escape(caption)}</figcaption></figure>")

    if not chain or reference is None:
        return ""
    parts = [figure(turn["reference"], turn["reference"]["label"]) +
             f"<div class='sdfn-arrow'>“{html.escape(turn['text'] or 'no text')}”<br>→</div>" for turn in chain]
    return ("<div class='sdfn-chain-title'>Refinement chain</div><div class='sdfn-chain'>" + "".join(parts)
            + figure(reference, f"now: {reference['label']}") + "</div>")


def _wire_search(service: DemoService, view: SearchView, router: RouterView, browser: gr.Gallery,
                 browser_ids: gr.State, upload: gr.UploadButton) -> None:
    """Picking, uploading, searching, refining from a result and stepping back."""
    private = {"api_visibility": "private"}
    skip_results = (gr.skip(),) * 5

    def run_search(reference: dict | None, text: str, k: float, scope: str) -> tuple:
        if reference is None:
            return (*skip_results, _warning("Pick a garment from the catalog <span class='sdfn-wide'>(left)</span>"
                                            "<span class='sdfn-narrow'>(above)</span> or upload a photo first, "
                                            "then press Search."), *(gr.skip(),) * 8)
        try:
            outcome = service.search(_engine_reference(reference), text or "", int(k),
                                     _scope_category(reference, scope))
        except SdfnError as err:
            return (*skip_results, _warning(client_message(service, err)), *(gr.skip(),) * 8)
        query = {"reference": reference, "text": text or ""}
        status = _status_line(outcome.result, len(service.retriever.index))
        # the Router tab draws its figures when it is opened (RouterView.show): never built for a search nobody
        # looks at, and drawn in a visible tab (Plotly lays out a hidden one at the wrong width); new results
        # have no selected slot (the one clicked to refine belonged to the old ones)
        return (gr.Gallery(_results_gallery(service, outcome), visible=True, elem_classes=[], selected_index=None),
                _results_table(outcome), outcome.target.message() if outcome.target else "",
                [i.id for i in outcome.result.items], query, status, outcome.result, None, None, None,
                *((text, gr.Plot(visible=False), gr.Plot(visible=False), "") if text else (gr.skip(),) * 4))

    # the Router tab's old figures are taken away (the tab is hidden): opening it draws the new ones once, instead
    # of first re-laying out the old ones at full width and then replacing them; the search's change becomes
    # Compare's change A, so the comparison drawn for the old A goes too
    search_outputs = [view.results, view.table, view.target, view.result_ids, view.last_query, view.status,
                      view.route, router.routes, router.usage, router.drawn, router.compare_a,
                      *router.compare_plots, router.compare_status]
    search_inputs = [view.reference, view.text, view.k, view.scope]
    for trigger in (view.search.click, view.text.submit):
        trigger(run_search, search_inputs, search_outputs, concurrency_id="search",
                concurrency_limit=SEARCH_CONCURRENCY, js=CLICK_JS, queue=False, **private).then(
            None, view.status, view.status, js=WAITED_JS, queue=False, **private)

    def choose(reference: dict, chain: list[dict], message: str, shown: list[str], page: list[str],
               refining: bool = False) -> tuple:
        """A new reference: its picture, facts and suggestions, the chain, the catalog's highlight on it (or none),
        and the results of the previous reference, still shown, greyed out and said to be old (the slot clicked
        to refine stays marked: it is the new reference; any other pick clears the mark)."""
        stale = (gr.Gallery(elem_classes=["sdfn-stale"]) if refining else
                 gr.Gallery(elem_classes=["sdfn-stale"], selected_index=None),
                 f"*The results below are for the previous garment: press Search for {reference['label']}.*"
                 ) if shown else (gr.skip(), gr.skip())
        return (reference, reference["image"], _reference_markdown(reference),
                gr.Dataset(samples=_suggestion_samples(service, reference)), chain,
                gr.Group(visible=bool(chain)), _chain_html(chain, reference), message,
                gr.Gallery(selected_index=_highlight(page, reference)), *stale)

    choose_outputs = [view.reference, view.reference_image, view.reference_info, view.suggestions, view.chain,
                      view.chain_box, view.chain_strip, view.status, browser, view.results, view.target]
    skip_choose = (gr.skip(),) * (len(choose_outputs) - 1)

    def pick(ids: list[str], shown: list[str], event: gr.SelectData) -> tuple:
        reference = _reference_for(service, ids[event.index])
        return choose(reference, [], f"Picked {reference['id']}. Describe a change, or click a suggestion.", shown,
                      ids)

    browser.select(pick, [browser_ids, view.result_ids], choose_outputs, **private)

    def uploaded(path: str | None, shown: list[str]) -> tuple:
        if not path:
            return (*skip_choose[:7], _warning("The upload did not arrive; try again."), *skip_choose[7:])
        name = Path(path).name
        try:
            preview = service.check_upload(path)
            prediction = service.predict_category(path)
        except SdfnError as err:
            return (*skip_choose[:7], _warning(client_message(service, err, path)), *skip_choose[7:])
        reference = {"id": None, "image": path, "label": f"your photo ({name})", "category": prediction.scope,
                     "prediction": prediction.to_json()}
        out = list(choose(reference, [], f"Using your photo {name} ({preview.width}×{preview.height} after "
                                         "resizing). Describe a change and press Search.", shown, []))
        out[1] = preview
        return tuple(out)

    upload.upload(uploaded, [upload, view.result_ids], choose_outputs, **private)
    view.suggestions.click(lambda sample: sample[0], view.suggestions, view.text, queue=False, **private)

    def refine(ids: list[str], query: dict | None, chain: list[dict], page: list[str], event: gr.SelectData
               ) -> tuple:
        reference = _reference_for(service, ids[event.index])
        chain = [*chain, query] if query is not None else chain
        # the results stay (greyed, said to be the previous step's) with their table: both show the same search
        return (*choose(reference, chain, f"Refining from {reference['id']}: describe the next change and press "
                                          "Search, or step back.", ids, page, refining=True), "")

    refine_outputs = [*choose_outputs, view.text]
    view.results.select(refine, [view.result_ids, view.last_query, view.chain, browser_ids], refine_outputs,
                        **private)

    def step_back(chain: list[dict], shown: list[str], page: list[str]) -> tuple:
        if not chain:
            return (*skip_choose, gr.skip(), gr.skip())
        turn, rest = chain[-1], chain[:-1]
        return (*choose(turn["reference"], rest, "Stepped back one turn.", shown, page), turn["text"])

    view.back.click(step_back, [view.chain, view.result_ids, browser_ids], [*choose_outputs, view.text],
                    **private).then(
        run_search, search_inputs, search_outputs, concurrency_id="search", concurrency_limit=SEARCH_CONCURRENCY,
        **private)


# ---- router view --------------------------------------------------------------------------------------------

ROUTER_INTRO = ("Every routing layer mixes the outputs of its operation modules with weights that the **image "
                "router** (reading the garment) and the **text router** (reading the change) choose for this query. "
                "Rows are the module a path leaves, columns the module it enters in the next layer; hover a cell to "
                "read what its module does.\n\n<small>**Units.** " + viz.GATE_NOTE + " " + viz.SHARE_NOTE
                + "</small>")


def _example_query(service: DemoService) -> dict[str, Any]:
    """What the Router tab shows before the visitor's first search: the catalog's first garment with one of its
    annotated changes (a generic change where it has none)."""
    reference = _reference_for(service, service.browse(None, None, 1, 1).ids[0])
    found = service.captions().for_reference(reference["id"])
    return {"reference": reference, "text": found[0].text if found else GENERIC_CHANGES[0]}


def _router_tab(service: DemoService, search: SearchView) -> RouterView:
    gr.Markdown(ROUTER_INTRO)
    summary = gr.Markdown("", elem_id="route-summary")
    # drawn when the tab is opened (_wire_router), before the first search with an example query
    routes = gr.Plot(None, show_label=False, elem_id="route-plot")
    usage = gr.Plot(None, show_label=False, elem_id="usage-plot")
    view = RouterView(summary, routes, usage, gr.State(None), None)
    view.compare_status, view.compare_a, view.compare_plots = _compare_section(service, search)
    _statistics_section(service)
    return view


def _wire_router(service: DemoService, tab: gr.Tab, search: SearchView, view: RouterView) -> None:
    """Opening the Router tab draws the route of the last search (an example before the first), only when it
    differs from what is drawn; a stale "pick a garment first" under Compare goes once a garment is picked."""
    example: dict[str, Any] = {}

    def show(query: dict | None, searched: SearchResult | None, reference: dict | None, drawn: list | None,
             compare_note: str) -> tuple:
        note = "" if reference is not None and (compare_note or "").startswith(_warning("Pick")[:6]) else gr.skip()
        shown = query or example.setdefault("query", _example_query(service))
        key = [shown["reference"].get("id") or shown["reference"]["image"], shown["text"]]
        # a garment picked (or uploaded) since the last search: its route is not drawn yet, and the page says so
        picked = reference.get("id") or reference.get("image") if reference is not None else None
        stale = query is not None and picked is not None and picked != key[0]
        key += [picked] if stale else []
        if key == drawn:
            return gr.skip(), gr.skip(), gr.skip(), gr.skip(), note
        try:   # the last search's own trace where there is one: no second pass through the model
            result = searched if query is not None and searched is not None else service.routes(
                _engine_reference(shown["reference"]), [shown["text"]])[0]
        except SdfnError as err:
            return _warning(client_message(service, err)), gr.skip(), gr.skip(), None, note
        summary, routes, usage = route_outputs(service, result)
        if query is None:
            summary = ("*An example query: run a search on the Search tab to see your own query's route.*\n\n"
                       + summary)
        elif stale:
            summary = (f"⚠ *This is the route of your last search. The garment picked since "
                       f"({markdown_literal(str(reference.get('label') or picked))}) has not been searched yet: "
                       f"search it on the Search tab to see its route.*\n\n" + summary)
        return summary, routes, usage, key, note

    tab.select(show, [search.last_query, search.route, search.reference, view.drawn, view.compare_status],
               [view.summary, view.routes, view.usage, view.drawn, view.compare_status], queue=False,
               api_visibility="private")   # one plain request: the queue's join and event stream cost more


def _compare_section(service: DemoService, search: SearchView
                     ) -> tuple[gr.Markdown, gr.Textbox, tuple[gr.Plot, gr.Plot]]:
    gr.Markdown("### Compare two changes on the same garment", elem_classes="sdfn-step")
    gr.Markdown("Same garment, two texts. The text router reads the change, so its gates move directly; the image "
                "router reads each module's output, which already mixes in the words where a module reads them (such "
                "as cross-modal refinement), so its gates can move too, already in the first layer; only rows of "
                "modules that read the garment alone stay at 0 there. The heatmaps show B − A for each router on a "
                "fixed −1 to +1 scale (a gate's whole range), so a small difference looks small.")
    with gr.Row(equal_height=True):
        text_a = gr.Textbox(label="Change A", value=GENERIC_CHANGES[0], scale=3, min_width=200, elem_id="compare-a")
        text_b = gr.Textbox(label="Change B", value=GENERIC_CHANGES[1], scale=3, min_width=200, elem_id="compare-b")
        compare = gr.Button("Compare routes", variant="primary", scale=1, min_width=140, elem_id="compare-button")
    status = gr.Markdown("", elem_classes="sdfn-status", elem_id="compare-status")
    # hidden until there is something to draw: no empty boxes
    usage = gr.Plot(None, show_label=False, elem_id="compare-usage", visible=False)
    routes = gr.Plot(None, show_label=False, elem_id="compare-routes", visible=False)

    def run(reference: dict | None, a: str, b: str) -> tuple:
        if reference is None:
            return gr.skip(), gr.skip(), _warning("Pick a garment on the Search tab first.")
        if not a.strip() or not b.strip():
            return gr.skip(), gr.skip(), _warning("Type both changes: an empty text routes nothing.")
        try:
            first, second = service.routes(_engine_reference(reference), [a, b])
        except SdfnError as err:
            return gr.skip(), gr.skip(), _warning(client_message(service, err))
        if first.trace is None or second.trace is None:
            why = "This model's fusion is static: both changes take the same fixed path."
            return gr.Plot(visible=False), gr.Plot(visible=False), why
        la, lb = first.query.text_used, second.query.text_used
        return (gr.Plot(viz.usage_figure([first.trace, second.trace], [f"A: {la}", f"B: {lb}"],
                                         "Module usage, A vs B"), visible=True),
                gr.Plot(viz.comparison_figure(first.trace, second.trace, la, lb), visible=True),
                f"Routes of A “{markdown_literal(la)}” and B “{markdown_literal(lb)}” on "
                f"{markdown_literal(reference['label'])}. "
                + viz.largest_difference(first.trace, second.trace))

    compare.click(run, [search.reference, text_a, text_b], [usage, routes, status], api_visibility="private",
                  queue=False)
    # a comparison (or its warning) is about one garment: a new garment takes it away
    search.reference.change(lambda: (gr.Plot(visible=False), gr.Plot(visible=False), ""), None,
                            [usage, routes, status], api_visibility="private", queue=False)
    return status, text_a, (usage, routes)   # a search puts its change in A and takes the old comparison away


def _statistics_section(service: DemoService) -> None:
    gr.Markdown("### Route statistics by kind of change", elem_classes="sdfn-step")
    gr.Markdown("Do the routers treat a colour change differently from a sleeve change? Over every annotated query "
                "of the val split, the mean module usage per kind of change (a query asking for two changes counts "
                "in both), and how each kind differs from all queries together, in percentage points. Computed "
                "once per model and catalog (a few seconds), then cached.")
    button = gr.Button("Compute route statistics (val split)", elem_id="stats-button")
    summary = gr.Markdown("", elem_classes="sdfn-status", elem_id="stats-summary")
    plot = gr.Plot(None, show_label=False, visible=False, elem_id="stats-plot")
    table = gr.Dataframe(interactive=False, visible=False)

    def compute() -> tuple:
        try:
            stats = service.route_statistics("val")
        except SdfnError as err:
            return _warning(client_message(service, err)), gr.skip(), gr.skip()
        if stats is None:
            why = "This model's fusion is static: there are no routes to compare."
            return why, gr.Plot(visible=False), gr.Dataframe(visible=False)
        rows = []
        for k in [stats.overall, *stats.by_kind]:
            top = [stats.cells[int(i)].replace("_", " ") for i in k.usage.argmax(dim=1)]
            rows.append({"kind of change": k.kind, "queries": k.queries, "route entropy (nats)": round(k.entropy, 3),
                         "image router share": None if k.image_share is None else round(k.image_share, 3),
                         "most used module per layer": " → ".join(top)})
        text = (f"{stats.overall.queries:,} queries · {stats.distinct_strongest_paths} distinct strongest paths; the "
                f"most common one is taken by {stats.top_path_share:.0%} of queries · uniform routing would have "
                f"entropy {math.log(len(stats.cells)):.3f} nats.\n\n" + viz.statistics_note(stats))
        return (text, gr.Plot(viz.statistics_figure(stats), visible=True),
                gr.Dataframe(pd.DataFrame(rows), visible=True))

    button.click(compute, None, [summary, plot, table], api_visibility="private", concurrency_id="statistics")


# ---- named API endpoints ------------------------------------------------------------------------------------

def _api_reference(service: DemoService, reference: str | None, image: str | None) -> str | Path:
    reference = (reference or "").strip()
    if reference and image:
        raise ConfigError("give either a catalog item id (reference) or an image file (image), not both.")
    if image:
        return Path(image)
    if not reference:
        raise ConfigError("give a reference: a catalog item id (see /info for the catalog, /suggestions for "
                          "annotated changes) or an image file (gradio_client.handle_file(path)).")
    service.item(reference)   # an unknown id: a message with close matches, never read as a file name
    return reference


_ABSOLUTE_PATH = re.compile(r"(?<![\w.~:/-])/(?:[^\s'\"`()<>\[\],;/]+/)+[^\s'\"`()<>\[\],;]*")
_UPLOAD_FIX = "send a photo as JPEG, PNG, WebP, GIF, BMP or TIFF"
UPLOAD_CACHE_SECONDS = (3600, 3600)   # Gradio's delete_cache: (how often to look, how old a file may get)
_LONG_QUOTE = re.compile(r"'([^'\n]{81,})'")
MAX_MESSAGE_CHARS = 2000
_LOCAL_IMAGE_HINT = "give the image itself (a file path or an upload)"
_REMOTE_IMAGE_HINT = "send the image itself (the `image` input: an upload, gradio_client.handle_file(path))"


def client_message(service: DemoService, err: SdfnError, upload: str | None = None) -> str:
    """The text of an error as a visitor or an API client sees it, never naming a folder of the server: the
    catalog by its name and its files relative to it, an upload by its file name, any other absolute path by its
    last part; and the engine's hint to give an image file is worded for a remote client."""
    message = str(err)
    if upload:
        message = message.replace(str(upload), Path(upload).name)
    root = service.retriever.catalog.root
    # the root only where a path ends there: /srv/cat is the catalog, /srv/catalogs/other is another folder
    message = re.sub(re.escape(str(root)) + r"(?:/|(?![\w~-]|\.\w))",
                     lambda match: "" if match.group(0).endswith("/") else root.name, message)

    def name(match: re.Match) -> str:
        path = match.group(0)
        tail = len(path) - len(path.rstrip(".:"))
        return os.path.basename(os.path.normpath(path[:len(path) - tail])) + path[len(path) - tail:]

    message = _ABSOLUTE_PATH.sub(name, message).replace(_LOCAL_IMAGE_HINT, _REMOTE_IMAGE_HINT)
    if upload:   # the engine's advice for a file of a catalog, worded for someone who sent a photo
        message = message.replace(FILE_FIX, _UPLOAD_FIX).replace(PIXELS_FIX, "")
    # a value quoted back (an unknown id, a category) is shortened: a 20 MB input gets a short answer
    message = _LONG_QUOTE.sub(lambda m: f"'{m.group(1)[:60]}...' ({len(m.group(1)):,} characters)", message)
    if len(message) > MAX_MESSAGE_CHARS:   # keep the start (what went wrong) and the end (what to do)
        message = f"{message[:MAX_MESSAGE_CHARS - 400]} ... {message[-380:]}"
    return message


def _api_error(service: DemoService, err: SdfnError, image: str | None = None) -> gr.Error:
    return gr.Error(client_message(service, err, image), print_exception=False)


def say_input_errors(demo: gr.Blocks, service: DemoService) -> None:
    """Gradio answers an event sent too few input values, or a value its component cannot read (a file that is
    not an upload, a path it may not hand out), with `{"error": null}`, its own message hidden, and it drops the
    values sent beyond an endpoint's inputs. Here every such request is refused with a message that names the
    endpoint, its inputs in order and what to send (the values themselves are not echoed beyond a short quote)."""
    read = demo.preprocess_data

    async def preprocess_data(block_fn: Any, inputs: list[Any], state: Any, explicit_call: bool = False) -> Any:
        public = bool(block_fn.api_name) and block_fn.api_visibility != "private"
        where = f"/{block_fn.api_name}" if public else "this event"
        names = [getattr(b, "label", None) or type(b).__name__.lower() for b in block_fn.inputs]
        if len(inputs) < len(names) or (public and len(inputs) > len(names)):
            takes = (f"takes {len(names)} input value{'s' if len(names) != 1 else ''} in this order: "
                     f"{', '.join(names)}" if names else "takes no input values")
            send = (f"send exactly {len(names)} (null for an optional one left out)" if names else
                    "send an empty list")
            raise gr.Error(f"{where} {takes}; {len(inputs)} {'was' if len(inputs) == 1 else 'were'} sent: {send}.",
                           print_exception=False)
        try:
            return await read(block_fn, inputs, state, explicit_call)
        except gr.Error:
            raise
        except Exception as err:   # Gradio's own reading of a value: say which input and what to send
            files = [n for n, b, v in zip(names, block_fn.inputs, inputs, strict=False)
                     if v is not None and isinstance(b, gr.File | gr.Image)]
            what = f"the '{files[0]}' input" if len(files) == 1 else "an input value"
            hint = f"; {_REMOTE_IMAGE_HINT}, or null for none" if files else ""
            raise _api_error(service, SdfnError(f"{where}: {what} could not be read as sent "
                                                f"({type(err).__name__}){hint}")) from None

    demo.preprocess_data = preprocess_data


def api_endpoints(service: DemoService) -> None:
    """JSON endpoints for gradio_client, named with api_name; their inputs are hidden components (an API caller
    sends values straight to them). One hidden trigger carries them all: it is never clicked."""
    with gr.Column(visible=False):
        reference = gr.Textbox(label="reference")
        image = gr.File(label="image", type="filepath")
        text = gr.Textbox(label="text")
        # precision None: a fractional k reaches the handler and is refused there, never silently rounded
        k = gr.Number(10, precision=None, label="k")
        category = gr.Textbox(label="category")
        split = gr.Textbox("val", label="split")
        answer = gr.JSON(label="answer")
        plot = gr.Plot(label="figure")
        trigger = gr.Button("api")

    # defaults of None make the parameters optional for gradio_client (keyword calls may leave them out)
    def search(reference: str | None = None, image: str | None = None, text: str | None = None,
               k: float | None = None, category: str | None = None) -> dict:
        """Rank catalog items for a reference (catalog id or image file) changed by a text; k: a whole number
        from 1 to 1000 (default 10); category: empty searches the reference's own category (an image: its
        predicted category, or all when uncertain or unlike the catalog), "all" the whole catalog, else that
        category. Returns {"query", "results", "routing", "target"}; query says the category searched and why
        (category_source: reference, predicted, uncertain or asked), an image's prediction and any warning
        (an image unlike every catalog item); result images are named relative to the catalog folder; target:
        where the annotated answer of a known val/test (reference, caption) pair landed, else null."""
        try:
            ref = _api_reference(service, reference, image)
            return service.search(ref, text or "", 10 if k is None else k, (category or "").strip() or None
                                  ).to_json()
        except SdfnError as err:
            raise _api_error(service, err, image) from None

    def route(reference: str | None = None, image: str | None = None, text: str | None = None) -> dict:
        """The router trace of one query: per layer path weights (image and text router parts), module usage per
        layer, the strongest path, and what each module does. routing is null for image-only or static queries."""
        try:
            result = service.routes(_api_reference(service, reference, image), [text or ""])[0]
        except SdfnError as err:
            raise _api_error(service, err, image) from None
        cells = list(result.trace.cells) if result.trace is not None else []
        query = vars(result.query).copy()   # reference_image: already Catalog.image_name or an upload's file name
        return {"query": query, "routing": trace_to_json(result.trace),
                "cell_usage": cell_usage(result.trace)[0].tolist() if result.trace is not None else None,
                "modules": [{"name": c, "description": viz.cell_description(c)} for c in cells]}

    def route_plot(reference: str | None = None, image: str | None = None, text: str | None = None) -> go.Figure:
        """The route heatmaps of one query as a Plotly figure."""
        try:
            result = service.routes(_api_reference(service, reference, image), [text or ""])[0]
        except SdfnError as err:
            raise _api_error(service, err, image) from None
        if result.trace is None:
            return viz.placeholder("No route: an image-only query or a static fusion.")
        return viz.route_figure(result.trace)

    def suggestions(reference: str | None = None) -> list:
        """The annotated changes of a catalog item: [{"text", "split", "target", "captions"}], val/test first; an
        unknown id is refused as /search refuses it."""
        try:
            item = _api_reference(service, reference, None)
        except SdfnError as err:
            raise _api_error(service, err) from None
        return [s.to_json() for s in service.captions().for_reference(str(item))]

    def route_statistics(split: str | None = None) -> dict:
        """Route usage by kind of change over a split's annotated queries (cached per model and catalog)."""
        try:
            stats = service.route_statistics((split or "val").strip())
        except SdfnError as err:
            raise _api_error(service, err) from None
        return stats.to_json() if stats is not None else {"mode": "static", "note": "this fusion has no routes"}

    def info() -> dict:
        """What is served: checkpoint and catalog (by folder name), the served model's fingerprint, categories
        and index."""
        return service.describe()

    query_inputs = [reference, image, text]
    for fn, inputs, output, name in ((search, [*query_inputs, k, category], answer, "search"),
                                     (route, query_inputs, answer, "route"),
                                     (route_plot, query_inputs, plot, "route_plot"),
                                     (suggestions, [reference], answer, "suggestions"),
                                     (route_statistics, [split], answer, "route_statistics"),
                                     (info, [], answer, "info")):
        group = {"search": "search", "route_statistics": "statistics"}.get(name, "route")
        trigger.click(fn, inputs, output, api_name=name, api_description=fn.__doc__,
                      concurrency_limit=SEARCH_CONCURRENCY if group == "search" else 4, concurrency_id=group)


# ---- the app ------------------------------------------------------------------------------------------------

def build_demo(service: DemoService, allow_training: bool = True) -> gr.Blocks:
    """The whole app for a loaded DemoService."""
    # uploads (Gradio's cache) are deleted an hour after they came, checked every hour: a public demo's disk
    # never fills with visitors' photos
    with gr.Blocks(title=TITLE, analytics_enabled=False, delete_cache=UPLOAD_CACHE_SECONDS) as demo:
        header = gr.Markdown(_header_markdown(service), elem_classes="sdfn-header")
        with gr.Tabs():
            with gr.Tab("Search", id="search"):
                search, browser, browser_ids, upload = _search_tab(service)
            with gr.Tab("Router", id="router") as router_tab:
                router = _router_tab(service, search)
            with gr.Tab("Explain", id="explain") as explain_tab:
                explain_opener = demo_explain.explain_tab(service, search.reference, search.text)
            with gr.Tab("Train", id="train"):
                training = train_tab(service, header, allow_training)   # sdfn.demo_train_view
        _wire_search(service, search, router, browser, browser_ids, upload)
        _wire_router(service, router_tab, search, router)
        explain_opener.wire(explain_tab)
        api_endpoints(service)
        demo_explain.api_endpoints(service)   # /explain, /compare_models
        say_input_errors(demo, service)
        # every page load reads the header afresh: a page opened after "Use this model" names the new model
        demo.load(lambda: _header_markdown(service), None, header, api_visibility="private", queue=False)
        demo.load(None, None, None, js=K_WATCH_JS, api_visibility="private", queue=False)
        if training is not None:
            poll, outputs = training
            demo.load(poll, None, outputs, api_visibility="private")
    return demo


def launch(demo: gr.Blocks, service: DemoService, host: str = "127.0.0.1", port: int | None = None,
           **kwargs: Any) -> Any:
    """Queue and serve the app. Of the server's files only the served catalog images are handed out
    (`service.images.folder`, never the catalog folder with its index and captions), besides Gradio's own upload
    cache; uploads are capped at MAX_UPLOAD, far above any photo, so a huge file is refused before it is stored.
    Search events run up to SEARCH_CONCURRENCY at once (they wait together for one batch), so the worker
    threads are raised above that."""
    demo.queue(default_concurrency_limit=2)
    # the served catalog images go out as static files: a gallery hands out their URLs as they are, instead of
    # hashing and copying every picture into Gradio's cache on each search and page turn
    gr.set_static_paths([str(service.images.folder)])
    kwargs.setdefault("max_threads", SEARCH_CONCURRENCY + 16)
    return demo.launch(server_name=host, server_port=port, theme=THEME, css=CSS, max_file_size=MAX_UPLOAD,
                       allowed_paths=[str(service.images.folder)], footer_links=["api", "gradio"], **kwargs)
