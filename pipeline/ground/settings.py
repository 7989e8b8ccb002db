"""Paths every stage shares. Values come from CLI flags first, then environment variables."""
from __future__ import annotations

import os
from pathlib import Path

from pipeline.ground.errors import ConfigError
from pipeline.ground.paths import expand_home, require_folder

PROJECT_ROOT = Path(__file__).resolve().parents[2]

#: Where the real datasets live (never copied into the repository).
DEFAULT_DATA_ROOT = PROJECT_ROOT.parent / "shared" / "data"
#: Root of the feature cache and run artifacts.
DEFAULT_CACHE_ROOT = PROJECT_ROOT / "cache"


def _from_env(name: str, default: Path) -> Path:
    """``$name`` as a path, ``default`` when unset; ConfigError when set but empty, which would mean the
    current folder (``Path("")``) and scatter a cache or read data wherever the command was started."""
    value = os.environ.get(name)
    if value is None:
        return default
    if not value.strip():
        raise ConfigError(f"${name} is set but empty: unset it (`unset {name}`; default {default}) or set it to "
                          f"a folder")
    return expand_home(value)  # a quoted "~/cache" reaches us unexpanded


def data_root() -> Path:
    return _from_env("CMH_DATA_ROOT", DEFAULT_DATA_ROOT)


def cache_root(override: str | os.PathLike | None = None) -> Path:
    """``override`` (``--cache``), else ``$CMH_CACHE``, else the default; ConfigError for an empty one or a
    path that is a file (every artifact is written in folders under it)."""
    if override is not None and not str(override).strip():
        raise ConfigError("--cache is empty: give a folder (or leave the option out for $CMH_CACHE, else the checkout's cache/)")
    root = expand_home(override) if override is not None else _from_env("CMH_CACHE", DEFAULT_CACHE_ROOT)
    return require_folder(root, "--cache" if override is not None else "$CMH_CACHE", "a folder for the cache")
