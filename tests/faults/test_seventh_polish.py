"""Seventh polish: small faults a review noted and left alone.

* one wording for "run X is being <activity> by process N", whichever command is refused;
* `cmh rm` renames a run folder to a hidden tombstone under the run's lock before deleting it, so an encode or
  index starting meanwhile finds no run rather than a half-deleted folder; listings skip tombstones, and the
  next `cmh rm` deletes one a killed `cmh rm` left, in one log line;
* an error whose message holds a control character (a path with a newline) is still one `error:` line;
* a query picture over the pixel limit is refused from its header in one line, without PIL's warning above it;
* a usage error (an option's value not of its type, an unknown or missing option) is one `error:` line too.
"""
from __future__ import annotations

import logging
import os
import shutil
import struct
import subprocess
import warnings
import zlib
from pathlib import Path

import pytest

from tests.faults.conftest import cli_subprocess, one_line_error


def _run_folder(cache: Path, run_id: str = "pairs-baseline-16-s1") -> Path:
    """A run folder as far as the store's lock and removal see one: a config and a checkpoint."""
    folder = cache / "runs" / run_id
    folder.mkdir(parents=True)
    (folder / "config.json").write_text("{}")
    (folder / "checkpoint.pt").write_bytes(b"state")
    return folder


# -- 1: one message for a busy run --------------------------------------------------------------------------
def test_a_busy_run_is_refused_in_one_wording_by_the_lock_and_by_checkpoint_removal(tmp_path):
    from pipeline.ground.store.checkpoints import RunBusy, run_lock
    from pipeline.ground.store.inventory import run_info
    from pipeline.ground.store.removal import remove_checkpoint
    from pipeline.ground.store.runs import RunDir

    folder = _run_folder(tmp_path)
    run = folder.name
    said = f"run {run} is being trained by process {os.getpid()} ("
    fix = "); wait for it to finish, or stop it, then run the command again"
    with run_lock(folder, run, "training"):  # flock is per open file: this process's second open is refused
        with pytest.raises(RunBusy) as by_lock:
            with run_lock(folder, run, "encoding", create=False):
                pass
        with pytest.raises(RunBusy) as by_rm:
            remove_checkpoint(run_info(RunDir(folder)))
    for exc, what in ((by_lock.value, f"holding {folder / 'train.lock'}"), (by_rm.value, "its checkpoint is in use")):
        assert str(exc) == f"{said}{what}{fix}" and exc.holder == str(os.getpid())
    assert (folder / "checkpoint.pt").read_bytes() == b"state"


# -- 2: `cmh rm` against an encode or index that starts while it deletes ------------------------------------
def test_a_writer_starting_while_rm_deletes_finds_no_run_and_nothing_lists_the_tombstone(tmp_path, monkeypatch):
    from pipeline.ground.errors import CacheError
    from pipeline.ground.store import removal
    from pipeline.ground.store.cache import Cache
    from pipeline.ground.store.checkpoints import run_lock
    from pipeline.ground.store.inventory import run_folders, run_info
    from pipeline.ground.store.runs import RunDir

    cache = Cache(tmp_path / "cache")
    folder = _run_folder(cache.root)
    run = folder.name
    (folder / "report.parquet").write_bytes(b"")  # complete as far as Cache.runs looks
    seen: dict = {}
    real_rmtree = shutil.rmtree

    def rmtree_with_a_writer_arriving(path, *args, **kwargs):
        (Path(path) / "train.lock").unlink(missing_ok=True)  # as far as the deletion has gone when the writer starts
        try:
            with run_lock(folder, run, "encoding", create=False):  # what `cmh encode` / `cmh index` take
                seen["writer"] = "got in"
        except CacheError as exc:
            seen["writer"] = str(exc)
        seen["listed"] = ([r.run_id for r in cache.runs(complete=False)], [r.path for r in run_folders(cache)])
        with pytest.raises(CacheError, match="`cmh rm` is deleting"):
            RunDir.find(cache, Path(path).name)  # never served or queried as a run
        seen["tomb"] = Path(path)
        real_rmtree(path, *args, **kwargs)

    monkeypatch.setattr(shutil, "rmtree", rmtree_with_a_writer_arriving)
    removal.remove_run(run_info(RunDir(folder)))
    assert "is gone" in seen["writer"], seen["writer"]
    assert seen["listed"] == ([], [])
    assert seen["tomb"].parent == folder.parent and seen["tomb"].name.startswith(".")
    assert list((cache.root / "runs").iterdir()) == []  # neither the run nor its tombstone, nor a new lock


