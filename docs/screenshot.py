#!/usr/bin/env python3
"""Make docs/screenshot.png: serve CACHE_DIR, open the page on a query in Chromium, take a picture.

    python docs/screenshot.py CACHE_DIR [--query 42] [--k 8]

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
from stl10_similarity.server import create_app


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
    server = uvicorn.Server(uvicorn.Config(create_app(args.cache_dir, ServeParams()), host="127.0.0.1", port=port,
                                           log_level="warning"))
    threading.Thread(target=server.run, daemon=True).start()
    while not server.started:
        time.sleep(0.05)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=shutil.which("chromium"),
                                    args=["--no-sandbox", "--disable-gpu", "--disable-background-networking"])
        page = browser.new_page(viewport={"width": 1100, "height": 820}, bypass_csp=True)  # its waits evaluate strings
        page.goto(f"http://127.0.0.1:{port}/?q={args.query}&k={args.k}")
        page.wait_for_function(f"document.querySelectorAll('#neighbours .card').length === {args.k + 1}")
        page.wait_for_function("[...document.images].every((i) => i.complete)")
        page.screenshot(path=str(args.out))
        browser.close()
    server.should_exit = True
    print(args.out)


if __name__ == "__main__":
    main()
