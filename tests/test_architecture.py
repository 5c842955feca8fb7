"""The house rules, measured: module and class sizes against a budget, and the runtime imports of the project's
modules: no circle, and no import that runs up the layer order written in docs/ARCHITECTURE.md.

Both read the source (``ast``), never import it, and take about a second.
"""

from __future__ import annotations

import ast
import re
import shutil
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("experiments", "trainers", "bench")
MODULE_LINES, CLASS_LINES = 600, 300
# Over budget, each with its reason. Keep this list short: a module that grows past the budget is split.
EXCEPTIONS: dict[str, tuple[int, str]] = {
    "experiments/pruning/scheduler.py::OptunaPruningScheduler": (340, "a Ray TrialScheduler: each hook Ray calls, each "
                                                               "keeping its trial's Optuna record in step"),
}


def project_files() -> list[Path]:
    return sorted(p for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py"))


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


# Tighter than the module budget, with the reason: what each should stay.
TIGHTER: dict[str, tuple[int, str]] = {
    "experiments/cli.py": (155, "it only wires the commands; each is defined beside its feature"),
    "trainers/swav/engine.py": (450, "the loop; its monitor, collapse watch and checkpoints are hooks of their own"),
}


def _budget(key: str, default: int) -> int:
    return EXCEPTIONS[key][0] if key in EXCEPTIONS else TIGHTER[key][0] if key in TIGHTER else default


def test_modules_and_classes_stay_within_their_budget():
    over = []
    for path in project_files():
        rel = path.relative_to(ROOT).as_posix()
        text = path.read_text()
        lines = len(text.splitlines())
        if lines > _budget(rel, MODULE_LINES):
            over.append(f"{rel}: {lines} lines (budget {_budget(rel, MODULE_LINES)})")
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, ast.ClassDef):
                size = node.end_lineno - node.lineno + 1
                key = f"{rel}::{node.name}"
                if size > _budget(key, CLASS_LINES):
                    over.append(f"{key}: {size} lines (budget {_budget(key, CLASS_LINES)})")
    assert not over, "split these (or, with a reason, list them in EXCEPTIONS):\n" + "\n".join(over)
    stale = [k for k in (*EXCEPTIONS, *TIGHTER) if not (ROOT / k.split("::")[0]).is_file()]
    assert not stale, f"exceptions for files that no longer exist: {stale}"


# ---------------------------------------------------------------------------
# Imports
# ---------------------------------------------------------------------------


def _type_checking_blocks(tree: ast.AST) -> set[int]:
    """Line numbers inside ``if TYPE_CHECKING:`` blocks (type hints only: never run)."""
    lines: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            for child in node.body:
                lines.update(range(child.lineno, child.end_lineno + 1))
    return lines


def runtime_imports(path: Path, modules: set[str]) -> set[str]:
    """The project modules ``path`` imports when it runs (module level or inside functions; not type-only).

    ``from a.b import c`` is an import of ``a.b.c`` when that is a module, else of ``a.b``; importing a module
    also runs the ``__init__`` of each package above it, which counts unless the importer is inside it.
    """
    tree = ast.parse(path.read_text())
    skip = _type_checking_blocks(tree)
    me = module_name(path)
    package = me if path.name == "__init__.py" else me.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(tree):
        if getattr(node, "lineno", None) in skip:
            continue
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join(anchor + ([base] if base else []))
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names]
        for target in targets:
            while target and target not in modules:
                target = target.rpartition(".")[0]
            if not target or target == me:
                continue
            found.add(target)
            parent = target.rpartition(".")[0]
            while parent and parent in modules and not (me == parent or me.startswith(parent + ".")):
                found.add(parent)
                parent = parent.rpartition(".")[0]
    return found


def import_graph() -> dict[str, set[str]]:
    files = project_files()
    modules = {module_name(p) for p in files}
    return {module_name(p): runtime_imports(p, modules) for p in files}


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_no_import_circle_among_the_projects_modules():
    found = circles(import_graph())
    assert not found, "import circles (runtime imports, inside functions too):\n" + "\n".join(
        " <-> ".join(c) for c in found)


