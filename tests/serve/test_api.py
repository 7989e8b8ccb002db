"""The search API through Starlette's test client, on the demo run: answers, and every bad input of the issue.

Each refusal is followed by a good search, since a refused request must leave the service serving.
"""
from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import pytest
from PIL import Image

from pipeline.orchestration.query import query_run

RESULT_KEYS = {"rank", "item_id", "hamming", "text", "texts", "text_kind", "labels", "image_url"}


def _still_serving(client) -> None:
    r = client.get("/api/search", params={"text": "sky, sea", "k": 3})
    assert r.status_code == 200 and len(r.json()["results"]) == 3


def _refused(response, status: int) -> dict:
    assert response.status_code == status, (response.status_code, response.text[:400])
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert body["error"] and body["fix"], body
    return body


def _picture(demo_run, row: int = 0) -> Path:
    return Path(demo_run.cache.dataset("demo").items.image[row])


# -- answers -----------------------------------------------------------------------------------------------------
def test_text_search_answers_the_issue_shape_and_ranks_like_cmh_query(client, demo_run):
    r = client.get("/api/search", params={"text": "Sky  sea, qqzx", "k": 7})
    assert r.status_code == 200
    body = r.json()
    assert {"run", "modality", "matched_terms", "search", "approximate", "took_ms", "results"} <= set(body)
    assert body["run"] == demo_run.run_id and body["modality"] == "text"
    assert body["matched_terms"] == ["sky", "sea"] and body["ignored_terms"] == ["qqzx"]
    assert body["search"] == "exact" and body["approximate"] is False and body["took_ms"] > 0
    results = body["results"]
    assert [x["rank"] for x in results] == list(range(1, 8)) and all(set(x) == RESULT_KEYS for x in results)
    assert [x["hamming"] for x in results] == sorted(x["hamming"] for x in results)
    rows = query_run(demo_run.cache, demo_run.run_id, text="sky, sea", top_k=7)
    assert [(x["item_id"], x["hamming"]) for x in results] == [(row[1], row[2]) for row in rows]
    assert all(x["image_url"] == f"/thumbs/{x['item_id']}.jpg" for x in results)


@pytest.mark.parametrize("how", ["multipart", "raw"])
def test_picture_search_by_multipart_or_raw_body_ranks_like_cmh_query(client, demo_run, how):
    picture = _picture(demo_run)
    data = picture.read_bytes()
    if how == "multipart":
        r = client.post("/api/search?k=5", files={"image": (picture.name, data, "image/png")})
    else:
        r = client.post("/api/search?k=5", content=data, headers={"content-type": "image/png"})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["modality"] == "image" and body["matched_terms"] == [] and "query_preview" not in body
    rows = query_run(demo_run.cache, demo_run.run_id, image=picture, top_k=5)
    assert [(x["item_id"], x["hamming"]) for x in body["results"]] == [(row[1], row[2]) for row in rows]


def test_item_thumbnail_and_health(client, demo_run):
    items = demo_run.cache.dataset("demo").items
    item_id = int(items.item_id[3])
    r = client.get(f"/api/items/{item_id}")
    assert r.status_code == 200
    body = r.json()
    assert body["texts"] == list(items.texts[3]) and body["image_url"] == f"/thumbs/{item_id}.jpg"
    names = [n for n, on in zip(items.label_names, items.labels[3]) if on]
    assert body["labels"] == names and names
    thumb = client.get(body["image_url"])
    assert thumb.status_code == 200 and thumb.headers["content-type"] == "image/jpeg"
    with Image.open(io.BytesIO(thumb.content)) as im:
        im.load()
        assert max(im.size) <= 100 and im.format == "JPEG"
    health = client.get("/health").json()
    assert health["run"] == demo_run.run_id and health["dataset"] == "demo" and health["status"] == "ok"
    assert health["n"] == len(demo_run.cache.dataset("demo").splits["database"]) and health["bits"] == 16
    assert health["index"] == {"image_queries": "exact", "text_queries": "exact"}
    assert health["code_version"] and health["uptime_s"] >= 0


# -- bad input: each refused, the service still serving ------------------------------------------------------------
@pytest.mark.parametrize("text, close", [("", None), ("   ", None), ("qqzx wwvy", None), ("skyy", "sky")])
def test_text_without_a_known_term_is_400_with_close_terms(client, text, close):
    body = _refused(client.get("/api/search", params={"text": text}), 400)
    assert body["close_terms"], body
    if close:
        assert close in body["close_terms"] and close in body["fix"]
    _still_serving(client)


