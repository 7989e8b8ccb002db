"""The HTML report page and galleries on a small cached dataset with real image files (no browser)."""
from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from pipeline.ground.store.items import read_items
from pipeline.ground.store.parquet import write_json_atomic
from pipeline.ground.store.runs import RunDir
from stages.present.html.gallery import Items, adhoc_gallery, pick_queries, render_gallery, run_gallery
from stages.present.html.report import GallerySettings, build_html_report, validation_points
from stages.present.html.query_page import write_query_page
from stages.present.tables import methods_by_bits
from stages.present.html.thumbnails import ThumbnailStore
from tests.present.html_fixtures import DATASET, N_QUERY, make_dataset, make_run

VALIDATION = [{"epoch": 1, "i2t": 0.5, "t2i": 0.52}, {"epoch": 2, "i2t": 0.6, "t2i": 0.58}]


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    root = tmp_path_factory.mktemp("html")
    layout, table = make_dataset(root)
    first = make_run(layout, table, "toy-alpha-16b-s1-aaaaaaaa", "alpha", 16, 1, validation=VALIDATION)
    make_run(layout, table, "toy-alpha-16b-s2-aaaaaaaa", "alpha", 16, 2, plots_from=first / "plots")
    make_run(layout, table, "toy-beta-16b-s1-bbbbbbbb", "beta", 16, 1, noise=4.0, plots_from=first / "plots")
    return layout, table


def _sections(page: str) -> dict[str, str]:
    parts = re.split(r'<details class="run" id="run-([^"]+)">', page)[1:]
    return dict(zip(parts[0::2], parts[1::2]))


def test_page_has_table_figures_and_the_same_gallery_queries_for_every_run(toy):
    layout, _ = toy
    table = methods_by_bits(layout.report_rows(DATASET), DATASET)
    report = build_html_report(layout, table, progress=False)
    page = report.page.read_text()
    assert report.page == layout.root / "reports" / "toy.html" and report.runs == 3
    # the table: one best cell per column, holding the column's highest mean
    best = re.findall(r'<td class="best">([0-9.]+)', page)
    assert len(best) == len(table.columns)
    for (task, bits), text in zip(table.columns, best):
        assert float(text) == pytest.approx(max(c[(task, bits)][0] for c in table.cells.values()), abs=5e-5)
    figure = re.search(r'src="(toy/figures/map_vs_bits-[0-9a-f]{12}\.png)"', page)
    assert figure and (layout.root / "reports" / figure[1]).exists()
    sections = _sections(page)
    assert set(sections) == {"toy-alpha-16b-s1-aaaaaaaa", "toy-alpha-16b-s2-aaaaaaaa", "toy-beta-16b-s1-bbbbbbbb"}
    queries = {rid: re.findall(r"<b>(image → text|text → image)</b> · query item (\d+)", body)
               for rid, body in sections.items()}
    first = next(iter(queries.values()))
    assert len(first) == 8 and [t for t, _ in first] == ["image → text"] * 4 + ["text → image"] * 4
    assert all(q == first for q in queries.values())  # side by side: the same queries in every run
    for body in sections.values():
        assert len(re.findall(r'class="cell (?:rel|irr)"', body)) == 80  # 8 queries x top 10, relevance marked
        assert "pr_i2t.png" in body and "pk_t2i.png" in body
    # the validation curve only where the run recorded one
    assert re.search(r"validation_toy-alpha-16b-s1-aaaaaaaa-[0-9a-f]{12}\.png", sections["toy-alpha-16b-s1-aaaaaaaa"])
    assert "validation_" not in sections["toy-beta-16b-s1-bbbbbbbb"]
    # every linked file exists relative to the page
    for src in re.findall(r'src="([^"]+)"', page):
        assert (report.page.parent / src).resolve().exists(), src
    side = json.loads(report.sidecar.read_text())
    assert side["gallery"] == {"seed": 0, "per_task": 4, "top_k": 10} and side["dataset_fingerprint"]
    assert side["environment"]["packages"] and side["missing_images"] == {}


