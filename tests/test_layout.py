"""The layout's rules, checked on the source (imports inside functions included): each package
imports only the layers below it, and the store and STTran's rules a closed list of libraries; no
import cycle between the project's modules; no module much over 500 lines without its reason at
its top; only store/ imports h5py or zarr."""

from __future__ import annotations

import ast
from pathlib import Path

from tests.helpers import REPO

PACKAGES = ("common", "rules", "synth", "stage1_detect", "stage2_relations", "store")
LONG = 520
"""About 500 lines: a module longer than this says why in its docstring ("Over 500 lines")."""


def project_modules() -> dict[str, Path]:
    modules = {"cli": REPO / "cli.py", "demo": REPO / "demo.py", "pipeline": REPO / "pipeline.py"}
    for package in PACKAGES:
        for path in (REPO / package).rglob("*.py"):
            parts = path.relative_to(REPO).with_suffix("").parts
            modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return modules


def imported_modules(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The project modules ``name`` imports, at any depth. ``from pkg import mod`` depends on
    ``pkg.mod``, not on the package's ``__init__``, unless it takes a name defined there."""
    found: set[str] = set()
    package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            module = node.module or ""
            if node.level:
                base = package[: len(package) - (node.level - 1)]
                module = ".".join(base + ([module] if module else []))
            submodules = {f"{module}.{a.name}" for a in node.names}
            found |= submodules
            if not submodules <= set(modules):
                found.add(module)
    return {m for m in found if m in modules and m != name}


def test_no_import_cycle():
    modules = project_modules()
    graph = {name: imported_modules(name, path, modules) for name, path in modules.items()}
    state: dict[str, int] = {}

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph[node]):
            assert state.get(nxt) != 1, f"import cycle: {' -> '.join(path + [node, nxt])}"
            if nxt not in state:
                visit(nxt, path + [node])
        state[node] = 2

    for name in sorted(graph):
        if name not in state:
            visit(name, [])
    assert graph["synth.write"] and "stage1_detect.action_genome" in graph["cli"] | graph["demo"]  # not vacuous


def test_no_long_module_without_a_reason():
    long = {}
    for name, path in project_modules().items():
        lines = path.read_text().count("\n")
        if lines > LONG:
            long[name] = lines
            doc = ast.get_docstring(ast.parse(path.read_text())) or ""
            assert "Over 500 lines" in doc, f"{path.relative_to(REPO)}: {lines} lines and no reason at its top"
    assert set(long) <= {"cli", "store.backends", "stage1_detect.detectors"}, long


def test_only_the_store_imports_h5py_or_zarr():
    for name, path in project_modules().items():
        if name == "store" or name.startswith("store."):
            continue
        roots = {m.split(".")[0] for m in _roots(path)}
        assert not roots & {"h5py", "zarr", "hdf5plugin"}, name


def test_scripts_import_what_exists():
    """Every import of a project module in bench/ and the top-level scripts, inside functions
    too, names a module and names that exist: the suite does not run the benchmarks, so a
    move or a rename would otherwise break them silently."""
    import importlib.util

    scripts = sorted((REPO / "bench").glob("*.py")) + [REPO / "cli.py", REPO / "demo.py"]
    local = {p.stem for p in (REPO / "bench").glob("*.py")}
    problems = []
    for path in scripts:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                top = node.module.split(".")[0]
                if top not in PACKAGES + ("tests", "cli", "demo") and top not in local:
                    continue
                name = node.module if top not in local else f"bench.{node.module}"
                try:
                    module = importlib.import_module(name)
                except ImportError as e:
                    optional = (e.name or "").split(".")[0] not in PACKAGES + ("tests", "cli", "demo") + tuple(local)
                    if not (optional and importlib.util.find_spec(name) is not None):
                        problems.append(f"{path.name}:{node.lineno}: {node.module}: {e}")
                    continue  # a module that needs an optional package absent here (detectron2) exists
                missing = [a.name for a in node.names if a.name != "*" and not hasattr(module, a.name)
                           and importlib.util.find_spec(f"{name}.{a.name}") is None]
                if missing:
                    problems.append(f"{path.name}:{node.lineno}: {node.module} has no {', '.join(missing)}")
    assert not problems, "\n".join(problems)


LAYERS = {
    "common": set(),
    "rules": {"common"},
    "store": {"common", "rules"},
    "synth": {"common", "store"},
    "stage1_detect": {"common", "rules", "store"},
    "stage2_relations": {"common", "rules", "store"},
}
"""Which packages each package may import (imports inside functions included). From the bottom:
``common`` (errors, recipes, files, runtime: what every package uses) imports no other;
``rules`` (STTran's protocol rules) only ``common``; ``store`` (the format) the two below it; the
two stages never import each other; only the top-level scripts (cli, demo, the pipeline) join them."""