def test_a_tombstone_a_killed_rm_left_is_ignored_by_ls_and_deleted_by_the_next_rm_in_one_line(cli, tmp_path, caplog):
    cache = tmp_path / "cache"
    folder = _run_folder(cache)
    dead = subprocess.Popen(["true"])
    dead.wait()  # a pid no process has any more
    tomb = cache / "runs" / f".removing-{dead.pid}-{folder.name}-old"
    (tomb / "encoded").mkdir(parents=True)
    (tomb / "encoded" / "codes.parquet").write_bytes(b"half")
    live = cache / "runs" / f".removing-{os.getppid()}-other"  # a `cmh rm` still deleting it: its own to finish
    live.mkdir()

    caplog.set_level(logging.DEBUG)
    listed = cli("ls", "--cache", cache)
    assert listed.code == 0 and "removing-" not in listed.out + listed.err + caplog.text
    assert folder.name in listed.out
    dry = cli("rm", folder.name, "--cache", cache)
    assert dry.code == 0 and tomb.is_dir() and "removing-" not in dry.out + caplog.text  # a dry run deletes nothing
    removed = cli("rm", folder.name, "--yes", "--cache", cache)
    assert removed.code == 0, removed.err
    said = [m for m in caplog.messages if "removing-" in m]
    assert len(said) == 1 and "interrupted `cmh rm`" in said[0] and str(tomb) in said[0] and str(live) not in said[0]
    assert "removing-" not in removed.out + removed.err
    assert sorted(p.name for p in (cache / "runs").iterdir()) == [live.name]


def test_a_run_named_by_its_tombstone_is_refused_in_one_line(cli, tmp_path):
    cache = tmp_path / "cache"
    tomb = _run_folder(cache, ".removing-1-pairs-baseline-16-s1")
    line = one_line_error(cli("query", "--run", str(tomb), "--text", "dog", "--cache", cache))
    assert "`cmh rm` is deleting" in line and "cmh ls --kind runs" in line


# -- 3: a newline in a path does not split the error line ---------------------------------------------------
@pytest.mark.parametrize("command", [
    lambda odd, tmp: ["ls", "--cache", odd],
    lambda odd, tmp: ["train", "--method", "baseline", "--dataset", "pairs", "--bits", "16", "--cache", odd],
    lambda odd, tmp: ["query", "--run", "r", "--image", odd / "q.png", "--cache", tmp],
    lambda odd, tmp: ["extract", "--dataset", "pairs", "--data-dir", odd, "--cache", tmp / "c"],
], ids=["ls", "train", "query", "extract"])
def test_a_path_with_a_newline_is_named_escaped_in_one_error_line(cli, tmp_path, command):
    odd = tmp_path / "a\nb\x1b[31m"  # a newline, and an escape sequence that would colour the terminal red
    result = cli(*command(odd, tmp_path))
    line = one_line_error(result)
    assert f"{tmp_path}/a\\nb\\x1b[31m" in line, line
    assert "\nb" not in result.err and "\x1b" not in result.err


def test_every_error_branch_of_the_entry_point_escapes_control_characters(monkeypatch, capsys):
    """CMH errors, storage errors (the path comes from the OS), registry lookups and interruptions alike."""
    import errno

    from pipeline import cli as cli_module
    from pipeline.ground.errors import CacheError, Interrupted

    for exc in (CacheError("bad\rname"), PermissionError(errno.EACCES, "Permission denied", "/x/a\nb"),
                KeyError("no method 'a\nb'; registered: baseline"), Interrupted("stopped at a\nb")):
        def app(exc=exc, **kwargs):
            raise exc

        monkeypatch.setattr(cli_module, "app", app)
        monkeypatch.setattr(cli_module, "_empty_path_option", lambda argv: None)
        with pytest.raises(SystemExit):
            cli_module.main()
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and err.startswith("error: ") and ("\\n" in err or "\\r" in err), err


