"""Exceptions a user can cause; each message says what was wrong and how to fix it."""
from __future__ import annotations

import errno


class CMHError(Exception):
    """Base class for errors that the CLI prints without a traceback."""


class DataError(CMHError):
    """A dataset file is missing, corrupt or inconsistent."""


class CacheError(CMHError):
    """The feature cache is missing, incomplete, or was written with another config or version."""


class ConfigError(CMHError):
    """An unknown name, an unknown config key or an impossible setting."""


class WeightsError(CMHError):
    """Pretrained weights are not available where the config says they are."""


class Interrupted(BaseException):
    """Ctrl-C (SIGINT) or SIGTERM stopped a command whose finished work is kept and whose rerun resumes the rest.

    A BaseException, like the KeyboardInterrupt it stands for, so that no ``except Exception`` on the way
    up takes it for a failure of one step; the command line prints one line for it and exits with
    ``status`` (128 + the signal's number, as a shell reports it)."""

    def __init__(self, message: str, status: int = 130) -> None:
        super().__init__(message)
        self.status = status


def interruption(exc: BaseException) -> BaseException | None:
    """The Ctrl-C or signal that ``exc`` was raised while handling, if any (an exception in its context chain that
    is not an ``Exception``: a KeyboardInterrupt, a SIGTERM's): a writer interrupted mid-file can fail again on its
    way out (torch's zip writer: "unexpected pos"), and that error would hide why the command stopped."""
    seen: BaseException | None = exc
    for _ in range(32):  # a context chain is short; never loop on a cycle
        if seen is None:
            return None
        if not isinstance(seen, Exception):
            return seen
        seen = seen.__context__
    return None


#: OSErrors of the storage rather than of the program: permission denied, read-only file system, disk or quota full.
STORAGE_ERRNOS = (errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOSPC, errno.EDQUOT)
#: OSErrors of a path given where another kind of entry is: a file where a folder is needed, or the reverse.
SHAPE_ERRNOS = (errno.ENOTDIR, errno.EEXIST, errno.EISDIR)


def storage_error_message(exc: OSError) -> str | None:
    """The one-line message (file, reason, fix) of an OSError of the storage: a read-only folder, a full disk, a
    file in a folder's place; None for any other OSError. Every write is atomic, so what was there is intact and
    the same command, run again, resumes. The command line and the bench scripts say it the same way."""
    if exc.errno not in STORAGE_ERRNOS + SHAPE_ERRNOS:
        return None
    where = exc.filename or "a file being written"
    if exc.errno in SHAPE_ERRNOS:
        fix = ("a file stands where a folder is needed (or a folder where a file is): move it, or give the "
               "option another path")
    elif exc.errno in (errno.ENOSPC, errno.EDQUOT):
        fix = "free space on that disk (or write to another one)"
    else:
        fix = "make it readable and writable for you (or write elsewhere)"
    return f"{where}: {exc.strerror}: {fix}, and run the command again"
