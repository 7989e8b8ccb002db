"""`cmh table`: only the missing cells, seed 1 first, each published as it finishes; the GPU pass's code
path (parallel workers, an archive of the new rows) dry-run on the CPU with 2 methods and 2 epochs."""
from __future__ import annotations

import tarfile
import time

import pyarrow.parquet as pq
import pytest

from pipeline.orchestration.table import TableRequest, build_table
from tests.faults.conftest import one_line_error


def _req(results, **kw) -> TableRequest:
    base = dict(dataset="demo", methods=("djsrh", "dsah"), bits=(16,), seeds=(1, 2), results=results,
                epochs={"*": 2})
    return TableRequest(**{**base, **kw})


def test_dry_run_of_the_gpu_pass_publishes_every_cell_and_packs_the_new_rows(demo, tmp_path):
    results = tmp_path / "results"
    lines: list[str] = []
    out = build_table(demo, _req(results, workers=2, device="cpu", pack=tmp_path / "new.tar.gz"), echo=lines.append)
    assert len(out.published) == 4 and not out.missing and out.archive is not None
    # every seed 1 before any seed 2, whatever finished first
    assert [o.run_id.split("-")[3] for o in out.outcomes] == ["s1", "s1", "s2", "s2"]
    with tarfile.open(out.archive) as tar:
        names = sorted(tar.getnames())
    assert names == sorted(f"demo/{p.name}" for p in out.published)
    rows = pq.read_table(out.published[0]).to_pylist()
    assert {r["device"] for r in rows} == {"cpu"} and all(r["train_s"] > 0 for r in rows)
    # a rerun finds every cell published: nothing is trained
    again = build_table(demo, _req(results), echo=lines.append)
    assert len(again.already) == 4 and not again.outcomes and not again.published
    assert any("4 already in" in line for line in lines)


def test_a_budget_starts_no_cell_after_it_and_the_next_call_does_the_rest(demo, tmp_path):
    results = tmp_path / "results"
    lines: list[str] = []
    out = build_table(demo, _req(results, budget=1e-9, checkpoint_every=1), echo=lines.append)
    assert not out.published and {o.status for o in out.outcomes} <= {"not started", "paused"}
    # the summary names each missing cell the same way, paused or never started
    summary = next(line for line in lines if "still missing" in line)
    assert all(o.cell in summary for o in out.outcomes) and "4 still missing" in summary
    assert {o.cell.split()[-1] for o in out.outcomes} == {"s1", "s2"}
    time.sleep(0.01)
    rest = build_table(demo, _req(results), echo=lambda line: None)
    assert len(rest.published) == 4


@pytest.mark.parametrize("value", ["0", "-1", "abc", "nan"])
def test_bad_budget_is_one_line(demo, cli, tmp_path, value):
    line = one_line_error(cli("table", "--dataset", "demo", "--methods", "djsrh", "--bits", "16", "--seeds", "1",
                              "--budget", value, "--results", tmp_path / "r", "--cache", demo.root))
    assert f"BUDGET={value}" in line and "number > 0" in line


@pytest.mark.parametrize("workers", ["0", "5"])
def test_workers_outside_one_to_the_cells_is_one_line(demo, cli, tmp_path, workers):
    line = one_line_error(cli("table", "--dataset", "demo", "--methods", "djsrh,dsah", "--bits", "16", "--seeds", "1",
                              "--workers", workers, "--results", tmp_path / "r", "--cache", demo.root))
    assert f"WORKERS={workers}" in line and "give 1 to 2" in line


def test_a_cell_another_process_trains_is_left_to_it_and_the_rest_goes_on(demo, tmp_path):
    from pipeline.ground.store.checkpoints import training_lock
    from pipeline.orchestration.grid import GridRequest, grid_cells
    from pipeline.orchestration.training import planned_run_ids

    req = _req(tmp_path / "results", seeds=(1,))
    first = planned_run_ids(grid_cells(GridRequest("demo", ["djsrh"], (16,), (1,), epochs={"*": 2}))[0])[0]
    with training_lock(demo.run(first).path, first):
        out = build_table(demo, req, echo=lambda line: None)
    busy = [o for o in out.outcomes if o.status == "busy"]
    assert len(busy) == 1 and "being trained by process" in busy[0].line and len(out.published) == 1


