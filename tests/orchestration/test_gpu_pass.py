"""The GPU pass's pieces, on the CPU: the slim carried cache, the emulated machine's Python, the archive of new
rows, and the whole pass dry-run on the demo set (2 methods, 1 epoch) with only the machine's packages."""
from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest

from pipeline.ground.errors import CacheError
from pipeline.ground.store.cache import Cache
from tests.faults.conftest import REPO


def _bench(name: str):
    spec = importlib.util.spec_from_file_location(name, REPO / "bench" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


slim_cache = _bench("slim_cache")
gpu_pass = _bench("gpu_pass")


def _alexnet(cache: Cache) -> str:
    return next(e for e in cache.layout.encoder_folders("demo") if e.startswith("alexnet"))


@pytest.fixture
def slim(demo, tmp_path) -> Cache:
    """The demo cache's slim copy: AlexNet ``pool`` and the bag of words."""
    enc = _alexnet(demo)
    slim_cache.slim_copy(demo.root, tmp_path / "slim", "demo", slim_cache.parse_keep([f"{enc}:pool", "bow"]))
    return Cache(tmp_path / "slim")


def test_the_slim_cache_holds_the_full_caches_columns_and_fingerprints(demo, slim):
    assert slim_cache.check_copy(demo.root, slim.root, "demo") == []
    enc = _alexnet(demo)
    full_m, slim_m = demo.dataset("demo").manifest(enc), slim.dataset("demo").manifest(enc)
    for key in ("config_hash", "code_version", "dataset_fingerprint", "splits_fingerprint"):
        assert slim_m[key] == full_m[key]
    assert list(slim_m["columns"]) == ["pool"] and set(slim_m["slim"]["dropped_columns"]) == {"cov", "sp_cov"}
    for split in ("train", "query", "database"):
        a = demo.dataset("demo").features(split, demo.dataset("demo").feature_refs(f"{enc}:pool", "image"),
                                          demo.dataset("demo").feature_refs("bow", "text"))
        b = slim.dataset("demo").features(split, slim.dataset("demo").feature_refs(f"{enc}:pool", "image"),
                                          slim.dataset("demo").feature_refs("bow", "text"))
        assert np.array_equal(a.item_id, b.item_id) and np.array_equal(a.labels, b.labels)
        assert np.array_equal(a.image_matrix, b.image_matrix) and np.array_equal(a.text_matrix, b.text_matrix)


def test_a_method_needing_a_dropped_column_is_refused_by_name(slim):
    with pytest.raises(CacheError, match="no image output; its columns: pool"):
        slim.dataset("demo").feature_refs(_alexnet(slim), "image")  # DSPRH's default: every AlexNet branch
    with pytest.raises(CacheError, match="has no column 'cov'"):
        slim.dataset("demo").feature_refs(f"{_alexnet(slim)}:cov", "image")


def test_a_run_trained_on_the_slim_cache_equals_one_on_the_full_cache(demo, slim):
    from pipeline.orchestration.training import TrainRequest, train_runs

    req = TrainRequest(dataset="demo", method="djsrh", bits=(16,), epochs=2, device="cpu", progress=False)
    (full,) = train_runs(demo, req)
    (thin,) = train_runs(slim, req)
    assert full.run_id == thin.run_id  # same cell: it publishes beside the full cache's rows
    a, b = demo.run(full.run_id), slim.run(thin.run_id)
    for split in ("query", "database"):
        ca, cb = a.read_codes(split), b.read_codes(split)
        assert all(np.array_equal(ca[k], cb[k]) for k in ("image", "text"))
    assert a.read_config()["features"] == b.read_config()["features"]  # lineage: the same fingerprints
    assert slim.data_change(b) is None


def test_slim_cache_command_refuses_a_column_the_encoder_lacks_in_one_line(demo, tmp_path, capsys):
    rc = slim_cache.main(["--source", str(demo.root), "--dest", str(tmp_path / "s"), "--dataset", "demo",
                          "--keep", f"{_alexnet(demo)}:nope"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "has no column nope" in err[0]


def _emulated(code: str, tmp_path: Path, **env: str) -> tuple[subprocess.CompletedProcess, str]:
    log = tmp_path / "blocked.log"
    full = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO / "bench" / "device_env"), str(REPO)]),
            "CMH_DEVICE_EMULATE": "1", "CMH_DEVICE_BLOCKED_LOG": str(log), "TMPDIR": str(tmp_path), **env}
    done = subprocess.run([sys.executable, "-c", code], env=full, capture_output=True, text=True, timeout=300)
    return done, log.read_text() if log.exists() else ""


