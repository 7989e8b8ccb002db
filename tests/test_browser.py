"""The report page in a real browser: headless Chromium renders it with no console error and every image loaded.

Needs Debian's ``chromium`` (``apt-get install -y chromium``); skipped with that reason when it is absent.
"""
from __future__ import annotations

import re
import time
from pathlib import Path

import pytest

from pipeline.ground.store.items import read_splits
from stages.present.html.gallery import pick_queries
from stages.present.html.report import build_html_report
from stages.present.tables import methods_by_bits
from tests.chromium import Browser
from tests.present.html_fixtures import DATASET, make_dataset, make_run

pytestmark = pytest.mark.browser

LOAD_LIMIT_S = 2.0
MANY_RUNS = 100


def test_page_renders_without_errors_and_every_image_loads(chromium, tmp_path):
    layout, table = make_dataset(tmp_path)
    make_run(layout, table, "toy-alpha-16b-s1-aaaaaaaa", "alpha", 16, 1,
             validation=[{"epoch": 1, "i2t": 0.5, "t2i": 0.5}, {"epoch": 2, "i2t": 0.6, "t2i": 0.55}])
    make_run(layout, table, "toy-beta-32b-s1-bbbbbbbb", "beta", 32, 1, noise=3.0)
    gone = table.image[pick_queries(read_splits(layout, DATASET)["query"], 4, seed=0)["i2t"][0]]
    Path(gone).unlink()  # a gallery query image no longer where it was recorded
    report = build_html_report(layout, methods_by_bits(layout.report_rows(DATASET), DATASET), progress=False)
    with Browser(chromium) as browser:
        browser.load(report.page.as_uri())
        assert browser.evaluate("document.querySelectorAll('details.run').length") == 2
        assert browser.evaluate("document.querySelectorAll('details[open]').length") == 0  # collapsed by default
        images = browser.open_all_and_check_images()
        placeholders = browser.evaluate("[...document.querySelectorAll('.missing')].map(e => e.innerText)")
        shot = browser.screenshot(tmp_path / "report.png")
        errors = list(browser.errors)
    assert errors == []
    assert images["broken"] == [] and images["n"] > 80  # figures + thumbnails of both galleries
    assert len(placeholders) == 2 and all(gone in text for text in placeholders)  # one per run's gallery
    assert shot.stat().st_size > 10_000 and shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_report_and_query_pages_show_what_issue_19_asks(chromium, tmp_path):
    """Budget and features in the headers, no one-point curve, labels on hover and in the legend, pictures and
    texts both ways, captions cut at a word, and on the query page a legend that explains what is shown."""
    from stages.present.html.query_page import write_query_page

    layout, table = make_dataset(tmp_path)
    first = make_run(layout, table, "toy-alpha-16b-s1-aaaaaaaa", "alpha", 16, 1, paper_epochs=80,
                     validation=[{"epoch": 1, "i2t": 0.5, "t2i": 0.5}, {"epoch": 2, "i2t": 0.6, "t2i": 0.55}])
    make_run(layout, table, "toy-alpha-16b-s1-cccccccc", "alpha", 16, 1, plots_from=first / "plots",
             image_features="other-img", config_hash="cccccccc", validation=[{"epoch": 0, "i2t": 0.7, "t2i": 0.6}])
    report = build_html_report(layout, methods_by_bits(layout.report_rows(DATASET), DATASET), progress=False)
    long_text = " ".join(f"word{n}" for n in range(60))  # a 400-character query: cut on the page
    query = write_query_page(layout, "toy-alpha-16b-s1-aaaaaaaa", [(1, 20, 3), (2, 30, 5)], tmp_path / "q.html",
                             text=long_text)
    with Browser(chromium) as browser:
        browser.load(report.page.as_uri())
        images = browser.open_all_and_check_images()
        headers = browser.evaluate("[...document.querySelectorAll('details.run > summary')].map(s => "
                                   "s.innerText.replace(/toy-alpha.*$/, ''))")
        table_marks = browser.evaluate("[...document.querySelectorAll('table.results span.budget')].map(e => e.innerText)")
        validation = browser.evaluate("[...document.querySelectorAll('details.run')].map(d => "
                                      "d.querySelectorAll('img[src*=\"validation_\"]').length)")
        hits = browser.evaluate("""[...document.querySelectorAll('.cell.rel, .cell.irr')].map(c => ({
            img: !!c.querySelector('img'), txt: !!c.querySelector('.txt'), title: c.title}))""")
        legend = browser.evaluate("document.querySelector('.legend').innerText")
        report_errors = list(browser.errors)
        browser.load(query.as_uri())
        q_images = browser.open_all_and_check_images()
        q_legend = browser.evaluate("document.querySelector('.legend').innerText")
        q_hits = browser.evaluate("[...document.querySelectorAll('.cell.unk')].map(c => "
                                  "[!!c.querySelector('img'), !!c.querySelector('.txt')])")
        shown = browser.evaluate("document.querySelector('.cell.query .txt').innerText")
        clipped = browser.evaluate("[...document.querySelectorAll('.txt')].filter(e => e.scrollHeight > "
                                   "e.clientHeight + 1).length")  # the cut is the page's, not the cell's edge
        query_errors = list(browser.errors)
    assert report_errors == [] and query_errors == [] and images["broken"] == [] and q_images["broken"] == []
    assert len(headers) == 2 and headers[0] != headers[1]  # same method, bits and seed; other features
    assert any("budget: 3 of 80 epochs" in h and "toy-img / toy-txt" in h for h in headers)
    assert table_marks == ["budget: 3 of 80 epochs"]
    assert sorted(validation) == [0, 1]  # the one-point run draws no curve
    assert hits and all(h["img"] and h["txt"] and "labels: label" in h["title"] for h in hits)
    assert "Labels (4): label0" in legend and "✓" in legend
    assert "✓" not in q_legend and "✗" not in q_legend and "relevance unknown" in q_legend
    assert q_hits == [[True, True], [True, True]]  # text -> image results show their tags too
    assert shown.endswith("…") and long_text.startswith(shown[:-1]) and long_text[len(shown) - 1] == " "
    assert clipped == 0


