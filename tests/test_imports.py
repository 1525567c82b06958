"""The package's layering: storage (zdask/io) never imports the pipeline (zdask/graph), and no
module imports itself back through others (every import, at module level or in a function)."""

from __future__ import annotations

import ast
import pathlib
import subprocess
import sys

import zdask

PACKAGE = pathlib.Path(zdask.__file__).parent


def _module_name(path: pathlib.Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: pathlib.Path) -> set[str]:
    """The zdask modules ``path`` imports, anywhere in the file."""
    found = set()
    module = _module_name(path)
    package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else []))
            # `from zdask.graph import calibrate` imports the module zdask.graph.calibrate;
            # `from zdask.graph.plan import Plan` the module zdask.graph.plan
            found.update(f"{base}.{a.name}" if f"{base}.{a.name}" in MODULES else base for a in node.names)
    return {name for name in found if name == "zdask" or name.startswith("zdask.")}


MODULES = {_module_name(p): p for p in PACKAGE.rglob("*.py")}


def _graph() -> dict[str, set[str]]:
    return {name: {m for m in _imports(path) if m in MODULES and m != name} for name, path in MODULES.items()}


def test_storage_imports_nothing_of_the_pipeline():
    offenders = {name: sorted(m for m in deps if m.startswith("zdask.graph"))
                 for name, deps in _graph().items() if name.startswith("zdask.io")}
    assert {k: v for k, v in offenders.items() if v} == {}


def test_no_import_cycles():
    graph = _graph()
    # Packages' __init__ modules are what `import zdask.x.y` runs first: not an edge of a cycle
    # by themselves (zdask/__init__.py imports its names lazily).
    state: dict[str, int] = {}
    cycles = []

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for dep in sorted(graph[node]):
            if state.get(dep) == 1:
                cycles.append(path[path.index(dep):] + [dep])
            elif dep not in state:
                visit(dep, path + [dep])
        state[node] = 2

    for name in sorted(graph):
        if name not in state:
            visit(name, [name])
    assert cycles == []


def test_the_runner_path_imports_in_a_fresh_interpreter():
    """Each module of the runner path imports first (no partly initialised module on a cycle)."""
    for name in ("zdask.graph.mosaic_stage", "zdask.graph.modes.tiles", "zdask.graph.zarrstack"):
        done = subprocess.run([sys.executable, "-c", f"import {name}"], capture_output=True, text=True,
                              cwd=PACKAGE.parent)
        assert done.returncode == 0, (name, done.stderr)
