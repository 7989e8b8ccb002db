"""What README.md, docs/ and the Makefile claim about the code, checked against the code (issue 19's list of
thirteen errors, so none of them can come back). The blocks that run are in tests/test_readme_blocks.py."""
from __future__ import annotations

import os
import re
import subprocess
import sys

import duckdb
import pytest

from tests.docblocks import ROOT, all_blocks

README = (ROOT / "README.md").read_text(encoding="utf-8")
PAIRS = (ROOT / "docs" / "pairs-format.md").read_text(encoding="utf-8")
MAKEFILE = (ROOT / "Makefile").read_text(encoding="utf-8")


def _phony() -> list[str]:
    line = next(ln for ln in MAKEFILE.splitlines() if ln.startswith(".PHONY:"))
    return line.split(":", 1)[1].split()


def _cmh_help(*args: str) -> str:
    env = {**os.environ, "COLUMNS": "200", "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, "-m", "pipeline", *args, "--help"], capture_output=True, text=True,
                          env=env, timeout=120)
    assert done.returncode == 0, done.stderr
    return re.sub(r"\s+", " ", re.sub(r"[│╭╮╰╯─]", " ", done.stdout))


def test_make_help_lists_every_target():
    done = subprocess.run(["make", "--no-print-directory", "-C", str(ROOT), "help"], capture_output=True, text=True)
    # every line's words before its "(...)" remark
    listed = {w for line in done.stdout.splitlines() for w in re.findall(r"[a-z][a-z-]+", line.split("(")[0])}
    listed -= {"make", "run"}
    assert listed == set(_phony()) - {"help"}, done.stdout


def test_every_make_target_the_docs_name_exists():
    named = set()
    for block in all_blocks():
        named |= set(re.findall(r"^\s*make ([a-z][a-z-]*)", block.text, re.M))
    named |= set(re.findall(r"`make ([a-z][a-z-]*)", README))
    assert named and named <= set(_phony()), named - set(_phony())


def test_the_readme_names_no_make_target_for_a_command_without_one():
    assert re.search(r"`cmh query`, `encode`, `index`, `publish` and `list` have no target", README)
    assert not {"query", "encode", "index", "publish", "list"} & set(_phony())
    assert "thin wrapper" not in README


def test_the_pivot_example_is_the_one_in_the_code_and_keeps_every_grouped_column():
    from stages.present.sql import PIVOT_SQL_EXAMPLE

    assert PIVOT_SQL_EXAMPLE.strip() in README
    inner = PIVOT_SQL_EXAMPLE[PIVOT_SQL_EXAMPLE.index("SELECT"):PIVOT_SQL_EXAMPLE.index("FROM")]
    for column in ("dataset", "task", "method", "image_features", "text_features", "epochs", "bits"):
        assert column in inner, column  # grouped and kept: no cell mixes two configurations
    assert "'mirflickr'" not in PIVOT_SQL_EXAMPLE  # would match no -n<LIMIT> dataset


def test_the_pivot_example_keeps_configurations_apart(tmp_path, monkeypatch):
    """Two runs of one method and bits that differ only in epochs stay two rows (first(v) mixed them)."""
    from stages.present.sql import PIVOT_SQL_EXAMPLE

    runs = tmp_path / "cache" / "runs"
    con = duckdb.connect()
    for i, (epochs, value) in enumerate(((5, 0.5), (80, 0.8))):
        (runs / f"r{i}").mkdir(parents=True)
        con.execute(f"COPY (SELECT 'mirflickr-n2000' AS dataset, 'i2t' AS task, 'djsrh' AS method, "
                    f"'alexnet:pool' AS image_features, 'bow' AS text_features, {epochs} AS epochs, 16 AS bits, "
                    f"'map@50' AS metric, {value} AS value) TO '{runs / f'r{i}' / 'report.parquet'}' (FORMAT parquet)")
    monkeypatch.chdir(tmp_path)
    rows = con.execute(PIVOT_SQL_EXAMPLE).fetchall()
    assert sorted((r[5], r[-1]) for r in rows) == [(5, 0.5), (80, 0.8)]


