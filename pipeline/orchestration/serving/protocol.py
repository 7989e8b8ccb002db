"""The HTTP parser the server runs: uvicorn's, answering a request it cannot parse in the service's error shape.

uvicorn answers bytes its parser refuses (not HTTP, a bad header, two or a negative ``Content-Length``,
a broken chunked body, HTTP/2's preface) itself, before the app sees a request, with a plain-text
``Invalid HTTP request received.``; the classes here answer the same 400 as JSON ``{"error", "fix"}``.
httptools (C; pinned in the lock) parses, else h11 (pure Python, slower; said, since it costs latency).
"""
from __future__ import annotations

from typing import Callable

from starlette.responses import JSONResponse

from pipeline.orchestration.serving.refusals import Refusal

NOT_HTTP = Refusal(400, "the request is not well-formed HTTP/1.1 (the server's HTTP parser refused it)",
                   "send a well-formed HTTP/1.1 request, as curl or a browser sends it (HTTP/2 is not served)")


def _head(default_headers: list[tuple[bytes, bytes]], body: bytes) -> list[tuple[bytes, bytes]]:
    return [*default_headers, (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()), (b"connection", b"close")]


def http_protocol(say: Callable[[str], None]) -> type:
    """The protocol class for ``uvicorn.Config(http=...)``."""
    try:
        import httptools  # noqa: F401
    except ImportError:
        say("warning: httptools is not installed, so HTTP is parsed by h11 (pure Python, slower): "
            "`pip install -r requirements.lock` installs it")
        return h11_protocol()
    return httptools_protocol()


def httptools_protocol() -> type:
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

    class JsonHttpToolsProtocol(HttpToolsProtocol):
        def send_400_response(self, msg: str) -> None:
            body = JSONResponse(NOT_HTTP.body()).body
            head = b"".join(name + b": " + value + b"\r\n"
                            for name, value in _head(self.server_state.default_headers, body))
            self.transport.write(b"HTTP/1.1 400 Bad Request\r\n" + head + b"\r\n" + body)
            self.transport.close()

    return JsonHttpToolsProtocol


def h11_protocol() -> type:
    import h11
    from uvicorn.protocols.http.h11_impl import H11Protocol

    class JsonH11Protocol(H11Protocol):
        def send_400_response(self, msg: str) -> None:
            body = JSONResponse(NOT_HTTP.body()).body
            for event in (h11.Response(status_code=400, reason=b"Bad Request",
                                       headers=_head(self.server_state.default_headers, body)),
                          h11.Data(data=body), h11.EndOfMessage()):
                self.transport.write(self.conn.send(event))
            self.transport.close()

    return JsonH11Protocol