def test_a_planted_circle_is_found():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert circles(graph) == [["a", "b", "c"]]
    assert circles({"a": {"b"}, "b": set()}) == []


def test_a_circle_planted_in_a_scratch_copy_fails_the_check(tmp_path, monkeypatch):
    for pkg in PACKAGES:
        shutil.copytree(ROOT / pkg, tmp_path / pkg, ignore=shutil.ignore_patterns("__pycache__"))
    context = tmp_path / "experiments" / "launch" / "context.py"
    context.write_text(context.read_text() + "\n\ndef _planted():\n    from experiments.launch import launcher\n")
    monkeypatch.setattr(sys.modules[__name__], "ROOT", tmp_path)  # module_name() reads paths against ROOT
    found = circles(import_graph())
    assert any({"experiments.launch.context", "experiments.launch.launcher"} <= set(c) for c in found), found


def layer_order(doc: Path | None = None) -> tuple[list[list[str]], set[str]]:
    """The modules of the "Layers" drawing, top to bottom, and the folders whose modules are listed one by one.

    An entry is a line at the left margin or indented by two: its first word is a path (``a.py / b.py``: two
    modules of one rank); a folder (``data/``) is a package whose modules share its rank. Indented entries
    are relative to the folder above them, whose own modules must then each have an entry.
    """
    text = (doc or ROOT / "docs" / "ARCHITECTURE.md").read_text()
    block = re.search(r"## Layers\n\n```\n(.*?)```", text, re.S).group(1)
    ranks: list[list[str]] = []
    containers: set[str] = set()
    top = ""
    for line in block.splitlines():
        indent = len(line) - len(line.lstrip())
        head = line.strip().split("  ")[0]
        if indent > 2 or not head or not re.fullmatch(r"[\w/.]+( / [\w/.]+)*", head):
            continue  # a description's continuation
        names = [n.strip() for n in head.split(" / ")]
        if indent == 0:
            top = names[0].split("/")[0] + "/" if "/" in names[0] else ""
            paths = names
        else:
            containers.add(top.rstrip("/"))
            paths = [top + n for n in names]
        ranks.append([p.removesuffix(".py").removesuffix("/").replace("/", ".") for p in paths])
    return ranks, containers


def test_imports_run_down_the_layers_of_the_architecture_doc():
    ranks, containers = layer_order()
    rank_of = {name: i for i, names in enumerate(ranks) for name in names}
    assert {"experiments.launch", "experiments.store", "trainers.swav", "trainers.common"} <= set(rank_of)

    def rank(module: str) -> int | None:
        name = module
        while name:
            if name in rank_of and (name == module or name not in containers):
                return rank_of[name]
            name = name.rpartition(".")[0]
        return None

    graph = import_graph()
    unlisted = sorted(m for m in graph if rank(m) is None)
    assert not unlisted, f"modules docs/ARCHITECTURE.md's Layers drawing does not place: {unlisted}"
    upward = sorted(f"{a} -> {b}" for a, targets in graph.items() for b in targets
                    if rank(b) < rank(a))  # a module placed above the importer
    assert not upward, "imports that run up the layer order of docs/ARCHITECTURE.md:\n" + "\n".join(upward)


def test_the_layer_rule_finds_an_upward_import(tmp_path):
    doc = tmp_path / "ARCHITECTURE.md"
    doc.write_text("## Layers\n\n```\nexperiments/cli.py   the command\nexperiments/         orchestration\n"
                   "  launch/            one launch\n                     (continued)\n  tracking.py        MLflow\n"
                   "trainers/            pure PyTorch\n```\n")
    ranks, containers = layer_order(doc)
    assert ranks == [["experiments.cli"], ["experiments"], ["experiments.launch"], ["experiments.tracking"],
                     ["trainers"]]
    assert containers == {"experiments"}


