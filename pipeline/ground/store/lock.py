"""The lock of one cached dataset, so that two extractions into one cache cannot mix two collections.

An extraction writes a dataset's item table and splits, then each encoder's features, which are
joined to the items by id alone: a second ``cmh extract`` of another collection under the same name,
running at the same time, would leave the items of one beside the features of the other. Writers
therefore hold ``locks/dataset=<name>.lock`` (an advisory ``flock``, released by the kernel when
the process ends, however it ends):

* **exclusive** only while the item table and splits are written, which takes seconds;
* **shared** while they are checked and while features are extracted, so the ``--shard i/n``
  workers of one extraction, and extractions of other encoders of the same data, run side by side.

A writer that needs the exclusive lock while another process holds the dataset does not wait for it
(an extraction can take hours): it waits only for the items to be written, then reads them like any
other extraction (the ``--shard`` workers that start together), or is refused with a one-line error
when it was to replace them. ``cmh encode`` and training (``cmh train``, ``grid``, ``table``) hold it shared too,
as they read the features, and ``cmh rm`` exclusive while it deletes them: a removal is refused while any of them
runs, and they are refused while a removal runs, each naming the other's pid. Other readers take no lock; they compare
fingerprints instead (``aligned.check_features_match_items``).

Every holder names itself (``holders``) in a record of its own, ``locks/dataset=<name>.holders/<pid>-<n>``,
which it holds (``flock``) while it holds the dataset and deletes before it lets go: a record whose ``flock``
is free was left by a holder that was killed, and is deleted with one log line.
"""
from __future__ import annotations

import contextlib
import fcntl
import itertools
import logging
import os
import random
import time
from contextlib import contextmanager
from pathlib import Path
from types import TracebackType
from typing import Iterator

from pipeline.ground.errors import CacheError
from pipeline.ground.store.holders import (ACTIVITIES, DATASET_ACTIVITIES, being_written, holder_record,
                                           parse_holder, say_taken_over)
from pipeline.ground.store.layout import CacheLayout

log = logging.getLogger(__name__)


#: Tells this process's records apart (a process may hold one dataset twice: a test, or two caches' names).
_RECORD_NUMBERS = itertools.count()


class DatasetLock:
    """``with DatasetLock(layout, name, activity) as lock:`` holds nothing until ``shared()`` or ``exclusive()``;
    ``activity`` (extracting, encoding, training or removing) is what a refused process is told this one does."""

    def __init__(self, layout: CacheLayout, dataset: str, activity: str = "extracting") -> None:
        if activity not in ACTIVITIES:
            raise ValueError(f"unknown dataset activity {activity!r}")
        self.path: Path = layout.lock_path(dataset)
        self.records: Path = self.path.with_suffix(".holders")
        self.dataset = dataset
        self.activity = activity
        self._fd: int | None = None
        self._record: tuple[int, Path] | None = None  # this holder's record: its descriptor (flock held) and path
        self.mode: str | None = None  # "shared" | "exclusive" | None

    def _open(self) -> int:
        if self._fd is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)  # the umask decides, as for any file
        return self._fd

    def shared(self) -> None:
        """Hold the lock shared, waiting while another process writes the item table (seconds); CacheError
        naming the process when it is removing the dataset instead."""
        fd = self._open()
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            if any(doing == "removing" for _, doing in self.holders()):
                raise self.busy() from None
            log.info("waiting for another cmh extract to finish writing the items of %r", self.dataset)
            fcntl.flock(fd, fcntl.LOCK_SH)
        self.mode = "shared"
        self._name_holder()

    def exclusive(self, attempts: int = 5) -> bool:
        """Hold the lock alone; False (holding nothing) when another process keeps the dataset.

        A few short retries let extractions that start at the same moment, each holding the lock shared
        while it looks at the cache, sort themselves out."""
        fd = self._open()
        for attempt in range(attempts):
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # a failed conversion drops the shared lock
                self.mode = "exclusive"
                self._name_holder()
                return True
            except BlockingIOError:
                self.mode = None
                self._drop_record()
                time.sleep(0.1 + random.random() * 0.4)
        return False

    def busy(self, or_else: str = "") -> CacheError:
        """The refusal of a process that needs the dataset another process holds, naming that process (a removal
        first: it is the one to wait for) and what it does."""
        holders = sorted(self.holders(), key=lambda h: h[1] != "removing")
        holder, doing = holders[0] if holders else ("another process", "extracting")
        return CacheError(being_written(f"dataset {self.dataset!r}", holder, doing, f"lock {self.path}", or_else,
                                        DATASET_ACTIVITIES))

    def holders(self) -> list[tuple[str, str]]:
        """(pid, activity) of the other processes holding the dataset now, as their records name them; a record
        whose holder is gone (killed) is deleted, in one log line."""
        try:
            names = sorted(os.listdir(self.records))
        except (FileNotFoundError, NotADirectoryError):
            return []
        mine = self._record[1].name if self._record else None
        live = []
        for name in names:
            if name == mine:
                continue
            state = _record_state(self.records / name, f"dataset {self.dataset!r}")
            if state is not None:
                live.append(state)
        return live

    def _name_holder(self) -> None:
        """Write this holder's record (once per hold): made, ``flock``ed, then filled, so that a record found empty
        is one being made, never taken for a killed holder's."""
        if self._record is not None:
            return
        self.records.mkdir(exist_ok=True)
        self.holders()  # takes over the records killed holders left (one log line each)
        path = self.records / f"{os.getpid()}-{next(_RECORD_NUMBERS)}"
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o666)
        fcntl.flock(fd, fcntl.LOCK_EX)
        os.write(fd, holder_record(self.activity))
        self._record = (fd, path)

    def _drop_record(self) -> None:
        if self._record is not None:
            fd, path = self._record
            self._record = None
            with contextlib.suppress(OSError):
                os.unlink(path)  # before its flock goes: a free record at its path is always a killed holder's
            os.close(fd)

    def release(self) -> None:
        self._drop_record()
        if self._fd is not None:
            os.close(self._fd)  # closing the descriptor drops the lock
            self._fd, self.mode = None, None

    def __enter__(self) -> "DatasetLock":
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.release()