def test_real_data_training_uses_the_published_features():
    import pyarrow.parquet as pq

    for method, image in re.findall(r"make train METHOD=(\S+) .*?IMAGE=(\S+)", README):
        files = list((ROOT / "results" / "mirflickr").glob(f"*-{method}-*.parquet"))
        if not files:
            continue
        published = set(pq.read_table(files[0], columns=["image_features"]).column(0).to_pylist())
        assert published == {image}, (method, image, published)


def test_the_ivf_rule_the_readme_states_is_the_code_rule():
    from stages.evaluate.binary_index import PARAMETER_RULES

    for kind in ("ivf", "hash", "multihash"):
        assert f"`{kind}`: {PARAMETER_RULES[kind]}" in README, kind
    assert "N // 39" in PARAMETER_RULES["ivf"]


def test_the_cache_help_says_the_default_the_code_uses(monkeypatch):
    from pipeline.ground.settings import PROJECT_ROOT, cache_root

    monkeypatch.delenv("CMH_CACHE", raising=False)
    monkeypatch.chdir(ROOT.parent)  # not the checkout: ./cache would be another folder
    assert cache_root() == PROJECT_ROOT / "cache"
    text = _cmh_help("train")
    assert "./cache" not in text and "cache/ folder of the cmh checkout" in text


def test_kv_metadata_is_shown_decoded():
    """DuckDB's parquet_kv_metadata returns BLOBs: a query that does not decode them prints bytes."""
    for path in ("README.md", "cache/README.md", *(f"docs/{p.name}" for p in (ROOT / "docs").glob("*.md"))):
        for statement in re.findall(r"SELECT[^;`]*?parquet_kv_metadata[^;`]*", (ROOT / path).read_text("utf-8")):
            assert "decode(value)" in statement, (path, statement)
    assert "parquet_kv_metadata" in (ROOT / "cache" / "README.md").read_text("utf-8")


def test_pairs_doc_names_the_split_flags_and_name_that_extract_has():
    text = _cmh_help("extract")
    for flag in ("--n-query", "--n-train", "--validation", "--name"):
        assert f"`{flag}" in PAIRS and flag in text, flag
    assert "(`n_query`, `n_train`)" not in PAIRS  # read as -o keys, which they are not
    assert "--name" in README


def test_no_decode_time_is_claimed_for_a_warm_disk_only():
    """The separate decode pass (8 s only with the files in the page cache, ~2 min cold) is gone: the README
    says images are decoded once, by the encoder, and quotes no warm-cache time as the cost."""
    assert "8 s for the 20,015" not in README
    assert "Each image is decoded once, by the image encoder that needs it" in README


def test_the_readme_says_how_to_reach_cmh_first():
    first = README[README.index("## First run"):README.index("## Real data")]
    assert ". .venv/bin/activate" in first and ".venv/bin/cmh" in first
    done = subprocess.run(["make", "-n", "--no-print-directory", "-C", str(ROOT), "-o", ".venv/.cmh-installed",
                           "setup"], capture_output=True, text=True)
    assert ".venv/bin/activate" in done.stdout and ".venv/bin/cmh" in done.stdout, done.stdout


@pytest.mark.parametrize("path", ["README.md", "cache/README.md"])
def test_no_document_names_the_old_grids_folder(path):
    assert "grids/" not in (ROOT / path).read_text(encoding="utf-8")


def test_what_the_first_section_says_the_demo_runs_is_what_it_runs():
    import inspect

    from pipeline.orchestration.demo import DEMO_BITS, DEMO_EPOCHS, DEMO_METHODS
    from stages.prepare.datasets.demo import LABELS, demo
    from stages.train.methods.djsrh import DJSRHConfig

    first = re.sub(r"\s+", " ", README[README.index("## First run"):README.index("## Real data")])
    n_items = inspect.signature(demo).parameters["n_items"].default
    assert f"generates {n_items} synthetic image–tag pairs with {len(LABELS)} labels" in first
    assert DEMO_METHODS == ("baseline", "cca-itq", "djsrh")
    assert "trains the no-learning baseline, CCA-ITQ and DJSRH" in first
    assert f"DJSRH ({DEMO_EPOCHS['djsrh']} of its paper's {DJSRHConfig().epochs} epochs" in first
    assert "at " + " and ".join(map(str, DEMO_BITS)) + " bits" in first
