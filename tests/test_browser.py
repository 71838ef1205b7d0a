"""The demo in a real browser (Playwright driving Debian's chromium, never a downloaded one): pick a garment, type a
change, see k results and the router plot; upload a photo; click a result to refine and step back; bad input shows
a message; the Router tab laid out at full width after a search on the Search tab, with an example before any
search, honest scales and Compare's two routers apart; coherent state (old results marked, the catalog's highlight
following the garment, warnings going once their cause is gone); a 390 px phone layout checked by element bounds.
The page must work offline: any request that leaves the demo's own server fails the test. Screenshots go to
tests/artifacts/ (git-ignored) for a person to look at."""

from __future__ import annotations

import contextlib
import re
from pathlib import Path

import pytest
from conftest import SMALL_ITEMS_PER_CATEGORY

CHROMIUM = Path("/usr/bin/chromium")
ARTIFACTS = Path(__file__).resolve().parent / "artifacts"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]
TIMEOUT_MS = 30_000
ITEMS_PER_CATEGORY = SMALL_ITEMS_PER_CATEGORY   # the served small catalog: 5 categories of this many

pytestmark = [
    pytest.mark.skipif(not CHROMIUM.is_file(), reason="needs Debian's chromium at /usr/bin/chromium "
                                                      "(apt-get install chromium); CI installs it"),
    pytest.mark.filterwarnings("ignore:.*(no_silent_downcasting|copy keyword).*"),
]

sync_api = pytest.importorskip("playwright.sync_api")
expect = sync_api.expect
expect.set_options(timeout=TIMEOUT_MS)   # a shared, busy machine: answers can take seconds


@pytest.fixture(scope="module")
def browser():
    with sync_api.sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


VIEWPORT = {"width": 1400, "height": 1000}
PHONE = {"viewport": {"width": 390, "height": 844}, "device_scale_factor": 2, "is_mobile": True, "has_touch": True}


@contextlib.contextmanager
def opened(browser, url: str, **options):
    """A fresh page on the demo, its catalog shown; afterwards, no request may have left the demo's server
    (offline use)."""
    context = browser.new_context(**options)
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


@pytest.fixture
def page(browser, served_demo):
    with opened(browser, served_demo[1], viewport=VIEWPORT) as page:
        yield page


@pytest.fixture
def phone(browser, served_demo):
    """The demo on a 390x844 phone screen."""
    with opened(browser, served_demo[1], **PHONE) as page:
        yield page


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


# ---- responsive: the wait as the visitor feels it ----------------------------------------------------------

def test_status_says_how_long_the_visitor_waited(page):
    pick(page, 1)
    search(page, "is red", 5)
    # measured in the browser, click to results on screen, beside the server's own share
    expect(page.locator("#search-status")).to_contain_text(re.compile(r"you waited \d+ ms"))
    expect(page.locator("#search-status")).to_contain_text(re.compile(r"server \d+ ms"))


def test_a_late_wait_measurement_never_writes_back_an_older_search(page):
    """A search whose answer's images are still loading, then a second search: the status line ends as the
    second search's own, with one "you waited", never the first's text written back when its wait ends."""
    held: list = []
    hold = {"on": False}

    def maybe_hold(route):
        if hold["on"] and route.request.resource_type == "image":
            held.append(route)         # the first answer's images never arrive while held
        else:
            route.continue_()

    page.route(re.compile(r".*/gradio_api/file=.*"), maybe_hold)
    pick(page, 0)
    hold["on"] = True
    search(page, "is red and has longer sleeves", 8)
    expect(results(page)).to_have_count(8)
    hold["on"] = False
    search(page, "is blue", 3)
    expect(results(page)).to_have_count(3)
    expect(page.locator("#search-status")).to_contain_text("you waited")
    for route in held:
        route.continue_()
    # the first measurement ends now (its images are gone from the page): its old text must not come back
    page.wait_for_timeout(1500)
    status = page.locator("#search-status").inner_text()
    assert "“is blue”: 3 results" in status and "longer sleeves" not in status, status
    assert status.count("you waited") == 1, status


