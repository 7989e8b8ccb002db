"""Every file the cache writes gets the mode the umask asks for (mkstemp alone would make it 0600)."""
from __future__ import annotations

import os
import stat
import threading

import pyarrow as pa
import pytest

from pipeline.ground.store.checkpoints import RunCheckpoints
from pipeline.ground.store.layout import CacheLayout
from pipeline.ground.store.lock import DatasetLock
from pipeline.ground.store.parquet import write_bytes_atomic, write_json_atomic, write_table_atomic
from pipeline.ground.store.runs import RunDir
from pipeline.ground.store.tempfiles import current_umask


@pytest.fixture(params=[0o022, 0o027, 0o002, 0o077])
def umask(request):
    old = os.umask(request.param)
    try:
        yield request.param
    finally:
        os.umask(old)


def _mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def test_current_umask_reads_without_changing_it(umask):
    assert current_umask() == umask
    assert os.umask(umask) == umask  # still the one set: reading it left it alone


def test_every_atomic_writer_respects_the_umask(tmp_path, umask):
    import torch

    want = 0o666 & ~umask
    written = [
        write_table_atomic(pa.table({"a": [1, 2]}), tmp_path / "t.parquet"),
        write_json_atomic({"a": 1}, tmp_path / "j.json"),
        write_bytes_atomic(b"<html></html>", tmp_path / "page.html"),
    ]
    run = RunDir(tmp_path / "runs" / "r1")
    written.append(run.write_model(lambda fh: torch.save({"w": torch.zeros(2)}, fh)))
    ckpt = RunCheckpoints(run.path, {"config_hash": "x"}, every=1)
    ckpt.save({"epoch": 1})
    written.append(ckpt.path)
    with DatasetLock(CacheLayout(tmp_path / "cache"), "d") as lock:
        lock.shared()
        written.append(lock.path)
    modes = {p.name: oct(_mode(p)) for p in written}
    assert modes == {p.name: oct(want) for p in written}
    assert not list(tmp_path.rglob("*.partial"))


def test_reading_the_umask_in_one_thread_never_changes_it_for_another(tmp_path):
    """The old way (os.umask(0) then restore) left a window where a file made by another thread got 0666."""
    old = os.umask(0o077)
    try:
        stop = threading.Event()

        def reader():
            while not stop.is_set():
                current_umask()

        t = threading.Thread(target=reader)
        t.start()
        try:
            for i in range(300):
                with open(tmp_path / f"f{i}", "w"):
                    pass
        finally:
            stop.set()
            t.join()
        assert {_mode(p) for p in tmp_path.iterdir()} == {0o600}
    finally:
        os.umask(old)
