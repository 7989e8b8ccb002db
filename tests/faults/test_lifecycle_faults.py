"""Faults of the training lifecycle: train / grid / table, checkpoints, resume, locks, results publishing.

Each case is a user's situation (a cell another process trains, a stale checkpoint, a README without the
dataset's block, Ctrl-C, an archive packed earlier, a damaged run, a lock path that is not a file, bad
settings) run through the command line on the small ``pairs`` cache of ``conftest.py``: the command does
the right thing, or stops with one ``error:`` line naming the fix and loses nothing.
"""
from __future__ import annotations

import io
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from tests.faults.conftest import REPO, cli_subprocess, one_line_error

def _ctrl_c_default() -> None:
    """In the child, before exec: Ctrl-C's default action back. A shell starts background jobs with SIGINT
    ignored and a child inherits that, so without this the command under test would never see the Ctrl-C."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _planned(method: str, bits: int, epochs: int | None = None, seed: int = 1) -> str:
    from pipeline.orchestration.grid import GridRequest, grid_cells
    from pipeline.orchestration.training import planned_run_ids

    req = GridRequest("pairs", [method], (bits,), (seed,), epochs={"*": epochs} if epochs else {})
    return planned_run_ids(grid_cells(req)[0])[0]


def _table(cli, cache: Path, results: Path, *args: str):
    return cli("table", "--dataset", "pairs", "--seeds", "1", "--results", results, "--cache", cache, *args)


def _codes(cache: Path, run: str) -> dict:
    from pipeline.ground.store.runs import RunDir

    return {split: RunDir(cache / "runs" / run).read_codes(split) for split in ("query", "database")}


def _same_codes(a: dict, b: dict) -> bool:
    import numpy as np

    return all(np.array_equal(a[s][m], b[s][m]) for s in a for m in ("item_id", "image", "text"))


# -- 1: a cell another process trains -----------------------------------------------------------------------
@pytest.mark.parametrize("command", ["table", "grid"])
def test_a_busy_cell_is_left_to_its_trainer_and_the_command_ends_with_one_line(cli, built, tmp_path, command):
    from pipeline.ground.store.checkpoints import training_lock

    _, cache, run = built
    busy = _planned("baseline", 8)
    results = tmp_path / "results"
    with training_lock(cache / "runs" / busy, busy):
        if command == "table":
            result = _table(cli, cache, results, "--methods", "baseline", "--bits", "8,16")
        else:
            result = cli("grid", "--methods", "baseline", "--dataset", "pairs", "--bits", "8,16", "--cache", cache)
    line = one_line_error(result)
    assert "1 cell(s) busy" in line and "baseline 8b s1" in line and f"rerun when {os.getpid()} finishes" in line
    if command == "table":  # the other cell is published before the error
        assert [p.name for p in (results / "pairs").iterdir()] == [f"{run}.parquet"]
        assert "1 cell(s) published now" in result.out
    else:  # and the grid's table of the other cell is written
        assert "written:" in result.out and run in result.out


def test_train_over_several_lengths_trains_the_free_ones_then_names_the_busy_one(cli, built):
    from pipeline.ground.store.checkpoints import training_lock

    _, cache, _ = built
    busy, free = _planned("baseline", 8), _planned("baseline", 32)
    with training_lock(cache / "runs" / busy, busy):
        result = cli("train", "--method", "baseline", "--dataset", "pairs", "--bits", "8,32", "--cache", cache)
    line = one_line_error(result)
    assert f"run {busy} is being trained by process {os.getpid()}" in line
    assert "the other 1 run(s) of this command are done" in line
    assert free in result.out and (cache / "runs" / free / "report.parquet").is_file()  # trained after the busy one


# -- 2: checkpoints carry the run id --------------------------------------------------------------------------
def test_a_checkpoint_records_its_run_id(built):
    import torch

    from pipeline.orchestration.training import TrainRequest, train_runs
    from pipeline.ground.store.cache import Cache

    _, cache, _ = built
    req = TrainRequest(dataset="pairs", method="djsrh", bits=(8,), epochs=4, progress=False, stop_at=time.time(),
                       checkpoint_every=1)
    (result,) = train_runs(Cache(cache), req)
    assert result.paused is not None
    saved = torch.load(result.run_dir / "checkpoint.pt", map_location="cpu", weights_only=False)
    assert saved["identity"]["run_id"] == result.run_id


@pytest.mark.parametrize("differs", ["run_id", "config_hash", "code_version"])
def test_a_checkpoint_of_another_run_is_refused_in_one_line_and_training_starts_over(cli, built, caplog, differs):
    from pipeline.ground.store.checkpoints import RunCheckpoints
    from pipeline.ground.versions import RESULTS_VERSION

    _, cache, _ = built
    run = _planned("djsrh", 8, epochs=2)
    folder = cache / "runs" / run
    folder.mkdir(parents=True)
    identity = {"run_id": run, "config_hash": run.rsplit("-", 1)[1], "code_version": RESULTS_VERSION,
                "data_fingerprint": None, differs: "something else"}
    RunCheckpoints(folder, identity).save({"epoch": 1})
    (folder / "notes.txt").write_text("mine")
    before = sorted(p.name for p in (cache / "runs").iterdir())
    result = cli("train", "--method", "djsrh", "--dataset", "pairs", "--bits", "8", "--epochs", "2", "--cache", cache)
    assert result.code == 0, result.err
    said = [m for m in caplog.messages if "checkpoint.pt was written by another setup" in m]
    assert len(said) == 1 and "\n" not in said[0] and differs in said[0] and "starts over from epoch 0" in said[0]
    assert "resumed from" not in result.out and f"{run}: mAP@50" in result.out
    assert (folder / "notes.txt").read_text() == "mine" and not (folder / "checkpoint.pt").exists()
    assert sorted(p.name for p in (cache / "runs").iterdir()) == before  # no other run touched


# -- 3: a README without the dataset's block ------------------------------------------------------------------
def test_a_readme_without_the_dataset_block_is_refused_before_any_training(cli, built, tmp_path):
    _, cache, _ = built
    readme = tmp_path / "README.md"
    readme.write_text("# notes\n<!-- results:mirflickr generated ... -->\n")
    runs = sorted(p.name for p in (cache / "runs").iterdir())
    line = one_line_error(_table(cli, cache, tmp_path / "results", "--methods", "baseline,djsrh", "--bits", "8",
                                 "--epochs", "2", "--readme", readme))
    assert str(readme) in line and "no generated block for 'pairs'" in line and "<!-- results:pairs" in line
    assert sorted(p.name for p in (cache / "runs").iterdir()) == runs  # nothing trained
    assert not (tmp_path / "results").exists()


# -- 4: Ctrl-C (or SIGTERM) with parallel workers ------------------------------------------------------------
@pytest.mark.parametrize("sig, status, word", [(signal.SIGINT, 130, "interrupted"), (signal.SIGTERM, 143, "terminated")])
def test_ctrl_c_stops_the_workers_and_says_a_rerun_resumes(built, tmp_path, sig, status, word):
    from pipeline.ground.store.checkpoints import lock_holder

    _, cache, _ = built
    proc = subprocess.Popen([sys.executable, "-m", "pipeline", "table", "--dataset", "pairs", "--methods",
                             "djsrh,dsah", "--bits", "8", "--seeds", "1", "--epochs", "100000", "--workers", "2",
                             "--device", "cpu", "--results", str(tmp_path / "results"), "--cache", str(cache)],
                            cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True, preexec_fn=_ctrl_c_default)
    try:
        runs, deadline = cache / "runs", time.time() + 240
        while time.time() < deadline and sum(bool(lock_holder(p)) for p in runs.iterdir()) < 2:
            time.sleep(0.3)
        holders = {lock_holder(p) for p in runs.iterdir()} - {None}
        assert len(holders) == 2, "the two workers did not start training"
        if sig == signal.SIGINT:
            os.killpg(proc.pid, sig)  # what Ctrl-C in a terminal does: the whole foreground group
        else:
            os.kill(proc.pid, sig)  # `kill <pid>`, or a batch system's time limit: the command alone
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
    assert proc.returncode == status, err
    assert "Traceback" not in err and "KeyboardInterrupt" not in err, err
    errors = [line for line in err.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and word in errors[0] and "resumes" in errors[0], err
    for pid in holders:  # no worker left running
        assert not Path(f"/proc/{pid}").exists() or "zombie" in Path(f"/proc/{pid}/status").read_text().lower()
    assert not any(lock_holder(p) for p in runs.iterdir())


@pytest.mark.parametrize("command, module, function", [
    (("report", "--results", "results", "--dataset", "pairs"), "pipeline.orchestration.reporting", "report_results"),
    (("publish", "--dataset", "pairs"), "pipeline.orchestration.publishing", "publish"),
    (("extract", "--dataset", "pairs", "--data-dir", "data"), "pipeline.orchestration.extraction", "extract"),
])
def test_ctrl_c_in_a_command_without_checkpoints_is_said_in_one_line(cli, monkeypatch, tmp_path, command, module,
                                                                     function):
    """typer turns the KeyboardInterrupt into exit status 130 and says nothing: a user saw the prompt come back
    and could not tell whether the command had finished."""
    import importlib

    def pressed(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(importlib.import_module(module), function, pressed)
    monkeypatch.chdir(tmp_path)
    result = cli(*command, "--cache", tmp_path / "cache")
    assert result.code == 130, result.err
    assert "Traceback" not in result.err and "Aborted" not in result.err, result.err
    errors = [line for line in result.err.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and "interrupted (Ctrl-C)" in errors[0] and f"`cmh {command[0]}`" in errors[0], result.err
    assert "run the same command again" in errors[0]


@pytest.mark.parametrize("command, module, function", [
    (("report", "--results", "results", "--dataset", "pairs"), "pipeline.orchestration.reporting", "report_results"),
    (("extract", "--dataset", "pairs", "--data-dir", "data"), "pipeline.orchestration.extraction", "extract"),
])
def test_sigterm_in_a_command_without_checkpoints_is_said_in_one_line(cli, monkeypatch, tmp_path, command, module,
                                                                      function):
    """A batch system's time limit (SIGTERM) ended `cmh report --html` with status 143 and no word, and left
    the temporary file it was writing behind."""
    import importlib

    def killed(*args, **kwargs):
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(5)  # the handler raises long before this ends
        raise AssertionError("SIGTERM was not handled")

    monkeypatch.setattr(importlib.import_module(module), function, killed)
    monkeypatch.chdir(tmp_path)
    before = signal.getsignal(signal.SIGTERM)
    result = cli(*command, "--cache", tmp_path / "cache")
    assert result.code == 143, result.err
    assert "Traceback" not in result.err, result.err
    errors = [line for line in result.err.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and "terminated (SIGTERM)" in errors[0] and f"`cmh {command[0]}`" in errors[0]
    assert signal.getsignal(signal.SIGTERM) == before  # the caller's handler is back


# -- 5: --pack onto an archive packed earlier -----------------------------------------------------------------
def test_pack_adds_to_an_existing_archive_and_keeps_what_it_held(cli, built, tmp_path):
    _, cache, run = built
    archive = tmp_path / "rows.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        for name in ("pairs/earlier.parquet", f"pairs/{run}.parquet"):
            info = tarfile.TarInfo(name)
            info.size = 3
            tar.addfile(info, io.BytesIO(b"old"))
    result = _table(cli, cache, tmp_path / "results", "--methods", "baseline", "--bits", "16", "--pack", archive)
    assert result.code == 0, result.err
    with tarfile.open(archive) as tar:
        members = {m.name: tar.extractfile(m).read() for m in tar.getmembers()}
    assert sorted(members) == ["pairs/earlier.parquet", f"pairs/{run}.parquet"]
    assert members["pairs/earlier.parquet"] == b"old"  # kept
    assert members[f"pairs/{run}.parquet"] == (tmp_path / "results" / "pairs" / f"{run}.parquet").read_bytes()


def test_pack_onto_a_damaged_archive_is_refused_before_training(cli, built, tmp_path):
    _, cache, _ = built
    archive = tmp_path / "rows.tar.gz"
    archive.write_bytes(b"not gzip")
    line = one_line_error(_table(cli, cache, tmp_path / "results", "--methods", "baseline", "--bits", "16", "--pack",
                                 archive))
    assert str(archive) in line and "not a readable .tar.gz" in line
    assert archive.read_bytes() == b"not gzip" and not (tmp_path / "results").exists()


# -- 6, 7: a run counts as trained only when all of it is there and current -----------------------------------
def _old_version(folder: Path) -> None:
    import pyarrow as pa

    from pipeline.ground.store.parquet import read_metadata, write_table_atomic

    path = folder / "report.parquet"
    table = pq.read_table(path)
    table = table.set_column(table.column_names.index("code_version"), "code_version",
                             pa.array(["0.0.1"] * len(table)))
    write_table_atomic(table, path, metadata=read_metadata(path))


@pytest.mark.parametrize("damage, said", [
    (lambda f: (f / "model.pt").unlink(), "has no model.pt"),
    (lambda f: shutil.rmtree(f / "codes" / "split=database"), "has no database codes"),
    (lambda f: next((f / "codes" / "split=query").glob("*.parquet")).write_bytes(b"PAR1"), "damaged query codes"),
    (lambda f: (f / "report.parquet").write_bytes(b"PAR1 truncated"), "damaged report.parquet"),
    (_old_version, "was trained by code version 0.0.1"),
    (lambda f: (f / "config.json").write_text('{"run_id": '), "damaged config.json"),
])
def test_train_reruns_a_run_that_is_not_whole_and_says_why(cli, built, caplog, damage, said):
    _, cache, run = built
    before = _codes(cache, run)
    damage(cache / "runs" / run)
    result = cli("train", "--method", "baseline", "--dataset", "pairs", "--bits", "16", "--cache", cache)
    assert result.code == 0, result.err
    lines = [m for m in caplog.messages if "training it again" in m]
    assert len(lines) == 1 and "\n" not in lines[0] and run in lines[0] and said in lines[0], caplog.messages
    assert "(1 trained, 0 already there)" in result.out
    assert _same_codes(_codes(cache, run), before)  # retrained bit-identically


def test_a_codes_folder_without_its_file_is_not_trained(built):
    from pipeline.ground.errors import CacheError
    from pipeline.ground.store.runs import RunDir

    _, cache, run = built
    folder = RunDir(cache / "runs" / run)
    assert folder.is_trained()
    for part in (folder.codes_dir / "split=database").glob("*.parquet"):
        part.unlink()
    assert not folder.is_trained()
    with pytest.raises(CacheError, match="codes/split=database missing"):
        folder.require_trained()


@pytest.mark.parametrize("command", ["query", "publish"])
def test_a_damaged_config_is_one_line_naming_the_file_and_the_fix(cli, built, tmp_path, command):
    _, cache, run = built
    (cache / "runs" / run / "config.json").write_text("{not json")
    if command == "query":
        result = cli("query", "--run", run, "--text", "dog", "--cache", cache)
    else:
        result = cli("publish", "--dataset", "pairs", "--run", run, "--results", tmp_path / "r", "--cache", cache)
    line = one_line_error(result)
    assert "config.json" in line and "--force" in line


# -- 8: leftovers of a kill, and a lock path that is not a file ------------------------------------------------
def test_partial_files_of_a_killed_run_are_removed_when_it_is_trained_again(cli, built):
    _, cache, run = built
    folder = cache / "runs" / run
    (folder / "report.parquet").unlink()  # killed before its report
    leftovers = [folder / "model.pt.x1.partial", folder / "checkpoint.pt.x2.partial",
                 folder / "codes" / "split=database" / "part-0.parquet.x3.partial"]
    for path in leftovers:
        path.write_bytes(b"half")
    kept = folder / "encoded" / "other" / "part-0.parquet.x4.partial"  # `cmh encode`'s, under its own lock
    kept.parent.mkdir(parents=True)
    kept.write_bytes(b"half")
    result = cli("train", "--method", "baseline", "--dataset", "pairs", "--bits", "16", "--cache", cache)
    assert result.code == 0, result.err
    assert not any(p.exists() for p in leftovers) and kept.exists()
    assert (folder / "report.parquet").exists()


def test_a_partial_plot_of_a_finished_run_is_removed_when_it_is_found_again(cli, built):
    _, cache, run = built
    leftover = cache / "runs" / run / "plots" / "pr_i2t.png.x5.partial"
    leftover.parent.mkdir(exist_ok=True)
    leftover.write_bytes(b"half")
    result = cli("train", "--method", "baseline", "--dataset", "pairs", "--bits", "16", "--cache", cache)
    assert result.code == 0 and "(cached)" in result.out, result.err
    assert not leftover.exists() and not (cache / "runs" / run / "train.lock").exists()


@pytest.mark.parametrize("kind", ["folder", "fifo", "dangling symlink"])
def test_a_lock_path_that_is_not_a_file_is_one_line(built, tmp_path, kind):
    _, cache, run = built
    lock = cache / "runs" / run / "train.lock"
    if kind == "folder":
        lock.mkdir()
    elif kind == "fifo":
        os.mkfifo(lock)
    else:
        lock.symlink_to(tmp_path / "nowhere" / "lock")
    result = cli_subprocess("train", "--method", "baseline", "--dataset", "pairs", "--bits", "16", "--force",
                            "--cache", cache, timeout=120)
    line = one_line_error(result)
    assert str(lock) in line and "remove it" in line
    assert not (tmp_path / "nowhere").exists()
    ls = cli_subprocess("ls", "--kind", "runs", "--cache", cache, timeout=120)  # and listing does not hang
    assert ls.code == 0 and run in ls.out


# -- 9: bad settings, before any work -------------------------------------------------------------------------
@pytest.mark.parametrize("args, expect", [
    (["--workers", "0"], "WORKERS=0"), (["--workers", "-2"], "WORKERS=-2"),
    (["--checkpoint-every", "0"], "--checkpoint-every 0"),
])
@pytest.mark.parametrize("command", ["table", "grid"])
def test_bad_workers_or_checkpoint_interval_is_one_line(cli, built, tmp_path, command, args, expect):
    _, cache, _ = built
    runs = sorted(p.name for p in (cache / "runs").iterdir())
    common = ["--dataset", "pairs", "--methods", "baseline,djsrh", "--bits", "8", "--seeds", "1", "--cache", cache]
    extra = ["--results", tmp_path / "r"] if command == "table" else []
    line = one_line_error(cli(command, *common, *extra, *args))
    assert expect in line
    assert sorted(p.name for p in (cache / "runs").iterdir()) == runs and not (tmp_path / "r").exists()


@pytest.mark.parametrize("args", [["--workers", "two"], ["--checkpoint-every", "abc"], ["--workers", "1.5"]])
def test_a_non_integer_setting_is_refused_by_the_parser(cli, built, args):
    _, cache, _ = built
    result = cli("grid", "--dataset", "pairs", "--methods", "baseline", "--bits", "8", "--cache", cache, *args)
    assert result.code == 2 and "Traceback" not in result.err
    assert f"Invalid value for '{args[0]}'" in " ".join(result.err.split()), result.err  # the parser's refusal, one line


@pytest.mark.skipif(shutil.which("make") is None, reason="needs make")
@pytest.mark.parametrize("target, var, expect", [("grid", "WORKERS=0", "WORKERS=0"),
                                                 ("train", "CHECKPOINT_EVERY=abc", "Invalid value for '--checkpoint-every'"),
                                                 ("train", "CHECKPOINT_EVERY=0", "--checkpoint-every 0")])
def test_bad_settings_through_make(built, target, var, expect):
    _, cache, _ = built
    runs = sorted(p.name for p in (cache / "runs").iterdir())
    done = subprocess.run(["make", "--no-print-directory", "-o", ".venv/.cmh-installed", target, var,
                           "DATASET=pairs", "METHODS=baseline,djsrh", "METHOD=baseline", "BITS=8", f"CACHE={cache}",
                           f"PY={sys.executable}"], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode != 0 and "Traceback" not in done.stderr
    assert expect in " ".join(done.stderr.split()), done.stderr
    assert sorted(p.name for p in (cache / "runs").iterdir()) == runs


# -- beyond the list: the results folder --------------------------------------------------------------------
@pytest.mark.parametrize("file", ["results", "results/pairs"])
def test_a_results_path_that_is_a_file_is_refused_before_training(cli, built, tmp_path, file):
    _, cache, _ = built
    results = tmp_path / "results"
    (tmp_path / file).parent.mkdir(parents=True, exist_ok=True)
    (tmp_path / file).write_text("not a folder")
    runs = sorted(p.name for p in (cache / "runs").iterdir())
    line = one_line_error(_table(cli, cache, results, "--methods", "baseline,djsrh", "--bits", "8", "--epochs", "2"))
    assert "--results" in line and "is a file" in line
    assert sorted(p.name for p in (cache / "runs").iterdir()) == runs


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into a read-only folder")
def test_a_read_only_results_folder_is_refused_before_training(cli, built, tmp_path):
    _, cache, _ = built
    results = tmp_path / "results"
    results.mkdir()
    results.chmod(0o555)
    try:
        line = one_line_error(_table(cli, cache, results, "--methods", "djsrh", "--bits", "8", "--epochs", "2"))
    finally:
        results.chmod(0o755)
    assert "cannot be written" in line


def test_a_temporary_file_left_in_results_by_a_killed_publish_is_ignored(cli, built, tmp_path):
    _, cache, run = built
    results = tmp_path / "results"
    first = _table(cli, cache, results, "--methods", "baseline", "--bits", "16")
    assert first.code == 0, first.err
    (results / "pairs" / f"{run}.parquet.abcd.partial").write_bytes(b"PAR1 half")
    again = _table(cli, cache, results, "--methods", "baseline", "--bits", "16")
    assert again.code == 0, again.err
    assert "1 already in" in again.out
    report = cli("report", "--results", results, "--dataset", "pairs")
    assert report.code == 0, report.err


def test_a_truncated_result_file_is_named_before_training(cli, built, tmp_path):
    _, cache, run = built
    results = tmp_path / "results"
    assert _table(cli, cache, results, "--methods", "baseline", "--bits", "16").code == 0
    published = results / "pairs" / f"{run}.parquet"
    published.write_bytes(published.read_bytes()[:200])
    runs = sorted(p.name for p in (cache / "runs").iterdir())
    line = one_line_error(_table(cli, cache, results, "--methods", "baseline,djsrh", "--bits", "16", "--epochs", "2"))
    assert str(published) in line and "delete it" in line
    assert sorted(p.name for p in (cache / "runs").iterdir()) == runs


def test_a_first_table_whose_cells_all_paused_leaves_the_readme_as_it_is(cli, built, tmp_path):
    _, cache, _ = built
    readme = tmp_path / "README.md"
    readme.write_text("# x\n<!-- results:pairs generated by `cmh report --results results/ --dataset pairs --readme "
                      "README.md`; do not edit -->\n<!-- /results:pairs -->\n")
    before = readme.read_text()
    result = _table(cli, cache, tmp_path / "results", "--methods", "djsrh", "--bits", "8", "--epochs", "50",
                    "--budget", "0.000001", "--readme", readme)
    assert result.code == 0 and "error:" not in result.err, result.err
    assert "left as it is (nothing of 'pairs' is published" in result.out and readme.read_text() == before


def test_a_grid_out_dir_under_a_file_is_refused_before_training(cli, built, tmp_path):
    _, cache, _ = built
    (tmp_path / "afile").write_text("x")
    runs = sorted(p.name for p in (cache / "runs").iterdir())
    line = one_line_error(cli("grid", "--methods", "djsrh", "--dataset", "pairs", "--bits", "8", "--epochs", "2",
                              "--cache", cache, "--out-dir", tmp_path / "afile" / "tables"))
    assert "--out-dir" in line and "is a file" in line
    assert sorted(p.name for p in (cache / "runs").iterdir()) == runs


def test_two_tables_at_once_share_the_cells_and_the_second_names_the_first(cli, built, tmp_path):
    from pipeline.ground.store.checkpoints import lock_holder

    _, cache, _ = built
    results = tmp_path / "results"
    first = subprocess.Popen([sys.executable, "-m", "pipeline", "table", "--dataset", "pairs", "--methods", "djsrh",
                              "--bits", "8", "--seeds", "1", "--epochs", "100000", "--results", str(results),
                              "--cache", str(cache)], cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                             text=True, start_new_session=True, preexec_fn=_ctrl_c_default)
    try:
        folder, deadline = cache / "runs" / _planned("djsrh", 8, epochs=100000), time.time() + 120
        while time.time() < deadline and lock_holder(folder) is None:
            time.sleep(0.3)
        assert lock_holder(folder) == str(first.pid), "the first table did not start training"
        second = _table(cli, cache, results, "--methods", "baseline,djsrh", "--bits", "8", "--epochs",
                        "djsrh=100000", "--budget", "0.02")  # the budget ends it should it train the busy cell
        os.killpg(first.pid, signal.SIGINT)
        _, first_err = first.communicate(timeout=60)
    finally:
        if first.poll() is None:
            os.killpg(first.pid, signal.SIGKILL)
            first.communicate()
    line = one_line_error(second)
    assert "1 cell(s) busy" in line and f"rerun when {first.pid} finishes" in line
    assert [p.name for p in (results / "pairs").iterdir()] == [f"{_planned('baseline', 8)}.parquet"]  # the free cell
    assert first.returncode == 130 and "Traceback" not in first_err, first_err[-2000:]


def test_a_path_whose_bytes_are_not_utf8_is_refused_before_anything_is_read(cli, tmp_path):
    """A healthy cache under such a name was called damaged, with `--overwrite` as the fix; other commands
    ended in a UnicodeEncodeError traceback."""
    odd = os.fsdecode(os.fsencode(str(tmp_path)) + b"/cache\xfb")
    for args in (("ls", "--cache", odd), ("report", "--results", odd, "--dataset", "pairs")):
        line = one_line_error(cli(*args))
        assert "not UTF-8" in line and "cache\\xfb holds" in line and "overwrite" not in line, line


@pytest.mark.parametrize("option", ["--gallery-queries", "--top-k"])
def test_a_gallery_too_large_to_finish_is_refused_in_one_line(cli, tmp_path, option):
    """10^8 queries x 10^8 retrievals wrote 202 MB of page for a 600-item demo; at 18,015 items it never ends."""
    line = one_line_error(cli("report", "--dataset", "demo", "--cache", tmp_path, "--html", option, "100000000"))
    assert option in line and "100" in line


def test_a_pack_named_as_another_format_and_a_misspelt_metric_name_their_fix(cli, built, tmp_path):
    _, cache, _ = built
    line = one_line_error(_table(cli, cache, tmp_path / "results", "--methods", "baseline", "--bits", "16", "--pack",
                                 tmp_path / "rows.zip"))
    assert "give a name ending in .tar.gz" in line
    line = one_line_error(cli("report", "--cache", cache, "--dataset", "pairs", "--metric", "MAP@50"))
    assert "give one of" in line and "map@50" in line