def test_a_broken_image_is_caught(chromium, tmp_path):
    """The check itself can fail: a page with a dangling <img> reports it as broken and as a console error."""
    page = tmp_path / "bad.html"
    page.write_text('<!DOCTYPE html><html><body><details><summary>x</summary>'
                    '<img src="nowhere.png" loading="lazy"></details></body></html>')
    with Browser(chromium) as browser:
        browser.load(page.as_uri())
        images = browser.open_all_and_check_images()
        time.sleep(0.2)  # the failed-load log entry arrives just after the decode promise settles
        errors = list(browser.errors)
    assert images["broken"] == ["nowhere.png"]
    assert any("nowhere.png" in e or "ERR_FILE_NOT_FOUND" in e for e in errors), errors


@pytest.mark.slow
def test_a_hundred_runs_load_within_two_seconds(chromium, tmp_path):
    layout, table = make_dataset(tmp_path)
    first = make_run(layout, table, "toy-m00-16b-s1-00000000", "m00", 16, 1)
    for n in range(1, MANY_RUNS):
        make_run(layout, table, f"toy-m{n % 10:02d}-{16 * (1 + n % 4)}b-s{n}-{n:08d}", f"m{n % 10:02d}",
                 16 * (1 + n % 4), n, plots_from=first / "plots")  # the figures' content does not matter here
    report = build_html_report(layout, methods_by_bits(layout.report_rows(DATASET), DATASET), progress=False)
    page = report.page.read_text()
    assert len(re.findall(r'<details class="run"', page)) == MANY_RUNS
    with Browser(chromium) as browser:
        seconds = browser.load(report.page.as_uri())
        assert browser.evaluate("document.querySelectorAll('details[open]').length") == 0
        errors = list(browser.errors)
    print(f"{MANY_RUNS} runs: page {len(page) / 1e6:.1f} MB, load {seconds:.2f} s")
    assert errors == []
    assert seconds < LOAD_LIMIT_S