def test_the_emulated_machine_lacks_what_it_lacks_and_logs_who_asked(tmp_path):
    code = ("import pyarrow, typer, rich, numba, numpy\n"
            "for name in ('duckdb', 'faiss', 'matplotlib', 'scipy'):\n"
            "    try:\n        __import__(name); print('has', name)\n"
            "    except ModuleNotFoundError:\n        print('lacks', name)\n")
    done, log = _emulated(code, tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["lacks", "duckdb", "lacks", "faiss", "lacks", "matplotlib", "lacks", "scipy"]
    assert {line.split("\t")[0] for line in log.splitlines() if "<string>" in line} == {"duckdb", "faiss", "matplotlib",
                                                                                         "scipy"}
    carried, _ = _emulated("import duckdb; print('has duckdb')", tmp_path, CMH_DEVICE_CARRY="duckdb")
    assert carried.stdout.strip() == "has duckdb", carried.stderr  # what a carried wheel would provide


def test_the_training_path_imports_only_what_the_machine_has(tmp_path):
    code = "import pipeline.cli, pipeline.orchestration.table, pipeline.orchestration.training; print('ok')"
    done, log = _emulated(code, tmp_path)
    assert done.stdout.strip() == "ok", done.stderr
    ours = [line for line in log.splitlines() if f"{os.sep}pipeline{os.sep}" in line or f"{os.sep}stages{os.sep}" in line]
    assert ours == [], ours


def test_new_rows_are_packed_when_the_table_could_not_and_unpack_into_results(tmp_path):
    results = tmp_path / "results"
    (results / "demo").mkdir(parents=True)
    (results / "demo" / "old.parquet").write_bytes(b"old")
    before = gpu_pass.result_files(results, "demo")
    (results / "demo" / "new-run.parquet").write_bytes(b"new rows")
    out = gpu_pass.Pass(tmp_path / "out")
    archive = out.out / gpu_pass.ARCHIVE
    new = gpu_pass.pack_new(results, "demo", before, archive, out)
    assert [f.name for f in new] == ["new-run.parquet"]
    home = tmp_path / "home-results"
    with tarfile.open(archive) as tar:
        tar.extractall(home)
    assert (home / "demo" / "new-run.parquet").read_bytes() == b"new rows" and not (home / "demo" / "old.parquet").exists()
    assert "packed the 1 new result file(s)" in (out.out / "gpu_pass.log").read_text()


@pytest.mark.slow
def test_dry_run_of_the_gpu_pass_with_only_the_machines_packages(slim, tmp_path):
    out = tmp_path / "out"
    done = subprocess.run([sys.executable, str(REPO / "bench" / "gpu_pass.py"), "--emulate-device", "--device", "cpu",
                           "--epochs", "1", "--methods", "djsrh,dsah,dsprh", "--bits", "16", "--seeds", "1",
                           "--workers", "2", "--dataset", "demo", "--cache", str(slim.root),
                           "--results", str(tmp_path / "results"), "--wheels", str(tmp_path / "no-wheels"),
                           "--out", str(out), "--minutes", "8"],
                          capture_output=True, text=True, timeout=600, cwd=tmp_path,
                          env={**os.environ, "TMPDIR": str(tmp_path)})
    assert done.returncode == 0, done.stdout + done.stderr
    said = (out / "gpu_pass.log").read_text()
    assert "dsprh left out (1 missing cell(s))" in said and "2 missing cell(s) of djsrh, dsah" in said
    with tarfile.open(out / gpu_pass.ARCHIVE) as tar:
        names = sorted(tar.getnames())
    assert len(names) == 2 and all(n.startswith("demo/demo-") for n in names)
    assert sorted(p.name for p in (tmp_path / "results" / "demo").iterdir()) == sorted(Path(n).name for n in names)
    summary = (out / "summary.txt").read_text()
    assert "2 new result file(s)" in summary and "0 still missing" in summary and "cpu: 2 run(s)" in summary
    lacking = next(line for line in summary.splitlines() if "found nothing there" in line)
    assert "matplotlib" in lacking  # the run plots, skipped and recorded
    assert "mAP@50" in (out / "table.log").read_text()
    skipped = [json.loads(p.read_text()) for p in slim.root.glob("runs/*/plots/skipped.json")]
    assert len(skipped) == 2 and all("matplotlib" in s["reason"] for s in skipped)


def test_a_cell_failing_in_a_worker_does_not_lose_the_others(slim):
    """DSPRH cannot read the slim cache (a CacheError in its worker): the DJSRH cell beside it is still heard of
    (a table publishes it) before the failure is raised."""
    from pipeline.orchestration.grid import GridRequest, grid_cells, train_cells

    cells = grid_cells(GridRequest("demo", ["dsprh", "djsrh"], (16,), (1,), epochs={"*": 2}, device="cpu"))
    heard = []
    with pytest.raises(CacheError, match="no image output"):
        train_cells(slim, cells, workers=2, device="cpu", on_outcome=heard.append)
    assert [o.status for o in heard] == ["trained"] and "djsrh" in heard[0].run_id


def _wheel(folder: Path, name: str = "cmhprobe", version: str = "0.1") -> Path:
    """A minimal pure-Python wheel (a zip with the three dist-info files pip reads)."""
    import zipfile

    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}-{version}-py3-none-any.whl"
    info = f"{name}-{version}.dist-info"
    files = {f"{name}/__init__.py": "VALUE = 7\n",
             f"{info}/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n",
             f"{info}/WHEEL": "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n"}
    record = "".join(f"{n},,\n" for n in files) + f"{info}/RECORD,,\n"
    with zipfile.ZipFile(path, "w") as z:
        for n, text in {**files, f"{info}/RECORD": record}.items():
            z.writestr(n, text)
    return path


