#!/usr/bin/env python3
"""Make docs/screenshot.png (and screenshot-dark.png): serve a collection, open the page on a query in Chromium,
take a picture in the light and the dark colour scheme.

    python docs/screenshot.py COLLECTION_HOME [--query 42] [--k 8]

COLLECTION_HOME is the cache dir for STL-10, or CACHE/collections/NAME for a folder collection.
Needs the test extra (Playwright) and Debian's chromium on the PATH.
"""

from __future__ import annotations

import argparse
import shutil
import socket
import threading
import time
from pathlib import Path

import uvicorn
from playwright.sync_api import sync_playwright

from stl10_similarity.params import ServeParams
from stl10_similarity.server import create_app, uvicorn_config


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("cache_dir", type=Path)
    parser.add_argument("--query", type=int, default=42)
    parser.add_argument("--k", type=int, default=8)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "screenshot.png")
    args = parser.parse_args()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    params = ServeParams(port=port)
    server = uvicorn.Server(uvicorn_config(create_app(args.cache_dir, params), params))
    threading.Thread(target=server.run, daemon=True).start()
    while not server.started:
        time.sleep(0.05)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=shutil.which("chromium"),
                                    args=["--no-sandbox", "--disable-gpu", "--disable-background-networking"])
        for scheme, out in (("light", args.out), ("dark", args.out.with_name(f"{args.out.stem}-dark.png"))):
            # bypass_csp: wait_for_function evaluates strings, which the page's own policy forbids
            page = browser.new_page(viewport={"width": 1100, "height": 900}, color_scheme=scheme, bypass_csp=True)
            page.goto(f"http://127.0.0.1:{port}/?q={args.query}&k={args.k}")
            page.wait_for_function(f"document.querySelectorAll('#neighbours .card').length === {args.k + 1}")
            page.wait_for_function("[...document.images].every((i) => i.complete)")
            page.screenshot(path=str(out))
            page.close()
            print(out)
        browser.close()
    server.should_exit = True


if __name__ == "__main__":
    main()
