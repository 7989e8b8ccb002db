"""The HTTP face of the search service: Starlette routes over a ``SearchService``.

``GET /`` and ``POST /`` are the search page; ``/api/search`` (GET text, POST picture), ``/api/items/{id}``,
``/thumbs/{id}.jpg`` and ``/health`` are the API. Item ids are matched as integers by the router, so
no path (``..``, ``%2f``) ever reaches the file system: a thumbnail is a file the thumbnail store made
for a known item, under the cache. Every error of the API is JSON ``{"error", "fix"}`` with its 4xx
status, Starlette's own (no route, a method not served) and the body limit's 413 included; the page shows
the same error above its search box, with the same status (``answer_refusal``).
"""
from __future__ import annotations

import logging
from typing import Any

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import FileResponse, HTMLResponse, JSONResponse, Response
from starlette.routing import Route

from pipeline.orchestration.serving.body_limit import BodyLimit
from pipeline.orchestration.serving.refusals import Refusal
from pipeline.orchestration.serving.service import SearchService
from pipeline.orchestration.serving.upload import SEND_ONE

log = logging.getLogger(__name__)

ROUTES_HELP = ("the page is /; the API is GET /api/search?text=...&k=..., POST /api/search (a picture), "
               "GET /api/items/{item_id}, GET /thumbs/{item_id}.jpg and GET /health")
#: Thumbnails never change for a given item and run; the browser may keep them for an hour.
THUMB_CACHE = "public, max-age=3600"


def build_app(service: SearchService) -> Any:
    """The ASGI application (Starlette inside the body-size limit) serving ``service``."""

    async def api_search(request: Request) -> Response:
        params = _search_params(request)
        if request.method == "POST":
            answer = await service.search_image(await _upload(request, service), params.get("k"))
        else:
            answer = await service.search_text(params.get("text"), params.get("k"))
        return JSONResponse(answer)

    async def api_item(request: Request) -> Response:
        service.check_fresh()
        return JSONResponse(service.item(request.path_params["item_id"]))

    async def thumb(request: Request) -> Response:
        import anyio.to_thread

        service.check_fresh()
        path = await anyio.to_thread.run_sync(service.thumbnail, request.path_params["item_id"])
        return FileResponse(path, media_type="image/jpeg", headers={"cache-control": THUMB_CACHE})

    async def health(request: Request) -> Response:
        return JSONResponse(service.health())

    async def no_icon(request: Request) -> Response:
        return Response(status_code=204)  # browsers ask for one; the page has none, and that is no error

    def page_html(request: Request, *, answer: dict[str, Any] | None = None, error: Refusal | None = None,
                  headers: dict[str, str] | None = None) -> Response:
        from stages.present.html.search_page import search_page

        params = request.query_params
        html = search_page(service.info(), text=params.get("text") or "", k=params.get("k") or "", answer=answer,
                           error=None if error is None else error.body())
        return HTMLResponse(html, status_code=200 if error is None else error.status, headers=headers)

    async def page(request: Request) -> Response:
        k = request.query_params.get("k")
        text = request.query_params.get("text")
        try:
            _search_params(request)
            if request.method == "POST":
                answer = await service.search_image(await _upload(request, service), k, preview=True)
            else:
                answer = None if text is None else await service.search_text(text, k)
        except Refusal as refusal:
            return page_html(request, error=refusal)
        return page_html(request, answer=answer)

    def answer_refusal(request: Request, refusal: Refusal, headers: dict[str, str] | None = None) -> Response:
        """A refusal as its asker reads it: the page (``/``) shows it above its search box, the API answers JSON."""
        if request.url.path == "/":
            return page_html(request, error=refusal, headers=headers)
        return JSONResponse(refusal.body(), status_code=refusal.status, headers=headers)

    async def refused(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, Refusal)
        return answer_refusal(request, exc)

    async def http_error(request: Request, exc: Exception) -> Response:
        # Starlette's own refusals (no route, a method the route does not serve), in the service's error shape
        assert isinstance(exc, HTTPException)
        path = request.url.path[:200]
        if exc.status_code == 404:
            error = f"nothing at {path}"
        elif exc.status_code == 405:
            error = f"{request.method} is not served at {path}"
        else:
            error = str(exc.detail)
        return answer_refusal(request, Refusal(exc.status_code, error, ROUTES_HELP), headers=exc.headers)

    async def gone(request: Request, exc: Exception) -> Response:
        # the client closed the connection before its body arrived (or the HTTP parser refused the body and
        # answered itself): no one reads an answer, and it is no failure of the server's, so no traceback
        log.info("%s %s: the client went away before its request body arrived; nothing answered",
                 request.method, request.url.path[:200])
        return Response(status_code=400)

    async def failed(request: Request, exc: Exception) -> Response:
        # Starlette raises the exception again after this answer, and the server logs its traceback once. JSON
        # even for the page: rendering the page again could fail as the request did, and then no answer would go out
        return JSONResponse({"error": f"the server failed on this request ({type(exc).__name__})",
                             "fix": "the server log has the traceback; the server keeps serving other requests"},
                            status_code=500)

    routes = [
        Route("/", page, methods=["GET", "POST"]),
        Route("/api/search", api_search, methods=["GET", "POST"]),
        Route("/api/items/{item_id:int}", api_item, methods=["GET"]),
        Route("/thumbs/{item_id:int}.jpg", thumb, methods=["GET"]),
        Route("/health", health, methods=["GET"]),
        Route("/favicon.ico", no_icon, methods=["GET"]),
    ]
    app = Starlette(routes=routes, exception_handlers={Refusal: refused, HTTPException: http_error,
                                                       ClientDisconnect: gone, Exception: failed})
    return BodyLimit(app, service.limits.max_body_bytes,
                     lambda scope, refusal: answer_refusal(Request(scope), refusal))


