"""The web page in a real browser (Debian's Chromium driven by Playwright): browse, click, see neighbours, upload.

CI installs Chromium (.ci/run); elsewhere these tests skip when no `chromium` is on the PATH.
"""

from __future__ import annotations

import io
import os
import re
import shutil

import numpy as np
import pytest

pytestmark = pytest.mark.browser  # a real Chromium: the full suite (CI), not the fast tier

pytest.importorskip("fastapi", reason="the serve extra is part of the test extra")
sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is part of the test extra")
expect = sync_api.expect

from served import served  # noqa: E402

from stl10_similarity.server import create_app  # noqa: E402

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
if not CHROMIUM:
    if os.environ.get("CI"):
        raise RuntimeError("CI must run the browser tests: install Debian's chromium (.ci/run does)")
    pytest.skip("no chromium on the PATH (apt-get install -y --no-install-recommends chromium)", allow_module_level=True)


@pytest.fixture(scope="module")
def server_url(built_cache):
    with served(lambda params: create_app(built_cache, params)) as (port, _):
        yield f"http://127.0.0.1:{port}"


@pytest.fixture(scope="module")
def browser():
    with sync_api.sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=CHROMIUM, args=[
            "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
            "--disable-sync", "--no-first-run"])
        yield chromium
        chromium.close()


@pytest.fixture
def page(browser):
    context = browser.new_context(viewport={"width": 1200, "height": 900})
    page, errors = _watched(context)
    yield page
    context.close()
    assert not errors, errors


def _watched(context) -> tuple:
    """A new page of ``context`` and the list its script errors and CSP violations are collected in."""
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    # the page runs under its Content-Security-Policy: anything it blocks is logged to the console, and fails here
    page.on("console", lambda msg: errors.append(msg.text) if "Content Security Policy" in msg.text else None)
    return page, errors


def test_browse_pages_and_filter_by_class(page, server_url):
    page.goto(server_url + "/")
    page.wait_for_selector("#gallery .card")
    assert page.locator("#gallery .card").count() == 60
    assert page.inner_text("#page-info") == "page 1 of 2"
    assert "100 images" in page.inner_text("#collection")
    page.click("#next")
    expect(page.locator("#page-info")).to_have_text("page 2 of 2")
    assert page.locator("#gallery .card").count() == 40 and "page=1" in page.url
    page.select_option("#label", "cat")
    expect(page.locator("#gallery .card")).to_have_count(10)
    assert "label=cat" in page.url and "page=" not in page.url
    assert all(text.endswith("cat") for text in page.locator("#gallery .card").all_inner_texts())
    page.go_back()
    expect(page.locator("#gallery .card")).to_have_count(40)


def test_click_an_image_shows_its_neighbours_and_back_works(page, server_url):
    page.goto(server_url + "/?label=cat")
    page.wait_for_selector("#gallery .card")
    first = page.locator("#gallery .card").first
    first_id = int(first.inner_text().split(" · ")[0])
    first.click()
    page.wait_for_selector("#neighbours .card.query")
    assert f"q={first_id}" in page.url
    cards = page.locator("#neighbours .card")
    assert cards.count() == 6  # the query and k = 5 neighbours
    text = page.inner_text("#neighbours")
    assert "cos " in text and "J≈ " in text and "#1 · id" in text
    marks = [c.get_attribute("class") for c in cards.all()[1:]]
    assert all(("same" in m) or ("other" in m) for m in marks)
    assert "ms on the server" in page.inner_text("#timing")
    # what the page shows is what the API answers
    api = page.evaluate(f"fetch('/api/v1/search?image_id={first_id}&k=5').then(r => r.json())")
    assert [f"#{m['rank']} · id {m['id']}" for m in api["results"]] == [
        c.inner_text().splitlines()[0] for c in cards.all()[1:]]
    # k and method live in the URL too
    page.fill("#k", "8")
    page.dispatch_event("#k", "change")
    expect(page.locator("#neighbours .card")).to_have_count(9)
    assert "k=8" in page.url
    neighbour_id = api["results"][0]["id"]
    cards.nth(1).click()
    expect(page).to_have_url(re.compile(rf"[?&]q={neighbour_id}(&|$)"))
    expect(page.locator("#results-title")).to_have_text(re.compile(rf"image {neighbour_id}$"))
    page.go_back()
    expect(page.locator("#results-title")).to_have_text(re.compile(rf"image {first_id}$"))
    # a shared link opens the same view
    fresh = page.context.new_page()
    fresh.goto(page.url)
    expect(fresh.locator("#neighbours .card")).to_have_count(9)
    fresh.close()