def test_missing_and_overlong_text_are_400(client):
    _refused(client.get("/api/search"), 400)
    _refused(client.get("/api/search", params={"text": "sky " * 400}), 400)
    _still_serving(client)


@pytest.mark.parametrize("k", ["0", "-3", "abc", "2.5", "N+1"])
def test_k_out_of_range_or_not_a_number_is_400(client, service, k):
    k = str(service.searcher.n + 1) if k == "N+1" else k
    body = _refused(client.get("/api/search", params={"text": "sky", "k": k}), 400)
    assert str(service.searcher.n) in body["fix"]
    _refused(client.post(f"/api/search?k={k}", content=b"x", headers={"content-type": "image/png"}), 400)
    _still_serving(client)


def test_k_equal_to_n_is_served(client, service):
    r = client.get("/api/search", params={"text": "sky", "k": service.searcher.n})
    assert r.status_code == 200 and len(r.json()["results"]) == service.searcher.n


def _truncated_jpeg(demo_run) -> bytes:
    buf = io.BytesIO()
    Image.open(_picture(demo_run)).convert("RGB").resize((256, 256)).save(buf, format="JPEG", quality=95)
    return buf.getvalue()[: len(buf.getvalue()) // 2]


@pytest.mark.parametrize("body, content_type", [
    (b"plain text, not a picture", "image/jpeg"),
    (b"", "image/png"),
    (b"GIF89a\x01", "image/gif"),
    ("truncated", "image/jpeg"),
    (b"\x89PNG", "text/plain"),  # a content type that is no picture
])
def test_a_body_that_is_not_a_picture_is_400(client, demo_run, body, content_type):
    data = _truncated_jpeg(demo_run) if body == "truncated" else body
    raw = _refused(client.post("/api/search", content=data, headers={"content-type": content_type}), 400)
    multipart = _refused(client.post("/api/search", files={"image": ("x.jpg", data, content_type)}), 400)
    if body == "truncated":
        assert "truncated" in raw["error"] and "truncated" in multipart["error"]
    _still_serving(client)


def test_multipart_without_an_image_field_is_400(client):
    body = _refused(client.post("/api/search", files={"picture": ("x.png", b"123", "image/png")}), 400)
    assert "`image`" in body["error"]
    _refused(client.post("/api/search", data={"image": "not a file"}, files={"other": ("a", b"b")}), 400)
    _still_serving(client)


def _png_header_only(width: int, height: int) -> bytes:
    """A PNG that declares ``width`` x ``height`` but carries one scanline of data: decoding it whole would
    fail as truncated, so a refusal naming megapixels proves the size was checked before decoding."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00" * (3 * width + 1)))
            + chunk(b"IEND", b""))


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")  # PIL warns at open; we refuse
def test_a_100_megapixel_picture_is_refused_before_it_is_decoded(client, monkeypatch):
    from PIL import ImageFile

    decoded = []
    real_load = ImageFile.ImageFile.load
    monkeypatch.setattr(ImageFile.ImageFile, "load", lambda self: decoded.append(self.size) or real_load(self))
    data = _png_header_only(10_000, 10_000)
    assert len(data) < 100_000
    body = _refused(client.post("/api/search", content=data, headers={"content-type": "image/png"}), 400)
    assert "10000 x 10000" in body["error"] and "megapixels" in body["error"]
    assert decoded == []  # not one pixel decoded
    multipart = _refused(client.post("/api/search", files={"image": ("big.png", data, "image/png")}), 400)
    assert "megapixels" in multipart["error"] and decoded == []
    _still_serving(client)


def test_a_body_over_the_limit_is_413(client, service):
    limit = service.limits.max_body_bytes
    big = b"\xff" * (limit + 1)
    body = _refused(client.post("/api/search", content=big, headers={"content-type": "image/jpeg"}), 413)
    assert "limit" in body["error"] and "--max-upload-mb" in body["fix"]
    _refused(client.post("/api/search", files={"image": ("big.jpg", big, "image/jpeg")}), 413)

    def chunks():  # no Content-Length: counted as it arrives
        for _ in range(limit // 2**20 + 2):
            yield b"\0" * 2**20

    _refused(client.post("/api/search", content=chunks(), headers={"content-type": "image/jpeg"}), 413)
    _still_serving(client)


def test_the_limit_is_enforced_without_reading_the_body_whole(service):
    """Straight through ASGI: a chunked body of 50 x the limit; the app stops reading one chunk past the limit."""
    import anyio

    from pipeline.orchestration.serving.app import build_app

    app = build_app(service)
    chunk = 1 << 20
    total_chunks = 50 * service.limits.max_body_bytes // chunk
    read, sent = [], []

    async def receive():
        read.append(chunk)
        return {"type": "http.request", "body": b"\0" * chunk, "more_body": len(read) < total_chunks}

    async def send(message):
        sent.append(message)

    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST", "scheme": "http",
             "path": "/api/search", "raw_path": b"/api/search", "query_string": b"", "root_path": "",
             "headers": [(b"content-type", b"image/jpeg"), (b"host", b"testserver")], "client": ("t", 1),
             "server": ("testserver", 80)}
    anyio.run(app, scope, receive, send)
    assert sent[0]["status"] == 413
    assert sum(read) <= service.limits.max_body_bytes + chunk


def test_an_unknown_item_is_404(client):
    for path in ("/api/items/987654321", "/thumbs/987654321.jpg"):
        assert "987654321" in _refused(client.get(path), 404)["error"]
    _still_serving(client)


@pytest.mark.parametrize("path", [
    "/thumbs/../../../etc/passwd", "/thumbs/..%2f..%2f..%2fetc%2fpasswd.jpg", "/thumbs/%2e%2e%2fconfig.json",
    "/api/items/..%2f1", "/api/items/1%2f..%2f..", "/thumbs/1.jpg%2f..%2f..%2fconfig.json", "/%2e%2e/%2e%2e/etc/passwd",
    "/thumbs/", "/thumbs", "/api/", "/runs/", "/static/", "/thumbs/-1.jpg",
])
def test_dot_dot_and_encoded_slashes_are_404_and_serve_no_file(client, demo_run, path):
    r = client.get(path)
    _refused(r, 404)
    assert b"root:" not in r.content and b"config_hash" not in r.content  # /etc/passwd or a run's config.json
    _still_serving(client)


def test_unknown_method_and_route_are_json(client):
    _refused(client.delete("/api/search"), 405)
    _refused(client.get("/nothing/here"), 404)
    assert client.get("/favicon.ico").status_code == 204


def test_repeated_searches_give_the_same_answer(client):
    first = client.get("/api/search", params={"text": "sea", "k": 5}).json()["results"]
    second = client.get("/api/search", params={"text": "sea", "k": 5}).json()["results"]
    assert first == second



def _sideways_with_orientation(picture: Path, out: Path) -> Path:
    """The picture stored turned a quarter, with EXIF orientation 6 saying how to turn it upright (a phone photo)."""
    with Image.open(picture) as im:
        stored = im.convert("RGB").transpose(Image.Transpose.ROTATE_90)
    exif = Image.Exif()
    exif[0x0112] = 6
    stored.save(out, exif=exif)
    return out


def _sixteen_bit_grey(picture: Path, out: Path) -> Path:
    import numpy as np

    with Image.open(picture) as im:
        grey = np.asarray(im.convert("L"), dtype=np.uint16) * 257
    Image.fromarray(grey).save(out)
    return out


@pytest.mark.parametrize("variant", ["exif-rotated", "16-bit"])
def test_an_uploaded_picture_is_read_as_cmh_query_reads_the_file(client, demo_run, tmp_path, variant):
    """The upload and `cmh query --image` read one file the same way: upright by its EXIF orientation, 16-bit
    samples scaled (the upload path converted to RGB as stored: sideways, or nearly white)."""
    picture = _picture(demo_run, row=3)
    if variant == "exif-rotated":
        query_file = _sideways_with_orientation(picture, tmp_path / "sideways.png")
        expected = query_run(demo_run.cache, demo_run.run_id, image=picture, top_k=5)  # the upright picture
    else:
        query_file = _sixteen_bit_grey(picture, tmp_path / "grey16.png")
        expected = query_run(demo_run.cache, demo_run.run_id, image=_eight_bit_grey(picture, tmp_path), top_k=5)
    assert query_run(demo_run.cache, demo_run.run_id, image=query_file, top_k=5) == expected
    r = client.post("/api/search?k=5", content=query_file.read_bytes(), headers={"content-type": "image/png"})
    assert r.status_code == 200, r.text
    assert [(x["item_id"], x["hamming"]) for x in r.json()["results"]] == [(row[1], row[2]) for row in expected]


def _eight_bit_grey(picture: Path, tmp_path: Path) -> Path:
    out = tmp_path / "grey8.png"
    with Image.open(picture) as im:
        im.convert("L").save(out)
    return out
