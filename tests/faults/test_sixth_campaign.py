"""Sixth fault campaign: the search service's query parameters, its lifecycle (a run removed while served, a
thumbnail store that cannot be written), `cmh serve` options, a run folder of another cache, a dataset
that is not cached, and `cmh report --gallery-seed`.

Each case runs on the fault cases' built collection (40 tag pairs, alexnet + bow, a 16-bit baseline run).
A refused command ends in one ``error:`` line naming the fix; a refused request is JSON ``{"error", "fix"}``
with its status, and the service answers the next request as before.
"""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tests.faults.conftest import one_line_error


@pytest.fixture(scope="module")
def served(_built, tmp_path_factory):
    """A test client over a service loaded once from a private copy of the built cache (read-only cases)."""
    from starlette.testclient import TestClient

    from pipeline.ground.store.cache import Cache
    from pipeline.orchestration.serving.app import build_app
    from pipeline.orchestration.serving.service import SearchService

    copy = tmp_path_factory.mktemp("sixth") / "cache"
    shutil.copytree(_built[1], copy)
    run = next(p.name for p in (copy / "runs").iterdir())
    service = SearchService(Cache(copy), run)
    with TestClient(build_app(service)) as client:
        yield client, service
    service.close()


def _service(cache: Path, run: str):
    from starlette.testclient import TestClient

    from pipeline.ground.store.cache import Cache
    from pipeline.orchestration.serving.app import build_app
    from pipeline.orchestration.serving.service import Limits, SearchService

    service = SearchService(Cache(cache), run, limits=Limits(freshness_s=0))
    return service, TestClient(build_app(service))


def _refused(response, status: int) -> dict:
    assert response.status_code == status, (response.status_code, response.text[:300])
    body = response.json()
    assert set(body) >= {"error", "fix"} and body["error"] and body["fix"], body
    return body


def _picture() -> bytes:
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (24, 24), (200, 30, 30)).save(buf, format="PNG")
    return buf.getvalue()


# -- the API's query parameters ------------------------------------------------------------------------------
@pytest.mark.parametrize("query, named", [("text=dog&text=cat", "'text' is given twice"),
                                          ("text=dog&k=1&k=2", "'k' is given twice"),
                                          ("text=dog&bits=32", "'bits'"),
                                          ("text=dog&run=other-run", "'run'")])
def test_a_search_parameter_given_twice_or_not_read_is_400_not_ignored(served, query, named):
    client, _ = served
    body = _refused(client.get(f"/api/search?{query}"), 400)
    assert named in body["error"], body
    assert client.get("/?" + query).status_code == 400  # the page says the same above its search box
    assert client.get("/api/search?text=dog&k=2").status_code == 200


def test_a_picture_search_with_a_text_is_400_not_a_picture_search_alone(served):
    client, _ = served
    body = _refused(client.post("/api/search?k=2&text=dog", content=_picture(), headers={"content-type": "image/png"}),
                    400)
    assert "'text'" in body["error"] and "GET" in body["fix"], body
    assert client.post("/api/search?k=2", content=_picture(), headers={"content-type": "image/png"}).status_code == 200


@pytest.mark.parametrize("k", ["1_0", " 3", "3 ", "\u0663", "+3"])
def test_k_is_read_as_decimal_digits_only(served, k):
    client, service = served
    body = _refused(client.get("/api/search", params={"text": "dog", "k": k}), 400)
    assert "whole number" in body["error"] and str(service.searcher.n) in body["fix"], body


def test_a_k_of_thousands_of_digits_is_out_of_range_not_a_server_error(served):
    client, _ = served
    body = _refused(client.get("/api/search", params={"text": "dog", "k": "9" * 5000}), 400)
    assert "out of range" in body["error"] and len(body["error"]) < 200, body


# -- the service's lifecycle ---------------------------------------------------------------------------------
def test_a_run_removed_while_served_is_409_saying_removed_not_trained_again(cli, built):
    _, cache, run = built
    service, client = _service(cache, run)
    with client:
        assert client.get("/api/search", params={"text": "dog"}).status_code == 200
        assert cli("rm", run, "--cache", cache, "--yes").code == 0
        for response in (client.get("/api/search", params={"text": "dog"}), client.get("/api/items/0")):
            body = _refused(response, 409)
            assert "removed" in body["error"] and "trained again" not in body["error"], body
            assert "cmh train" in body["fix"] and "cmh ls" in body["fix"], body
        health = client.get("/health").json()
        assert health["status"] == "stale" and "removed" in health["stale"], health
    service.close()


def test_a_thumbnail_store_that_cannot_be_written_is_503_json_and_searches_go_on(built):
    _, cache, run = built
    reports = cache / "reports"
    reports.mkdir(exist_ok=True)
    (reports / "pairs").write_text("a file where the dataset's thumbnail folder goes")
    service, client = _service(cache, run)
    with client:
        body = _refused(client.get("/thumbs/0.jpg"), 503)
        assert str(reports / "pairs" / "thumbs") in body["error"] and "writable folder" in body["fix"], body
        assert client.get("/api/search", params={"text": "dog"}).status_code == 200
        (reports / "pairs").unlink()
        assert client.get("/thumbs/0.jpg").headers["content-type"] == "image/jpeg"
    service.close()


# -- `cmh serve` options -------------------------------------------------------------------------------------
@pytest.mark.parametrize("args, said", [(["--max-upload-mb", "inf"], "--max-upload-mb inf"),
                                        (["--max-upload-mb", "1e-9"], "--max-upload-mb 1e-09"),
                                        (["--host", "nosuch.invalid"], "--host 'nosuch.invalid'")])
