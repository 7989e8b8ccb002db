"""Eighth polish: faults a review noted and left alone.

* every error of the search service, down to what its HTTP parser refuses, is the service's
  ``{"error", "fix"}`` with its status (the page shows it above its search box), and a client that goes away
  mid-upload costs no traceback;
"""
from __future__ import annotations

import socket
import threading
import time
from typing import Any

import pytest


# -- 1: one error shape for every answer of `cmh serve` -----------------------------------------------------------
class _StubService:
    """What the app reads of a loaded run, without loading one: every search is refused."""

    def __init__(self) -> None:
        from pipeline.orchestration.serving.service import Limits

        self.limits = Limits(max_body_bytes=1000)

    def info(self) -> dict[str, Any]:
        return {"run": "stub-run", "method": "baseline", "bits": 16, "dataset": "stub", "n": 10,
                "search": {"text": "exact", "image": "exact"}, "approximate": {"text": False, "image": False},
                "max_k": 10}

    def check_fresh(self) -> None:
        pass

    async def search_text(self, text: str | None, k: str | None) -> dict[str, Any]:
        from pipeline.orchestration.serving.refusals import Refusal

        raise Refusal(400, "no word of the text is known", "try close terms: sea")

    async def search_image(self, data: bytes, k: str | None, *, preview: bool = False) -> dict[str, Any]:
        from pipeline.orchestration.serving.refusals import Refusal

        raise Refusal(400, "not a picture", "send one")


@pytest.fixture(scope="module")
def stub_client():
    from starlette.testclient import TestClient

    from pipeline.orchestration.serving.app import build_app

    with TestClient(build_app(_StubService()), raise_server_exceptions=True) as client:
        yield client


def _json_error(response, status: int) -> dict:
    assert response.status_code == status, (response.status_code, response.text[:300])
    assert response.headers["content-type"].startswith("application/json"), response.headers
    body = response.json()
    assert set(body) >= {"error", "fix"} and body["error"] and body["fix"], body
    assert "\n" not in body["error"] + body["fix"]
    return body


def _page_error(response, status: int, error: str) -> None:
    assert response.status_code == status, (response.status_code, response.text[:300])
    assert response.headers["content-type"].startswith("text/html")
    assert '<div class="error" role="alert"><b>' + error in response.text and 'class="fix"' in response.text
    assert 'name="text"' in response.text  # the whole page, its search box under the error


def test_the_api_answers_route_method_and_size_refusals_in_the_service_shape(stub_client):
    assert _json_error(stub_client.get("/nothing/here"), 404)["error"] == "nothing at /nothing/here"
    r = stub_client.put("/api/search")
    assert _json_error(r, 405)["error"] == "PUT is not served at /api/search" and "GET" in r.headers["allow"]
    big = b"\0" * 2000
    body = _json_error(stub_client.post("/api/search", content=big, headers={"content-type": "image/jpeg"}), 413)
    assert "--max-upload-mb" in body["fix"]
    assert _json_error(stub_client.get("/api/search", params={"bits": "32"}), 400)["error"].endswith("'bits'")


def test_the_page_shows_its_refusals_on_the_page_with_their_status(stub_client):
    _page_error(stub_client.put("/"), 405, "PUT is not served at /")
    # an upload over the limit from the page's own form: the page again, not a JSON document in the browser
    r = stub_client.post("/?k=5", files={"image": ("big.jpg", b"\0" * 2000, "image/jpeg")})
    _page_error(r, 413, "the request body is")
    assert 'value="5"' in r.text  # what was asked stays in the form
    _page_error(stub_client.get("/", params={"text": "zzz"}), 400, "no word of the text is known")
    assert stub_client.get("/").status_code == 200


def test_a_client_gone_mid_upload_is_one_log_line_not_a_traceback(caplog):
    import anyio

    from pipeline.orchestration.serving.app import build_app

    sent: list[dict] = []

    async def receive() -> dict:
        return {"type": "http.disconnect"}

    async def send(message: dict) -> None:
        sent.append(message)

    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST", "scheme": "http",
             "path": "/api/search", "raw_path": b"/api/search", "query_string": b"", "root_path": "",
             "headers": [(b"content-type", b"image/jpeg"), (b"host", b"testserver")], "client": ("t", 1),
             "server": ("testserver", 80)}
    with caplog.at_level("INFO"):
        anyio.run(build_app(_StubService()), scope, receive, send)  # before: ClientDisconnect raised, a 500 logged
    assert not any(r.exc_info for r in caplog.records), [r.getMessage() for r in caplog.records]
    assert [r.getMessage() for r in caplog.records if "went away" in r.getMessage()] == [
        "POST /api/search: the client went away before its request body arrived; nothing answered"]


def _raw(port: int, data: bytes) -> tuple[bytes, dict[bytes, bytes], bytes]:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(data)
        out = b""
        while chunk := s.recv(65536):
            out += chunk
    head, _, body = out.partition(b"\r\n\r\n")
    status, *lines = head.split(b"\r\n")
    return status, dict(line.lower().split(b": ", 1) for line in lines), body


@pytest.mark.parametrize("parser", ["httptools", "h11"])
def test_what_the_http_parser_refuses_is_400_in_the_service_shape(parser):
    import json

    import uvicorn

    from pipeline.orchestration.serving import protocol
    from pipeline.orchestration.serving.app import build_app
    from pipeline.orchestration.serving.server import bind

    if parser == "httptools":
        pytest.importorskip("httptools")
    cls = protocol.httptools_protocol() if parser == "httptools" else protocol.h11_protocol()
    sock = bind("127.0.0.1", 0)
    server = uvicorn.Server(uvicorn.Config(build_app(_StubService()), http=cls, log_config=None, access_log=False,
                                           lifespan="off"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 20
        while not server.started:
            assert thread.is_alive() and time.monotonic() < deadline, "the test server did not start"
            time.sleep(0.02)
        port = sock.getsockname()[1]
        for request in (b"NOT HTTP AT ALL\r\n\r\n",  # before: text/plain "Invalid HTTP request received."
                        b"GET / HTTP/1.1\r\nHost: x\r\nBad Header: \x01\r\n\r\n",
                        b"POST /api/search HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab",
                        b"POST /api/search HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nab\r\n"):
            status, headers, body = _raw(port, request)
            assert status == b"HTTP/1.1 400 Bad Request", (request, status, body)
            assert headers[b"content-type"] == b"application/json" and int(headers[b"content-length"]) == len(body)
            assert json.loads(body) == protocol.NOT_HTTP.body()
        status, headers, body = _raw(port, b"GET /nothing HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        assert status.startswith(b"HTTP/1.1 404") and json.loads(body)["error"] == "nothing at /nothing"
    finally:
        server.should_exit = True
        thread.join(timeout=20)
        sock.close()
