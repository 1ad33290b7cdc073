"""The layout's rules, checked on the source: no import cycle between the project's modules
(imports inside functions included), no module much over 500 lines without its reason at
its top, and only store/ imports h5py or zarr."""

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
        roots = {m.split(".")[0] for node in ast.walk(ast.parse(path.read_text()))
                 for m in ([a.name for a in node.names] if isinstance(node, ast.Import)
                           else [node.module or ""] if isinstance(node, ast.ImportFrom) else [])}
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
