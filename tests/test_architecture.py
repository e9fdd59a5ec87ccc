"""Import rules that keep the architecture easy to see: the library never prints, only the faces (the CLI
and the server) talk to a terminal or to HTTP, only the store touches manifests, only the ray engine imports
Ray, and only the source registry asks which kind a collection is."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).parents[1] / "stl10_similarity"
FACES = {"cli.py", "server.py", "__main__.py"}


def _modules():
    for path in sorted(PACKAGE.rglob("*.py")):
        yield path, ast.parse(path.read_text(), str(path))


def _imported(node: ast.AST) -> list[str]:
    """The modules an import statement names (``import a, b`` -> a, b; ``from a.b import c`` -> a.b)."""
    if isinstance(node, ast.Import):
        return [a.name for a in node.names]
    return [node.module or ""] if isinstance(node, ast.ImportFrom) else []


def test_the_library_never_prints():
    """Library code reports through Progress (or raises); stdout and stderr belong to the CLI."""
    offenders = []
    for path, tree in _modules():
        if path.name in FACES:
            continue
        for node in ast.walk(tree):
            if isinstance(node, ast.Call):
                f = node.func
                name = f.id if isinstance(f, ast.Name) else f"{getattr(f.value, 'id', '')}.{f.attr}" \
                    if isinstance(f, ast.Attribute) else ""
                if name in ("print", "click.echo", "click.secho", "sys.stdout.write", "sys.stderr.write"):
                    offenders.append(f"{path.name}:{node.lineno} {name}")
    assert offenders == []


def test_only_the_faces_import_click_fastapi_or_uvicorn():
    offenders = []
    for path, tree in _modules():
        if path.name in FACES:
            continue
        for node in ast.walk(tree):
            names = _imported(node)
            offenders += [f"{path.name}:{node.lineno} {n}" for n in names
                          if n.split(".")[0] in ("click", "fastapi", "uvicorn", "starlette")]
    assert offenders == []


def test_the_server_calls_the_library_not_the_cli():
    tree = ast.parse((PACKAGE / "server.py").read_text())
    imported = {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.level}
    assert "cli" not in imported


def test_only_the_source_registry_asks_which_kind_a_collection_is():
    """A new kind of source is a module and a line in sources.KINDS: no if-chains on the kind elsewhere."""
    import re

    asks = re.compile(r"""kind["']?\]?\)?\s*(==|!=|in)\s*[("']""")
    registry = PACKAGE / "sources" / "__init__.py"
    offenders = [f"{path.name}:{n}" for path in sorted(PACKAGE.rglob("*.py")) if path != registry
                 for n, line in enumerate(path.read_text().splitlines(), 1)
                 if "kind" in line and asks.search(line) and "sets" not in line and "vocabulary" not in line]
    assert offenders == []


def test_only_the_store_reads_or_writes_manifests():
    """Manifests (and the protocol between the stages they carry) have one home: the store wing. Every other
    module asks it."""
    private = {"read_manifest", "write_manifest", "manifest_digest", "MANIFEST"}
    offenders = []
    for path, tree in _modules():
        if path.parent.name == "store":  # store/__init__.py over store/artifacts.py's file operations
            continue
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom):
                offenders += [f"{path.name}:{node.lineno} imports {a.name}" for a in node.names if a.name in private]
            elif isinstance(node, ast.Attribute) and node.attr in private:
                offenders.append(f"{path.name}:{node.lineno} uses {node.attr}")
            elif isinstance(node, ast.Constant) and node.value == "manifest.json":
                offenders.append(f"{path.name}:{node.lineno} names manifest.json")
    assert offenders == []


def test_ray_is_imported_only_by_the_ray_helper():
    """Without the ray extra nothing changes: only ray_support.py imports Ray, and only inside its functions (the
    wings' Ray adapters get the module from its ``connect``)."""
    offenders = []
    for path, tree in _modules():
        for node in ast.walk(tree):
            names = _imported(node)
            if any(n.split(".")[0] == "ray" for n in names):
                if path.name != "ray_support.py" or node.col_offset == 0:
                    offenders.append(f"{path.name}:{node.lineno}")
    assert offenders == []


