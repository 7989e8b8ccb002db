"""A bounded load test on a real socket: 400 requests from 8 clients, every one answered, none 5xx, and the
model never entered by two threads at once. Bounded in count and in time; nothing here is timed as a pass mark."""
from __future__ import annotations

import http.client
import json
import threading
import time
import uuid
from collections import Counter
from pathlib import Path

CLIENTS = 8
PER_CLIENT = 50
DEADLINE_S = 240


class Overlap:
    """Wraps a callable and records the most threads ever inside it at once."""

    def __init__(self, fn) -> None:
        self.fn = fn
        self.inside = 0
        self.most = 0
        self.calls = 0
        self.lock = threading.Lock()

    def __call__(self, *args, **kwargs):
        with self.lock:
            self.inside += 1
            self.calls += 1
            self.most = max(self.most, self.inside)
        try:
            time.sleep(0.001)  # widen the window an unsynchronised caller would overlap in
            return self.fn(*args, **kwargs)
        finally:
            with self.lock:
                self.inside -= 1


def _multipart(data: bytes) -> tuple[bytes, str]:
    boundary = uuid.uuid4().hex
    body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"image\"; filename=\"q.png\"\r\n"
            f"Content-Type: image/png\r\n\r\n").encode() + data + f"\r\n--{boundary}--\r\n".encode()
    return body, f"multipart/form-data; boundary={boundary}"


def test_400_requests_from_8_clients_all_answered_none_5xx(live_server, service, demo_run, monkeypatch):
    searcher = service.searcher
    guard_method = Overlap(searcher.method.encode)
    monkeypatch.setattr(searcher.method, "encode", guard_method)
    guard_search = Overlap(searcher.search)
    monkeypatch.setattr(searcher, "search", guard_search)
    guard_cnn = Overlap(searcher.encoders["alexnet.imagenet"].encode)
    monkeypatch.setattr(searcher.encoders["alexnet.imagenet"], "encode", guard_cnn)
    items = demo_run.cache.dataset("demo").items
    picture = Path(items.image[0]).read_bytes()
    upload, upload_type = _multipart(picture)
    known = int(searcher.item_ids[0])
    # (method, path, body, content type, the statuses this request may get)
    mix = [("GET", "/api/search?text=sky,sea&k=5", None, None, {200}),
           ("GET", "/api/search?text=dog&k=10", None, None, {200}),
           ("POST", "/api/search?k=5", picture, "image/png", {200}),
           ("POST", "/api/search?k=3", upload, upload_type, {200}),
           ("GET", f"/api/items/{known}", None, None, {200}),
           ("GET", f"/thumbs/{known}.jpg", None, None, {200}),
           ("GET", "/?text=sky", None, None, {200}),
           ("GET", "/api/search?text=qqzx", None, None, {400}),
           ("POST", "/api/search", b"junk", "image/jpeg", {400}),
           ("GET", "/health", None, None, {200})]
    answers: list[tuple[int, int, bool]] = []  # (request index, status, as expected)
    failures: list[str] = []
    lock = threading.Lock()
    deadline = time.monotonic() + DEADLINE_S

    def client(c: int) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", live_server.port, timeout=60)
        try:
            for i in range(PER_CLIENT):
                if time.monotonic() > deadline:
                    return
                method, path, body, ctype, ok = mix[(c + i) % len(mix)]
                try:
                    conn.request(method, path, body=body, headers={"content-type": ctype} if ctype else {})
                    r = conn.getresponse()
                    payload = r.read()
                    if path.startswith("/api") and r.status == 200:
                        json.loads(payload)
                    with lock:
                        answers.append((c * PER_CLIENT + i, r.status, r.status in ok))
                    if r.getheader("connection", "").lower() == "close":
                        conn.close()
                        conn = http.client.HTTPConnection("127.0.0.1", live_server.port, timeout=60)
                except Exception as exc:  # a lost response: recorded, the client goes on with a new connection
                    with lock:
                        failures.append(f"{method} {path}: {type(exc).__name__}: {exc}")
                    conn.close()
                    conn = http.client.HTTPConnection("127.0.0.1", live_server.port, timeout=60)
        finally:
            conn.close()

    threads = [threading.Thread(target=client, args=(c,)) for c in range(CLIENTS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=DEADLINE_S + 30)
    assert not any(t.is_alive() for t in threads), "a client hung"
    assert failures == []
    assert len(answers) == CLIENTS * PER_CLIENT and len({a[0] for a in answers}) == CLIENTS * PER_CLIENT
    statuses = Counter(status for _, status, _ in answers)
    assert not any(status >= 500 for status in statuses), statuses
    assert all(expected for *_, expected in answers), statuses
    assert guard_method.calls >= 100 and guard_method.most == 1  # the model: one thread at a time
    assert guard_search.most == 1 and guard_cnn.calls >= 40 and guard_cnn.most == 1