def test_serve_options_are_refused_before_the_run_is_loaded(cli, built, monkeypatch, args, said):
    _, cache, run = built
    import pipeline.orchestration.serving.server as server

    def loaded(*_a, **_k):
        raise AssertionError("the run was loaded for a request its options refuse")

    monkeypatch.setattr(server, "SearchService", loaded)
    line = one_line_error(cli("serve", "--run", run, "--cache", cache, "--port", "0", *args))
    assert said in line, line


# -- a run folder of another cache, a dataset not cached -----------------------------------------------------
def test_a_run_folder_of_another_cache_names_that_cache(cli, built, tmp_path):
    _, cache, run = built
    other = tmp_path / "other cache"
    (other / "datasets").mkdir(parents=True)  # a cache without the run's dataset, as the default one may be
    line = one_line_error(cli("query", "--run", cache / "runs" / run, "--cache", other, "--text", "dog"))
    assert f"--cache {cache}" in line or f"--cache '{cache}'" in line, line
    assert "extract" not in line, line
    result = cli("query", "--run", f"{cache / 'runs' / run}/", "--cache", cache, "--text", "dog", "--top-k", "2")
    assert result.code == 0 and "dog" in result.out, result.err


@pytest.mark.parametrize("command", ["query", "index"])
def test_a_dataset_that_is_not_cached_is_named_so_not_sent_to_cmh_encode(cli, built, command):
    _, cache, run = built
    extra = ["--text", "dog"] if command == "query" else []
    line = one_line_error(cli(command, "--run", run, "--cache", cache, "--dataset", "pair", *extra))
    assert "no cached dataset 'pair'" in line and "--dataset pairs" in line and "cmh encode" not in line, line


# -- `cmh report` ----------------------------------------------------------------------------------------------
def test_a_negative_gallery_seed_is_one_line_before_the_table_is_written(cli, built):
    _, cache, _ = built
    line = one_line_error(cli("report", "--dataset", "pairs", "--cache", cache, "--html", "--gallery-seed", "-1"))
    assert "--gallery-seed -1" in line, line
    assert not (cache / "reports").exists() or not any((cache / "reports").iterdir())


# -- `cmh ls` ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("lost", ["config.json", "model.pt"])
def test_a_run_with_its_report_but_not_its_config_or_model_is_listed_damaged_not_complete(cli, built, lost):
    _, cache, run = built
    (cache / "runs" / run / lost).unlink()  # by hand, or a `cmh rm` killed half-way through the folder
    result = cli("ls", "--cache", cache, "--kind", "runs")
    assert result.code == 0, result.err
    line = next(line for line in result.out.splitlines() if run in line)
    assert line.endswith("damaged"), line
    assert "(0 complete)" in result.out, result.out


# -- a home folder that cannot be found ----------------------------------------------------------------------
@pytest.mark.parametrize("how", ["--cache", "CMH_CACHE", "--data-dir", "empty HOME"])
def test_a_tilde_naming_no_home_is_one_line_not_a_traceback_nor_the_root_folder(cli, monkeypatch, tmp_path, how):
    args = ["extract", "--dataset", "pairs", "--encoders", "bow"]
    if how == "--cache":
        args += ["--cache", "~nosuchuser-cmh/cache", "--data-dir", tmp_path]
    elif how == "CMH_CACHE":
        monkeypatch.setenv("CMH_CACHE", "~nosuchuser-cmh/cache")
        args += ["--data-dir", tmp_path]
    elif how == "--data-dir":
        args += ["--cache", tmp_path / "cache", "--data-dir", "~nosuchuser-cmh/data"]
    else:
        monkeypatch.setenv("HOME", "")  # pathlib would expand ~/cmh-cache to /cmh-cache
        args += ["--cache", "~/cmh-cache", "--data-dir", tmp_path]
    line = one_line_error(cli(*args))
    assert "write the path out in full" in line, line
    assert not Path("/cmh-cache").exists()


# -- lists of numbers -------------------------------------------------------------------------------------------
def test_code_lengths_separated_by_a_blank_are_two_lengths_not_one(cli, built):
    _, cache, run = built
    result = cli("train", "--method", "baseline", "--dataset", "pairs", "--bits", "16 8", "--cache", cache)
    assert result.code == 0, result.err
    bits = sorted(p.name.split("-")[2] for p in (cache / "runs").iterdir())
    assert bits == ["16b", "8b"], bits  # BITS='16 8' once trained a single 168-bit run


# -- a copy of a run folder ------------------------------------------------------------------------------------
def test_a_copy_of_a_run_folder_is_not_counted_as_a_second_seed(cli, built, caplog):
    _, cache, run = built
    shutil.copytree(cache / "runs" / run, cache / "runs" / f"{run}.bak")  # a backup before retraining
    result = cli("report", "--dataset", "pairs", "--cache", cache)
    assert result.code == 0, result.err
    assert "n=1;" in result.out and "n=2" not in result.out, result.out
    assert f"{run}.bak holds run {run} under another name" in caplog.text, caplog.text


# -- `cmh demo --methods` --------------------------------------------------------------------------------------
@pytest.mark.parametrize("methods, said", [("nosuch", "unknown method 'nosuch'"), ("", "--methods is empty"),
                                           ("baseline,baseline", "baseline more than once")])
def test_demo_methods_are_checked_before_the_demo_set_is_made(cli, tmp_path, methods, said):
    cache = tmp_path / "cache"
    line = one_line_error(cli("demo", "--methods", methods, "--cache", cache))
    assert said in line, line
    assert not cache.exists()  # no demo set generated, no features extracted
