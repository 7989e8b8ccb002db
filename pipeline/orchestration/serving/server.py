"""``cmh serve``: load a run once, bind the port, serve the search API and page until interrupted.

The order is what makes a refusal cheap and clear: the run, its encoding and its index are checked
while loading (as ``cmh query`` checks them), before the port is bound, so a stale run never starts
a server. The socket is bound here rather than by uvicorn so that a port in use is one line naming
the fix. SIGINT (Ctrl-C) and SIGTERM both stop the server gracefully: requests in flight are
answered, then the model thread ends and the command returns.
"""
from __future__ import annotations

import errno
import ipaddress
import logging
import math
import signal
import socket
import warnings
from dataclasses import dataclass
from typing import Callable

from pipeline.ground.errors import ConfigError
from pipeline.ground.store.cache import Cache
from pipeline.orchestration.serving.service import Limits, SearchService

log = logging.getLogger(__name__)


@dataclass
class ServeRequest:
    run: str  # run id or folder
    dataset: str | None = None  # search a dataset the run encoded instead of its database
    host: str = "127.0.0.1"
    port: int = 8000
    max_upload_mb: float = 20.0
    access_log: bool = False


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def numeric_host(host: str) -> str:
    """``host`` as the IP address to bind (``localhost`` is 127.0.0.1); ConfigError for anything else, checked
    before the run loads so that a typo costs no model load."""
    numeric = "127.0.0.1" if host == "localhost" else host
    try:
        ipaddress.ip_address(numeric)
    except ValueError:
        raise _not_an_address(host) from None
    return numeric


def _not_an_address(host: str) -> ConfigError:
    return ConfigError(f"--host {host!r} is not an IP address: give one of this machine's, e.g. 127.0.0.1 (this "
                       f"machine only), 0.0.0.0 (every interface) or ::1")


def bind(host: str, port: int) -> socket.socket:
    """A listening socket on ``host:port``; ConfigError naming the fix when it cannot be had. ``host`` is an
    IP address or ``localhost``: no name is looked up, so a typo never waits on a resolver."""
    numeric = numeric_host(host)
    try:
        infos = socket.getaddrinfo(numeric, port, type=socket.SOCK_STREAM,
                                   flags=socket.AI_PASSIVE | socket.AI_NUMERICHOST)
    except socket.gaierror:
        raise _not_an_address(host) from None
    family, kind, proto, _, address = infos[0]
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(address)
        sock.listen(128)
    except OSError as exc:
        sock.close()
        if exc.errno == errno.EADDRINUSE:
            raise ConfigError(f"port {port} on {host} is in use by another program: pass another --port "
                              f"(e.g. --port {port + 1})") from None
        if exc.errno in (errno.EACCES, errno.EPERM):
            raise ConfigError(f"port {port} needs privileges this user lacks: pass a --port above 1023") from None
        if exc.errno == errno.EADDRNOTAVAIL:
            raise ConfigError(f"--host {host} is not an address of this machine: give one of its addresses, or "
                              f"127.0.0.1") from None
        raise
    return sock


def serve(cache: Cache, req: ServeRequest, say: Callable[[str], None] = log.info) -> None:
    """Serve ``req.run`` until SIGINT or SIGTERM; returns after a graceful shutdown."""
    import uvicorn
    from PIL import Image

    from pipeline.orchestration.serving.app import build_app
    from pipeline.orchestration.serving.protocol import http_protocol

    # an upload over the pixel limit is refused from its header; PIL's own warning about it would only be noise
    warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)

    if not 0 <= req.port <= 65535:
        raise ConfigError(f"--port {req.port} is not a TCP port: give 1024-65535 (0 picks a free one)")
    # inf would overflow int() below, and a size under one byte would refuse every upload as "too large"
    if not (math.isfinite(req.max_upload_mb) and req.max_upload_mb * 1_000_000 >= 1):
        raise ConfigError(f"--max-upload-mb {req.max_upload_mb}: give a positive, finite size in MB (e.g. 20)")
    limits = Limits(max_body_bytes=int(req.max_upload_mb * 1_000_000))
    numeric_host(req.host)
    service = SearchService(cache, req.run, dataset=req.dataset, limits=limits, say=say)  # refusals: before binding
    try:
        sock = bind(req.host, req.port)
        host, port = sock.getsockname()[:2]
        if not is_loopback(req.host):
            say(f"warning: serving on {req.host}, not only this machine: anyone who can reach port {port} can search "
                f"run {service.run_id} and see its pictures (the default --host 127.0.0.1 keeps it local)")
        shown = f"[{host}]" if ":" in host else host
        say(f"serving run {service.run_id} ({service.searcher.n} items of {service.searcher.dataset}) on "
            f"http://{shown}:{port}/ (loaded in {service.load_s:.1f}s); Ctrl-C stops")
        config = uvicorn.Config(build_app(service), http=http_protocol(say), log_config=None,
                                access_log=req.access_log, lifespan="off", timeout_graceful_shutdown=10)
        stopped = _run_until_signal(uvicorn.Server(config), sock)
        say(f"stopped ({stopped}): the server shut down cleanly")
    finally:
        service.close()


def _run_until_signal(server: "object", sock: socket.socket) -> str:
    """Run the uvicorn server; which signal stopped it. uvicorn handles SIGINT and SIGTERM itself (a
    graceful shutdown) and raises the signal again afterwards: SIGINT then arrives as KeyboardInterrupt,
    and SIGTERM reaches the handler set here instead of killing the process."""
    received: list[str] = []
    previous = signal.signal(signal.SIGTERM, lambda signum, frame: received.append("SIGTERM"))
    try:
        server.run(sockets=[sock])  # type: ignore[attr-defined]
    except KeyboardInterrupt:
        received.append("SIGINT")
    finally:
        signal.signal(signal.SIGTERM, previous)
        sock.close()
    if received:
        return received[0]
    # a process started with SIGINT ignored (a background job of a shell) gets no KeyboardInterrupt when
    # uvicorn raises the signal again: the signal uvicorn captured says it
    captured = [signal.Signals(s).name for s in getattr(server, "_captured_signals", [])]
    return captured[-1] if captured else "server exit"