def test_upload_your_own_image(page, server_url, built_cache, tmp_path):
    from PIL import Image

    from stl10_similarity.sources import stl10

    pixels = stl10.open_source(built_cache / "data", "train+test").images(9, 10)[0].transpose(1, 2, 0)
    path = tmp_path / "my-photo.png"
    Image.fromarray(np.ascontiguousarray(pixels)).save(path)
    page.goto(server_url + "/")
    page.wait_for_selector("#gallery .card")
    page.set_input_files("#upload", str(path))
    expect(page.locator("#results-title")).to_contain_text("my-photo.png")
    page.wait_for_selector("#neighbours .card:nth-child(2)")
    assert page.locator("#neighbours .card").nth(1).inner_text().startswith("#1 · id 9")
    assert "embedding" in page.inner_text("#timing")
    shot = os.environ.get("STL10SIM_SCREENSHOT")  # how docs/screenshot.png is made
    if shot:
        page.screenshot(path=shot, full_page=False)


def test_drag_and_drop_an_image(page, server_url, tmp_path):
    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (50, 40), (200, 30, 30)).save(buffer, format="PNG")
    page.goto(server_url + "/")
    page.wait_for_selector("#gallery .card")
    data = list(buffer.getvalue())
    page.evaluate("""(bytes) => {
        const file = new File([new Uint8Array(bytes)], 'dropped.png', {type: 'image/png'});
        const transfer = new DataTransfer();
        transfer.items.add(file);
        document.querySelector('#drop').dispatchEvent(new DragEvent('drop', {dataTransfer: transfer, bubbles: true}));
    }""", data)
    expect(page.locator("#results-title")).to_contain_text("dropped.png")
    expect(page.locator("#neighbours .card")).to_have_count(6)


def test_errors_show_as_a_message_not_a_broken_page(page, server_url):
    page.goto(server_url + "/?q=5000")
    page.wait_for_selector("#error:not([hidden])")
    assert "out of range" in page.inner_text("#error")
    assert page.locator("#gallery .card").count() == 60  # the rest of the page still works



def test_a_bad_upload_leaves_the_last_results_as_they_were(page, server_url, tmp_path):
    (tmp_path / "notes.png").write_bytes(b"not an image at all")
    page.goto(server_url + "/?q=7")
    expect(page.locator("#results-title")).to_have_text("Neighbours of image 7")
    page.set_input_files("#upload", str(tmp_path / "notes.png"))
    page.wait_for_selector("#error:not([hidden])")
    assert "not an image" in page.inner_text("#error")
    expect(page.locator("#results-title")).to_have_text("Neighbours of image 7")


def test_the_header_says_what_the_collection_is_in_words(page, server_url):
    page.goto(server_url + "/")
    expect(page.locator("#collection")).to_have_text("100 images in 10 classes")
    page.click("#about summary")
    expect(page.locator("#index-details")).to_contain_text("permutations into an LSH forest of")
    # captions keep to their own lines: no card's text is taller than its lines
    page.goto(server_url + "/?q=3")
    page.wait_for_selector("#neighbours .card:nth-child(2)")
    heights = page.evaluate("""[...document.querySelectorAll('#neighbours .card .line')].map(
        (e) => e.getBoundingClientRect().height / parseFloat(getComputedStyle(e).lineHeight))""")
    assert heights and max(heights) < 1.5


