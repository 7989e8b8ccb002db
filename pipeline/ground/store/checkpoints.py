"""A training run's checkpoint and its writer's lock, both in the run folder.

``checkpoint.pt`` holds what a killed run needs to go on exactly where it stopped (the training loop
decides its content: model, optimiser, every RNG state, the epoch, the history so far) together with
the identity of what wrote it: the run's config hash and the code version. It is written atomically
(a temporary file renamed into place), so a kill or a full disk in the middle of a write leaves the
previous checkpoint as it was. A checkpoint that cannot be read, or that another config or code
version wrote, is said in one line and training starts over; a folder, FIFO or other non-file in its
place is refused in one line, since deleting it is the user's call.

``train.lock`` is the run's writer lock: held (``flock``) for as long as a process writes the run
(training it, ``cmh encode``, ``cmh index``, ``cmh rm``), it names that process and what it is doing,
so a second writer of the same run refuses instead of writing beside it or deleting under it. Readers
(query, serve) take no lock. The kernel releases the lock when its holder dies, even by SIGKILL, so a
stale lock never blocks a rerun: the next writer takes it over, in one log line naming the process that
left it (``holders``). (The file keeps its historical name: tests and users know it.)
"""
from __future__ import annotations

import contextlib
import errno
import fcntl
import logging
import os
import stat
import time
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping

from pipeline.ground.errors import CacheError, interruption
from pipeline.ground.store.holders import ACTIVITIES, being_written, holder_record, parse_holder, say_taken_over
from pipeline.ground.store.tempfiles import partial_for

log = logging.getLogger(__name__)

CHECKPOINT_FILE = "checkpoint.pt"
LOCK_FILE = "train.lock"
#: Default interval between checkpoints: a kill loses at most about this much work (plus one epoch).
DEFAULT_INTERVAL_S = 300.0


class RunBusy(CacheError):
    """Another process holds the run's writer lock; ``holder`` is its pid (as the lock file names it)."""

    def __init__(self, message: str, holder: str = "another process") -> None:
        super().__init__(message)
        self.holder = holder


def run_busy(run_id: str, holder: str, doing: str, what: str) -> RunBusy:
    """The refusal of a command that would write (or remove) a run another process holds (``being_written``)."""
    return RunBusy(being_written(f"run {run_id}", holder, doing, what), holder)


#: Identity keys that checkpoints written by older code lack; such a checkpoint is judged on the other keys.
_ADDED_LATER = ("run_id", "device")


class RunCheckpoints:
    """Load, save and drop one run's checkpoint; ``due`` says when the loop should save.

    ``identity`` (the config hash and code version) is stored with every checkpoint and must match for
    a checkpoint to be resumed. ``every`` (epochs) overrides the time-based default interval.
    """

    def __init__(self, run_dir: Path, identity: Mapping[str, Any], *, every: int | None = None,
                 interval_s: float = DEFAULT_INTERVAL_S, say: Callable[[str], None] = log.warning) -> None:
        if every is not None and every < 1:
            raise CacheError(f"--checkpoint-every {every}: give a number of epochs >= 1 (or leave it out: every "
                             f"{interval_s / 60:.0f} minutes)")
        self.path = Path(run_dir) / CHECKPOINT_FILE
        self.identity = dict(identity)
        self.every, self.interval_s, self.say = every, interval_s, say
        self._last = time.monotonic()
        self.saved = 0  # checkpoints written by this process
        self.save_s = 0.0  # seconds spent writing them

    # -- when ----------------------------------------------------------------------------------
    def due(self, epochs_done: int, epochs: int) -> bool:
        """After epoch ``epochs_done`` (1-based) of ``epochs``: write a checkpoint now? Never after the last."""
        if epochs_done >= epochs:
            return False
        if self.every is not None:
            return epochs_done % self.every == 0
        return time.monotonic() - self._last >= self.interval_s

    # -- reading -------------------------------------------------------------------------------
    def load(self) -> dict[str, Any] | None:
        """The saved state to resume from, or None (no checkpoint, or one that is said and skipped)."""
        import torch

        try:
            mode = os.stat(self.path).st_mode
        except FileNotFoundError:
            return None
        if not stat.S_ISREG(mode):
            kind = "a folder" if stat.S_ISDIR(mode) else "not a regular file (a FIFO, socket or device)"
            raise CacheError(f"{self.path} is {kind}, where the run's checkpoint belongs: remove it "
                             f"(`rm -r {self.path}`) and run the command again")
        try:
            saved = torch.load(self.path, map_location="cpu", weights_only=False)
        except Exception as exc:  # torch raises many types for a truncated or foreign file
            self.say(f"{self.path} cannot be read ({type(exc).__name__}: a truncated or damaged checkpoint); "
                     f"training starts over from epoch 0")
            return None
        if not isinstance(saved, dict) or not isinstance(saved.get("identity"), dict) or "state" not in saved:
            self.say(f"{self.path} is not a cmh checkpoint; training starts over from epoch 0")
            return None
        differs = {k: (saved["identity"].get(k), v) for k, v in self.identity.items()
                   if saved["identity"].get(k) != v and not (k in _ADDED_LATER and k not in saved["identity"])}
        if differs:
            what = ", ".join(f"{k} {old!r} -> {new!r}" for k, (old, new) in differs.items())
            self.say(f"{self.path} was written by another setup ({what}); training starts over from epoch 0")
            return None
        return saved["state"]

    # -- writing -------------------------------------------------------------------------------
    def save(self, state: Mapping[str, Any]) -> None:
        """Write the checkpoint atomically; the previous one stays intact if anything fails."""
        import torch

        start = time.perf_counter()
        folder = self.path.parent
        if self.path.exists() and not self.path.is_file():
            raise CacheError(f"{self.path} is not a regular file, so the run's checkpoint cannot be written: remove "
                             f"it (`rm -r {self.path}`) and run the command again")
        fd, tmp = partial_for(folder / CHECKPOINT_FILE)
        try:
            with os.fdopen(fd, "wb") as fh:
                torch.save({"identity": self.identity, "state": dict(state)}, fh)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, self.path)
        except BaseException as exc:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            stop = interruption(exc)
            if stop is not None and stop is not exc:  # Ctrl-C or SIGTERM mid-write: say that, not the writer's error
                raise stop from None
            raise
        self._last = time.monotonic()
        self.saved += 1
        self.save_s += time.perf_counter() - start

    def discard(self) -> None:
        """Drop the checkpoint (a finished run keeps only its model)."""
        with contextlib.suppress(FileNotFoundError):
            if self.path.is_dir():
                return  # refused by load/save with the fix; never deleted behind the user's back
            self.path.unlink()