def test_gallery_ranks_and_relevance_match_the_codes(toy):
    layout, table = toy
    items = Items(read_items(layout, DATASET))
    queries = pick_queries(np.arange(N_QUERY), 4, seed=3)
    gallery = run_gallery(layout.run("toy-alpha-16b-s1-aaaaaaaa"), items, queries, top_k=10)
    from pipeline.ground.store.codes import read_codes

    codes = read_codes(layout.run_dir("toy-alpha-16b-s1-aaaaaaaa") / "codes", "database")
    qcodes = read_codes(layout.run_dir("toy-alpha-16b-s1-aaaaaaaa") / "codes", "query")
    for entry in gallery.queries:
        q_mod, d_mod = ("image", "text") if entry.task == "i2t" else ("text", "image")
        q = qcodes[q_mod][list(qcodes["item_id"]).index(entry.item_id)]
        dist = (codes[d_mod] != q).sum(axis=1)
        order = np.lexsort((np.arange(len(dist)), dist))[:10]  # by distance, ties by database order
        assert [h.item_id for h in entry.hits] == codes["item_id"][order].tolist()
        assert [h.hamming for h in entry.hits] == dist[order].tolist()
        q_labels = table.labels[entry.item_id].astype(bool)
        assert [h.relevant for h in entry.hits] == [bool((table.labels[h.item_id].astype(bool) & q_labels).any())
                                                    for h in entry.hits]


def test_pick_queries_is_seeded_and_distinct():
    ids = np.arange(100, 140)
    a, b = pick_queries(ids, 4, seed=7), pick_queries(ids, 4, seed=7)
    assert a == b and len(set(a["i2t"] + a["t2i"])) == 8 and set(a["i2t"] + a["t2i"]) <= set(ids.tolist())
    assert pick_queries(ids, 4, seed=8) != a


def test_html_in_texts_is_escaped(toy, tmp_path):
    layout, _ = toy
    report = build_html_report(layout, methods_by_bits(layout.report_rows(DATASET), DATASET), out_dir=tmp_path,
                               settings=GallerySettings(per_task=N_QUERY), progress=False)  # every query in both tasks
    page = report.page.read_text()
    assert "<script" not in page and "<b>bold" not in page
    assert "&lt;script&gt;document.title=&quot;pwned&quot;&lt;/script&gt;" in page
    assert "&amp; &quot;quoted&quot; caption" in page


def test_missing_images_show_a_placeholder_naming_the_path_and_the_page_is_still_written(tmp_path):
    layout, table = make_dataset(tmp_path)
    make_run(layout, table, "toy-alpha-16b-s1-aaaaaaaa", "alpha", 16, 1)
    moved = [table.image[i] for i in range(len(table))][::2]
    for path in moved:
        Path(path).unlink()
    report = build_html_report(layout, methods_by_bits(layout.report_rows(DATASET), DATASET), progress=False)
    page = report.page.read_text()
    shown_missing = re.findall(r"<code>image missing: ([^<]+)</code>", page)
    assert shown_missing and set(shown_missing) <= set(moved)
    assert set(report.missing_images) == set(shown_missing)
    assert json.loads(report.sidecar.read_text())["missing_images"] == report.missing_images
    assert all((report.page.parent / s).exists() for s in re.findall(r'src="([^"]+)"', page))  # no broken <img>


def test_thumbnails_are_made_once_per_dataset(toy, tmp_path):
    layout, _ = toy
    store = ThumbnailStore(tmp_path, DATASET)
    items = read_items(layout, DATASET)
    first = store.get(3, items.image[3])
    again = ThumbnailStore(tmp_path, DATASET).get(3, items.image[3])
    assert first.path == again.path and store.made == 1
    from PIL import Image

    with Image.open(first.path) as im:
        assert im.format == "JPEG" and max(im.size) <= 100
    # a page built twice reuses every thumbnail of the first build
    table = methods_by_bits(layout.report_rows(DATASET), DATASET)
    build_html_report(layout, table, out_dir=tmp_path / "r", progress=False)
    side = json.loads(build_html_report(layout, table, out_dir=tmp_path / "r", progress=False).sidecar.read_text())
    assert side["thumbnails"]["made"] == 0 and side["thumbnails"]["reused"] > 0


