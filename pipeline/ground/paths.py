"""Paths a user gives for folders that cmh writes into (a cache, a report folder, the results registry)."""
from __future__ import annotations

import os
from pathlib import Path

from pipeline.ground.errors import ConfigError


def require_folder(path: Path, option: str, what: str = "a folder") -> Path:
    """``path`` when it is a folder or can be made one; ConfigError naming ``option`` when it, or a folder
    above it, is a file (writing under it would fail half-way with ENOTDIR or EEXIST)."""
    for folder in (path, *path.parents):
        if folder.is_symlink() and not folder.exists():  # a link to nothing: mkdir would fail with EEXIST
            raise ConfigError(f"{option} {path}: {folder} is a link to {os.readlink(folder)}, which does not exist; "
                              f"make its target, or give {what} elsewhere")
        if folder.exists():
            if not folder.is_dir():
                raise ConfigError(f"{option} {path}: {folder} is a file, not a folder; give {what} (it is made "
                                  f"when missing)")
            break
    return path


def require_writable(path: Path, option: str) -> Path:
    """``path`` when the deepest folder of it that exists can be written; ConfigError naming ``option`` when it
    cannot (read-only, a read-only file system, or another user's), said before the work whose output it holds."""
    folder = next((f for f in (path, *path.parents) if f.exists()), None)
    if folder is not None and folder.is_dir() and not os.access(folder, os.W_OK | os.X_OK):
        raise ConfigError(f"{option} {path}: {folder} cannot be written (read-only, or another user's): make it "
                          f"writable, or give {option} another folder")
    return path


def expand_home(path: str | os.PathLike) -> Path:
    """``path`` with a leading ``~`` or ``~user`` expanded (a quoted one reaches us as it was typed);
    ConfigError when that home is unknown: pathlib raises RuntimeError for an unknown user, and an empty
    $HOME would make ``~/cache`` the folder ``/cache``."""
    text = os.fspath(path)
    if not text.startswith("~"):
        return Path(text)
    head = text.split("/", 1)[0]
    if head == "~" and "HOME" in os.environ and not os.environ["HOME"].strip():
        raise ConfigError(f"{text}: $HOME is empty, so ~ names no folder; set HOME, or write the path out in full")
    try:
        return Path(text).expanduser()
    except RuntimeError:
        raise ConfigError(f"{text}: {head} names no home folder (no such user); write the path out in full") from None
