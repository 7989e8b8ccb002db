from __future__ import annotations

from pathlib import Path

import pytest

from tests.evaluate.helpers import toy_runs


@pytest.fixture(scope="module")
def cache_root(tmp_path_factory) -> Path:
    """Six toy runs: two methods x bits (16, 32) x seeds, one run with an extra meta column."""
    return toy_runs(tmp_path_factory.mktemp("cache"))
