"""Runs resume: a training run killed at any moment continues from its last checkpoint and ends
bit-identical to an uninterrupted run of the same seed; faults around the checkpoint are one line."""
from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

from pipeline.ground.store.cache import Cache
from pipeline.ground.store.checkpoints import CHECKPOINT_FILE, LOCK_FILE, training_lock
from pipeline.orchestration.training import TrainRequest, train_runs
from tests.faults.conftest import REPO, one_line_error

EPOCHS = 6


def _codes(cache: Cache, run_id: str) -> dict[str, str]:
    codes = cache.run(run_id).codes_dir
    return {str(p.relative_to(codes)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(codes.rglob("*.parquet"))}


def _req(method: str = "djsrh", **kw) -> TrainRequest:
    return TrainRequest(dataset="demo", method=method, bits=(16,), epochs=EPOCHS, progress=False, **kw)


@pytest.fixture(scope="module")
def reference(_demo_cache, tmp_path_factory) -> dict[str, tuple[str, dict[str, str]]]:
    """Uninterrupted runs without checkpoints: method -> (run id, sha256 of every codes file)."""
    import shutil

    root = tmp_path_factory.mktemp("reference")
    for part in ("datasets", "features"):
        shutil.copytree(_demo_cache / part, root / part)
    cache = Cache(root)
    out = {}
    for method in ("djsrh", "ucmfh"):
        (run,) = train_runs(cache, _req(method))
        out[method] = (run.run_id, _codes(cache, run.run_id))
    return out


@pytest.mark.parametrize("method", ["djsrh", "ucmfh"])  # ucmfh: dropout and its own torch.rand draws
def test_checkpointing_every_epoch_never_changes_the_codes(demo, reference, method):
    (run,) = train_runs(demo, _req(method, checkpoint_every=1))
    run_id, codes = reference[method]
    assert run.run_id == run_id and _codes(demo, run.run_id) == codes
    history = demo.run(run_id).read_history() if hasattr(demo.run(run_id), "read_history") else None
    left = {p.name for p in demo.run(run_id).path.iterdir()}
    assert CHECKPOINT_FILE not in left and LOCK_FILE not in left  # a finished run keeps only its model


def test_a_paused_run_resumes_where_it_stopped(demo, reference):
    (paused,) = train_runs(demo, _req(checkpoint_every=2, stop_at=time.time() - 1))
    assert paused.paused is not None and paused.paused.epochs_done == 1
    assert (demo.run(paused.run_id).path / CHECKPOINT_FILE).is_file()
    (run,) = train_runs(demo, _req())
    assert run.resumed_from == 1 and "resumed from epoch 1" in run.describe()
    assert _codes(demo, run.run_id) == reference["djsrh"][1]


def _kill_script(cache: Path, where: str) -> str:
    """A cmh train that SIGKILLs itself right after its 2nd checkpoint (an epoch boundary) or in the middle
    of the 4th epoch (after a checkpoint at epoch 3)."""
    return textwrap.dedent(f"""
        import os, signal, sys
        import pipeline.ground.store.checkpoints as ck
        import stages.train.methods.djsrh as djsrh
        where = {where!r}
        real_save, real_terms = ck.RunCheckpoints.save, djsrh.DJSRH.loss_terms
        saves, steps = [], []
        def save(self, state):
            real_save(self, state)
            saves.append(state["epoch"])
            if where == "boundary" and len(saves) == 2:
                os.kill(os.getpid(), signal.SIGKILL)
        def terms(self, batch, epoch):
            steps.append(epoch)
            if where == "mid-epoch" and epoch == 3 and steps.count(3) == 2:
                os.kill(os.getpid(), signal.SIGKILL)
            return real_terms(self, batch, epoch)
        ck.RunCheckpoints.save, djsrh.DJSRH.loss_terms = save, terms
        from pipeline.cli import main
        sys.argv = ["cmh", "train", "--method", "djsrh", "--dataset", "demo", "--bits", "16", "--epochs", "{EPOCHS}",
                    "--checkpoint-every", "{1 if where == 'boundary' else 3}", "--cache", {str(cache)!r}]
        main()
    """)


@pytest.mark.parametrize("where", ["boundary", "mid-epoch"])
def test_sigkill_then_rerun_resumes_and_ends_bit_identical(demo, reference, where):
    proc = subprocess.run([sys.executable, "-c", _kill_script(demo.root, where)], cwd=REPO, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    run_id, codes = reference["djsrh"]
    assert (demo.run(run_id).path / CHECKPOINT_FILE).is_file() and not demo.run(run_id).is_complete()
    again = subprocess.run([sys.executable, "-m", "pipeline", "train", "--method", "djsrh", "--dataset", "demo",
                            "--bits", "16", "--epochs", str(EPOCHS), "--cache", str(demo.root)], cwd=REPO,
                           capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr[-2000:]
    done = 2 if where == "boundary" else 3
    assert f"resumed from epoch {done}" in again.stdout
    assert _codes(demo, run_id) == codes


def _paused_checkpoint(demo: Cache) -> Path:
    """A run paused after its first epoch: the checkpoint to play with (--force: also after a finished run)."""
    (paused,) = train_runs(demo, _req(force=True, checkpoint_every=2, stop_at=time.time() - 1))
    path = demo.run(paused.run_id).path / CHECKPOINT_FILE
    assert path.is_file()
    return path


def test_force_retrains_from_scratch_and_a_killed_forced_run_is_not_complete(demo, reference):
    (done,) = train_runs(demo, _req())
    (paused,) = train_runs(demo, _req(force=True, stop_at=time.time() - 1))
    assert paused.paused is not None and not demo.run(done.run_id).is_complete()  # no stale report stays
    (again,) = train_runs(demo, _req())
    assert again.resumed_from == 1 and _codes(demo, done.run_id) == reference["djsrh"][1]


def test_a_checkpoint_of_another_code_version_or_a_damaged_one_starts_over(demo, reference, cli, caplog):
    path = _paused_checkpoint(demo)
    saved = torch.load(path, weights_only=False)
    saved["identity"]["code_version"] = "0.0.1"
    torch.save(saved, path)
    with caplog.at_level("WARNING"):
        (run,) = train_runs(demo, _req())
    assert "written by another setup (code_version '0.0.1' -> " in caplog.text and run.resumed_from is None
    assert _codes(demo, run.run_id) == reference["djsrh"][1]

    path = _paused_checkpoint(demo)
    path.write_bytes(path.read_bytes()[:1000])  # truncated
    result = cli("train", "--method", "djsrh", "--dataset", "demo", "--bits", "16", "--epochs", EPOCHS,
                 "--cache", demo.root)
    assert result.code == 0 and "resumed" not in result.out
    assert _codes(demo, reference["djsrh"][0]) == reference["djsrh"][1]


@pytest.mark.parametrize("kind", ["folder", "fifo"])
def test_a_folder_or_fifo_in_place_of_the_checkpoint_is_one_line(demo, cli, kind):
    (paused,) = train_runs(demo, _req(checkpoint_every=2, stop_at=time.time() - 1))
    path = demo.run(paused.run_id).path / CHECKPOINT_FILE
    path.unlink()
    path.mkdir() if kind == "folder" else os.mkfifo(path)
    line = one_line_error(cli("train", "--method", "djsrh", "--dataset", "demo", "--bits", "16", "--epochs", EPOCHS,
                              "--cache", demo.root))
    assert str(path) in line and "remove it" in line


def test_a_full_disk_or_read_only_folder_while_checkpointing_keeps_the_last_checkpoint(demo, cli, monkeypatch):
    import errno

    import pipeline.ground.store.checkpoints as ck

    (paused,) = train_runs(demo, _req(checkpoint_every=2, stop_at=time.time() - 1))
    path = demo.run(paused.run_id).path / CHECKPOINT_FILE
    before = path.read_bytes()
    real = torch.save

    def full(obj, f, *a, **k):
        real(obj, f, *a, **k)
        raise OSError(errno.ENOSPC, "No space left on device", str(path.parent))

    monkeypatch.setattr(ck.torch if hasattr(ck, "torch") else torch, "save", full)
    line = one_line_error(cli("train", "--method", "djsrh", "--dataset", "demo", "--bits", "16", "--epochs", EPOCHS,
                              "--checkpoint-every", "1", "--cache", demo.root))
    assert "No space left" in line and "free space" in line
    assert path.read_bytes() == before  # the previous checkpoint is intact
    assert not [p for p in path.parent.iterdir() if p.name.endswith(".partial")]
    monkeypatch.undo()
    if os.geteuid() != 0:  # root writes into read-only folders anyway
        path.parent.chmod(0o555)
        try:
            line = one_line_error(cli("train", "--method", "djsrh", "--dataset", "demo", "--bits", "16",
                                      "--epochs", EPOCHS, "--checkpoint-every", "1", "--cache", demo.root))
            assert "permission" in line.lower()
        finally:
            path.parent.chmod(0o755)


def test_a_second_trainer_of_the_same_run_refuses_naming_the_first(demo, cli):
    (run,) = train_runs(demo, _req(checkpoint_every=2, stop_at=time.time() - 1))
    with training_lock(demo.run(run.run_id).path, run.run_id):
        line = one_line_error(cli("train", "--method", "djsrh", "--dataset", "demo", "--bits", "16", "--epochs",
                                  EPOCHS, "--cache", demo.root))
    assert f"process {os.getpid()}" in line and "being trained" in line
    (done,) = train_runs(demo, _req())  # the lock is gone with its holder
    assert done.resumed_from == 1


def test_checkpoint_every_must_be_a_positive_number_of_epochs(demo, cli):
    line = one_line_error(cli("train", "--method", "djsrh", "--dataset", "demo", "--bits", "16",
                              "--checkpoint-every", "0", "--cache", demo.root))
    assert "--checkpoint-every 0" in line and ">= 1" in line


def test_a_rerun_of_finished_runs_reads_no_split_and_a_new_length_reads_them_once(demo, monkeypatch):
    """`make table` and `cmh train` reruns skip what is done: they must not first load every split (seconds and
    gigabytes at scale) only to find nothing to train."""
    from pipeline.orchestration import training

    loads = []
    real = training._load
    monkeypatch.setattr(training, "_load", lambda *a, **k: loads.append(1) or real(*a, **k))
    req = TrainRequest(dataset="demo", method="baseline", bits=(8,), epochs=1, progress=False)
    (first,) = train_runs(demo, req)
    assert not first.skipped and len(loads) == 1
    (again,) = train_runs(demo, req)
    assert again.skipped and len(loads) == 1  # nothing read
    both = train_runs(demo, TrainRequest(dataset="demo", method="baseline", bits=(8, 16, 32), epochs=1, progress=False))
    assert [r.skipped for r in both] == [True, False, False] and len(loads) == 2  # read once for the two new ones


def test_a_run_or_checkpoint_trained_on_a_gpu_is_never_taken_for_the_cpus(demo, reference, caplog):
    """A GPU rounds otherwise, so its run is not the CPU's even under the CPU's id (runs written before a GPU's
    ids were its own): a finished one is trained again, a checkpoint is not resumed, and both are said."""
    (done,) = train_runs(demo, _req())
    run = demo.run(done.run_id)
    config = run.read_config()
    run.write_config({**config, "device": "cuda:0"})
    with caplog.at_level("WARNING"):
        (again,) = train_runs(demo, _req())
    assert "was trained on cuda:0, not on cpu" in caplog.text and not again.skipped
    assert _codes(demo, again.run_id) == reference["djsrh"][1]

    path = _paused_checkpoint(demo)
    saved = torch.load(path, weights_only=False)
    saved["identity"]["device"] = "cuda"
    torch.save(saved, path)
    caplog.clear()
    with caplog.at_level("WARNING"):
        (run,) = train_runs(demo, _req())
    assert "written by another setup (device 'cuda' -> 'cpu')" in caplog.text and run.resumed_from is None
