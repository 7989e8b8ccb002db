"""Fixtures for the fault cases: a small `pairs` collection on disk and the CLI run the way a user runs it.

``cli`` calls ``pipeline.cli.main`` (the console entry point) in this process, so an exception that
would reach the user as a traceback reaches the test as one; ``cli_subprocess`` is for the cases that
could hang (a FIFO), where a timeout must end the run.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
from PIL import Image

REPO = Path(__file__).resolve().parents[2]

#: Tags drawn for each pair; the labels are the first two of them.
WORDS = ("dog", "beach", "sea", "cat", "sofa", "tree", "sky", "car", "red", "blue")


@dataclass
class CliResult:
    code: int
    out: str
    err: str


def write_pairs(root: Path, n: int = 40, seed: int = 0, *, tags: bool = True, pixels_seed: int | None = None,
                extra_rows: list[dict] | None = None) -> Path:
    """``root/pairs.jsonl`` + ``root/img/<i>.png`` (32 px noise). ``pixels_seed`` changes the pixels only."""
    (root / "img").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    pix = np.random.default_rng(seed if pixels_seed is None else pixels_seed)
    rows = []
    for i in range(n):
        Image.fromarray(pix.integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(root / "img" / f"{i}.png")
        words = [WORDS[j] for j in rng.choice(len(WORDS), 3, replace=False)]
        rows.append({"image": f"img/{i}.png", "text": words if tags else " ".join(words), "labels": words[:2]})
    rows += extra_rows or []
    (root / "pairs.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return root / "pairs.jsonl"


@pytest.fixture
def cli(capfd, monkeypatch) -> Callable[..., CliResult]:
    from pipeline.cli import main

    def run(*args: str) -> CliResult:
        monkeypatch.setattr(sys, "argv", ["cmh", *map(str, args)])
        capfd.readouterr()
        try:
            main()
            code = 0
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        out, err = capfd.readouterr()
        return CliResult(code, out, err)

    return run


def cli_subprocess(*args: str, timeout: float = 180) -> CliResult:
    """Run the CLI in its own process group; on timeout the whole group is killed (a DataLoader worker
    blocked on a FIFO would otherwise outlive its parent and hold the output pipes open) and the test fails."""
    proc = subprocess.Popen([sys.executable, "-m", "pipeline", *map(str, args)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, cwd=REPO, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        pytest.fail(f"cmh {' '.join(map(str, args))} hung for {timeout} s")
    return CliResult(proc.returncode, out, err)


def one_line_error(result: CliResult) -> str:
    """The error line of a refused command; fails the test on a traceback or a zero exit code."""
    assert result.code == 2, (result.code, result.out, result.err)
    assert "Traceback" not in result.err, result.err
    lines = [line for line in result.err.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1, result.err
    return lines[0]


_HOLD_DATASET = """
import sys
from pathlib import Path
from pipeline.ground.store.layout import CacheLayout
from pipeline.ground.store.lock import DatasetLock
lock = DatasetLock(CacheLayout(Path(sys.argv[1])), "pairs", sys.argv[2])
lock.exclusive(attempts=1) if sys.argv[2] == "removing" else lock.shared()
print("held", flush=True)
sys.stdin.read()  # until the test lets go
lock.release()
"""


class DatasetHolder:
    """Another process holding dataset ``pairs`` of ``cache`` as ``activity`` does, until the block ends."""

    def __init__(self, cache: Path, activity: str) -> None:
        self.proc = subprocess.Popen([sys.executable, "-c", _HOLD_DATASET, str(cache), activity], cwd=REPO, text=True,
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE)

    def __enter__(self) -> int:
        assert self.proc.stdout.readline().strip() == "held"
        return self.proc.pid

    def __exit__(self, *exc: object) -> None:
        self.proc.communicate("", timeout=30)


@pytest.fixture
def pairs_dir(tmp_path) -> Path:
    root = tmp_path / "data"
    write_pairs(root)
    return root


@pytest.fixture(scope="session")
def _built(tmp_path_factory) -> tuple[Path, Path]:
    """A tag collection extracted with alexnet + bow and one 16-bit baseline run, built once."""
    root = tmp_path_factory.mktemp("built")
    data, cache = root / "data", root / "cache"
    write_pairs(data)
    for args in (["extract", "--dataset", "pairs", "--data-dir", data, "--cache", cache, "--encoders", "alexnet,bow",
                  "-o", "dataset.text_kind=tags"],
                 ["train", "--method", "baseline", "--dataset", "pairs", "--cache", cache, "--bits", "16"]):
        result = cli_subprocess(*args, timeout=600)
        assert result.code == 0, result.err
    return data, cache


@pytest.fixture
def built(_built, tmp_path) -> tuple[Path, Path, str]:
    """(data folder, a private copy of the built cache, the run id)."""
    import shutil

    data, cache = _built
    copy = tmp_path / "cache"
    shutil.copytree(cache, copy)
    run = next(p.name for p in (copy / "runs").iterdir())
    return data, copy, run
