"""Paths every stage shares. Values come from CLI flags first, then environment variables."""
from __future__ import annotations

import os
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[2]

#: Where the real datasets live (never copied into the repository).
DEFAULT_DATA_ROOT = PROJECT_ROOT.parent / "shared" / "data"
#: Root of the feature cache and run artifacts.
DEFAULT_CACHE_ROOT = PROJECT_ROOT / "cache"


def data_root() -> Path:
    return Path(os.environ.get("CMH_DATA_ROOT", DEFAULT_DATA_ROOT))


def cache_root(override: str | os.PathLike | None = None) -> Path:
    if override:
        return Path(override)
    return Path(os.environ.get("CMH_CACHE", DEFAULT_CACHE_ROOT))
