"""An ASGI middleware that refuses a request body over the limit with 413, without reading it whole.

A ``Content-Length`` over the limit is refused before one byte of the body is read; a body sent
without one (chunked) is counted as it arrives and refused at the first chunk that crosses the limit.
Either way the connection is then closed by the server, so the rest is never read into memory. The
refusal is answered by the app's own ``respond`` (JSON for the API, the search page for the page), so
it reads like every other error of the service.
"""
from __future__ import annotations

from typing import Any, Awaitable, Callable

from pipeline.orchestration.serving.refusals import Refusal

Scope = dict[str, Any]
Message = dict[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
App = Callable[[Scope, Receive, Send], Awaitable[None]]
#: The answer to a request refused here: an ASGI app that sends it (a Starlette ``Response`` is one).
Respond = Callable[[Scope, Refusal], App]


class _TooLarge(Exception):
    pass


class BodyLimit:
    def __init__(self, app: App, max_bytes: int, respond: Respond) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.respond = respond

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        length = dict(scope.get("headers") or []).get(b"content-length")
        if length is not None:
            declared = int(length) if length.isdigit() else None
            if declared is None:
                await self._refuse(scope, send, Refusal(400, "the Content-Length header is not a number",
                                                        "send a well-formed HTTP request"))
                return
            if declared > self.max_bytes:
                await self._too_large(scope, send, declared)
                return
        seen = 0
        answered = False  # the response has started: the app's or our 413

        async def counted_receive() -> Message:
            nonlocal seen, answered
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:
                    if not answered:
                        answered = True
                        await self._too_large(scope, send, None)
                    raise _TooLarge()  # unwinds the app; what it would still send is dropped below
            return message

        async def guarded_send(message: Message) -> None:
            nonlocal answered
            if seen > self.max_bytes:
                return  # the 413 went out already
            if message["type"] == "http.response.start":
                answered = True
            await send(message)

        try:
            await self.app(scope, counted_receive, guarded_send)
        except _TooLarge:
            pass

    async def _too_large(self, scope: Scope, send: Send, declared: int | None) -> None:
        size = f"is {declared / 1e6:.1f} MB" if declared is not None else "goes on past the limit"
        await self._refuse(scope, send, Refusal(
            413, f"the request body {size}; the limit is {self.max_bytes / 1e6:g} MB",
            "send a smaller picture (the search reads it at 224 px), or start the server with a larger --max-upload-mb"))

    async def _refuse(self, scope: Scope, send: Send, refusal: Refusal) -> None:
        async def closing_send(message: Message) -> None:
            if message["type"] == "http.response.start":  # the unread rest of the body is never read: close after
                message = {**message, "headers": [*message.get("headers", []), (b"connection", b"close")]}
            await send(message)

        async def nothing() -> Message:  # a response reads no body
            return {"type": "http.disconnect"}

        await self.respond(scope, refusal)(scope, nothing, closing_send)
