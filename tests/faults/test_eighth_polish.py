"""Eighth polish: faults a review noted and left alone.

* every error of the search service, down to what its HTTP parser refuses, is the service's
  ``{"error", "fix"}`` with its status (the page shows it above its search box), and a client that goes away
  mid-upload costs no traceback;
* `cmh rm --kind datasets` and an extract or encode of the dataset exclude each other through the dataset's lock,
  each refused in one line naming the other's pid; a record a killed holder left is taken over in one log line;
* `alexnet.imagenet` and `alexnet` in a feature spec train one run, spelled as the published runs are, whose ids
  all come back unchanged;
* a feature shard whose footer or item ids cannot be read is "unreadable (...)" in one wording, from one place.
"""
from __future__ import annotations

import os
import socket
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from tests.faults.conftest import REPO, DatasetHolder, one_line_error, write_pairs


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


# -- 2: removing a dataset against an extract or encode of it ----------------------------------------------------
def _cached_dataset(cache: Path) -> Path:
    """What `cmh rm --kind datasets` sees of a dataset: its folder with an item table."""
    folder = cache / "datasets" / "dataset=pairs"
    folder.mkdir(parents=True)
    (folder / "items.parquet").write_bytes(b"items")
    return folder


def test_rm_of_a_dataset_an_encode_reads_is_refused_naming_the_encode(cli, tmp_path):
    folder = _cached_dataset(tmp_path / "cache")
    with DatasetHolder(tmp_path / "cache", "encoding") as pid:  # before: removed under the encode, which wrote stale codes
        line = one_line_error(cli("rm", "--kind", "datasets", "pairs", "--yes", "--cache", tmp_path / "cache"))
    assert line == (f"error: pairs: dataset 'pairs' is being encoded by process {pid} (lock "
                    f"{tmp_path / 'cache' / 'locks' / 'dataset=pairs.lock'}); wait for it to finish, or stop it, then "
                    f"run the command again; nothing removed")
    assert (folder / "items.parquet").exists()
    assert cli("rm", "--kind", "datasets", "pairs", "--yes", "--cache", tmp_path / "cache").code == 0
    assert not folder.exists()


def test_an_extract_or_encode_while_a_removal_runs_is_refused_naming_the_removal(cli, tmp_path):
    from pipeline.ground.errors import CacheError
    from pipeline.orchestration.encoding import encode_dataset
    from pipeline.ground.store.cache import Cache

    cache = tmp_path / "cache"
    _cached_dataset(cache)
    run = cache / "runs" / "pairs-baseline-16-s1"
    run.mkdir(parents=True)
    (run / "config.json").write_text("{}")
    data = write_pairs(tmp_path / "data", n=8).parent
    with DatasetHolder(cache, "removing") as pid:
        extracted = cli("extract", "--dataset", "pairs", "--data-dir", data, "--cache", cache, "--encoders", "bow",
                        "-o", "dataset.text_kind=tags")
        with pytest.raises(CacheError) as encoded:
            encode_dataset(Cache(cache), run.name, "pairs", progress=False)
    said = f"dataset 'pairs' is being removed by process {pid} (lock {cache / 'locks' / 'dataset=pairs.lock'})"
    assert one_line_error(extracted).startswith(f"error: {said}; wait for it to finish")
    assert str(encoded.value).startswith(said)
    assert not (run / "encoded").exists() and not (run / "train.lock").exists()


def test_a_record_a_killed_holder_left_is_taken_over_in_one_log_line(tmp_path, caplog):
    from pipeline.ground.store.layout import CacheLayout
    from pipeline.ground.store.lock import DatasetLock

    layout = CacheLayout(tmp_path / "cache")
    records = layout.lock_path("pairs").with_suffix(".holders")
    records.mkdir(parents=True)
    (records / "999999-0").write_bytes(b"999999\nencoding\n")  # what a SIGKILLed encode leaves: no flock on it
    with caplog.at_level("INFO"), DatasetLock(layout, "pairs", "removing") as lock:
        assert lock.exclusive(attempts=1)  # the kernel dropped the dead holder's lock: no wait
        assert lock.holders() == []
    said = [r.getMessage() for r in caplog.records]
    assert said == [f"dataset 'pairs': process 999999, encoding it, ended without releasing {records / '999999-0'} "
                    f"(killed?); taken over"]
    assert list(records.iterdir()) == []  # and this holder's own record went with its lock


def test_a_run_lock_a_killed_writer_left_is_taken_over_in_one_log_line(tmp_path, caplog):
    from pipeline.ground.store.checkpoints import LOCK_FILE, run_lock

    folder = tmp_path / "runs" / "pairs-baseline-16-s1"
    folder.mkdir(parents=True)
    (folder / LOCK_FILE).write_bytes(b"999999\ntraining\n")  # a SIGKILLed training: its flock went with it
    with caplog.at_level("INFO"), run_lock(folder, folder.name, "encoding", create=False):
        assert (folder / LOCK_FILE).read_bytes() == f"{os.getpid()}\nencoding\n".encode()
    assert [r.getMessage() for r in caplog.records] == [
        f"run {folder.name}: process 999999, training it, ended without releasing {folder / LOCK_FILE} (killed?); "
        f"taken over"]
    with caplog.at_level("INFO"), run_lock(folder, folder.name, "encoding", create=False):
        pass  # a lock released the usual way is taken with nothing said
    assert len(caplog.records) == 1