def test_a_measurement_ending_after_a_newer_click_writes_nothing(page):
    """The page's own click and wait scripts, timed by hand: search A's answer is on screen but an image of it
    still loads when B is clicked; A's measurement, ending then, must not return A's status (Gradio would write
    it over B's, and B's measurement would then append to A's text); B's says B's own wait."""
    from sdfn.demo_app import CLICK_JS, WAITED_JS

    held: list = []
    page.route(re.compile(r".*/held-image\.png$"), lambda route: held.append(route))   # answered when released
    pick(page, 0)
    search(page, "is red", 3)
    expect(page.locator("#search-status")).to_contain_text("you waited")
    page.evaluate("""([clickJs, waitedJs]) => {
      window.t_click = eval(clickJs); window.t_waited = eval(waitedJs);
      const img = document.createElement('img'); img.id = 't-held'; img.src = 'held-image.png';
      document.querySelector('#results-gallery').prepend(img);
      window.t_click();                                            // search A clicked
      window.t_a = window.t_waited('Searched A: 8 results · server 9 ms').then(v => window.t_a_done = v);
      window.t_click();                                            // search B clicked while A's image loads
    }""", [CLICK_JS, WAITED_JS])
    expect(page.locator("#t-held")).to_have_count(1)
    for route in held:
        route.abort()
    page.wait_for_function("() => window.t_a_done !== undefined")
    assert page.evaluate("JSON.stringify(window.t_a_done)") == '{"__type__":"update"}'   # nothing written
    page.evaluate("() => document.querySelector('#t-held').remove()")
    b = page.evaluate("() => window.t_waited('Searched B: 1 results · server 5 ms')")
    assert b.startswith("Searched B: 1 results") and b.count("you waited") == 1, b


def test_k_above_the_maximum_is_said_to_be_capped(page):
    pick(page, 0)
    page.locator("#top-k input[type=number]").fill("500")
    page.locator("#top-k input[type=number]").press("Enter")
    page.locator("#change-text textarea").fill("is red")    # the page clamps the box to 100 here, with no word
    page.locator("#search-button").click()
    expect(page.locator("#search-status")).to_contain_text("Searched")
    expect(page.locator("#search-status")).to_contain_text("k was capped at 100")


# ---- router plots ------------------------------------------------------------------------------------------

def open_router(page) -> None:
    page.get_by_role("tab", name="Router").click()
    expect(page.locator("#route-plot .main-svg").first).to_be_visible()


def overlapping_labels(page, selector: str, what: str = "g.annotation") -> list[str]:
    """Pairs of a figure's annotation texts (subplot titles; or `what`, e.g. tick labels) whose boxes intersect
    on screen."""
    return page.evaluate("""([sel, what]) => {
      const boxes = [...document.querySelectorAll(sel + ' ' + what)].map(a => [a.textContent,
                                                                             a.getBoundingClientRect()]);
      const out = [];
      for (let i = 0; i < boxes.length; i++) for (let j = i + 1; j < boxes.length; j++) {
        const [ta, a] = boxes[i], [tb, b] = boxes[j];
        if (a.width && b.width && a.left < b.right && b.left < a.right && a.top < b.bottom && b.top < a.bottom)
          out.push(ta + ' | ' + tb);
      }
      return out; }""", [selector, what])


def plot_fills_its_box(page, selector: str) -> None:
    """The figure is as wide as its container (a figure drawn in a hidden tab keeps a wrong width) and its
    tick labels lie flat (squeezed subplots turn them vertical)."""
    sizes = page.evaluate("""sel => [document.querySelector(sel).getBoundingClientRect().width,
                                     document.querySelector(sel + ' .main-svg').getBoundingClientRect().width]""",
                          selector)
    assert sizes[1] >= 0.9 * sizes[0] - 20, f"{selector}: figure {sizes[1]:.0f} px wide in a {sizes[0]:.0f} px box"
    rotated = page.evaluate("""sel => [...document.querySelectorAll(sel + ' .xtick text')]
                                 .filter(t => (t.getAttribute('transform') || '').includes('rotate')).length""",
                            selector)
    assert rotated == 0, f"{selector}: {rotated} tick labels turned"


