"""--engine ray: the same cache as the local runner, resume after a kill, a clear error for a wrong address,
and no ray import on the local path. One local Ray (2 CPUs, no cluster) for the whole module."""
from __future__ import annotations

import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

ray = pytest.importorskip("ray")

from pipeline.ground.errors import ConfigError  # noqa: E402
from pipeline.ground.store.features import read_manifest, read_split_raw  # noqa: E402
from pipeline.ground.store.cache import Cache  # noqa: E402
from stages.extract import create_encoder  # noqa: E402
from stages.extract import ray_engine  # noqa: E402
from stages.extract.ray_engine import ray_session, run_extraction_ray  # noqa: E402
from stages.extract.runner import run_extraction  # noqa: E402
from stages.prepare import DatasetRequest, prepare_dataset  # noqa: E402

ENCODERS = ("alexnet.imagenet", "bow")
OPTS = {"batch_size": 8, "shard_size": 12, "progress": False}


@pytest.fixture(scope="module")
def local_ray():
    with ray_session(num_cpus=2, object_store_memory=256 * 2**20):
        yield
    assert not ray.is_initialized()


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    """40 demo pairs; one image is overwritten with garbage after the item table was made, so it fails
    only at extraction (an errors.parquet row), as an image damaged between the two stages would."""
    root = tmp_path_factory.mktemp("ray_demo")
    req = DatasetRequest(dataset="demo", data_dir=root / "demo-data", options={"n_items": 40, "size": 48})
    items, splits = prepare_dataset(Cache(root / "prep"), req)
    broken = int(np.flatnonzero(np.isin(items.item_id, splits["database"]))[3])
    Path(items.image[broken]).write_bytes(b"\x00not a jpeg any more" * 4)
    return items, splits, int(items.item_id[broken])


def _extract(run, layout, items, splits, **kw):
    return {name: run(layout, items, splits, create_encoder(name), **OPTS, **kw) for name in ENCODERS}


@pytest.fixture(scope="module")
def caches(tmp_path_factory, demo, local_ray):
    items, splits, _ = demo
    root = tmp_path_factory.mktemp("ray_caches")
    local, on_ray = Cache(root / "local"), Cache(root / "ray")
    summaries = {"local": _extract(run_extraction, local, items, splits, workers=0, threads=1),
                 "ray": _extract(run_extraction_ray, on_ray, items, splits)}
    return local, on_ray, summaries


def _shards(layout: Cache, dataset: str, encoder: str) -> list[Path]:
    return sorted(layout.encoder_dir(dataset, encoder).glob("split=*/part-*.parquet"))


def test_ray_writes_the_cache_the_local_runner_writes(demo, caches):
    items, splits, broken = demo
    local, on_ray, summaries = caches
    for name in ENCODERS:
        a, b = summaries["local"][name], summaries["ray"][name]
        assert b.engine == "ray" and b.complete and b.rows == a.rows and b.shards_written == a.shards_written
        assert [p.relative_to(local.root) for p in _shards(local, items.dataset, name)] == \
               [p.relative_to(on_ray.root) for p in _shards(on_ray, items.dataset, name)]
        for split in splits:
            x, y = (read_split_raw(c, items.dataset, name, split) for c in (local, on_ray))
            assert x.keys() == y.keys()
            np.testing.assert_array_equal(x["item_id"], y["item_id"])
            for col in x:
                np.testing.assert_allclose(x[col].astype(np.float32), y[col].astype(np.float32),
                                           rtol=1e-3, atol=1e-3)  # fp16 rounding
        ma, mb = (read_manifest(c, items.dataset, name) for c in (local, on_ray))
        assert ma["provenance"].pop("engine") == "local" and mb["provenance"].pop("engine") == "ray"
        assert ma == mb  # training reads the manifest: nothing else differs
    # the broken image: dropped from the image features, listed with the same row by both engines
    assert summaries["ray"]["alexnet.imagenet"].failed == 1
    errors = [pq.read_table(c.errors_path(items.dataset, "alexnet.imagenet")).to_pylist() for c in (local, on_ray)]
    assert errors[0] == errors[1] and [e["item_id"] for e in errors[1]] == [broken]
    assert "cannot read image" in errors[1][0]["reason"]
    assert not on_ray.errors_path(items.dataset, "bow").exists()  # text features do not read images


