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
    assert "1 kept, 0 broken" in proc.stdout


def test_every_module_sits_in_a_layer():
    named = {m for layer in _layers() for m in layer}
    missing = (_top_modules("pipeline") | _top_modules("stages")) - named
    assert not missing, f"add these to a layer in pyproject.toml [tool.importlinter]: {sorted(missing)}"


def test_layer_order_is_orchestration_stages_ground():
    top, middle, ground = _layers()
    assert {"pipeline.cli", "pipeline.demo", "pipeline.grid", "pipeline.run", "pipeline.query"} <= set(top)
    assert set(middle) == {"stages.prepare", "stages.extract", "stages.train", "stages.evaluate"}
    assert {"pipeline.registry", "pipeline.errors", "pipeline.settings", "pipeline.store"} <= set(ground)