def test_router_tab_shows_an_example_before_the_first_search(page):
    open_router(page)
    expect(page.locator("#route-summary")).to_contain_text("example query")
    expect(page.locator("#route-summary")).to_contain_text("Strongest path")
    expect(page.locator("#usage-plot .main-svg").first).to_be_visible()
    plot_fills_its_box(page, "#route-plot")
    # units said once, in words: gates from 0 to 1, a row need not sum to 1, each router's half
    expect(page.get_by_text("does not sum to 1")).to_be_visible()
    # nothing drawn yet for Compare and the statistics: no empty boxes
    expect(page.locator("#compare-routes")).to_be_hidden()
    expect(page.locator("#stats-plot")).to_be_hidden()
    shot(page, "router-example")


def test_router_after_a_search_is_laid_out_at_full_width(page):
    pick(page, 3)
    search(page, "is darker and has no pattern", 5)
    open_router(page)
    expect(page.locator("#route-summary")).to_contain_text("is darker and has no pattern")
    expect(page.locator("#route-summary")).not_to_contain_text("example query")
    expect(page.locator("#compare-a textarea")).to_have_value("is darker and has no pattern")   # ready to compare
    plot_fills_its_box(page, "#route-plot")
    plot_fills_its_box(page, "#usage-plot")
    assert overlapping_labels(page, "#route-plot") == []
    for title in ("image router gate", "text router gate", "path weight (mean)", "layer 1 · from", "to"):
        expect(page.locator("#route-plot")).to_contain_text(title)
    # one fixed, labelled colour scale: 0 shut to 1 open
    expect(page.locator("#route-plot .colorbar")).to_contain_text("0 shut")
    shot(page, "router-after-search")
    # a new search changes the route drawn when the tab is opened again
    page.get_by_role("tab", name="Search").click()
    search(page, "has longer sleeves", 5)
    open_router(page)
    expect(page.locator("#route-summary")).to_contain_text("has longer sleeves")


def test_compare_draws_the_two_routers_apart_and_says_the_largest_difference(page):
    pick(page, 0)
    open_router(page)
    page.locator("#compare-a textarea").fill("is red")
    page.locator("#compare-b textarea").fill("is red and has longer sleeves")
    page.locator("#compare-button").click()
    expect(page.locator("#compare-status")).to_contain_text("Largest change of a gate")
    expect(page.locator("#compare-status")).to_contain_text(re.compile(r"text router: \d+ points"))
    expect(page.locator("#compare-routes .main-svg").first).to_be_visible()
    for title in ("image router gate: B − A", "text router gate: B − A", "layer 1 · from", "to"):
        expect(page.locator("#compare-routes")).to_contain_text(title)
    plot_fills_its_box(page, "#compare-routes")
    assert overlapping_labels(page, "#compare-routes") == []
    shot(page, "compare")
    # a comparison is about one garment: picking another takes it away
    page.get_by_role("tab", name="Search").click()
    pick(page, 4)
    open_router(page)
    expect(page.locator("#compare-routes")).to_be_hidden()
    expect(page.locator("#compare-status")).not_to_contain_text("Largest change")


def test_statistics_state_their_largest_difference(page):
    open_router(page)
    page.locator("#stats-button").click()
    expect(page.locator("#stats-summary")).to_contain_text(re.compile(r"at most \d+\.\d percentage points"))
    expect(page.locator("#stats-plot .main-svg").first).to_be_visible()
    assert overlapping_labels(page, "#stats-plot") == []


# ---- coherent state ----------------------------------------------------------------------------------------

def test_compare_warning_goes_once_a_garment_is_picked(page):
    open_router(page)
    page.locator("#compare-button").click()
    expect(page.locator("#compare-status")).to_contain_text("Pick a garment")
    page.get_by_role("tab", name="Search").click()
    pick(page, 2)
    open_router(page)
    expect(page.locator("#compare-status")).not_to_contain_text("Pick a garment")


def test_a_new_garment_marks_the_old_results(page):
    pick(page, 0)
    search(page, "is red", 4)
    expect(page.locator("#results-gallery")).not_to_have_class(re.compile("sdfn-stale"))
    pick(page, 5)
    expect(page.locator("#results-gallery")).to_have_class(re.compile("sdfn-stale"))
    expect(page.locator("#target-note")).to_contain_text("previous garment")
    search(page, "is blue", 4)
    expect(page.locator("#results-gallery")).not_to_have_class(re.compile("sdfn-stale"))
    expect(page.locator("#target-note")).not_to_contain_text("previous garment")


