"""RunDir: one owner for a run directory's layout, atomic writes and completeness."""
from __future__ import annotations

import numpy as np
import pytest

from pipeline.ground.errors import CacheError
from pipeline.ground.store.cache import Cache
from pipeline.ground.store.runs import RunDir


def test_a_run_says_how_far_it_got(tmp_path):
    run = RunDir.of(Cache(tmp_path), "demo-baseline-16b-s1-abcdef12")
    run.write_config({"dataset": "demo", "method": "baseline", "bits": 16})
    assert run.read_config() == {"dataset": "demo", "method": "baseline", "bits": 16}
    assert not run.is_trained() and not run.is_complete()
    with pytest.raises(CacheError, match="model.pt, codes/split=database missing.*again"):
        run.require_trained()
    run.write_model(lambda fh: fh.write(b"weights"))
    assert run.model_path.read_bytes() == b"weights"
    (run.codes_dir / "split=database").mkdir(parents=True)
    assert not run.is_trained()  # a codes folder without its file: killed before the codes were written
    run.write_codes("database", [1, 2], np.ones((2, 16), np.int8), np.ones((2, 16), np.int8), {"bits": 16})
    assert run.is_trained() and not run.is_complete()
    run.require_trained()
    run.report_path.write_bytes(b"")
    assert run.is_complete()


def test_a_failed_model_write_leaves_neither_model_nor_partial_file(tmp_path):
    run = RunDir(tmp_path / "run")

    def crash(fh):
        fh.write(b"half")
        raise RuntimeError("killed")

    with pytest.raises(RuntimeError):
        run.write_model(crash)
    assert sorted(p.name for p in run.path.iterdir()) == []


def test_find_by_id_or_path_and_name_the_runs_when_missing(tmp_path):
    layout = Cache(tmp_path)
    run = RunDir.of(layout, "r1")
    run.write_config({})
    run.report_path.write_bytes(b"")
    assert RunDir.find(layout, "r1") == run
    assert RunDir.find(layout, str(run.path)) == run
    with pytest.raises(CacheError, match="no run 'r2'.*runs: r1"):
        RunDir.find(layout, "r2")


def test_a_damaged_config_is_a_one_line_error(tmp_path):
    run = RunDir(tmp_path / "run")
    run.path.mkdir()
    run.config_path.write_text("{not json")
    with pytest.raises(CacheError, match="unreadable.*--force"):
        run.read_config()
