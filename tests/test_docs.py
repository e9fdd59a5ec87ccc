"""The docs say what the code does: the CLI reference is generated, the Python example runs, the README fits a page."""

from __future__ import annotations

import re
import runpy
from pathlib import Path

import pytest

from stl10_similarity.cli import main

ROOT = Path(__file__).parents[1]
DOCS = ROOT / "docs"


def test_cli_reference_is_up_to_date():
    generate = runpy.run_path(str(DOCS / "generate_cli.py"))
    assert (DOCS / "cli.md").read_text() == generate["render"](), "run: python docs/generate_cli.py"


def test_every_command_has_help_and_a_section_in_the_reference():
    reference = (DOCS / "cli.md").read_text()
    for name, command in main.commands.items():
        assert command.help, name
        assert f"## `stl10sim {name}`" in reference, name
        for param in command.params:
            assert param.help or param.name in ("k", "queries", "top_k", "num_perm", "trees", "basis", "seed"), \
                (name, param.name)


def test_readme_fits_a_page_and_its_links_resolve():
    readme = (ROOT / "README.md").read_text()
    assert len(readme.encode()) <= 10_000
    links = re.findall(r"\]\(([^)#]+)\)", readme)
    assert links
    for link in links:
        assert (ROOT / link).is_file(), link
    for name in ("cli", "json", "artifacts", "reliability", "performance", "quality", "decisions", "python-api",
                 "architecture", "server", "collections"):
        assert f"docs/{name}.md" in readme and (DOCS / f"{name}.md").is_file(), name


def test_readme_quickstart_is_the_two_commands():
    readme = (ROOT / "README.md").read_text()
    block = readme.split("## Quickstart", 1)[1].split("```bash\n", 1)[1].split("```", 1)[0].splitlines()
    assert block[1:] == ["stl10sim extract", "stl10sim query --image-id 42 --png grid.png"]


def test_python_api_example_runs(built_cache, monkeypatch, capsys):
    text = (DOCS / "python-api.md").read_text()
    code = text.split("<!-- python-api-example", 1)[1].split("```python\n", 1)[1].split("```", 1)[0]
    monkeypatch.setenv("STL10SIM_CACHE_DIR", str(built_cache))
    exec(compile(code, "docs/python-api.md", "exec"), {})
    out = capsys.readouterr().out
    assert out.startswith("100 images; airplane, bird, car")
    assert "my photo" in out


def test_readme_python_snippet_runs(built_cache, monkeypatch, capsys):
    readme = (ROOT / "README.md").read_text()
    code = readme.split("```python\n", 1)[1].split("```", 1)[0]
    monkeypatch.setenv("STL10SIM_CACHE_DIR", str(built_cache))
    exec(compile(code, "README.md", "exec"), {})
    ids = eval(capsys.readouterr().out)  # noqa: S307 (our own printed list)
    assert len(ids) == 5 and 42 not in ids


@pytest.mark.parametrize("doc", sorted(p.name for p in DOCS.glob("*.md")))
def test_docs_links_resolve(doc):
    text = (DOCS / doc).read_text()
    for link in re.findall(r"\]\(([^)#:]+)\)", text):
        assert (DOCS / link).is_file(), (doc, link)