def test_validation_points_absent_present_and_malformed(tmp_path):
    assert validation_points(RunDir(tmp_path)) == ([], None)
    write_json_atomic({"epochs": [], "validation": VALIDATION[::-1]}, tmp_path / "history.json")
    assert validation_points(RunDir(tmp_path)) == (VALIDATION, None)
    write_json_atomic({"validation": [{"i2t": 0.3}]}, tmp_path / "history.json")
    points, problem = validation_points(RunDir(tmp_path))
    assert points == [] and "not a list of" in problem
    (tmp_path / "history.json").write_text("{broken")
    assert "unreadable" in validation_points(RunDir(tmp_path))[1]


def test_run_without_codes_says_so(toy, tmp_path):
    layout, _ = toy
    items = Items(read_items(layout, DATASET))
    gallery = run_gallery(RunDir(tmp_path), items, {"i2t": [1]})
    html = render_gallery(gallery, items, ThumbnailStore(tmp_path, DATASET).get, lambda t: None)
    assert gallery.problem and "No gallery" in html and "cmh train" in html


def test_query_page_is_one_self_contained_file(toy, tmp_path):
    layout, _ = toy
    rows = [(1, 20, 3, "x", "y"), (2, 0, 4, "x", "y")]  # (rank, item_id, hamming, ...) as query_run gives
    out = write_query_page(layout, "toy-alpha-16b-s1-aaaaaaaa", rows, tmp_path / "q.html", text="<i>dog</i>")
    page = out.read_text()
    srcs = re.findall(r'src="([^"]+)"', page)
    assert len(srcs) == 2 and all(s.startswith("data:image/jpeg;base64,") for s in srcs)
    assert "&lt;i&gt;dog&lt;/i&gt;" in page and "<i>dog" not in page
    assert page.count('class="cell unk"') == 2  # an ad-hoc query has no labels: relevance unknown
    gallery = adhoc_gallery("r", rows, text=None, image=Path("/nowhere/x.jpg"))
    html = render_gallery(gallery, None, ThumbnailStore(tmp_path, DATASET).get, lambda t: None)
    assert "image missing: /nowhere/x.jpg" in html


def test_cli_report_html_and_query_html_option_check(toy, tmp_path):
    from pipeline.cli import app

    layout, _ = toy
    out = CliRunner().invoke(app, ["report", "--dataset", DATASET, "--html", "--cache", str(layout.root),
                                   "--out-dir", str(tmp_path)])
    assert out.exit_code == 0, out.output
    assert "| alpha |" in out.output and f"html report (3 runs): {tmp_path / 'toy.html'}" in out.output
    bad = CliRunner().invoke(app, ["query", "--run", "x", "--text", "dog", "--html", str(tmp_path),
                                   "--cache", str(layout.root)])
    assert bad.exit_code != 0 and "is a folder: give the page's file name" in str(bad.exception)  # one line
    bad = CliRunner().invoke(app, ["query", "--run", "x", "--text", "dog", "--html", str(tmp_path / "page.txt"),
                                   "--cache", str(layout.root)])
    assert bad.exit_code != 0 and "ending in .html" in str(bad.exception)


def test_files_a_page_links_are_never_rewritten_by_a_later_report_or_table(toy, tmp_path):
    """Issue 19 item 5: a grid or report over other runs writes new names; the first page's files stay as they were."""
    import shutil

    from pipeline.ground.store.cache import Cache

    layout, _ = toy
    root = tmp_path / "cache"
    shutil.copytree(layout.root, root)
    cache = Cache(root)
    first = build_html_report(cache, methods_by_bits(cache.report_rows(DATASET), DATASET), progress=False)
    page = first.page.read_text()
    linked = {src: (cache.reports_dir / src).read_bytes() for src in re.findall(r'src="([^"]+\.png)"', page)
              if not src.startswith("..")}  # the runs' own figures live in their run folders
    assert any("map_vs_bits-" in src for src in linked) and any("validation_" in src for src in linked)
    # a report over one run only (the others left out), then the grid's table files: other names
    methods_by_bits(cache.report_rows(DATASET), DATASET, out_dir=cache.reports_dir)
    one = ["toy-beta-16b-s1-bbbbbbbb"]
    build_html_report(cache, methods_by_bits(cache.report_rows(DATASET, one), DATASET, run_ids=one), progress=False,
                      run_ids=one, out_dir=cache.reports_dir)
    assert {src: (cache.reports_dir / src).read_bytes() for src in linked} == linked


