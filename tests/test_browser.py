"""The web page in a real browser (Debian's Chromium driven by Playwright): browse, click, see neighbours, upload.

CI installs Chromium (.ci/run); elsewhere these tests skip when no `chromium` is on the PATH.
"""

from __future__ import annotations

import io
import os
import re
import shutil
import socket
import threading
import time

import numpy as np
import pytest

pytest.importorskip("fastapi", reason="the serve extra is part of the test extra")
sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is part of the test extra")
expect = sync_api.expect

from stl10_similarity.params import ServeParams  # noqa: E402
from stl10_similarity.server import create_app, uvicorn_config  # noqa: E402

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
if not CHROMIUM:
    if os.environ.get("CI"):
        raise RuntimeError("CI must run the browser tests: install Debian's chromium (.ci/run does)")
    pytest.skip("no chromium on the PATH (apt-get install -y --no-install-recommends chromium)", allow_module_level=True)


@pytest.fixture(scope="module")
def server_url(built_cache):
    import uvicorn

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    params = ServeParams(port=port)
    server = uvicorn.Server(uvicorn_config(create_app(built_cache, params), params))  # as `stl10sim serve` runs
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.05)
    assert server.started, "the server did not start"
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(10)


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
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    # the page runs under its Content-Security-Policy: anything it blocks is logged to the console, and fails here
    page.on("console", lambda msg: errors.append(msg.text) if "Content Security Policy" in msg.text else None)
    yield page
    context.close()
    assert not errors, errors


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

    from stl10_similarity import stl10

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