def test_a_killed_ray_run_resumes_at_the_missing_shards(tmp_path, demo, caches, monkeypatch):
    items, splits, _ = demo
    _, clean, _ = caches
    layout = Cache(tmp_path / "killed")
    name = "alexnet.imagenet"
    real_write, calls = ray_engine.write_shard_batches, []

    def dies_after_two(*args, **kwargs):
        if len(calls) == 2:
            raise KeyboardInterrupt("killed")  # what Ctrl-C or a dying driver leaves: two shards written
        calls.append(args[1])
        return real_write(*args, **kwargs)

    monkeypatch.setattr(ray_engine, "write_shard_batches", dies_after_two)
    with pytest.raises(KeyboardInterrupt):
        run_extraction_ray(layout, items, splits, create_encoder(name), **OPTS)
    monkeypatch.undo()
    first = _shards(layout, items.dataset, name)
    assert len(first) == 2 and not read_manifest(layout, items.dataset, name)["complete"]
    mtimes = {p: p.stat().st_mtime_ns for p in first}
    total = sum(read_manifest(clean, items.dataset, name)["parts"].values())

    summary = run_extraction_ray(layout, items, splits, create_encoder(name), **OPTS)
    assert summary.complete and summary.shards_written == total - 2
    assert all(p.stat().st_mtime_ns == m for p, m in mtimes.items())  # complete shards were skipped
    for split in splits:
        x, y = (read_split_raw(c, items.dataset, name, split) for c in (clean, layout))
        for col in x:
            np.testing.assert_array_equal(x[col], y[col])  # the same batches: identical to a clean run
    assert pq.read_table(layout.errors_path(items.dataset, name)).to_pylist() == \
           pq.read_table(clean.errors_path(items.dataset, name)).to_pylist()
    assert run_extraction_ray(layout, items, splits, create_encoder(name), **OPTS).shards_written == 0


def test_more_actors_than_the_cluster_holds_is_refused(tmp_path, demo, local_ray):
    items, splits, _ = demo
    with pytest.raises(ConfigError, match="--concurrency 5 needs"):
        run_extraction_ray(Cache(tmp_path / "c"), items, splits, create_encoder("bow"), concurrency=5, **OPTS)
    if ray.cluster_resources().get("GPU", 0):
        return  # the GPU refusal below needs a cluster without one
    with pytest.raises(ConfigError, match="no GPU"):
        run_extraction_ray(Cache(tmp_path / "c"), items, splits, create_encoder("bow"), device="cuda", **OPTS)


def test_an_unreachable_ray_address_is_one_line_naming_it(tmp_path, monkeypatch, capsys):
    from pipeline.cli import main

    monkeypatch.setattr(sys, "argv", ["cmh", "extract", "--dataset", "demo", "--engine", "ray",
                                      "--ray-address", "127.0.0.1:1", "--cache", str(tmp_path)])
    start = time.perf_counter()
    with pytest.raises(SystemExit) as exit_info:
        main()
    assert time.perf_counter() - start < 15
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "127.0.0.1:1" in err and "ray start --head" in err
    assert "Traceback" not in err and not (tmp_path / "datasets").exists()  # refused before reading data


def test_the_address_probe_knows_a_ray_head_from_another_listener(local_ray):
    ray_engine.check_reachable(ray.get_runtime_context().gcs_address)  # the running local head: accepted
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(1)  # accepts connections and never speaks, where ray.init would wait without end
    address = f"127.0.0.1:{silent.getsockname()[1]}"
    start = time.perf_counter()
    try:
        with pytest.raises(ConfigError, match=f"{address} answers but is not a Ray head"):
            ray_engine.check_reachable(address)
    finally:
        silent.close()
    assert time.perf_counter() - start < ray_engine.CONNECT_TIMEOUT_S + 5
    with pytest.raises(ConfigError, match="expected HOST:PORT"):
        ray_engine.check_reachable("head-without-port")


def test_help_and_the_local_runner_do_not_import_ray():
    code = ("import sys\n"
            "from pipeline.cli import app\n"
            "for argv in (['--help'], ['extract', '--help']):\n"
            "    try:\n"
            "        app(argv)\n"
            "    except SystemExit:\n"
            "        pass\n"
            "import stages.extract.runner, stages.extract\n"
            "stages.extract.load_encoders()\n"
            "print('RAY_IMPORTED' if any(m == 'ray' or m.startswith('ray.') for m in sys.modules) else 'NO_RAY')\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "--engine" in out.stdout and "--ray-address" in out.stdout and "--concurrency" in out.stdout
    assert out.stdout.strip().endswith("NO_RAY")