def test_router_says_its_route_is_of_the_last_search_once_another_garment_is_picked(page):
    pick(page, 0)
    search(page, "is red", 4)
    open_router(page)
    expect(page.locator("#route-summary")).not_to_contain_text("has not been searched yet")
    page.get_by_role("tab", name="Search").click()
    pick(page, 5)
    open_router(page)
    expect(page.locator("#route-summary")).to_contain_text("has not been searched yet")
    page.get_by_role("tab", name="Search").click()
    search(page, "is blue", 4)
    open_router(page)
    expect(page.locator("#route-summary")).to_contain_text("is blue")
    expect(page.locator("#route-summary")).not_to_contain_text("has not been searched yet")


def selected_slots(page) -> list[int]:
    return page.evaluate("""() => [...document.querySelectorAll('#catalog-browser button.thumbnail-item')]
                              .map((b, i) => b.classList.contains('selected') ? i : -1).filter(i => i >= 0)""")


def test_the_catalog_highlight_follows_the_picked_garment(page):
    pick(page, 2)
    assert selected_slots(page) == [2]
    picked = page.locator("#reference-info").inner_text().split()[0]
    category = next(c for c in ("dress", "shirt", "toptee") if not picked.startswith(c))
    page.locator("#catalog-category input").click()
    page.get_by_role("option", name=re.compile(f"^{category}")).click()
    expect(page.locator("#pager")).to_contain_text(f"{ITEMS_PER_CATEGORY} items")
    assert selected_slots(page) == []     # the garment is not on this page: no slot looks picked
    page.locator("#catalog-category input").click()
    page.get_by_role("option", name="All categories").click()
    expect(page.locator("#pager")).to_contain_text(f"{5 * ITEMS_PER_CATEGORY} items")
    expect(page.locator("#catalog-browser button.thumbnail-item.selected")).to_have_count(1)
    assert selected_slots(page) == [2]


def selected_results(page) -> list[int]:
    return page.evaluate("""() => [...document.querySelectorAll('#results-gallery button.thumbnail-item')]
                              .map((b, i) => b.classList.contains('selected') ? i : -1).filter(i => i >= 0)""")


def test_new_results_have_no_slot_selected(page):
    pick(page, 0)
    search(page, "is darker", 4)
    results(page).nth(2).click()
    expect(page.locator("#search-status")).to_contain_text("Refining from")
    search(page, "is shorter", 4)
    expect(page.locator("#results-gallery")).not_to_have_class(re.compile("sdfn-stale"))
    expect(page.locator("#results-gallery button.thumbnail-item.selected")).to_have_count(0)
    # a click marks the clicked result; a new catalog pick greys the results and takes the mark away
    results(page).nth(1).click()
    expect(page.locator("#search-status")).to_contain_text("Refining from")
    assert selected_results(page) == [1]
    pick(page, 5)
    expect(page.locator("#results-gallery")).to_have_class(re.compile("sdfn-stale"))
    expect(page.locator("#results-gallery button.thumbnail-item.selected")).to_have_count(0)


def test_refining_keeps_the_results_and_their_table_together(page):
    pick(page, 0)
    search(page, "is darker", 4)
    results(page).nth(1).click()
    expect(page.locator("#search-status")).to_contain_text("Refining from")
    # the previous step's results stay, greyed, with their table: never an empty grid
    expect(results(page)).to_have_count(4)
    expect(page.locator("#results-gallery")).to_have_class(re.compile("sdfn-stale"))
    page.get_by_text("Results as a table").click()
    expect(page.locator("#results-table")).to_contain_text("score")
    assert len(re.findall(r"\b[a-z]+-\d{6}\b", page.locator("#results-table").inner_text())) == 4


# ---- phone -------------------------------------------------------------------------------------------------

OVERFLOW = """() => {
  const width = document.documentElement.clientWidth;
  const out = [];
  for (const e of document.querySelectorAll('body *')) {
    const r = e.getBoundingClientRect();
    const style = getComputedStyle(e);
    if (!r.width || !r.height || style.visibility === 'hidden' || style.display === 'none') continue;
    if (e.closest('.js-plotly-plot, #plotly-warm, .sdfn-chain, .table-wrap, [role=tablist], .wrap.default')) continue;
    // partly off screen (entirely off-screen helpers, like Plotly's text measurer, show nothing)
    const partly = (r.right > width + 1 && r.left < width) || (r.left < -1 && r.right > 0);
    if (partly) out.push((e.id || e.className.toString() || e.tagName).slice(0, 60)
                         + ' ' + Math.round(r.left) + '..' + Math.round(r.right));
  }
  return [document.documentElement.scrollWidth, width, out.slice(0, 10)];
}"""