#: The query parameters a search reads, by method: a picture search (POST) reads no text.
SEARCH_PARAMS = {"GET": ("text", "k"), "POST": ("k",)}


def _search_params(request: Request) -> dict[str, str]:
    """The search's query parameters, each given once; a 400 for one given twice (which would win?) or one the
    search does not read (``bits=32`` or ``run=...`` would be ignored, and the answer taken for what was asked)."""
    allowed = SEARCH_PARAMS[request.method]
    usage = ("GET: text=<tags>&k=<1..N>" if request.method == "GET" else
             "POST: a picture in the body, and k=<1..N> in the URL (a text search is a GET)")
    out: dict[str, str] = {}
    for name, value in request.query_params.multi_items():
        if name not in allowed:
            raise Refusal(400, f"{request.method} {request.url.path} does not read the parameter {name[:40]!r}",
                          f"give only {' and '.join(allowed)}; {usage}")
        if name in out:
            raise Refusal(400, f"the parameter {name!r} is given twice", f"give it once; {usage}")
        out[name] = value
    return out


async def _upload(request: Request, service: SearchService) -> bytes:
    """The picture's bytes: the multipart field ``image``, or the raw body of an image content type."""
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type == "multipart/form-data":
        try:
            form = await request.form(max_files=1, max_fields=8, max_part_size=service.limits.max_body_bytes)
        except HTTPException as exc:  # the multipart parser's own refusals (a malformed body, too many parts)
            raise Refusal(400, f"the multipart body cannot be read ({exc.detail})", SEND_ONE) from None
        try:
            field = form.get("image")
            if field is None or isinstance(field, str):
                raise Refusal(400, "the multipart body has no file field `image`", SEND_ONE)
            return await field.read()
        finally:
            await form.close()
    if content_type.startswith("image/") or content_type == "application/octet-stream":
        return await request.body()
    raise Refusal(400, f"a body of type {content_type or '(none given)'!r} is not a picture upload", SEND_ONE)