def test_a_one_point_validation_curve_is_a_note_not_a_figure(toy, tmp_path):
    import shutil

    from pipeline.ground.store.cache import Cache

    layout, table = toy
    root = tmp_path / "cache"
    shutil.copytree(layout.root, root)
    cache = Cache(root)
    run = RunDir(cache.runs_dir() / "toy-beta-16b-s1-bbbbbbbb")
    write_json_atomic({"validation": [{"epoch": 0, "i2t": 0.71, "t2i": 0.69}]}, run.history_path)
    page = build_html_report(cache, methods_by_bits(cache.report_rows(DATASET), DATASET), progress=False).page
    section = _sections(page.read_text())["toy-beta-16b-s1-bbbbbbbb"]
    assert "validation_" not in section and "one fit (no epochs, so no curve): i2t 0.7100, t2i 0.6900" in section


def test_short_text_cuts_at_a_word_boundary():
    from stages.present.html.gallery import short_text

    text = "a dog runs along the beach, chasing seagulls under a grey sky"
    cut = short_text(text, 30)
    assert cut == "a dog runs along the beach…" and len(cut) <= 30
    assert short_text("x" * 50, 10) == "x" * 9 + "…"  # one long word: cut inside it
    assert short_text("short", 30) == "short"


def test_query_page_shows_pictures_and_texts_both_ways_and_a_legend_without_marks(toy, tmp_path):
    layout, table = toy
    rows = [(1, 20, 3, "x", "y"), (2, 30, 4, "x", "y")]
    for kw in ({"text": "label1 dog"}, {"image": Path(table.image[5])}):
        page = write_query_page(layout, "toy-alpha-16b-s1-aaaaaaaa", rows, tmp_path / "q.html", **kw).read_text()
        hits = re.findall(r'<div class="cell unk"(.*?)<div class="meta">', page, flags=re.S)
        assert len(hits) == 2 and all("<img" in h and 'class="txt"' in h for h in hits)  # picture and text
        assert "word20" in hits[0] and "labels: " in hits[0]  # its tags, and its labels on hover
        legend = re.search(r'<p class="legend">(.*?)</p>', page, flags=re.S)[1]
        assert "✓" not in legend and "✗" not in legend and "relevance unknown" in legend
        assert "Labels (4): label0, label1, label2, label3" in legend


def test_table_and_run_headers_mark_budget_runs_and_features(tmp_path):
    from pipeline.ground.store.cache import Cache
    from tests.present.html_fixtures import make_dataset, make_run

    layout, table = make_dataset(tmp_path)
    first = make_run(layout, table, "toy-alpha-16b-s1-aaaaaaaa", "alpha", 16, 1, paper_epochs=80)
    make_run(layout, table, "toy-alpha-16b-s1-cccccccc", "alpha", 16, 1, plots_from=first / "plots",
             image_features="other-img", config_hash="cccccccc")
    cache = Cache(layout.root)
    report = build_html_report(cache, methods_by_bits(cache.report_rows(DATASET), DATASET), progress=False)
    page = report.page.read_text()
    headers = re.findall(r"<summary>(.*?)</summary>", page)
    assert len(headers) == 2 and len(set(re.sub(r'<code class="rid">.*', "", h) for h in headers)) == 2
    assert any("toy-img / toy-txt" in h and "budget: 3 of 80 epochs" in h for h in headers)
    assert any("other-img / toy-txt" in h and "budget" not in h for h in headers)
    assert re.search(r'<td>alpha \(.*?\) <span class="budget">budget: 3 of 80 epochs</span></td>', page)
