"""The run's writer lock across every writer: train, `cmh encode`, `cmh index`, `cmh rm`.

Each case is a user's situation on the small ``pairs`` cache of ``conftest.py``: a second writer of a run
that another process is writing (training, encoding, indexing) is refused in one ``error:`` line naming
that process, and ``cmh rm`` never deletes a run under a live encode or index (nor does an encode or index
make the folder again once it is gone); what a killed encode or index left half-written is removed by the
rerun, whose codes and indexes are those of a clean run. Readers (``cmh query``) take no lock.

The other process is real: a child Python that takes the lock through the store's API and holds it until
its stdin closes.
"""
from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Iterator

import pytest

from tests.faults.conftest import REPO, one_line_error

_HOLD = """
import sys
from pathlib import Path
from pipeline.ground.store.checkpoints import run_lock
with run_lock(Path(sys.argv[1]), sys.argv[2], sys.argv[3], create=False):
    print("held", flush=True)
    sys.stdin.read()
"""


@contextlib.contextmanager
def _held(folder: Path, activity: str) -> Iterator[int]:
    """Another process holding ``folder``'s writer lock for ``activity``; yields its pid."""
    proc = subprocess.Popen([sys.executable, "-c", _HOLD, str(folder), folder.name, activity], cwd=REPO,
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "held", "the holder did not take the lock"
        yield proc.pid
    finally:
        proc.stdin.close()
        assert proc.wait(timeout=60) == 0


def _encode(cli, cache: Path, run: str):
    return cli("encode", "--run", run, "--dataset", "pairs", "--cache", cache)


def _index(cli, cache: Path, run: str, *extra: str):
    return cli("index", "--run", run, "--cache", cache, *extra)


def _encoded_codes(cache: Path, run: str) -> dict:
    from pipeline.ground.store.codes import read_codes
    from pipeline.ground.store.runs import RunDir

    codes = RunDir(cache / "runs" / run).encoded_codes_dir("pairs")
    return {s: read_codes(codes, s, unpack=False) for s in ("query", "database")}


def _same(a: dict, b: dict) -> bool:
    import numpy as np

    return a.keys() == b.keys() and all(
        np.array_equal(a[s][k], b[s][k]) for s in a for k in ("item_id", "image_words", "text_words"))


def _leave_partial(target: Path) -> Path:
    """What a writer killed between creating its ``.partial`` sibling and renaming it leaves: the real helper's file."""
    from pipeline.ground.store.tempfiles import partial_for

    target.parent.mkdir(parents=True, exist_ok=True)
    fd, name = partial_for(target)
    os.write(fd, b"half a file")
    os.close(fd)
    return Path(name)


# -- 1: a second writer is refused, naming the first --------------------------------------------------------
@pytest.mark.parametrize("holder, participle", [("training", "trained"), ("encoding", "encoded"),
                                                ("indexing", "indexed")])
def test_encode_and_index_of_a_run_another_process_writes_are_refused_naming_it(cli, built, holder, participle):
    _, cache, run = built
    folder = cache / "runs" / run
    with _held(folder, holder) as pid:
        for result in (_encode(cli, cache, run), _index(cli, cache, run)):
            line = one_line_error(result)
            assert f"run {run} is being {participle} by process {pid}" in line and "wait for it to finish" in line
    assert not (folder / "encoded").exists() and not (folder / "index").exists()  # nothing written beside it
    assert _encode(cli, cache, run).code == 0 and _index(cli, cache, run).code == 0  # once it is done


def test_training_a_run_being_encoded_is_refused_naming_the_encoder(cli, built):
    _, cache, run = built
    with _held(cache / "runs" / run, "encoding") as pid:
        result = cli("train", "--method", "baseline", "--dataset", "pairs", "--bits", "16", "--cache", cache, "--force")
    assert f"run {run} is being encoded by process {pid}" in one_line_error(result)


# -- 2: `cmh rm` during an encode or index ------------------------------------------------------------------
@pytest.mark.parametrize("holder", ["encoding", "indexing"])
def test_rm_of_a_run_being_encoded_or_indexed_is_refused_and_removes_nothing(cli, built, holder):
    _, cache, run = built
    folder = cache / "runs" / run
    assert _encode(cli, cache, run).code == 0  # a run with an encoding: rm needs --force, which does not help
    before = sorted(p.relative_to(folder) for p in folder.rglob("*"))
    with _held(folder, holder) as pid:
        listed = cli("ls", "--kind", "runs", "--cache", cache)
        result = cli("rm", run, "--yes", "--force", "--cache", cache)
    assert f"{holder} now (pid {pid})" in listed.out
    line = one_line_error(result)
    assert f"process {pid} is {holder} it" in line and "nothing removed" in line
    assert sorted(p.relative_to(folder) for p in folder.rglob("*") if p.name != "train.lock") == \
        [p for p in before if p.name != "train.lock"]


def test_rm_that_planned_before_the_encode_began_is_still_refused_by_the_lock(built):
    """The plan reads the lock once; the removal itself takes it, so an encode that started in between wins."""
    from pipeline.ground.store.checkpoints import RunBusy
    from pipeline.ground.store.inventory import run_info
    from pipeline.ground.store.removal import remove_run
    from pipeline.ground.store.runs import RunDir

    _, cache, run = built
    folder = cache / "runs" / run
    info = run_info(RunDir(folder))
    assert info.busy is None
    with _held(folder, "encoding") as pid:
        with pytest.raises(RunBusy, match=f"being encoded by process {pid}"):
            remove_run(info)
    assert (folder / "model.pt").is_file() and (folder / "config.json").is_file()


# -- 3: a killed encode's or index's leftovers go on the rerun ---------------------------------------------
def test_a_rerun_removes_what_a_killed_encode_and_index_left_and_writes_the_same_codes(cli, built):
    _, cache, run = built
    folder = cache / "runs" / run
    assert _encode(cli, cache, run).code == 0 and _index(cli, cache, run, "--dataset", "pairs").code == 0
    assert _index(cli, cache, run).code == 0
    clean = _encoded_codes(cache, run)
    enc = folder / "encoded" / "pairs"
    index_bytes = {p: p.read_bytes() for p in (enc / "index").glob("*.faissindex")}
    part = next((enc / "codes" / "split=database").glob("part-*.parquet"))
    leftovers = [_leave_partial(part), _leave_partial(enc / "_encode.json"),
                 _leave_partial(enc / "index" / "image.faissindex"), _leave_partial(folder / "index" / "text.json")]
    part.unlink()  # the part the killed encode was rewriting

    assert _encode(cli, cache, run).code == 0
    assert not leftovers[0].exists() and not leftovers[1].exists()
    assert leftovers[2].exists() and leftovers[3].exists()  # an index's leftovers are the index's to remove
    assert _same(_encoded_codes(cache, run), clean)  # bit-identical to the clean encode

    assert _index(cli, cache, run, "--dataset", "pairs").code == 0
    assert not leftovers[2].exists() and leftovers[3].exists()  # only the index/ it writes
    assert {p: p.read_bytes() for p in (enc / "index").glob("*.faissindex")} == index_bytes
    assert _index(cli, cache, run).code == 0
    assert not leftovers[3].exists()
    assert not list(folder.rglob("*.partial"))


def test_leftovers_are_not_touched_while_another_process_writes_the_run(cli, built):
    _, cache, run = built
    folder = cache / "runs" / run
    assert _encode(cli, cache, run).code == 0
    live = _leave_partial(folder / "encoded" / "pairs" / "_encode.json")  # possibly the live writer's own
    with _held(folder, "encoding"):
        assert _encode(cli, cache, run).code == 2
    assert live.exists()


# -- 4: a run folder gone before the writer takes the lock -------------------------------------------------
@pytest.mark.parametrize("command", ["encode", "index"])
def test_encode_or_index_of_a_run_removed_meanwhile_refuses_and_makes_no_folder(cli, built, monkeypatch, command):
    from pipeline.ground.store.cache import Cache

    _, cache, run = built
    folder = cache / "runs" / run
    find = Cache.find_run

    def found_then_removed(self, name):  # `cmh rm` finishing between the lookup and the lock
        run_dir = find(self, name)
        shutil.rmtree(run_dir.path)
        return run_dir

    monkeypatch.setattr(Cache, "find_run", found_then_removed)
    result = _encode(cli, cache, run) if command == "encode" else _index(cli, cache, run)
    line = one_line_error(result)
    assert f"run folder {folder} is gone" in line and "cmh ls --kind runs" in line
    assert not folder.exists()


# -- 5: readers take no lock ---------------------------------------------------------------------------------
def test_query_reads_a_run_while_another_process_writes_it(cli, built):
    _, cache, run = built
    with _held(cache / "runs" / run, "indexing"):
        result = cli("query", "--run", run, "--text", "dog,beach", "--top-k", "3", "--cache", cache)
    assert result.code == 0, result.err
    assert result.out.strip()
