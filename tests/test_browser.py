"""The demo in a real browser (Playwright driving Debian's chromium, never a downloaded one): pick a garment, type a
change, see k results and the router plot; upload a photo; click a result to refine and step back; bad input shows
a message. The page must work offline: any request that leaves the demo's own server fails the test. Screenshots
go to tests/artifacts/ (git-ignored) for a person to look at."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

CHROMIUM = Path("/usr/bin/chromium")
ARTIFACTS = Path(__file__).resolve().parent / "artifacts"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]
TIMEOUT_MS = 30_000

pytestmark = [
    pytest.mark.skipif(not CHROMIUM.is_file(), reason="needs Debian's chromium at /usr/bin/chromium "
                                                      "(apt-get install chromium); CI installs it"),
    pytest.mark.filterwarnings("ignore:.*(no_silent_downcasting|copy keyword).*"),
]

sync_api = pytest.importorskip("playwright.sync_api")
expect = sync_api.expect


@pytest.fixture(scope="module")
def browser():
    with sync_api.sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


@pytest.fixture
def page(browser, served_demo):
    """A fresh page on the demo; afterwards, no request may have left the demo's server (offline use)."""
    url = served_demo[1]
    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    page = context.new_page()
    page.set_default_timeout(TIMEOUT_MS)
    outside: list[str] = []
    own = (url.rstrip("/"), "data:", "blob:")
    page.on("request", lambda r: None if r.url.startswith(own) else outside.append(r.url))
    page.goto(url)
    expect(page.locator("#catalog-browser button.thumbnail-item")).to_have_count(12)
    yield page
    context.close()
    assert outside == [], f"the page fetched from outside the demo: {outside}"


def shot(page, name: str) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)


def pick(page, position: int) -> None:
    page.locator("#catalog-browser button.thumbnail-item").nth(position).click()
    expect(page.locator("#reference-info")).to_contain_text(re.compile(r"\w+-\d{6}"))


def search(page, text: str, k: int) -> None:
    page.locator("#top-k input[type=number]").fill(str(k))
    page.locator("#top-k input[type=number]").press("Enter")
    page.locator("#change-text textarea").fill(text)
    page.locator("#search-button").click()
    expect(page.locator("#search-status")).to_contain_text("Searched", timeout=TIMEOUT_MS)


def results(page):
    return page.locator("#results-gallery button.thumbnail-item")


def images_load(page, selector: str) -> None:
    """Every <img> under `selector` is there and decoded: the server handed the file out (served catalog images
    only, never the catalog folder)."""
    page.wait_for_function("sel => { const found = [...document.querySelectorAll(sel)];"
                           " return found.length > 0 && found.every(i => i.complete && i.naturalWidth > 0); }",
                           arg=f"{selector} img", timeout=TIMEOUT_MS)


def test_pick_type_search_see_results_and_route(page):
    pick(page, 2)
    search(page, "is red and has longer sleeves", 7)
    expect(results(page)).to_have_count(7)
    expect(results(page).first).to_contain_text("#1")
    images_load(page, "#results-gallery")
    images_load(page, "#reference-image")
    shot(page, "search-results")
    page.get_by_role("tab", name="Router").click()
    expect(page.locator("#route-plot .js-plotly-plot")).to_be_visible()
    expect(page.locator("#route-summary")).to_contain_text("Strongest path")
    expect(page.locator("#route-plot")).to_contain_text("image router")
    shot(page, "router")


def test_upload_a_photo_and_search(page, served_demo):
    photo = served_demo[0].retriever.catalog.root / "images" / "skirt-000005.png"
    page.locator("input[type=file][data-testid$='upload-button']").set_input_files(str(photo))
    expect(page.locator("#reference-info")).to_contain_text("your photo (skirt-000005.png)")
    expect(page.locator("#reference-image img")).to_be_visible()
    search(page, "is darker", 5)
    expect(results(page)).to_have_count(5)
    shot(page, "upload")


def test_click_a_result_to_refine_then_step_back(page):
    pick(page, 0)
    search(page, "is darker", 4)
    first_reference = page.locator("#reference-info").inner_text()
    results(page).nth(1).click()
    expect(page.locator("#chain")).to_be_visible()
    expect(page.locator("#chain")).to_contain_text("“is darker”")
    expect(page.locator("#chain img")).to_have_count(2)
    images_load(page, "#chain")
    expect(page.locator("#search-status")).to_contain_text("Refining from")
    assert page.locator("#reference-info").inner_text() != first_reference
    search(page, "has no pattern", 4)
    expect(results(page)).to_have_count(4)
    shot(page, "refined")
    page.locator("#step-back").click()
    expect(page.locator("#reference-info")).to_have_text(first_reference)
    expect(page.locator("#change-text textarea")).to_have_value("is darker")
    expect(page.locator("#chain")).to_be_hidden()


def test_bad_input_shows_a_message(page, tmp_path):
    page.locator("#search-button").click()
    expect(page.locator("#search-status")).to_contain_text("Pick a garment")
    notes = tmp_path / "notes.txt"
    notes.write_text("not a picture")
    page.locator("input[type=file][data-testid$='upload-button']").set_input_files(str(notes))
    expect(page.locator("#search-status")).to_contain_text("notes.txt")
    expect(page.locator("#search-status")).not_to_contain_text("Traceback")
    shot(page, "bad-input")
