"""Removing parts of the cache (``cmh rm``): a run folder, a dataset's items and features, a dataset's
report thumbnails, a run's checkpoint. The store is the one place that deletes under the cache root.

A run is removed while holding its writer lock, so no trainer, encoder or indexer can start writing into a
folder that is being deleted, and a run whose lock another process holds is refused naming that process.
"""
from __future__ import annotations

import shutil

from pipeline.ground.store.checkpoints import lock_state, run_busy, run_lock
from pipeline.ground.store.inventory import DatasetInfo, RunInfo
from pipeline.ground.store.layout import CacheLayout
from pipeline.ground.store.lock import DatasetLock


def remove_run(run: RunInfo) -> int:
    """Delete the run's folder (its model, codes, report, encodings and indexes); the bytes freed."""
    with run_lock(run.run.path, run.run_id, "removing"):  # RunBusy naming the pid when another process writes it
        shutil.rmtree(run.run.path)
    return run.bytes


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
    extraction writes it meanwhile; CacheError when one is; the bytes freed."""
    with DatasetLock(layout, dataset.name) as lock:
        if not lock.exclusive(attempts=1):
            raise lock.busy()
        for path in dataset.paths:
            shutil.rmtree(path) if path.is_dir() and not path.is_symlink() else path.unlink(missing_ok=True)
    return dataset.bytes


def remove_thumbnails(dataset: DatasetInfo) -> int:
    """Delete the dataset's report thumbnails (the next ``cmh report --html`` makes them again)."""
    if dataset.thumbs is not None:
        shutil.rmtree(dataset.thumbs)
    return dataset.thumb_bytes