def test_a_page_of_another_site_rebound_to_this_server_reads_nothing(browser, built_cache):
    """DNS rebinding, as a browser sees it: Chromium resolves evil.example to 127.0.0.1, so a page served as
    http://evil.example:PORT/ is same-origin with everything the server answers there. Every answer is 403."""
    with served(lambda params: create_app(built_cache, params)) as (port, _):
        chromium = browser.browser_type.launch(executable_path=CHROMIUM, args=[
            "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
            "--disable-sync", "--no-first-run", "--host-resolver-rules=MAP evil.example 127.0.0.1"])
        try:
            page = chromium.new_page()
            answer = page.goto(f"http://evil.example:{port}/")
            assert answer.status == 403 and "images" not in page.content()
            read = page.evaluate("""async () => {
                const out = [];
                for (const path of ['/api/v1/health', '/api/v1/images?limit=500', '/api/v1/images/0/image.png']) {
                    const r = await fetch(path);
                    out.push([r.status, await r.text()]);
                }
                const form = new FormData();
                form.append('image', new Blob([new Uint8Array(64)], {type: 'image/png'}), 'x.png');
                const r = await fetch('/api/v1/search', {method: 'POST', body: form});
                out.push([r.status, await r.text()]);
                return out;
            }""")
            assert [status for status, _ in read] == [403, 403, 403, 403]
            assert not any("class_names" in body or '"images"' in body for _, body in read)
            # the same browser on the real name works
            assert page.goto(f"http://127.0.0.1:{port}/").status == 200
        finally:
            chromium.close()


def test_with_a_token_the_link_opens_the_page_and_it_works(browser, built_cache):
    token = "browser-test-token-0123456789abcdef"
    with served(lambda params: create_app(built_cache, params), token=token) as (port, _):
        context = browser.new_context()
        page, errors = _watched(context)
        try:
            assert page.goto(f"http://127.0.0.1:{port}/").status == 401
            page.goto(f"http://127.0.0.1:{port}/?token={token}&q=4")
            expect(page.locator("#results-title")).to_have_text("Neighbours of image 4")
            assert "token" not in page.url and "q=4" in page.url
            cookie = [c for c in context.cookies() if c["name"] == f"stl10sim-token-{port}"][0]
            assert cookie["httpOnly"] and cookie["sameSite"] == "Strict"
            assert page.evaluate("document.cookie") == ""  # out of reach of scripts
            expect(page.locator("#gallery .card")).to_have_count(60)
        finally:
            context.close()
        assert not errors, errors

# ---------------------------------------------------------------- the first hour, on a folder collection


class _Delay:
    """ASGI wrapper that holds chosen requests back for a while: long enough to see the page's loading states."""

    def __init__(self, app) -> None:
        self.app = app
        self.paths: dict[tuple[str, str], float] = {}  # (method, path) -> seconds, for the next such request

    async def __call__(self, scope, receive, send) -> None:
        import asyncio

        if scope["type"] == "http":
            wait = self.paths.pop((scope["method"], scope["path"]), 0)
            if wait:
                await asyncio.sleep(wait)
        await self.app(scope, receive, send)


