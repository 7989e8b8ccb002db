"""The search page: a text box and an upload, results with pictures, tags, distances and matched terms; a shared
URL runs its search; every text from data or request is escaped; nothing is loaded from another host."""
from __future__ import annotations

import re
from pathlib import Path


def test_the_empty_page_has_a_text_box_and_an_upload(client, demo_run):
    r = client.get("/")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    page = r.text
    assert '<input type="search" name="text"' in page and '<input type="file" name="image"' in page
    assert 'enctype="multipart/form-data"' in page and demo_run.run_id in page
    assert 'class="card"' not in page


def test_a_shared_url_runs_its_search_on_load(client):
    page = client.get("/?text=sky,sea&k=6").text
    cards = re.findall(r'<div class="card" data-item="(\d+)">', page)
    api = client.get("/api/search", params={"text": "sky,sea", "k": 6}).json()
    assert [int(c) for c in cards] == [x["item_id"] for x in api["results"]]
    assert "<mark>sky</mark>" in page and "<mark>sea</mark>" in page  # the matched terms, and in the tags
    for x in api["results"]:
        assert f'src="/thumbs/{x["item_id"]}.jpg"' in page and f'd={x["hamming"]}' in page
    assert 'value="sky,sea"' in page  # the box shows the query


def test_a_picture_query_shows_the_picture_and_tags(client, demo_run):
    picture = Path(demo_run.cache.dataset("demo").items.image[0])
    r = client.post("/", files={"image": (picture.name, picture.read_bytes(), "image/png")})
    assert r.status_code == 200
    assert 'src="data:image/jpeg;base64,' in r.text and "picture → tags" in r.text
    assert len(re.findall(r'class="card"', r.text)) == 10


def test_refusals_show_on_the_page_with_their_status(client):
    r = client.get("/?text=skyy")
    assert r.status_code == 400 and 'class="error"' in r.text and '<a href="/?text=sky">sky</a>' in r.text
    r = client.post("/", content=b"junk", headers={"content-type": "image/jpeg"})
    assert r.status_code == 400 and "not a picture" in r.text


def test_texts_are_escaped(client):
    hostile = '<script>alert(1)</script>"><img src=x onerror=alert(2)> sky'
    r = client.get("/", params={"text": hostile})
    assert r.status_code == 200  # "sky" is a term; the rest is ignored and shown, escaped
    assert "<script>alert" not in r.text and "<img src=x" not in r.text
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in r.text
    r = client.get("/", params={"text": "<b>qqzx</b>"})
    assert r.status_code == 400 and "<b>qqzx" not in r.text and "&lt;b&gt;qqzx" in r.text


def test_the_page_loads_nothing_from_another_host_and_runs_no_script(client):
    page = client.get("/?text=sky").text
    urls = re.findall(r'(?:src|href|action)="([^"]*)"', page)
    assert urls and all(u.startswith(("/", "data:image/", "?")) for u in urls), urls
    assert "<script" not in page and "@import" not in page and "url(" not in page
