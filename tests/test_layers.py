"""Imports flow one way: orchestration -> stages -> ground (the layers contract in pyproject.toml)."""
from __future__ import annotations

import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _layers() -> list[list[str]]:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]
    (contract,) = [c for c in config["contracts"] if c["type"] == "layers"]
    return [[m.strip() for m in re.split(r"[|:]", layer)] for layer in contract["layers"]]


def _top_modules(package: str) -> set[str]:
    """The modules and subpackages directly under ``package`` (``__init__`` aside)."""
    names = set()
    for path in (ROOT / package).iterdir():
        if path.suffix == ".py" and path.stem != "__init__":
            names.add(f"{package}.{path.stem}")
        elif path.is_dir() and (path / "__init__.py").exists():
            names.add(f"{package}.{path.name}")
    return names


def test_lint_imports_keeps_the_layers():
    exe = Path(sys.executable).with_name("lint-imports")
    assert exe.exists(), "lint-imports not installed: pip install -r requirements.lock"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}  # analyse this checkout, not an installed copy
    proc = subprocess.run([str(exe), "--no-cache"], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    assert "2 kept, 0 broken" in proc.stdout


def test_every_module_sits_in_a_layer():
    named = {m for layer in _layers() for m in layer}
    missing = (_top_modules("pipeline") | _top_modules("stages")) - named
    assert not missing, f"add these to a layer in pyproject.toml [tool.importlinter]: {sorted(missing)}"


def test_layer_order_is_cli_orchestration_presentation_stages_ground():
    cli, orchestration, present, stages, ground = _layers()
    assert set(cli) == {"pipeline.__main__", "pipeline.cli"}
    assert orchestration == ["pipeline.orchestration"] and present == ["stages.present"]
    assert set(stages) == {"stages.prepare", "stages.extract", "stages.train", "stages.evaluate"}
    assert ground == ["pipeline.ground"]


def test_no_import_circle():
    """No module imports itself through others (imports inside functions count: they are arrows too)."""
    import grimp

    graph = grimp.build_graph("pipeline", "stages")
    edges = {m: graph.find_modules_directly_imported_by(m) for m in graph.modules}
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    circles: list[list[str]] = []

    def visit(v: str) -> None:  # Tarjan's strongly connected components
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in edges[v]:
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
                circles.append(sorted(component))

    for module in sorted(edges):
        if module not in index:
            visit(module)
    assert not circles, f"import circles: {circles}"
