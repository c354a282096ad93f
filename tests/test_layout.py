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


def test_every_bench_script_runs_through_make():
    scripts = sorted(p.stem for p in (REPO / "bench").glob("*.py") if not p.stem.startswith("_"))
    assert scripts
    for name in scripts:
        dry = subprocess.run(["make", "-n", f"bench-{name.replace('_', '-')}"], cwd=REPO, capture_output=True,
                             text=True)
        assert dry.returncode == 0, (name, dry.stderr)
        assert f"bench/{name}.py" in dry.stdout, (name, dry.stdout)