def test_killing_the_table_takes_its_workers_with_it(demo, tmp_path):
    import os
    import signal
    import subprocess
    import sys

    from pipeline.ground.store.checkpoints import lock_holder
    from tests.faults.conftest import REPO

    proc = subprocess.Popen([sys.executable, "-m", "pipeline", "table", "--dataset", "demo", "--methods", "djsrh,dsah",
                             "--bits", "16", "--seeds", "1", "--epochs", "200", "--workers", "2", "--device", "cpu",
                             "--results", str(tmp_path / "results"), "--cache", str(demo.root)],
                            cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 240
    runs = demo.root / "runs"
    while time.time() < deadline and not (runs.is_dir() and any(lock_holder(p) for p in runs.iterdir())):
        time.sleep(0.5)
    assert runs.is_dir() and any(lock_holder(p) for p in runs.iterdir()), "no worker started training"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    deadline = time.time() + 30
    while time.time() < deadline and any(lock_holder(p) for p in runs.iterdir()):
        time.sleep(0.5)
    assert not any(lock_holder(p) for p in runs.iterdir()), "a worker outlived the killed table"


def test_a_gpu_trains_runs_of_its_own_and_the_cpu_ids_stay_those_published():
    """A GPU's codes differ from the CPU's, so a GPU run is never the CPU's run reused, resumed or skipped: its
    run id differs. The CPU's ids are those of the committed results (no published cell would train again)."""
    import dataclasses
    from pathlib import Path

    import torch

    from pipeline.orchestration.training import TrainRequest, planned_run_ids, run_id_for

    cpu = TrainRequest(dataset="mirflickr", method="djsrh", bits=(64,), seed=1, device="cpu")
    (cpu_id,) = planned_run_ids(cpu)
    assert (Path(__file__).parents[2] / "results" / "mirflickr" / f"{cpu_id}.parquet").exists()
    if not torch.cuda.is_available():
        assert planned_run_ids(dataclasses.replace(cpu, device=None)) == [cpu_id]  # no GPU here: the CPU's
    gpu = {run_id_for(dataclasses.replace(cpu, device=d), 64, {}) for d in ("cuda", "cuda:0", "cuda:1")}
    assert len(gpu) == 1 and run_id_for(cpu, 64, {}) not in gpu  # one id for every CUDA device, not the CPU's


def test_a_pack_that_fails_leaves_its_cell_unpublished_so_the_rerun_packs_it(demo, tmp_path, monkeypatch):
    """Only the archive comes home from a GPU pass: a cell published but not packed would be lost to it, since
    the rerun finds it published and packs nothing."""
    import pipeline.orchestration.table as table

    results, pack = tmp_path / "results", tmp_path / "out" / "rows.tar.gz"

    def full_disk(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(table, "_pack", full_disk)
    with pytest.raises(OSError):
        build_table(demo, _req(results, seeds=(1,), methods=("djsrh",), pack=pack), echo=lambda line: None)
    assert not list((results / "demo").glob("*.parquet"))  # not published: the rerun trains (reuses) and packs it
    monkeypatch.undo()
    out = build_table(demo, _req(results, seeds=(1,), methods=("djsrh",), pack=pack), echo=lambda line: None)
    assert len(out.published) == 1
    with tarfile.open(pack) as tar:
        (member,) = tar.getmembers()
        assert tar.extractfile(member).read() == out.published[0].read_bytes()  # the very file published


def test_a_pack_under_a_dangling_link_is_refused_before_any_training(demo, cli, tmp_path):
    (tmp_path / "gone").symlink_to(tmp_path / "nowhere")
    line = one_line_error(cli("table", "--dataset", "demo", "--methods", "djsrh", "--bits", "16", "--seeds", "1",
                              "--epochs", "2", "--cache", demo.root, "--results", tmp_path / "results",
                              "--pack", tmp_path / "gone" / "rows.tar.gz"))
    assert "is a link to" in line and "does not exist" in line
    assert not list((demo.root / "runs").glob("*")) if (demo.root / "runs").exists() else True
