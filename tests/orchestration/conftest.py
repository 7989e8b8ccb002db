"""A small demo cache (160 items, alexnet + bow), built once and copied per test that writes runs."""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from pipeline.ground.store.cache import Cache
from tests.faults.conftest import cli  # noqa: F401  (the CLI run the way a user runs it)


@pytest.fixture(scope="session")
def _demo_cache(tmp_path_factory) -> Path:
    from stages.extract import create_encoder
    from stages.extract.runner import run_extraction
    from stages.prepare import DatasetRequest, prepare_dataset

    root = tmp_path_factory.mktemp("demo-cache")
    cache = Cache(root)
    items, splits = prepare_dataset(cache, DatasetRequest(dataset="demo", data_dir=root / "demo-data",
                                                          options={"n_items": 160, "size": 64}))
    for name in ("alexnet", "bow"):
        run_extraction(cache, items, splits, create_encoder(name), workers=0, progress=False)
    return root


@pytest.fixture
def demo(_demo_cache, tmp_path) -> Cache:
    """A private copy of the demo cache (items, splits, features; no runs)."""
    root = tmp_path / "cache"
    for part in ("datasets", "features"):
        shutil.copytree(_demo_cache / part, root / part)
    return Cache(root)
