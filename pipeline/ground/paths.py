"""Paths a user gives for folders that cmh writes into (a cache, a report folder, the results registry)."""
from __future__ import annotations

from pathlib import Path

from pipeline.ground.errors import ConfigError


def require_folder(path: Path, option: str, what: str = "a folder") -> Path:
    """``path`` when it is a folder or can be made one; ConfigError naming ``option`` when it, or a folder
    above it, is a file (writing under it would fail half-way with ENOTDIR or EEXIST)."""
    for folder in (path, *path.parents):
        if folder.exists():
            if not folder.is_dir():
                raise ConfigError(f"{option} {path}: {folder} is a file, not a folder; give {what} (it is made "
                                  f"when missing)")
            break
    return path
