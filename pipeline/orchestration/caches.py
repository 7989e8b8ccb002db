"""The cache a command works on: ``--cache``, else ``$CMH_CACHE``, else the default root."""
from __future__ import annotations

import os

from pipeline.ground.store.cache import Cache


def open_cache(path: str | os.PathLike | None = None) -> Cache:
    return Cache.at(path)
