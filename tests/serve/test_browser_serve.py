"""The search page in headless Chromium against a running server: a shared URL's search runs on load and
every result picture arrives decoded, with no console error. Skipped with the reason when Chromium is absent."""
from __future__ import annotations

import json

import pytest

from tests.chromium import Browser

pytestmark = pytest.mark.browser


def test_a_shared_search_url_shows_decoded_result_pictures(chromium, live_server, tmp_path):
    with Browser(chromium) as browser:
        browser.load(f"{live_server.url}/?text=sky,sea&k=8")
        cards = browser.evaluate("document.querySelectorAll('.card').length")
        images = browser.open_all_and_check_images()
        sizes = browser.evaluate("[...document.images].map(i => [i.naturalWidth, i.naturalHeight])")
        marked = browser.evaluate("[...document.querySelectorAll('.answer mark')].map(m => m.textContent)")
        shot = browser.screenshot(tmp_path / "search.png")
        errors = list(browser.errors)
    assert cards == 8 and images["n"] == 8 and images["broken"] == [], json.dumps(images)
    assert all(w > 0 and h > 0 for w, h in sizes)
    assert marked == ["sky", "sea"]
    assert errors == []
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