THIRD_PARTY = {
    "rules": {"numpy"},
    "store": {"numpy", "pandas", "h5py", "zarr", "hdf5plugin", "google_crc32c", "tqdm", "numcodecs"},
}
"""Packages whose third-party imports are a closed list: STTran's rules are numpy functions, and
the store reads and writes arrays (no torch, no YAML: it holds no model or recipe code)."""

STORE_USES_OF_COMMON = {"common.errors", "common.files"}
"""The store takes errors and atomic files from ``common``, not recipe loading or runtime."""


def _roots(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and not node.level and node.module:
            names.add(node.module)
    return names


def test_each_package_imports_only_the_layers_below_it():
    modules = project_modules()
    problems = []
    for name, path in modules.items():
        package = name.split(".")[0]
        if package not in LAYERS:
            continue
        for other in imported_modules(name, path, modules):
            top = other.split(".")[0]
            if top != package and top not in LAYERS[package]:
                problems.append(f"{path.relative_to(REPO)} imports {other}")
            if package == "store" and top == "common" and other not in STORE_USES_OF_COMMON:
                problems.append(f"{path.relative_to(REPO)} imports {other} (the store holds the format only)")
    assert not problems, "\n".join(problems)
    assert set(LAYERS) == set(PACKAGES), "every package has its place in LAYERS"


def test_rules_and_store_import_a_closed_list_of_libraries():
    import sys

    stdlib = set(sys.stdlib_module_names) | {"__future__"}
    problems = []
    for name, path in project_modules().items():
        package = name.split(".")[0]
        if package not in THIRD_PARTY:
            continue
        for module in _roots(path):
            top = module.split(".")[0]
            if top not in stdlib and top not in PACKAGES and top not in THIRD_PARTY[package]:
                problems.append(f"{path.relative_to(REPO)} imports {module}")
    assert not problems, "\n".join(problems)


def test_evaluation_imports_no_torch():
    """The protocol package is numpy in, numbers out: no module of stage2_relations/evaluation
    imports torch, at its top, inside a function or through a project module it imports; nor
    does stage2_relations/eval_request.py (scoring a predictions file needs none). Running a
    model to score it is stage2_relations/scoring.py's work."""
    modules = project_modules()
    todo = [name for name in modules if name.startswith("stage2_relations.evaluation")]
    todo.append("stage2_relations.eval_request")
    reached: set[str] = set()
    while todo:
        name = todo.pop()
        if name in reached:
            continue
        reached.add(name)
        roots = {m.split(".")[0] for m in _roots(modules[name])}
        assert not roots & {"torch", "torchvision"}, f"{name} imports torch (reached from the protocol or eval_request)"
        todo += imported_modules(name, modules[name], modules)
    assert {"stage2_relations.evaluation.metrics", "stage2_relations.eval_request", "stage2_relations.view_options",
            "store.vocabulary", "rules.boxes"} <= reached  # not vacuous


def test_where_things_are_names_every_module():
    """docs/where_things_are.md is the map a newcomer reads first: it names every module of the
    project (a package's ``__init__`` and ``__main__`` aside), and every file its map names exists
    (the table of moved names below the map names old files on purpose)."""
    import re

    doc = (REPO / "docs" / "where_things_are.md").read_text()
    lines = doc.splitlines()

    def named(path: Path) -> bool:  # its path, or the end of its path on a line that names its package
        rel = str(path.relative_to(REPO))
        return rel in doc or any(f"{rel.split('/')[0]}/" in ln and any(
            rel.endswith("/" + tail) for tail in re.findall(r"`([\w/]+\.py)`", ln)) for ln in lines)

    unnamed = [name for name, path in project_modules().items()
               if path.name not in ("__init__.py", "__main__.py") and not named(path)]
    assert not unnamed, f"docs/where_things_are.md does not name: {', '.join(sorted(unnamed))}"
    named = set(re.findall(r"`([\w/]+\.py)`", doc.split("## Moved in issue 22")[0]))
    files = {str(p.relative_to(REPO)) for p in project_modules().values()} | {"tests/test_layout.py"}
    ghosts = [n for n in named if n not in files and not any(f.endswith("/" + n) for f in files)]
    assert not ghosts, f"docs/where_things_are.md names files that do not exist: {', '.join(sorted(ghosts))}"
