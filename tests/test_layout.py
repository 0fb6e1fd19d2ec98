"""The house's rules, read from the source (ast and file reads; nothing of hwdnal imported):
files of a size a reader takes in, no private name used outside its module, a gating core
that knows no model family, no import cycle, every package installed, a CLI that starts
without torch.

The lists of today's exceptions only shrink: a check fails when a new offender appears and
also when a listed one is fixed but still listed.
"""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
LIBRARY = ROOT / "hwdnal"
#: code whose private-name use is checked (tests may reach further: they state behaviour)
CHECKED = [LIBRARY, ROOT / "cli", ROOT / "bench"]

MAX_LINES = 400
MAX_SEARCH_LINES = 350
#: files still over MAX_LINES (issue 23 splits them next)
TOO_LONG_TODAY: set[str] = set()
#: private names of other modules still used: (file, name)
PRIVATE_TODAY: set[tuple[str, str]] = set()


def _python_files(*folders: Path) -> list[Path]:
    return sorted(p for folder in folders for p in folder.rglob("*.py")
                  if "__pycache__" not in p.parts)


def _relative(path: Path) -> str:
    return path.relative_to(ROOT).as_posix()


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[0] == "cli":
        parts = ["hwdnal", *parts]
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _ratchet(found: set, allowed: set, what: str) -> None:
    new, fixed = found - allowed, allowed - found
    assert not new, f"new {what}: {sorted(new)}"
    assert not fixed, f"fixed, so take them off the list in tests/test_layout.py: {sorted(fixed)}"


def test_no_library_file_is_longer_than_a_reader_takes_in():
    long = {_relative(p) for p in _python_files(LIBRARY)
            if len(p.read_text().splitlines()) > MAX_LINES}
    _ratchet(long, TOO_LONG_TODAY, f"files over {MAX_LINES} lines")
    search = len((LIBRARY / "search.py").read_text().splitlines())
    assert search < MAX_SEARCH_LINES, f"hwdnal/search.py has {search} lines: it orders stages"


def _private_uses(path: Path) -> set[tuple[str, str]]:
    """Private names this file takes from other first-party modules: imported by name, or
    read as an attribute of a module it imported."""
    tree = ast.parse(path.read_text())
    found, modules = set(), set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            first_party = node.module.split(".")[0] == "hwdnal" or (
                (path.parent / f"{node.module}.py").exists())  # a bench script's sibling
            for alias in node.names:
                if first_party and alias.name.startswith("_") and not alias.name.startswith("__"):
                    found.add((_relative(path), alias.name))
                if first_party:
                    modules.add(alias.asname or alias.name)
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] == "hwdnal":
                    modules.add(alias.asname or alias.name.split(".")[0])
    for node in ast.walk(tree):
        if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name)
                and node.value.id in modules and node.attr.startswith("_")
                and not node.attr.startswith("__")):
            found.add((_relative(path), node.attr))
    return found


def test_no_module_uses_a_private_name_of_another():
    found = set().union(*(_private_uses(p) for p in _python_files(*CHECKED)))
    _ratchet(found, PRIVATE_TODAY, "uses of another module's private names")


def _imports(path: Path, package: str) -> list[str]:
    """First-party modules ``path`` imports at module level (not under TYPE_CHECKING)."""
    tree = ast.parse(path.read_text())
    names = []

    def visit(body: list[ast.stmt]) -> None:
        for node in body:
            if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
                continue
            if isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1]
                                    + ([node.module] if node.module else []))
                if base.split(".")[0] == "hwdnal":
                    names.append(base)
                    names.extend(f"{base}.{a.name}" for a in node.names)
            elif isinstance(node, ast.Import):
                names.extend(a.name for a in node.names if a.name.split(".")[0] == "hwdnal")
            elif isinstance(node, (ast.If, ast.Try)):
                visit(node.body)
                for handler in getattr(node, "handlers", []):
                    visit(handler.body)
                visit(node.orelse)

    visit(tree.body)
    return names


def _graph() -> dict[str, set[str]]:
    files = _python_files(LIBRARY, ROOT / "cli")
    modules = {_module_name(p): p for p in files}
    graph = {}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
        graph[name] = {m for m in _imports(path, package) if m in modules and m != name}
    return graph


def test_the_gating_core_imports_no_model_family():
    graph = _graph()
    for module, imported in graph.items():
        if module.startswith("hwdnal.gating"):
            families = {m for m in imported if m.startswith("hwdnal.models")}
            assert not families, f"{module} imports {families}: declare a protocol instead"


def test_no_import_cycle():
    graph = _graph()
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    cycles = []

    def connect(node: str) -> None:  # Tarjan's strongly connected components
        index[node] = low[node] = len(index)
        stack.append(node)
        for nxt in graph[node]:
            if nxt not in index:
                connect(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    sys.setrecursionlimit(10_000)
    for node in graph:
        if node not in index:
            connect(node)
    assert not cycles, f"import cycles: {cycles}"


def test_every_package_is_installed():
    text = (ROOT / "pyproject.toml").read_text()
    listed = set(re.findall(r'"(hwdnal(?:\.\w+)*)"', text.split("packages", 1)[1].split("]")[0]))
    packages = {_module_name(p) for p in LIBRARY.rglob("__init__.py")}
    missing = {p for p in packages if p not in listed}
    assert not missing, f"pyproject.toml [tool.setuptools] packages lacks {sorted(missing)}"


@pytest.mark.slow
def test_the_cli_starts_without_torch():
    code = "import sys, hwdnal.cli.app; print('torch' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=True, cwd=ROOT)
    assert done.stdout.strip() == "False", "importing the CLI loads torch: hwdnal --help waits"
