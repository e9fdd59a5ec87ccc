#!/usr/bin/env python3
"""Regenerate docs/cli.md from the CLI's own --help texts: python docs/generate_cli.py

tests/test_docs.py fails when docs/cli.md differs from what this writes, so the reference can't drift.
"""

from __future__ import annotations

from pathlib import Path

from click.testing import CliRunner

from stl10_similarity.cli import main

HEADER = """# CLI reference

Generated from `stl10sim --help` by `python docs/generate_cli.py` (a test fails when this file is out of date).
Global options (`-q`, `--debug`) go before the command: `stl10sim -q index`. Environment: `STL10SIM_CACHE_DIR`
(artifacts), `STL10SIM_DATA_DIR` (where `stl10_binary/` lives), `STL10SIM_URL` (where STL-10 is downloaded
from: a mirror, or a local server in tests), `TORCH_HOME` (where the ImageNet weights are cached),
`STL10SIM_NO_COMPILED=1` (rerank on numpy and big builds' top-K on torch, never loading numba: docs/performance.md).
"""


def render() -> str:
    runner = CliRunner()
    parts = [HEADER]
    for name in [None, *sorted(main.commands)]:
        args = ["--help"] if name is None else [name, "--help"]
        text = runner.invoke(main, args, prog_name="stl10sim", terminal_width=100).output
        parts.append(f"## `stl10sim{'' if name is None else ' ' + name}`\n\n```\n{text.rstrip()}\n```\n")
    return "\n".join(parts)


def main_() -> None:
    (Path(__file__).parent / "cli.md").write_text(render())


if __name__ == "__main__":
    main_()
