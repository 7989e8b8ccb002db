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
when it was to replace them. Readers take no lock; they compare
fingerprints instead (``aligned.check_features_match_items``).
"""
from __future__ import annotations

import fcntl
import logging
import os
import random
import time
from contextlib import contextmanager
from pathlib import Path
from types import TracebackType
from typing import Iterator

from pipeline.ground.errors import CacheError
from pipeline.ground.store.layout import CacheLayout

log = logging.getLogger(__name__)


class DatasetLock:
    """``with DatasetLock(layout, name) as lock:`` holds nothing until ``shared()`` or ``exclusive()``."""

    def __init__(self, layout: CacheLayout, dataset: str) -> None:
        self.path: Path = layout.lock_path(dataset)
        self.dataset = dataset
        self._fd: int | None = None
        self.mode: str | None = None  # "shared" | "exclusive" | None

    def _open(self) -> int:
        if self._fd is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)  # the umask decides, as for any file
        return self._fd

    def shared(self) -> None:
        """Hold the lock shared, waiting while another process writes the item table (seconds)."""
        fd = self._open()
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            log.info("waiting for another cmh extract to finish writing the items of %r", self.dataset)
            fcntl.flock(fd, fcntl.LOCK_SH)
        self.mode = "shared"

    def exclusive(self, attempts: int = 5) -> bool:
        """Hold the lock alone; False (holding nothing) when another process keeps the dataset.

        A few short retries let extractions that start at the same moment, each holding the lock shared
        while it looks at the cache, sort themselves out."""
        fd = self._open()
        for attempt in range(attempts):
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # a failed conversion drops the shared lock
                self.mode = "exclusive"
                return True
            except BlockingIOError:
                self.mode = None
                time.sleep(0.1 + random.random() * 0.4)
        return False

    def busy(self) -> CacheError:
        """The refusal of a writer that would replace a dataset another process holds."""
        return CacheError(f"dataset {self.dataset!r} in this cache is being extracted by another process (lock "
                          f"{self.path}): let it finish, then run this command again, or write to another --name "
                          f"or CACHE=")

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the descriptor drops the lock
            self._fd, self.mode = None, None

    def __enter__(self) -> "DatasetLock":
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.release()


@contextmanager
def held_alone(path: Path) -> Iterator[None]:
    """Hold ``path`` (an advisory ``flock``) exclusively for a short read-merge-replace of one file, waiting
    while another process holds it: the ``--shard i/n`` workers of one extraction each add their failures
    to one ``errors.parquet`` and drop pairs from one item table, and without it the last replace would
    lose the others' changes."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing releases the lock


@contextmanager
def folder_held_alone(folder: Path) -> Iterator[None]:
    """``held_alone`` for a read-merge-replace of a file in ``folder`` beside which no lock file may be left (the
    ``--pack`` archive of a GPU pass, whose folder comes back file by file): the folder itself is locked."""
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing releases the lock
