"""Every fenced shell and SQL block of README.md, docs/*.md and cache/README.md runs, as written, against a demo
cache, or says why not (``<!-- not run: reason -->``; the convention is in tests/docblocks.py and the README).

The demo cache is made once per session by ``cmh demo`` (in a subprocess, under umask 027, so the modes of
everything it writes are checked too); each block then runs from a folder whose ``cache/`` is that cache,
with ``cmh`` and the project's ``.venv/bin`` on PATH and ``CMH_CACHE`` pointing at it.
"""
from __future__ import annotations

import os
import re
import stat
import subprocess
import sys
from pathlib import Path

import duckdb
import pytest

from tests.docblocks import ROOT, Block, blocks_of, checked_blocks

BLOCKS = checked_blocks()
RUNNABLE = [b for b in BLOCKS if b.not_run is None]
VENV_BIN = ROOT / ".venv" / "bin"
# `make` inside a block: the project's Makefile, never reinstalling (-o: the install stamp counts as done).
PRELUDE = f"""
make() {{ command make --no-print-directory -C {ROOT} -o .venv/.cmh-installed PYTHON_SYS={sys.executable} "$@"; }}
"""


def _env(work: Path) -> dict[str, str]:
    env = dict(os.environ)
    env.update(CMH_CACHE=str(work / "cache"), PYTHONPATH=str(ROOT), COLUMNS="120",
               PATH=f"{VENV_BIN}{os.pathsep}{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}")
    return env


@pytest.fixture(scope="session")
def demo_work(tmp_path_factory) -> Path:
    """A folder holding ``cache/`` (the demo's, made by ``cmh demo``) and a ``.venv`` link to the project's."""
    work = tmp_path_factory.mktemp("readme")
    (work / ".venv").symlink_to(ROOT / ".venv")
    done = subprocess.run([sys.executable, "-m", "pipeline", "demo"], cwd=work, env=_env(work), text=True,
                          capture_output=True, timeout=900, preexec_fn=lambda: os.umask(0o027))
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return work


def _run_id(work: Path) -> str:
    runs = sorted(p.name for p in (work / "cache" / "runs").iterdir() if (p / "report.parquet").exists())
    preferred = [r for r in runs if "-cca-itq-16b-" in r]
    return (preferred or runs)[0]


def _with_run(text: str, work: Path) -> str:
    return re.sub(r"\bRUN\b", _run_id(work), text)


def test_blocks_are_found_and_every_marker_gives_a_reason():
    assert len(RUNNABLE) >= 5, [b.name for b in RUNNABLE]
    empty = [b.name for b in BLOCKS if b.not_run is not None and len(b.not_run) < 8]
    assert not empty, f"a not-run marker must say why: {empty}"


def test_the_marker_convention_is_read_as_documented():
    text = "a\n\n<!-- not run: needs the full data -->\n\n```bash\nfalse\n```\n```sql\nSELECT 1;\n```\n```\nplain\n```\n"
    marked, sql, plain = blocks_of(text, Path("x.md"))
    assert (marked.kind, marked.not_run, marked.text) == ("shell", "needs the full data", "false\n")
    assert (sql.kind, sql.not_run, sql.line) == ("sql", None, 8)
    assert plain.kind is None


def test_the_readme_states_the_convention():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert "<!-- not run:" in readme and "tests/test_readme_blocks.py" in readme


def test_the_demo_cache_respects_the_umask(demo_work):
    """Written under umask 027: group-readable, nothing for others, whoever wrote it (mkstemp made 0600)."""
    wrong = [(str(p.relative_to(demo_work)), oct(stat.S_IMODE(p.stat().st_mode)))
             for p in (demo_work / "cache").rglob("*") if p.is_file() and not p.is_symlink()
             and stat.S_IMODE(p.stat().st_mode) & 0o777 not in (0o640, 0o750)]
    assert not wrong, wrong[:10]


@pytest.mark.parametrize("block", RUNNABLE, ids=lambda b: b.name)
def test_block_runs(block: Block, demo_work: Path, monkeypatch):
    if block.kind == "sql":
        monkeypatch.chdir(demo_work)
        con = duckdb.connect()
        bare = re.sub(r"--[^\n]*", "", _with_run(block.text, demo_work))  # comments may hold a ';'
        statements = [s for s in bare.split(";") if s.strip()]
        assert statements
        for sql in statements:
            rows = con.execute(sql).fetchall()
            assert rows, f"{block.name}: no rows from\n{sql}"
        return
    script = PRELUDE + _with_run(block.text, demo_work)
    done = subprocess.run(["bash", "-euo", "pipefail", "-c", script], cwd=demo_work, env=_env(demo_work),
                          text=True, capture_output=True, timeout=600)
    assert done.returncode == 0, (f"{block.name} failed (exit {done.returncode}); mark it "
                                  f"`<!-- not run: reason -->` if it cannot run on the demo cache\n"
                                  f"{done.stdout[-3000:]}\n{done.stderr[-3000:]}")


def _expand(path: str) -> list[str]:
    """``a/b.{md,png}`` -> ``a/b.md``, ``a/b.png`` (the README's shorthand)."""
    m = re.search(r"\{([^}]*)\}", path)
    return [path] if not m else [q for part in m.group(1).split(",")
                                 for q in _expand(path[:m.start()] + part + path[m.end():])]


def test_the_files_the_first_section_names_are_what_the_demo_wrote(demo_work):
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    first = readme[readme.index("## First run"):readme.index("## Real data")]
    named = [p for ref in re.findall(r"`(cache/[^`\s]+)`", first) for p in _expand(ref)
             if p != "cache/README.md"]  # the layout's document, in the repository, not a demo output
    named += [f"cache/reports/{p}" for ref in re.findall(r"`(demo_[^`\s/]+)`", first) for p in _expand(ref)]
    assert len(named) >= 6, named
    missing = [p for p in named if not (demo_work / p).exists()]
    assert not missing, f"README's first section names files the demo did not write: {missing}"


def test_a_second_demo_redoes_nothing_and_says_so(demo_work):
    done = subprocess.run([sys.executable, "-m", "pipeline", "demo"], cwd=demo_work, env=_env(demo_work), text=True,
                          capture_output=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("already complete, nothing extracted") == 2  # alexnet and bow
    last = done.stdout.strip().splitlines()[-1]
    assert last.startswith("demo finished in ") and "(0 trained now" in last, last
    assert "shard(s) written" not in done.stdout and "distinct terms" not in done.stderr