# -- 4: a huge query picture: our limit, our line, no PIL warning -------------------------------------------
def _png_header_only(width: int, height: int) -> bytes:
    """A PNG that declares ``width`` x ``height`` and carries one scanline: a few KB on disk, and decoding it
    whole would fail as truncated, so a refusal naming megapixels proves the size was checked first."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00" * (3 * width + 1)))
            + chunk(b"IEND", b""))


@pytest.mark.parametrize("width, height, size", [(12_000, 10_000, "12000 x 10000 = 120 megapixels"),
                                                 (20_000, 10_000, "over 179 megapixels")])
def test_a_query_picture_over_the_limit_is_one_line_without_pils_warning(tmp_path, width, height, size):
    picture = tmp_path / "scan.png"
    picture.write_bytes(_png_header_only(width, height))
    result = cli_subprocess("query", "--run", "r", "--image", picture, "--cache", tmp_path, timeout=120)
    assert result.code == 2 and result.err.count("\n") == 1, result.err  # the error line and nothing above it
    assert result.err == (f"error: query image {picture} is {size}, more than the 50 a query decodes: scale it down "
                          f"to at most 50 megapixels (the search reads it at 224 px)\n")


def test_a_query_picture_under_the_limit_is_read_as_before(tmp_path):
    import numpy as np
    from PIL import Image

    from pipeline.ground.images import load_image, load_query_image

    path = tmp_path / "q.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (40, 30, 4), dtype=np.uint8)).save(path)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # any warning fails the test
        picture = load_query_image(str(path), max_pixels=40 * 30)
    assert np.array_equal(np.asarray(picture), np.asarray(load_image(str(path))))  # the codes cannot change


def test_an_upload_past_pils_ceiling_names_the_services_limit(tmp_path):
    from pipeline.orchestration.serving.refusals import Refusal
    from pipeline.orchestration.serving.upload import read_picture

    with pytest.raises(Refusal) as refused:
        read_picture(_png_header_only(20_000, 10_000))
    assert refused.value.status == 400
    assert refused.value.error == "the picture is over 179 megapixels, more than the 50 the service decodes"
    assert "at most 50 megapixels" in refused.value.fix


# -- 5: usage errors in one line -----------------------------------------------------------------------------
@pytest.mark.parametrize("args, said", [
    (["table", "--workers", "abc"], "Invalid value for '--workers': Input should be a valid integer"),
    (["serve", "--run", "r", "--port", "x"], "Invalid value for '--port'"),
    (["serve", "--run", "r", "--max-upload-mb", "big"], "Invalid value for '--max-upload-mb'"),
    (["train", "--method", "baseline", "--bits", "x"], "Invalid value for --bits: expected a comma list of integers"),
    (["grid", "--epochs", "many"], "Invalid value for --epochs: epochs 'many' is not a whole number"),
    (["train", "--bits", "16"], "Missing option '--method'"),
    (["train", "--method", "baseline", "--bogus"], "No such option: --bogus"),
    (["nope"], "No such command 'nope'"),
])
def test_a_usage_error_is_one_line_naming_the_option_and_the_fix(cli, tmp_path, args, said):
    result = cli(*args, "--cache", tmp_path) if args[0] != "nope" else cli(*args)
    line = one_line_error(result)  # exit status 2, as click gives usage errors
    assert line.startswith(f"error: {said}"), line
    command = "cmh" if args[0] == "nope" else f"cmh {args[0]}"
    assert line.endswith(f"see `{command} --help`)") or line.endswith(f"see `{command} --help`"), line
    if args[1:2] in (["--workers"], ["--port"]):
        assert "give a whole number" in line
    assert result.err.count("\n") == 1 and "Usage:" not in result.err and "\u256d" not in result.err  # no box
    assert result.out == ""


def test_help_and_a_bare_cmh_still_print_the_help(cli):
    helped = cli("--help")
    assert helped.code == 0 and "Usage:" in helped.out and "error:" not in helped.err
    command_help = cli("table", "--help")
    assert command_help.code == 0 and "--workers" in command_help.out
    bare = cli()
    assert bare.code == 2 and "Usage:" in bare.out + bare.err and "error:" not in bare.err


# -- messages that named no fix or misnamed the fault ---------------------------------------------------------
def test_an_empty_method_name_is_said_to_be_missing_not_unknown(cli, tmp_path):
    line = one_line_error(cli("train", "--method", " ", "--dataset", "pairs", "--cache", tmp_path))
    assert "no method given" in line and "baseline" in line and "unknown method" not in line


def test_a_query_file_that_is_no_picture_names_the_fix(tmp_path):
    from pipeline.ground.errors import DataError
    from pipeline.ground.images import load_query_image

    junk = tmp_path / "q.jpg"
    junk.write_bytes(b"not a picture at all")
    with pytest.raises(DataError) as said:
        load_query_image(str(junk))
    assert "UnidentifiedImageError" in str(said.value) and "give a whole picture file" in str(said.value)


def test_publishing_a_report_without_rows_says_so(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    from pipeline.ground.errors import DataError
    from pipeline.ground.store.runs import RunDir
    from stages.present.results import PROVENANCE, publish_runs

    run = RunDir(tmp_path / "runs" / "pairs-baseline-16b-s1-0000")
    run.path.mkdir(parents=True)
    columns = {c: pa.array([], pa.string()) for c in ["task", "metric", "run_id", "dataset", *PROVENANCE]}
    pq.write_table(pa.table(columns), run.report_path)
    (tmp_path / "results").mkdir()
    with pytest.raises(DataError) as said:
        publish_runs([run], tmp_path / "results")
    assert "holds no rows" in str(said.value) and "--force" in str(said.value)
    assert not any((tmp_path / "results").iterdir())
