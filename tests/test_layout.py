"""The house rules, checked on the source: wings install inside `wit`, never import each other, nothing imports
the door, and every benchmark script has a make target that really runs it."""
from __future__ import annotations

import ast
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
WINGS = ("shards", "ingest", "filters", "trainer")
SOURCES = [p for d in ("wit", *WINGS, "tests", "bench") for p in (REPO / d).rglob("*.py")]


def _imports(path: Path) -> list[str]:
    names = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.append(node.module)
    return names


def test_no_module_imports_a_wing_by_its_bare_name():
    # `import shards` works from the repo root only by accident (cwd on sys.path) and would load a second copy of
    # every module (two WitError classes); installed, the wings are wit.shards, wit.ingest, ...
    bad = [(p.relative_to(REPO), m) for p in SOURCES for m in _imports(p) if m.split(".")[0] in WINGS]
    assert not bad, bad


def test_wings_stand_on_shards_only_and_nothing_imports_the_door():
    bad = []
    for wing in WINGS:
        for p in (REPO / wing).rglob("*.py"):
            for m in _imports(p):
                parts = m.split(".")
                if parts[0] != "wit" or len(parts) < 2:
                    continue
                if parts[1] not in (wing, "shards") or (wing == "shards" and parts[1] != "shards"):
                    bad.append((str(p.relative_to(REPO)), m))
    assert not bad, bad


PACKAGE = {"wit": "wit", **{wing: f"wit.{wing}" for wing in WINGS}}  # folder -> the package it installs as


def _modules() -> dict[str, Path]:
    """Every module of the project by its installed name (wit.shards.tables -> shards/tables.py)."""
    modules = {}
    for folder, package in PACKAGE.items():
        for p in (REPO / folder).rglob("*.py"):
            parts = [package, *p.relative_to(REPO / folder).with_suffix("").parts]
            modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = p
    return modules


def _project_imports(path: Path, modules: dict[str, Path]) -> set[str]:
    """The project's modules that `path` imports anywhere, function bodies included (`from wit.shards import
    fasttar` imports wit.shards.fasttar)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found |= {node.module, *(f"{node.module}.{a.name}" for a in node.names)}
    return found & modules.keys()


def _circle(graph: dict[str, set[str]]) -> list[str]:
    """One import circle of the graph (its modules, the first one again at the end), or [] when there is none."""
    state: dict[str, str] = {}  # "open" while on the path being walked, then "done"

    def walk(module: str, path: list[str]) -> list[str]:
        state[module] = "open"
        for target in sorted(graph[module]):
            if state.get(target) == "open":
                return path[path.index(target):] + [module, target]
            if target not in state and (found := walk(target, path + [module])):
                return found
        state[module] = "done"
        return []

    for module in sorted(graph):
        if module not in state and (found := walk(module, [])):
            return found
    return []


def test_no_import_circles_not_even_inside_functions():
    # An import inside a function body hides a circle from Python until that function runs; a circle means two
    # modules that are really one, or a piece that belongs on a lower floor.
    modules = _modules()
    graph = {m: _project_imports(p, modules) - {m} for m, p in modules.items()}
    assert _circle(graph) == []
    assert _circle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]  # the check itself sees one


def test_architecture_names_every_module():
    # ARCHITECTURE.md is the map of the code: a module it does not name is one the next engineer cannot find there
    text = (REPO / "ARCHITECTURE.md").read_text()
    modules = sorted(str(p.relative_to(REPO)) for folder in PACKAGE for p in (REPO / folder).rglob("*.py")
                     if p.name != "__init__.py")
    assert modules and [m for m in modules if f"`{m}`" not in text] == []


def test_every_bench_script_runs_through_make():
    scripts = sorted(p.stem for p in (REPO / "bench").glob("*.py") if not p.stem.startswith("_"))
    assert scripts
    for name in scripts:
        dry = subprocess.run(["make", "-n", f"bench-{name.replace('_', '-')}"], cwd=REPO, capture_output=True,
                             text=True)
        assert dry.returncode == 0, (name, dry.stderr)
        assert f"bench/{name}.py" in dry.stdout, (name, dry.stdout)
