"""`cmh encode --engine ray` writes the local engine's parts, resumes part by part, and refuses an
unreachable cluster in one line. One local Ray (2 CPUs) for the module."""
from __future__ import annotations

import time

import pytest

ray = pytest.importorskip("ray")

from stages.extract.ray_engine import ray_session  # noqa: E402
from tests.faults.conftest import one_line_error  # noqa: E402
from tests.index.test_encode_index_cli import _encoded_codes  # noqa: E402


@pytest.fixture(scope="module")
def local_ray():
    with ray_session(num_cpus=2, object_store_memory=256 * 2**20):
        yield


def _parts(cache, run, dataset):
    return sorted((cache / "runs" / run / "encoded" / dataset / "codes").glob("split=*/part-*.parquet"))


def test_ray_encodes_what_the_local_engine_encodes_and_resumes(cli, built, local_ray):
    _, cache, run = built
    local = cli("encode", "--run", run, "--dataset", "pairs", "--cache", cache, "--chunk-rows", "7")
    assert local.code == 0, local.err
    want = _encoded_codes(cache, run, "pairs")
    files = {p.parent.name + "/" + p.name for p in _parts(cache, run, "pairs")}
    for p in _parts(cache, run, "pairs"):
        p.unlink()
    on_ray = cli("encode", "--run", run, "--dataset", "pairs", "--engine", "ray", "--concurrency", "2",
                 "--cache", cache, "--chunk-rows", "7")
    assert on_ray.code == 0, on_ray.err
    assert "40 items encoded" in on_ray.out and "7 parts written, 0 reused" in on_ray.out, on_ray.out
    assert _encoded_codes(cache, run, "pairs") == want  # every item, both modalities
    assert {p.parent.name + "/" + p.name for p in _parts(cache, run, "pairs")} == files  # the same part files
    # a part lost from the middle (Ray writes in any order): only that one is written again
    middle = _parts(cache, run, "pairs")[3]
    middle.unlink()
    again = cli("encode", "--run", run, "--dataset", "pairs", "--engine", "ray", "--cache", cache, "--chunk-rows", "7")
    assert again.code == 0 and "1 parts written, 6 reused" in again.out, again.out
    assert _encoded_codes(cache, run, "pairs") == want


def test_encode_on_an_unreachable_ray_address_is_one_line(cli, built):
    _, cache, run = built
    t0 = time.perf_counter()
    line = one_line_error(cli("encode", "--run", run, "--dataset", "pairs", "--engine", "ray",
                              "--ray-address", "127.0.0.1:1", "--cache", cache))
    assert "127.0.0.1:1" in line and time.perf_counter() - t0 < 30
    assert not (cache / "runs" / run / "encoded" / "pairs").exists()  # refused before anything was written


def test_ray_options_without_the_ray_engine_are_refused(cli, built):
    _, cache, run = built
    line = one_line_error(cli("encode", "--run", run, "--dataset", "pairs", "--concurrency", "2", "--cache", cache))
    assert "--engine ray" in line