def _import_graph() -> dict[str, set[str]]:
    """Which package modules each package module imports (absolute and relative, at the top or inside functions),
    drawn from the code: ``from a.b import c`` counts ``a.b.c`` when that is a module, else ``a.b``. The lazy front
    door (``stl10_similarity/__init__.py``) counts the modules its ``_EXPORTS`` name."""
    import stl10_similarity

    modules = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    graph: dict[str, set[str]] = {name: set() for name in modules}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        tree = ast.parse(path.read_text())
        typing_only = {id(n) for block in ast.walk(tree) if isinstance(block, ast.If)
                       and ast.unparse(block.test) == "TYPE_CHECKING" for n in ast.walk(block)}
        for node in ast.walk(tree):
            targets = []
            if id(node) in typing_only:  # read by type checkers only: no import at run time
                continue
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else []))
                targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base for alias in node.names]
            graph[name] |= {t for t in targets if t in modules and t != name}
    # a trailing ":" exports the module itself
    graph["stl10_similarity"] |= {f"stl10_similarity.{m.rstrip(':')}" for m in stl10_similarity._EXPORTS.values()}
    return graph


def test_no_module_imports_upward():
    """The import graph has no circle: each wing's Ray adapter builds on its wing, and nothing below calls up."""
    graph = _import_graph()
    assert "stl10_similarity.ray_engine" not in graph  # split into one adapter per wing over ray_support
    state: dict[str, int] = {}
    circles = []

    def visit(node: str, trail: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                circles.append(" -> ".join(trail[trail.index(nxt):] + [nxt]) if nxt in trail else nxt)
            elif nxt not in state:
                visit(nxt, trail + [nxt])
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node, [node])
    assert circles == []
    assert graph["stl10_similarity.ray_support"] <= {"stl10_similarity.errors", "stl10_similarity.progress"}


def test_the_faces_use_the_api_params_errors_and_progress_only():
    """cli.py and server.py import what the package exports (``stl10_similarity.__all__``) and the shared
    params, errors and progress: nothing from inside the wings."""
    import stl10_similarity

    allowed_modules = {"stl10_similarity", "stl10_similarity.params", "stl10_similarity.errors",
                       "stl10_similarity.progress", "stl10_similarity.server"}
    offenders = []
    for path, tree in _modules():
        if path.name not in ("cli.py", "server.py"):
            continue
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("stl10_similarity"):
                if node.module not in allowed_modules:
                    offenders.append(f"{path.name}:{node.lineno} {node.module}")
                elif node.module == "stl10_similarity":
                    offenders += [f"{path.name}:{node.lineno} {a.name}" for a in node.names
                                  if a.name not in stl10_similarity.__all__
                                  and a.name not in ("params", "__version__")]
            elif isinstance(node, ast.ImportFrom) and node.level:
                offenders.append(f"{path.name}:{node.lineno} relative import")
    assert offenders == []
    for name in stl10_similarity.__all__:  # and every exported name resolves
        assert getattr(stl10_similarity, name) is not None, name


LAYERS = [  # bottom first: a module imports only from its own layer or those below it (docs/architecture.md)
    ("shared", ("params", "errors", "progress", "ray_support", "numba_modules")),
    ("store", ("store",)),
    ("sources", ("sources",)),
    ("ingest", ("ingest",)),
    ("index", ("index",)),
    ("search", ("search",)),
    ("jobs", ("session", "collections", "evaluate", "duplicates", "grid", "bench", "extract_bench", "synthetic",
              "access")),
    ("faces", ("cli", "server", "__main__")),
]


def _layer(module: str) -> int:
    top = module.split(".")[1] if "." in module else ""
    for number, (_, names) in enumerate(LAYERS):
        if top in names:
            return number
    raise AssertionError(f"{module} belongs to no layer: add it to LAYERS (and to docs/architecture.md)")


def test_every_import_points_down_the_layers():
    """The wings stack: faces -> jobs -> search -> index -> ingest -> sources -> store -> shared. A new module
    must be placed in a layer, and no import reaches a layer above its own (the front door aside)."""
    graph = _import_graph()
    upward = [f"{a} -> {b}" for a, targets in graph.items() if a != "stl10_similarity"
              for b in targets if b != "stl10_similarity" and _layer(b) > _layer(a)]
    assert upward == []


def test_checkers_see_every_exported_name():
    """The front door's TYPE_CHECKING imports name exactly what ``_EXPORTS`` exports, from the same modules, so
    mypy checks the faces against the real types (at run time the names are imported lazily)."""
    import stl10_similarity

    tree = ast.parse((PACKAGE / "__init__.py").read_text())
    block = next(node for node in tree.body if isinstance(node, ast.If) and ast.unparse(node.test) == "TYPE_CHECKING")
    seen = {}
    for node in block.body:
        assert isinstance(node, ast.ImportFrom)
        for alias in node.names:
            module = (node.module or "").removeprefix("stl10_similarity").lstrip(".")
            seen[alias.asname or alias.name] = f"{module}.{alias.name}".lstrip(".")
    wanted = {name: (where.rstrip(":") if where.endswith(":") else f"{where}.{name}")
              for name, where in stl10_similarity._EXPORTS.items()}
    assert seen == wanted
