"""Seventh polish: small faults a review noted and left alone.

* one wording for "run X is being <activity> by process N", whichever command is refused;
"""
from __future__ import annotations

import os
from pathlib import Path

import pytest


def _run_folder(cache: Path, run_id: str = "pairs-baseline-16-s1") -> Path:
    """A run folder as far as the store's lock and removal see one: a config and a checkpoint."""
    folder = cache / "runs" / run_id
    folder.mkdir(parents=True)
    (folder / "config.json").write_text("{}")
    (folder / "checkpoint.pt").write_bytes(b"state")
    return folder


# -- 1: one message for a busy run --------------------------------------------------------------------------
def test_a_busy_run_is_refused_in_one_wording_by_the_lock_and_by_checkpoint_removal(tmp_path):
    from pipeline.ground.store.checkpoints import RunBusy, run_lock
    from pipeline.ground.store.inventory import run_info
    from pipeline.ground.store.removal import remove_checkpoint
    from pipeline.ground.store.runs import RunDir

    folder = _run_folder(tmp_path)
    run = folder.name
    said = f"run {run} is being trained by process {os.getpid()} ("
    fix = "); wait for it to finish, or stop it, then run the command again"
    with run_lock(folder, run, "training"):  # flock is per open file: this process's second open is refused
        with pytest.raises(RunBusy) as by_lock:
            with run_lock(folder, run, "encoding", create=False):
                pass
        with pytest.raises(RunBusy) as by_rm:
            remove_checkpoint(run_info(RunDir(folder)))
    for exc, what in ((by_lock.value, f"holding {folder / 'train.lock'}"), (by_rm.value, "its checkpoint is in use")):
        assert str(exc) == f"{said}{what}{fix}" and exc.holder == str(os.getpid())
    assert (folder / "checkpoint.pt").read_bytes() == b"state"