# -- 3: one run for `alexnet` and `alexnet.imagenet` ---------------------------------------------------------------
def _published() -> list[tuple[str, dict]]:
    """(run id, first report row) of every published MIRFlickr run, the id from its file name."""
    import pyarrow.parquet as pq

    files = sorted((REPO / "results" / "mirflickr").glob("mirflickr-*.parquet"))
    assert len(files) > 10
    return [(f.name[: -len(".parquet")], pq.read_table(f).slice(0, 1).to_pylist()[0]) for f in files]


def test_alexnet_and_alexnet_imagenet_train_one_run_the_published_one():
    from pipeline.orchestration.training import TrainRequest, feature_identity, planned_run_ids

    def run_id(image: str | None, **kw: Any) -> str:
        return planned_run_ids(TrainRequest(dataset="mirflickr", bits=(16,), seed=1, image=image, device="cpu",
                                            **kw))[0]

    # before: alexnet.imagenet gave eee017b6 and alexnet.imagenet:pool 274b35dc, beside the published ids
    assert run_id("alexnet.imagenet", method="dsprh") == run_id("alexnet", method="dsprh") == \
        run_id(None, method="dsprh") == "mirflickr-dsprh-16b-s1-5b12ddc3"
    assert run_id("alexnet.imagenet:pool", method="baseline") == run_id(" alexnet : pool ", method="baseline") == \
        "mirflickr-baseline-16b-s1-4378cc7d"
    assert feature_identity("alexnet.imagenet:pool,bow") == "alexnet:pool,bow"
    assert feature_identity("clip-vit-b-32.openai") == "clip-vit-b-32.openai"  # clip's weights default to $CLIP_WEIGHTS
    assert run_id("alexnet:pool", method="baseline") != run_id("alexnet", method="baseline")  # other columns


def test_every_published_run_id_comes_back_from_either_spelling_of_its_features():
    from pipeline.orchestration.training import TrainRequest, planned_run_ids

    for run, row in _published():
        epochs = row["epochs"] if row["epochs"] != row["paper_epochs"] else None  # a budget run
        for image in {row["image_features"], row["image_features"].replace("alexnet", "alexnet.imagenet")}:
            req = TrainRequest(dataset="mirflickr", method=row["method"], bits=(row["bits"],), seed=row["seed"],
                               image=image, text=row["text_features"], epochs=epochs, eval_mode=row["eval_mode"],
                               tie=row["tie_rule"], device=row["device"])
            assert planned_run_ids(req) == [run], (image, row["method"])


# -- 4: one wording for a shard that cannot be read ------------------------------------------------------------------
def test_a_shard_whose_footer_or_ids_cannot_be_read_is_unreadable_in_one_wording(tmp_path):
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    from pipeline.ground.store.features import ColumnSpec, FeatureWriter
    from pipeline.ground.store.layout import CacheLayout

    writer = FeatureWriter(CacheLayout(tmp_path / "cache"), "d", "e", encoder_config={},
                           columns={"v": ColumnSpec(4, "float16", "image")}, default_columns={"image": ["v"]},
                           dataset_fingerprint="x", splits={"query": np.arange(3)})
    good = tmp_path / "good.parquet"
    vectors = pa.FixedSizeListArray.from_arrays(pa.array(np.zeros(12, np.float16)), 4)
    pq.write_table(pa.table({"item_id": pa.array(np.arange(3, dtype=np.int64)), "v": vectors}), good,
                   compression="none")
    assert writer.shard_problem(good, 3) is None
    footer = tmp_path / "footer.parquet"
    footer.write_bytes(b"not a parquet file")
    ids = tmp_path / "ids.parquet"  # its footer intact, the item_id page overwritten
    raw = bytearray(good.read_bytes())
    chunk = pq.ParquetFile(good).metadata.row_group(0).column(0)
    raw[chunk.data_page_offset:chunk.data_page_offset + chunk.total_compressed_size] = \
        b"\xff" * chunk.total_compressed_size
    ids.write_bytes(bytes(raw))
    said = {path.name: writer.shard_problem(path, 3) for path in (footer, ids)}
    assert said["footer.parquet"].startswith("unreadable (") and "magic bytes" in said["footer.parquet"], said
    assert said["ids.parquet"].startswith("unreadable (") and said["ids.parquet"].endswith(")"), said
    assert "magic bytes" not in said["ids.parquet"] and "\n" not in said["ids.parquet"]