def _check_lock_path(path: Path) -> None:
    """CacheError naming the fix when something other than a regular file stands at the lock's place: a
    folder (EISDIR half-way), a FIFO (ftruncate fails on it) or a symlink (O_CREAT would follow a dangling one
    and make a file wherever it points)."""
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return
    if stat.S_ISREG(mode):
        return
    kind = ("a folder" if stat.S_ISDIR(mode) else "a symbolic link" if stat.S_ISLNK(mode)
            else "not a regular file (a FIFO, socket or device)")
    raise CacheError(f"{path} is {kind}, where the run's writer lock belongs: remove it (`rm -r {path}`) and run "
                     f"the command again")


@contextlib.contextmanager
def run_lock(run_dir: Path, run_id: str, activity: str = "training", *, create: bool = True) -> Iterator[None]:
    """Hold the run's writer lock (``train.lock``) while ``activity`` writes the run; RunBusy naming the holder
    and what it does when another process has it.

    ``create=False`` is for writers of a run that must already exist (encode, index): a run folder that is
    gone (removed meanwhile) is refused in one line rather than made again around a lone ``encoded/``."""
    if activity not in ACTIVITIES:
        raise ValueError(f"unknown run activity {activity!r}")
    run_dir = Path(run_dir)
    if create:
        run_dir.mkdir(parents=True, exist_ok=True)
    path = run_dir / LOCK_FILE
    for _ in range(5):  # a few hand-overs at most; each one is a holder that just finished
        fd = _open_lock(path, run_dir, run_id)
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                _check_lock_path(path)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as exc:
                if exc.errno not in (errno.EAGAIN, errno.EACCES):
                    raise
                holder, doing = parse_holder(os.pread(fd, 64, 0))
                raise run_busy(run_id, holder, doing, f"holding {path}") from None
            # A holder unlinks the file before it lets go, and `cmh rm` deletes it with the folder: a lock won
            # on such an unlinked file guards nothing, since the next writer opens a fresh one. Only the file
            # still at the path counts.
            if not _same_file(fd, path):
                if not create and not run_dir.is_dir():
                    raise _gone(run_dir, run_id)
                continue
            left = os.pread(fd, 64, 0)  # a holder empties the file's place before it lets go: one killed did not
            if left.strip():
                say_taken_over(f"run {run_id}", path, left)
            os.ftruncate(fd, 0)
            os.pwrite(fd, holder_record(activity), 0)
            try:
                yield
            finally:
                # while still held, so the next writer makes a fresh one; only our own file: `cmh rm` renames the
                # folder away under its lock, and a trainer may have made the run again at the path since
                with contextlib.suppress(OSError):
                    if _same_file(fd, path):
                        os.unlink(path)
            return
        finally:
            os.close(fd)
    raise RunBusy(f"run {run_id}'s lock {path} keeps changing hands (other processes are writing it); wait for "
                  f"them to finish, then run the command again")


def training_lock(run_dir: Path, run_id: str) -> contextlib.AbstractContextManager[None]:
    """The run's writer lock, held while training it (see ``run_lock``)."""
    return run_lock(run_dir, run_id, "training")


def _gone(run_dir: Path, run_id: str) -> CacheError:
    return CacheError(f"run folder {run_dir} is gone (removed while this command started?), so run {run_id} "
                      f"cannot be written; train it again (`cmh train`), or pick another run (`cmh ls --kind runs`)")


def _open_lock(path: Path, run_dir: Path, run_id: str) -> int:
    _check_lock_path(path)
    try:
        return os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK, 0o666)
    except FileNotFoundError:  # only when the folder itself is missing (create=False, or removed meanwhile)
        raise _gone(run_dir, run_id) from None
    except OSError as exc:
        if exc.errno not in (errno.ELOOP, errno.EISDIR, errno.ENXIO):
            raise
        _check_lock_path(path)  # swapped in after the first look: said the same way
        raise


def _same_file(fd: int, path: Path) -> bool:
    try:
        st = os.stat(path, follow_symlinks=False)
    except FileNotFoundError:
        return False
    mine = os.fstat(fd)
    return (st.st_dev, st.st_ino) == (mine.st_dev, mine.st_ino)


def lock_holder(run_dir: Path) -> str | None:
    """The pid writing the run now (its lock is held), or None."""
    state = lock_state(run_dir)
    return state[0] if state else None


def lock_state(run_dir: Path) -> tuple[str, str] | None:
    """(pid, activity: training, encoding, indexing or removing) of the process writing the run now, or None."""
    path = Path(run_dir) / LOCK_FILE
    try:  # non-blocking, not followed: a FIFO in its place must not hang `cmh ls`
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW)
    except OSError:
        return None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return None
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except OSError:
            return parse_holder(os.pread(fd, 64, 0))
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)