def test_carried_wheels_are_installed_offline_and_importable_on_the_emulated_machine(tmp_path):
    _wheel(tmp_path / "whl")
    p = gpu_pass.Pass(tmp_path / "out")
    names = gpu_pass.install_wheels(tmp_path / "whl", tmp_path / "site", p)
    assert names == ["cmhprobe"] and (tmp_path / "site" / "cmhprobe" / "__init__.py").exists()
    env = gpu_pass.child_env(tmp_path / "site", True, tmp_path / "out", names)
    done = subprocess.run([sys.executable, "-c", "import cmhprobe; print(cmhprobe.VALUE)"], env={**env, "TMPDIR": str(tmp_path)},
                          capture_output=True, text=True, timeout=120)
    assert done.stdout.strip() == "7", done.stderr
    assert gpu_pass.install_wheels(tmp_path / "none", tmp_path / "site2", p) == []
    assert "no wheels carried" in (tmp_path / "out" / "gpu_pass.log").read_text()


def test_a_table_still_running_at_the_limit_is_stopped_and_its_lines_kept(tmp_path):
    import time

    p = gpu_pass.Pass(tmp_path / "out")
    cmd = [sys.executable, "-c", "import time; print('cell line', flush=True); time.sleep(120)"]
    start = time.time()
    rc = gpu_pass.run_table(cmd, dict(os.environ), time.time() + 3, p)
    assert rc != 0 and time.time() - start < 60
    assert "cell line" in (p.out / "table.log").read_text()
    assert "stopping it" in (p.out / "gpu_pass.log").read_text()


def test_a_carried_cache_without_the_dataset_is_said_once_not_once_per_method(tmp_path):
    with pytest.raises(SystemExit) as stop:
        gpu_pass.feature_check(tmp_path, "demo", ["djsrh", "dsah", "ccah"], "16", "1", None, tmp_path / "results",
                              "cpu")
    message = str(stop.value.code)
    assert message.count("no cached dataset 'demo'") == 1 and "make slim-cache" in message