@pytest.mark.parametrize("source, expected", [
    ("from experiments import spaces\n", {"experiments.spaces"}),
    ("from experiments.spaces import Plan\n", {"experiments.spaces"}),
    ("def f():\n    import trainers.swav.engine\n", {"trainers.swav.engine", "trainers.swav", "trainers"}),
    ("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from experiments import launch\n", set()),
])
def test_runtime_imports_are_read_as_python_runs_them(tmp_path, monkeypatch, source, expected):
    path = tmp_path / "experiments" / "probe.py"
    path.parent.mkdir()
    path.write_text(source)
    modules = {"experiments", "experiments.spaces", "experiments.launch", "trainers", "trainers.swav",
               "trainers.swav.engine", "experiments.probe"}
    monkeypatch.setattr(sys.modules[__name__], "ROOT", tmp_path)
    assert runtime_imports(path, modules) == expected


def test_benchmarks_import_nothing_of_the_tests():
    """Helpers both use live in experiments/testing/: a benchmark runs without the test suite's modules."""
    found = []
    for path in sorted((ROOT / "bench").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) and not node.level else [])
            found += [f"{path.relative_to(ROOT)}: {n}" for n in names if n == "tests" or n.startswith("tests.")]
    assert not found, found


# ---------------------------------------------------------------------------
# Tests where a reader looks
# ---------------------------------------------------------------------------

TESTED_PACKAGES = ("experiments", "trainers")
SMALL_MODULE = 40  # lines: a module this short may be tested through the module that uses it


def where_tested(module: Path) -> Path:
    """Where ``module``'s tests are: ``a/b/c.py`` -> ``tests/a/b/test_c.py``; a package's ``a/b/__init__.py`` ->
    ``tests/a/b/test_b.py``."""
    rel = module.relative_to(ROOT)
    stem = rel.parent.name if rel.name == "__init__.py" else rel.stem
    return ROOT / "tests" / rel.parent / f"test_{stem}.py"


def imported_modules(path: Path) -> set[str]:
    """Every module ``path`` imports, with ``from a.b import c`` read as both ``a.b`` and ``a.b.c``."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            found.add(node.module)
            found.update(f"{node.module}.{a.name}" for a in node.names)
    return found


def untested_modules(root: Path | None = None) -> list[str]:
    """The modules over :data:`SMALL_MODULE` lines without a test file at :func:`where_tested` that imports them."""
    missing = []
    for pkg in TESTED_PACKAGES:
        for module in sorted(((root or ROOT) / pkg).rglob("*.py")):
            if len(module.read_text().splitlines()) <= SMALL_MODULE:
                continue
            tests = where_tested(module)
            name = module_name(module)
            if not tests.is_file():
                missing.append(f"{module.relative_to(ROOT)}: no {tests.relative_to(ROOT)}")
            elif name not in imported_modules(tests):
                missing.append(f"{module.relative_to(ROOT)}: {tests.relative_to(ROOT)} does not import {name}")
    return missing


def test_every_module_has_tests_at_the_matching_path():
    """tests/ mirrors the packages, so a module's tests are found by its path (the slow end-to-end flows, which
    cross modules, live in tests/e2e/ besides)."""
    missing = untested_modules()
    assert not missing, f"{len(missing)} modules without tests where a reader looks:\n" + "\n".join(missing)


def test_the_test_path_rule_reads_packages_and_imports(tmp_path):
    probe = tmp_path / "probe.py"
    probe.write_text("import trainers.swav.loss as loss\nfrom experiments.results import gc\n")
    assert {"trainers.swav.loss", "experiments.results", "experiments.results.gc"} <= imported_modules(probe)
    assert where_tested(ROOT / "trainers" / "swav" / "loss.py") == ROOT / "tests" / "trainers" / "swav" / "test_loss.py"
    assert where_tested(ROOT / "trainers" / "data" / "__init__.py") == ROOT / "tests" / "trainers" / "data" / "test_data.py"
