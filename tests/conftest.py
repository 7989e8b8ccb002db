"""Shared fixtures. Tests that need the real data skip with a visible reason when it is absent."""
from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from pipeline.ground.settings import DEFAULT_DATA_ROOT


def shared_data_root() -> Path | None:
    root = Path(os.environ.get("CMH_DATA_ROOT", DEFAULT_DATA_ROOT))
    return root if (root / "mirflickr25k_real20015").exists() else None


@pytest.fixture
def shared_data() -> Path:
    root = shared_data_root()
    if root is None:
        pytest.skip(f"real data not found at {DEFAULT_DATA_ROOT} (set CMH_DATA_ROOT to the shared data folder)")
    return root


@pytest.fixture(autouse=True)
def _single_thread():
    # tests share two cores; deterministic CPU kernels
    torch.set_num_threads(1)
    yield


@pytest.fixture(autouse=True)
def _settings_warnings_said_again():
    # the settings warnings are said once per process; a test that checks one must not depend on which
    # earlier test in the same process happened to trigger it first
    from stages.train.base import _say_once

    _say_once.cache_clear()
    yield


@pytest.fixture(scope="session")
def chromium() -> str:
    """The headless Chromium binary the browser tests drive (skipped, saying how to install it, when absent)."""
    from tests.chromium import chromium_binary

    binary = chromium_binary()
    if binary is None:
        pytest.skip("headless Chromium not installed: `apt-get install -y chromium` (Debian) to run the browser tests")
    return binary
