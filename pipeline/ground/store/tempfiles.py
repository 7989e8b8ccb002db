"""The ``.partial`` sibling every atomic write goes through, created with the mode the umask asks for.

``tempfile.mkstemp`` creates its file 0600 whatever the umask (it must: the name is guessable in a shared
/tmp). Our partial files live beside their target inside the cache, and the renamed file is the one users
share (a cache on a shared filesystem, a report page), so each one gets ``0666 & ~umask`` at once, the
mode ``open()`` would have given it.
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

#: The suffix of a write in progress; a file with it that no writer holds was left by a killed one.
PARTIAL_SUFFIX = ".partial"


def current_umask() -> int:
    """The process umask, read without changing it (``os.umask`` can only be read by setting it, which
    would open a window in which another thread creates a file with the wrong mode)."""
    try:
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)  # no /proc (not Linux): the only portable read is a set and a restore
    os.umask(mask)
    return mask


def partial_for(path: str | os.PathLike) -> tuple[int, str]:
    """``(fd, name)`` of a new ``<path>.XXXX.partial`` beside ``path``, mode ``0666 & ~umask``."""
    path = Path(path)
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".", suffix=PARTIAL_SUFFIX)
    except OSError as exc:  # a read-only folder or a full disk: name the file being written, not a random
        # temporary name the user never gave and that does not exist
        raise OSError(exc.errno, exc.strerror, str(path)) from None
    try:
        os.fchmod(fd, 0o666 & ~current_umask())
    except BaseException:
        os.close(fd)
        os.unlink(tmp)
        raise
    return fd, tmp
