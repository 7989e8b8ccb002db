"""Removing parts of the cache (``cmh rm``): a run folder, a dataset's items and features, a dataset's
report thumbnails, a run's checkpoint. The store is the one place that deletes under the cache root.

A run is removed while holding its writer lock, and a run whose lock another process holds is refused naming
that process. Under the lock the run folder is renamed to a hidden tombstone beside it (one atomic step), and
only then deleted: a trainer, encoder or indexer starting meanwhile finds no run folder, never a folder half
deleted whose lock file is already gone. Listings skip the tombstones (``CacheLayout.run_paths``); one left by
a ``cmh rm`` that was killed is deleted by the next one (``drop_tombstones``).
"""
from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path

from pipeline.ground.store.checkpoints import lock_state, run_busy, run_lock
from pipeline.ground.store.inventory import DatasetInfo, RunInfo
from pipeline.ground.store.layout import TOMBSTONE_PREFIX, CacheLayout
from pipeline.ground.store.lock import DatasetLock

log = logging.getLogger(__name__)


def remove_run(run: RunInfo) -> int:
    """Delete the run's folder (its model, codes, report, encodings and indexes); the bytes freed."""
    folder = run.run.path
    tomb = folder.with_name(f"{TOMBSTONE_PREFIX}{os.getpid()}-{folder.name}")
    with run_lock(folder, run.run_id, "removing"):  # RunBusy naming the pid when another process writes it
        os.rename(folder, tomb)
    _delete_tree(tomb)
    return run.bytes


def drop_tombstones(layout: CacheLayout) -> list[Path]:
    """Delete the tombstones that ``cmh rm`` processes no longer alive left (killed while deleting), said in
    one log line; those of a ``cmh rm`` still running are its own to delete. The tombstones deleted."""
    stale = [p for p in layout.tombstones() if not _alive(_tomb_pid(p.name))]
    if stale:
        log.info("deleting %d run folder(s) that an interrupted `cmh rm` left half deleted: %s", len(stale),
                 ", ".join(str(p) for p in stale))
        for path in stale:
            _delete_tree(path)
    return stale


def _tomb_pid(name: str) -> int | None:
    pid = name[len(TOMBSTONE_PREFIX):].split("-", 1)[0]
    return int(pid) if pid.isdigit() else None


def _alive(pid: int | None) -> bool:
    # this process deletes its own tombstones before it returns, so one named by it is a leftover too
    if pid is None or pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def _delete_tree(path: Path) -> None:
    """``rmtree``, untroubled by entries that vanish meanwhile (a second ``cmh rm`` deleting the same tombstone)."""
    def vanished(func: object, name: str, exc_info: tuple) -> None:
        if not isinstance(exc_info[1], FileNotFoundError):
            raise exc_info[1]

    shutil.rmtree(path, onerror=vanished)


def remove_checkpoint(run: RunInfo) -> int:
    """Delete the run's ``checkpoint.pt`` (a rerun then trains from epoch 0); the bytes freed."""
    state = lock_state(run.run.path)
    if state:
        holder, doing = state
        raise run_busy(run.run_id, holder, doing, "its checkpoint is in use")
    run.checkpoint.unlink(missing_ok=True)
    return run.checkpoint_bytes


def remove_dataset(layout: CacheLayout, dataset: DatasetInfo) -> int:
    """Delete the dataset's items, splits and features (not its thumbnails), holding its lock alone so no
    extraction writes them and no encode or training reads them meanwhile; CacheError naming the process when one does;
    the bytes freed."""
    with DatasetLock(layout, dataset.name, "removing") as lock:
        if not lock.exclusive(attempts=1):  # an extraction, encode or training of it runs: refused naming its pid
            raise lock.busy()
        for path in dataset.paths:
            shutil.rmtree(path) if path.is_dir() and not path.is_symlink() else path.unlink(missing_ok=True)
    return dataset.bytes


def remove_thumbnails(dataset: DatasetInfo) -> int:
    """Delete the dataset's report thumbnails (the next ``cmh report --html`` makes them again)."""
    if dataset.thumbs is not None:
        shutil.rmtree(dataset.thumbs)
    return dataset.thumb_bytes
