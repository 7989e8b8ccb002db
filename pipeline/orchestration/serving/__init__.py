"""``cmh serve``: a live search service and page over a trained run's codes.

- ``server``      the use case: load the run (refusing a stale one), bind the port, run uvicorn until a signal
- ``service``     the loaded run answering searches, items and thumbnails; one thread runs the model
- ``app``         the Starlette routes (page, API, thumbnails, health) and their JSON errors
- ``body_limit``  an ASGI middleware: a body over the limit is refused with 413 without being read whole
- ``protocol``    uvicorn's HTTP parser, answering a request it cannot parse in the service's error shape
- ``upload``      an uploaded picture: pixel count checked from its header, then decoded
- ``freshness``   whether the run's files on disk are still the ones loaded (409 when not)
- ``refusals``    the error a request gets instead of a result: status, error, fix
"""
from pipeline.orchestration.serving.server import ServeRequest, serve

__all__ = ["ServeRequest", "serve"]