@pytest.fixture(scope="module")
def folder_server(tmp_path_factory):
    """A folder collection of 3 classes x 40 photos (file names repeat across classes), served as `serve` runs."""
    from click.testing import CliRunner
    from PIL import Image
    from stl10_fixture import make_images

    from stl10_similarity.cli import main

    root = tmp_path_factory.mktemp("photos")
    images = make_images(np.repeat(np.arange(3), 40), seed=4)
    for i, image in enumerate(images):
        folder = root / ["cat", "dog", "ship"][i // 40]
        folder.mkdir(exist_ok=True)
        Image.fromarray(np.ascontiguousarray(image.transpose(1, 2, 0))).save(folder / f"{i % 40:04d}.png")
    cache = tmp_path_factory.mktemp("fcache")
    result = CliRunner().invoke(main, ["-q", "extract", "--images", str(root), "--collection", "mine", "--weights",
                                       "none", "--image-size", "64", "--cache-dir", str(cache)])
    assert result.exit_code == 0, result.output
    with served(lambda params: _Delay(create_app(cache / "collections" / "mine", params))) as (port, delayed):
        yield f"http://127.0.0.1:{port}", delayed, root


def test_the_first_hour_on_a_phone(browser, folder_server, tmp_path):
    """Open, filter, page, click a card far down, upload, keyboard: what a new user does, at 390 px wide."""
    url, delayed, root = folder_server
    context = browser.new_context(viewport={"width": 390, "height": 844})
    page, errors = _watched(context)

    # first paint: a loading state, not an empty collection
    delayed.paths[("GET", "/api/v1/images")] = 1.5
    page.goto(url + "/")
    expect(page.locator("#gallery-status")).to_be_visible()
    expect(page.locator("#gallery-status")).to_contain_text("loading the collection")
    expect(page.locator("#gallery .card")).to_have_count(60)
    expect(page.locator("#gallery-status")).to_be_hidden()
    # file names on the cards, with their class folder (0000.png alone would be ambiguous)
    expect(page.locator("#gallery .card").first.locator(".path")).to_have_text("cat/0000.png")

    # page forward, then filter by class
    page.click("#next")
    expect(page.locator("#page-info")).to_have_text("page 2 of 2")
    page.select_option("#label", "dog")
    expect(page.locator("#gallery .card")).to_have_count(40)
    expect(page.locator("#gallery .card").first.locator(".path")).to_have_text("dog/0000.png")

    # a card far down: its neighbours come into view, with file names and the scores' legend
    last = page.locator("#gallery .card").last
    last.click()
    expect(page.locator("#results-title")).to_have_text(re.compile(r"image \d+$"))
    expect(page.locator("#neighbours .card")).to_have_count(6)
    expect(page.locator("#results")).to_be_in_viewport()
    expect(page.locator("#neighbours .card").nth(1).locator(".path")).to_have_text(re.compile(r"^(cat|dog|ship)/\d{4}\.png$"))
    expect(page.locator("#legend")).to_be_visible()
    expect(page.locator("#legend")).to_contain_text("same class as the query")

    # results of this class only
    page.check("#same-class")
    expect(page).to_have_url(re.compile(r"only=1"))
    expect(page.locator("#neighbours .card")).to_have_count(6)
    for i in range(1, 6):
        expect(page.locator("#neighbours .card").nth(i)).to_contain_text("dog")
    expect(page.locator("#timing")).to_contain_text("in class dog only")
    page.uncheck("#same-class")

    # upload a photo: a loading state, then the answer
    from PIL import Image

    photo = tmp_path / "holiday.png"
    Image.open(root / "ship" / "0007.png").save(photo)
    delayed.paths[("POST", "/api/v1/search")] = 1.5
    page.set_input_files("#upload", str(photo))
    expect(page.locator("#results-status")).to_be_visible()
    expect(page.locator("#results-status")).to_contain_text("embedding holiday.png")
    expect(page.locator("#results-title")).to_contain_text("holiday.png")
    expect(page.locator("#results-status")).to_be_hidden()
    expect(page.locator("#neighbours .card").nth(1).locator(".path")).to_have_text("ship/0007.png")
    expect(page.locator("#results")).to_be_in_viewport()

    # the keyboard: arrows move between cards, Enter searches, focus goes on to the neighbours
    page.select_option("#label", "")
    expect(page.locator("#gallery .card")).to_have_count(60)
    page.locator("#gallery .card").first.focus()
    page.keyboard.press("ArrowRight")
    expect(page.locator("#gallery .card").nth(1)).to_be_focused()
    columns = page.evaluate("getComputedStyle(document.querySelector('#gallery')).gridTemplateColumns.split(' ').length")
    page.keyboard.press("ArrowDown")
    expect(page.locator("#gallery .card").nth(1 + columns)).to_be_focused()
    page.keyboard.press("Enter")
    expect(page.locator("#results-title")).to_have_text(f"Neighbours of image {1 + columns}")
    expect(page.locator("#neighbours button.card").first).to_be_focused()
    page.keyboard.press("ArrowRight")
    expect(page.locator("#neighbours button.card").nth(1)).to_be_focused()
    context.close()
    assert not errors, errors


def test_dark_mode_follows_the_system(browser, folder_server):
    url, _, _ = folder_server
    for scheme, dark in (("dark", True), ("light", False)):
        context = browser.new_context(viewport={"width": 1000, "height": 800}, color_scheme=scheme)
        page = context.new_page()
        page.goto(url + "/")
        expect(page.locator("#gallery .card")).to_have_count(60)
        background = page.evaluate("getComputedStyle(document.body).backgroundColor")
        ink = page.evaluate("getComputedStyle(document.body).color")
        luminance = [sum(int(v) for v in re.findall(r"\d+", colour)[:3]) / 765 for colour in (background, ink)]
        assert (luminance[0] < 0.2 and luminance[1] > 0.7) if dark else (luminance[0] > 0.9 and luminance[1] < 0.3), \
            (scheme, background, ink)
        context.close()


@pytest.fixture(scope="module")
def duplicates_server(tmp_path_factory):
    """A folder of 24 distinct pictures with two planted near-copies and one exact copy, served."""
    from click.testing import CliRunner
    from PIL import Image
    from test_duplicates import _photo

    from stl10_similarity.cli import main

    root = tmp_path_factory.mktemp("dupphotos")
    for i in range(24):
        Image.fromarray(_photo(200 + i)).save(root / f"p{i:02d}.png")
    Image.fromarray(_photo(200)).resize((150, 150)).save(root / "p00_big.png")
    Image.fromarray(_photo(201)).save(root / "p01_q60.jpg", quality=60)
    (root / "p02_same.png").write_bytes((root / "p02.png").read_bytes())
    cache = tmp_path_factory.mktemp("dcache")
    result = CliRunner().invoke(main, ["-q", "extract", "--images", str(root), "--collection", "d", "--weights",
                                       "none", "--image-size", "64", "--cache-dir", str(cache)])
    assert result.exit_code == 0, result.output
    with served(lambda params: create_app(cache / "collections" / "d", params)) as (port, _):
        yield f"http://127.0.0.1:{port}"


def test_the_duplicates_view_pages_groups_and_marks_the_kept_image(page, duplicates_server):
    import json
    import urllib.request

    with urllib.request.urlopen(duplicates_server + "/api/v1/duplicates?limit=2") as answer:
        doc = json.load(answer)
    assert doc["total"] == 3 and len(doc["groups"]) == 2 and doc["offset"] == 0
    assert [g["kind"] for g in doc["groups"]] == ["exact", "near"]
    with urllib.request.urlopen(duplicates_server + "/api/v1/duplicates?offset=2&limit=2") as answer:
        rest = json.load(answer)
    assert rest["total"] == 3 and len(rest["groups"]) == 1
    page.goto(duplicates_server + "/")
    page.wait_for_selector("#gallery .card")
    page.click("#dups summary")
    expect(page.locator("#dups-list .group")).to_have_count(3)
    assert "dups=1" in page.url and "3 groups" in page.inner_text("#dups-info")
    big = page.locator("#dups-list .group", has_text="p00_big.png")
    expect(big.locator(".card.keep")).to_have_count(1)
    assert "p00_big.png" in big.locator(".card.keep").inner_text() and "150×150" in big.inner_text()
    page.select_option("#dkind", "exact")
    expect(page.locator("#dups-list .group")).to_have_count(1)
    assert "dkind=exact" in page.url and "p02_same.png" in page.inner_text("#dups-list")
    page.go_back()
    expect(page.locator("#dups-list .group")).to_have_count(3)
    page.locator("#dups-list .card").first.click()  # a member of a group: its neighbours, as anywhere on the page
    expect(page.locator("#neighbours .card.query")).to_have_count(1)