def _record_state(path: Path, subject: str) -> tuple[str, str] | None:
    """(pid, activity) of a holder's record while it holds it; None for one being made, or gone meanwhile, or
    left by a killed holder (deleted here, said in one line)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW)
    except OSError:
        return None
    try:
        raw = os.pread(fd, 64, 0)
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return parse_holder(raw) if raw.strip() else None
        if raw.strip():
            try:
                os.unlink(path)
            except FileNotFoundError:
                return None  # its holder deleted it as it let go: it finished, nothing was left
            say_taken_over(subject, path, raw)
        return None
    finally:
        os.close(fd)


@contextmanager
def held_alone(path: Path) -> Iterator[None]:
    """Hold ``path`` (an advisory ``flock``) exclusively for a short read-merge-replace of one file, waiting
    while another process holds it: the ``--shard i/n`` workers of one extraction each add their failures
    to one ``errors.parquet`` and drop pairs from one item table, and without it the last replace would
    lose the others' changes."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with _held(os.open(path, os.O_RDWR | os.O_CREAT, 0o666)):
        yield


@contextmanager
def folder_held_alone(folder: Path) -> Iterator[None]:
    """``held_alone`` for a read-merge-replace of a file in ``folder`` beside which no lock file may be left (the
    ``--pack`` archive of a GPU pass, whose folder comes back file by file): the folder itself is locked."""
    with _held(os.open(folder, os.O_RDONLY | os.O_DIRECTORY)):
        yield


@contextmanager
def _held(fd: int) -> Iterator[None]:
    """Hold the open descriptor ``fd`` exclusively (waiting for another holder), then close it."""
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing releases the lock


@contextmanager
def dataset_held_shared(layout: CacheLayout, dataset: str, activity: str) -> Iterator[None]:
    """The dataset's lock held shared for a reader's whole command (a training, an encode): a `cmh rm` of the
    dataset meanwhile is refused naming this process, the reader is refused naming a `cmh rm` under way, and
    readers share it. A dataset never cached has nothing to guard: no lock file is left for a mistyped name, and
    the reader's own check says it is not cached."""
    lock = DatasetLock(layout, dataset, activity)
    if not (layout.items_path(dataset).exists() or lock.path.exists()):
        yield
        return
    with lock:
        lock.shared()
        yield