def columns(page, selector: str) -> int:
    """How many columns a gallery shows: the distinct left edges of its thumbnails."""
    return page.evaluate("""sel => new Set([...document.querySelectorAll(sel + ' button.thumbnail-item')]
                                  .map(b => Math.round(b.getBoundingClientRect().left))).size""", selector)


def test_phone_layout_fits_390_px(phone):
    page = phone
    # the catalog is above, not on the left (the text as shown: the other layout's words are hidden)
    expect(page.locator("#reference-info")).to_contain_text("catalog above", use_inner_text=True)
    assert 2 <= columns(page, "#catalog-browser") <= 3
    label = page.locator("#pager .block.sdfn-status")
    box = label.bounding_box()
    assert box["width"] > 150 and box["height"] < 70, f"the pager's label is squeezed: {box}"
    pick(page, 0)
    search(page, "is red", 6)
    images_load(page, "#results-gallery")
    # the answer comes up to meet the visitor: the status line in the upper half of the screen (or the page
    # scrolled to its end), the first results wholly on it
    status, first = page.locator("#search-status").bounding_box(), results(page).first.bounding_box()
    at_end = page.evaluate("window.scrollY + window.innerHeight >= document.documentElement.scrollHeight - 2")
    assert status["y"] >= 0 and (status["y"] < 844 / 2 or at_end) and first["y"] + first["height"] <= 844, \
        f"after Search the answer is low on or off the 844 px screen: status {status}, first result {first}"
    assert 2 <= columns(page, "#results-gallery") <= 3
    # scores readable: no caption cut short
    cut = page.evaluate("""() => [...document.querySelectorAll('#results-gallery .caption-label')]
                             .filter(c => c.scrollWidth > c.clientWidth + 1).map(c => c.textContent)""")
    assert cut == []
    scroll_width, width, outside = page.evaluate(OVERFLOW)
    assert scroll_width <= width and outside == [], f"wider than the {width} px screen: {outside}"
    # the "Search in" dropdown's text is not under its arrow
    scope = page.locator("#scope input").bounding_box()
    assert scope["width"] > 120
    shot(page, "phone")
    # the refine chain wraps: its last garment ("now:") is inside the chain's box, on screen
    results(page).nth(1).click()
    expect(page.locator("#chain img")).to_have_count(2)
    chain = page.locator("#chain .sdfn-chain").bounding_box()
    now = page.locator("#chain .sdfn-chain figure").last.bounding_box()
    assert now["x"] >= chain["x"] - 1 and now["x"] + now["width"] <= min(chain["x"] + chain["width"], 390) + 1, \
        f"the chain's last garment at {now} in {chain}"
    open_router(page)
    scroll_width, width, outside = page.evaluate(OVERFLOW)
    assert scroll_width <= width and outside == [], f"Router tab wider than the {width} px screen: {outside}"
    page.locator("#compare-button").click()
    expect(page.locator("#compare-routes .main-svg").first).to_be_visible()
    page.locator("#stats-button").click()
    expect(page.locator("#stats-plot .main-svg").first).to_be_visible()
    # each figure keeps a readable width and scrolls sideways inside its own box, which stays on screen
    for selector in ("#route-plot", "#usage-plot", "#compare-usage", "#compare-routes", "#stats-plot"):
        box = page.locator(selector).bounding_box()
        assert box["x"] >= 0 and box["x"] + box["width"] <= width + 1, f"{selector} box {box}"
        figure = page.locator(f"{selector} .main-svg").first.bounding_box()
        assert figure["width"] >= 700, f"{selector}: figure squeezed to {figure['width']:.0f} px"
        assert overlapping_labels(page, selector) == [], selector
        assert overlapping_labels(page, selector, ".xtick text") == [], f"{selector}: tick labels overprint"
    scroll_width, width, outside = page.evaluate(OVERFLOW)
    assert scroll_width <= width and outside == [], f"Router tab wider than the {width} px screen: {outside}"
    shot(page, "phone-router")
