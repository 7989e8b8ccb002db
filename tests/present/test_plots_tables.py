from pathlib import Path

import pyarrow.parquet as pq
import pytest

from pipeline.ground.store.cache import Cache

from pipeline.ground.errors import CacheError, ConfigError
from stages.present.plots import plot_map_vs_bits, plot_run
from stages.evaluate.report import read_rows
from stages.present.tables import methods_by_bits, results_table
from tests.evaluate.helpers import make_run

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _is_png(path: Path) -> bool:
    return path.exists() and path.stat().st_size > 1000 and path.read_bytes()[:8] == PNG_MAGIC


def test_plot_run_writes_pr_and_pk_per_task(cache_root: Path):
    paths = plot_run(cache_root / "runs" / "alpha-16-0")
    names = sorted(p.name for p in paths)
    assert names == ["pk_i2t.png", "pk_t2i.png", "pr_i2t.png", "pr_t2i.png"]
    assert all(_is_png(p) for p in paths)


def test_plot_map_vs_bits_from_a_table_and_rows(cache_root: Path, tmp_path: Path):
    assert _is_png(plot_map_vs_bits(Cache(cache_root).report_rows(), tmp_path / "a.png", "toy"))
    rows = [r for p in (cache_root / "runs").glob("*/report.parquet") for r in read_rows(p)]
    assert _is_png(plot_map_vs_bits(rows, tmp_path / "b.png", "toy", metric="map"))


def test_results_table_mean_std_over_seeds(cache_root: Path):
    rows = results_table(Cache(cache_root).report_rows(), "toy", "map@50")
    by = {(r["method"], r["bits"], r["task"]): r for r in rows}
    assert len(rows) == 8
    assert by[("alpha", 16, "i2t")]["n_seeds"] == 2 and by[("alpha", 16, "i2t")]["seeds"] == [0, 1]
    assert by[("beta", 32, "t2i")]["n_seeds"] == 1 and by[("beta", 32, "t2i")]["std"] is None
    one = [r["value"] for p in (cache_root / "runs").glob("alpha-16-*/report.parquet") for r in read_rows(p)
           if r["task"] == "i2t" and r["metric"] == "map@50"]
    assert by[("alpha", 16, "i2t")]["mean"] == pytest.approx(sum(one) / 2)


def test_methods_by_bits_layout_and_files(cache_root: Path, tmp_path: Path):
    table = methods_by_bits(Cache(cache_root).report_rows(), "toy", "map@50", out_dir=tmp_path)
    assert table.labels == ["alpha", "beta"]
    assert table.columns == [("i2t", 16), ("i2t", 32), ("t2i", 16), ("t2i", 32)]
    lines = table.markdown.splitlines()
    assert lines[2] == "| method | i2t 16 | i2t 32 | t2i 16 | t2i 32 |"
    assert lines[4].startswith("| alpha | **") and "±" in lines[4]  # alpha is best and has two seeds
    assert (tmp_path / "toy_map_at_50.md").read_text() == table.markdown
    wide = pq.read_table(table.paths["parquet"]).to_pylist()
    assert [r["label"] for r in wide] == ["alpha", "beta"] and wide[1]["i2t@32_n"] == 1
    assert _is_png(table.paths["png"])


def test_methods_by_bits_labels_distinguish_feature_sets(tmp_path: Path):
    root = tmp_path / "cache"
    make_run(root, "a-clip", "alpha", 16, 0, 1.0)
    make_run(root, "a-bow", "alpha", 16, 0, 2.0, text_features="bow")  # overrides the meta default
    table = methods_by_bits(Cache(root).report_rows(), None, "map")
    assert len(table.labels) == 2 and all("text_features=" in lab for lab in table.labels)


def test_table_errors(tmp_path: Path, cache_root: Path):
    with pytest.raises(CacheError, match="no run reports"):
        Cache(tmp_path).report_rows()
    make_run(tmp_path, "other", "alpha", 16, 0, 1.0, dataset="other")
    make_run(tmp_path, "toy", "alpha", 16, 0, 1.0)
    with pytest.raises(ConfigError, match="several datasets"):
        methods_by_bits(Cache(tmp_path).report_rows(), None)
    with pytest.raises(CacheError, match="metric='map@7'"):
        methods_by_bits(Cache(cache_root).report_rows(), "toy", "map@7")


def test_configurations_differing_in_epochs_are_not_averaged(tmp_path: Path):
    root = tmp_path / "cache"
    make_run(root, "short", "alpha", 16, 0, 1.0, epochs=5, config_hash="aaaa")
    make_run(root, "long", "alpha", 16, 0, 2.0, epochs=80, config_hash="bbbb")
    make_run(root, "long-seed1", "alpha", 16, 1, 2.0, epochs=80, config_hash="bbbb")
    table = methods_by_bits(Cache(root).report_rows(), None, "map", out_dir=tmp_path / "out")
    assert len(table.labels) == 2 and any("epochs=80" in lab for lab in table.labels)
    assert {table.cells[lab][("i2t", 16)][2] for lab in table.labels} == {1, 2}  # seeds of one config only
    assert pq.read_table(table.paths["parquet"]).column("epochs").to_pylist() in (["5", "80"], ["80", "5"])
    only = methods_by_bits(Cache(root).report_rows(), None, "map", run_ids=["short"])
    assert len(only.labels) == 1
