"""The page the demo serves while it prepares (the first start draws the synthetic catalog and builds its index,
about a minute): what it is doing now, with counts, refreshed every second; it reloads itself into the demo once
the demo serves. Every named API endpoint of the demo (/search, /route, /route_plot, /suggestions,
/route_statistics, /info, /explain, /compare_models), with the demo's own parameter names, answers here with a
"still preparing" error, never a wrong answer; a client connects again (a new gradio_client.Client) once the demo
is ready.

Imports only gradio: it is served before torch and the model are even imported (see demo.py).
"""

from __future__ import annotations

import html
import json
from typing import Any

import gradio as gr

from sdfn.demo_progress import StartupProgress

PREPARING_TITLE = "sdfn · preparing"
POLL_SECONDS = 1.0
ENDPOINTS = ("search", "route", "route_plot", "suggestions", "route_statistics", "info", "explain", "compare_models")
# the page asks the server which app it serves every second and reloads once that is the demo
RELOAD_JS = """<script>
(function () {
  const url = new URL('config', window.location.href.replace(/[?#].*$/, '').replace(/\\/?$/, '/'));
  setInterval(async function () {
    try {
      const answer = await fetch(url, {cache: 'no-store'});
      if (answer.ok && (await answer.json()).title !== __TITLE__) { window.location.reload(); }
    } catch (e) { /* between the two servers: try again */ }
  }, 1000);
})();
</script>""".replace("__TITLE__", json.dumps(PREPARING_TITLE))
THEME = gr.themes.Soft(primary_hue="indigo", secondary_hue="orange", neutral_hue="slate",
                       # system fonts: nothing from a font CDN, so the page works offline
                       font=["system-ui", "-apple-system", "Segoe UI", "Roboto", "sans-serif"],
                       font_mono=["ui-monospace", "SFMono-Regular", "Menlo", "Consolas", "monospace"])


class StillPreparing(gr.Error):
    pass


def status_html(progress: StartupProgress) -> str:
    s = progress.snapshot()
    fraction = (s["done"] or 0) / s["total"] if s["total"] else None
    bar = ""
    if fraction is not None:
        bar = (f"<div class='sdfn-progress' role='progressbar' aria-valuenow='{fraction * 100:.0f}' "
               f"aria-valuemin='0' aria-valuemax='100' style='height:14px;border-radius:7px;"
               f"background:var(--neutral-200);overflow:hidden'><div style='height:100%;width:{fraction * 100:.1f}%;"
               "background:var(--primary-500)'></div></div>")
    return f"{bar}<p id='preparing-status'>{html.escape(progress.describe())}</p>"


def preparing_app(progress: StartupProgress) -> gr.Blocks:
    """The page and the refusing endpoints, for a start-up that `progress` follows."""
    with gr.Blocks(title=PREPARING_TITLE, analytics_enabled=False) as app:
        gr.Markdown("# sdfn · language-based fashion retrieval\n"
                    "**The demo is preparing.** Its first start draws the synthetic catalog and builds the catalog's "
                    "index (about a minute; later starts take seconds). This page turns into the demo by itself "
                    "when it is ready.")
        status = gr.HTML(status_html(progress), elem_id="preparing")
        timer = gr.Timer(POLL_SECONDS)
        timer.tick(lambda: status_html(progress), None, status, queue=False, api_visibility="private")
        with gr.Column(visible=False):
            reference, image = gr.Textbox(label="reference"), gr.File(label="image", type="filepath")
            text, k, category = gr.Textbox(label="text"), gr.Number(10, label="k"), gr.Textbox(label="category")
            split, answer, trigger = gr.Textbox("val", label="split"), gr.JSON(label="answer"), gr.Button("api")

            other = gr.Textbox(label="other")

        def refuse() -> None:
            raise StillPreparing(f"the demo is still preparing ({progress.describe()}); try again when it is ready "
                                 "(a new client: the demo's endpoints replace these).", print_exception=False)

        # the demo's parameter names, so a client's keyword call gets "still preparing", not a TypeError
        def search(reference: str | None = None, image: str | None = None, text: str | None = None,
                   k: float | None = None, category: str | None = None) -> None:
            refuse()

        def route(reference: str | None = None, image: str | None = None, text: str | None = None) -> None:
            refuse()

        def suggestions(reference: str | None = None) -> None:
            refuse()

        def route_statistics(split: str | None = None) -> None:
            refuse()

        def info() -> None:
            refuse()

        def explain(reference: str | None = None, image: str | None = None, text: str | None = None,
                    other: str | None = None) -> None:
            refuse()

        query = [reference, image, text]
        endpoints: dict[str, tuple[Any, list]] = {
            "search": (search, [*query, k, category]), "route": (route, query), "route_plot": (route, query),
            "suggestions": (suggestions, [reference]), "route_statistics": (route_statistics, [split]),
            "info": (info, []), "explain": (explain, [*query, other]),
            "compare_models": (search, [*query, k, category]),
        }
        for name in ENDPOINTS:
            fn, inputs = endpoints[name]
            trigger.click(fn, inputs, answer, api_name=name, queue=False,
                          api_description="Not ready yet: the demo is preparing.")
    return app


def serve_preparing(progress: StartupProgress, host: str, port: int | None) -> tuple[gr.Blocks, int]:
    """Serve the preparing page; returns it (close it before the demo takes its port) and the port it got."""
    app = preparing_app(progress)
    app.launch(server_name=host, server_port=port, prevent_thread_lock=True, quiet=True, theme=THEME,
               head=RELOAD_JS, footer_links=[])
    return app, int(app.server_port)
