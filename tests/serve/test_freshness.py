"""A stale run is refused at start exactly as `cmh query` refuses it; a run retrained, re-encoded or re-indexed
while it is served turns searches into 409 naming the restart, and the service keeps answering /health."""
from __future__ import annotations

import pytest
from starlette.testclient import TestClient

from pipeline.ground.errors import CacheError
from pipeline.orchestration.indexing import build_indexes
from pipeline.orchestration.query import query_run
from pipeline.orchestration.serving.app import build_app
from pipeline.orchestration.serving.service import Limits, SearchService


def _client(run, **kwargs):
    service = SearchService(run.cache, run.run_id, limits=Limits(freshness_s=0), **kwargs)
    return service, TestClient(build_app(service))


def _assert_409(client, service):
    for r in (client.get("/api/search", params={"text": "sky"}),
              client.post("/api/search", content=b"x", headers={"content-type": "image/png"}),
              client.get("/?text=sky")):
        assert r.status_code == 409, r.text[:300]
        assert service.restart_command() in r.text and "cmh serve --run" in r.text
    health = client.get("/health")
    assert health.status_code == 200 and health.json()["status"] == "stale" and health.json()["stale"]


def test_retrained_while_serving_is_409_naming_the_restart(private_run):
    from pipeline.orchestration.training import TrainRequest, train_runs

    service, client = _client(private_run)
    with client:
        assert client.get("/api/search", params={"text": "sky"}).status_code == 200
        train_runs(private_run.cache, TrainRequest(dataset="demo", method="baseline", bits=(16,), force=True,
                                                   progress=False))
        _assert_409(client, service)
        assert "trained again" in client.get("/api/search", params={"text": "sky"}).json()["error"]
    service.close()


def test_indexed_while_serving_is_409(private_run):
    service, client = _client(private_run)
    with client:
        assert client.get("/api/search", params={"text": "sky"}).json()["search"] == "exact"
        build_indexes(private_run.cache, private_run.run_id, kind="flat")
        _assert_409(client, service)
        assert "index" in client.get("/api/search", params={"text": "sky"}).json()["error"]
    service.close()
    service, client = _client(private_run)  # the restart the message names: the index is used
    with client:
        assert client.get("/api/search", params={"text": "sky"}).json()["search"] == "flat"
    service.close()


def test_re_encoded_while_serving_is_409(private_run):
    from pipeline.orchestration.encoding import encode_dataset

    encode_dataset(private_run.cache, private_run.run_id, "demo", progress=False)
    service, client = _client(private_run, dataset="demo")
    with client:
        body = client.get("/api/search", params={"text": "sky"}).json()
        assert body["dataset"] == "demo" and len(body["results"]) == 10
        private_run.cache.run(private_run.run_id).encode_record_path("demo").unlink()  # the next encode starts over
        encode_dataset(private_run.cache, private_run.run_id, "demo", progress=False)
        _assert_409(client, service)
        assert "--dataset demo" in service.restart_command()
    service.close()


def _same_refusal(run, **query_kwargs) -> str:
    """The error of `cmh query`'s use case and of loading the service, asserted to be the same line."""
    with pytest.raises(CacheError) as by_query:
        query_run(run.cache, run.run_id, text="sky", **query_kwargs)
    with pytest.raises(CacheError) as by_service:
        SearchService(run.cache, run.run_id, dataset=query_kwargs.get("dataset"))
    assert str(by_service.value) == str(by_query.value)
    return str(by_service.value)


@pytest.mark.parametrize("damage", ["other bits", "other file"])
def test_a_stale_or_damaged_index_is_refused_at_start_as_cmh_query_refuses_it(private_run, damage):
    (image_index, *_) = build_indexes(private_run.cache, private_run.run_id, kind="flat")
    if damage == "other bits":
        record = image_index.path.with_suffix(".json")
        record.write_text(record.read_text().replace('"bits": 16', '"bits": 32'))
    else:
        image_index.path.write_bytes(image_index.path.read_bytes()[:-8])
    assert "cmh index" in _same_refusal(private_run)


def test_an_unfinished_run_and_an_encoding_never_made_are_refused_as_cmh_query_does(private_run):
    assert "has not encoded" in _same_refusal(private_run, dataset="demo")
    run_dir = private_run.cache.run(private_run.run_id)
    run_dir.model_path.unlink()
    assert "incomplete" in _same_refusal(private_run)
