"""Each message once, at its level, and a summary at the end: counted in what `cmh` prints (stdout + the log on
stderr), on a small pairs collection (bag of words only, so it runs in seconds)."""
from __future__ import annotations

import logging
import time

import pytest

from pipeline.ground.progress import progress_bar
from tests.faults.conftest import _built, built, cli, write_pairs  # noqa: F401  (fixtures)


def _extract(cli, data, cache, *extra):  # noqa: F811
    return cli("extract", "--dataset", "pairs", "--data-dir", data, "--cache", cache, "--encoders", "bow",
               "-o", "dataset.text_kind=tags", "-o", "bow.top_n=500", *extra)


def _count(text: str, needle: str) -> int:
    return sum(needle in line for line in text.splitlines())


def _said(result, caplog) -> str:
    """Everything one command said: its stdout and stderr, and its log records (pytest's handler holds them
    in-process; `cmh` configures logging only when nothing else has), then a fresh start for the next one."""
    text = "\n".join([result.out, result.err, *(r.getMessage() for r in caplog.records)])
    caplog.clear()
    return text


@pytest.fixture
def pairs(tmp_path):
    return write_pairs(tmp_path / "data", n=60)


def test_extract_says_each_thing_once_then_already_complete_then_resumed(cli, pairs, tmp_path, caplog):  # noqa: F811
    caplog.set_level(logging.INFO)
    cache = tmp_path / "c"
    first = _extract(cli, pairs, cache)
    both = _said(first, caplog)
    assert first.code == 0, first.err
    assert _count(both, "shard(s) written") == 1  # the summary, not also its log line
    assert _count(both, "waiting for decoded images") == 1  # the timing is in the summary only
    assert _count(both, "too few for the standard") == 1  # the split scaling: one warning
    assert _count(both, "distinct terms") == 1 and _count(both, "terms from train-top-n") == 1
    last = first.out.strip().splitlines()[-1]  # one summary at the end: what, where, how long
    assert last.startswith("extract finished in ") and str(cache) in last and _count(first.out, "finished in") == 1

    again = _extract(cli, pairs, cache)
    both = _said(again, caplog)
    assert again.code == 0
    assert _count(both, "already complete") == 1
    assert "shard(s) written" not in both and "0.0 items/s" not in both
    assert "distinct terms" not in both and "too few" not in both  # said when they were written

    shards = sorted((cache / "features" / "dataset=pairs" / "encoder=bow" / "split=database").glob("*.parquet"))
    shards[-1].unlink()
    resumed = _extract(cli, pairs, cache)
    both = _said(resumed, caplog)
    assert resumed.code == 0
    assert _count(both, "resumed with") == 1 and "1 shard(s) written" in both
    assert _count(both, "resuming:") == 1


def test_grid_and_query_do_not_repeat_dataset_facts(cli, built, caplog):  # noqa: F811
    caplog.set_level(logging.INFO)
    _, cache, run = built
    grid = cli("grid", "--methods", "baseline", "--dataset", "pairs", "--bits", "16,32,64", "--cache", cache)
    both = _said(grid, caplog)
    assert grid.code == 0, both
    assert _count(both, "exceeds the database size") <= 1  # a fact of the dataset: once, not per run
    assert "within radius" not in both  # per-run detail: debug only
    assert _count(both, "reads image=") <= 1  # the method's default features: once, not per code length
    train = cli("train", "--method", "baseline", "--dataset", "pairs", "--bits", "16,32", "--cache", cache)
    assert train.code == 0 and train.out.strip().splitlines()[-1].startswith("train finished in ")
    assert "(1 trained, 1 already there)" in train.out or "(0 trained, 2 already there)" in train.out
    caplog.clear()
    query = cli("query", "--run", run, "--text", "dog, beach", "--cache", cache)
    assert query.code == 0, query.err
    assert "bow:" not in _said(query, caplog)  # the vocabulary's facts were said by the extraction


def test_progress_off_a_terminal_never_reads_zero_per_second(caplog, monkeypatch):
    clock = [100.0]
    monkeypatch.setattr(time, "perf_counter", lambda: clock[0])
    caplog.set_level(logging.INFO, logger="cmh.progress")
    bar = progress_bar(3, "train x 16b", unit="epoch")
    assert bar.rate_text() == ""  # nothing done yet: no rate rather than "0.0 epoch/s"
    bar.resume(1, postfix="resumed from epoch 1")
    assert bar.rate_text() == ""  # resumed epochs took no time in this process
    clock[0] += 42.0
    bar.update(1)
    assert bar.rate_text() == "42.0 s/epoch"
    clock[0] += 1.0
    fast = progress_bar(100, "encode", unit="items")
    clock[0] += 2.0
    fast.update(50)
    assert fast.rate_text() == "25.0 items/s"
    slow = progress_bar(10, "x", unit="items")
    clock[0] += 4.0
    slow.update(1)
    assert slow.rate_text() == "4.0 s/item"
    assert not [r for r in caplog.records if "0.0 " in r.getMessage() and "/s" in r.getMessage()]
