"""The search service over a small demo run: a cache built once (demo data, alexnet + bow, a 16-bit
baseline run), a loaded service, its test client, and a real server on a free port for the tests
that need sockets (load, browser)."""
from __future__ import annotations

import shutil
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import pytest

from pipeline.ground.store.cache import Cache

DATASET = "demo"
N_ITEMS = 120


@dataclass
class DemoRun:
    cache: Cache
    run_id: str


def build_demo_run(root: Path) -> DemoRun:
    from pipeline.orchestration.training import TrainRequest, train_runs
    from stages.extract import create_encoder
    from stages.extract.runner import run_extraction
    from stages.prepare import DatasetRequest, prepare_dataset

    cache = Cache(root)
    items, splits = prepare_dataset(cache, DatasetRequest(dataset=DATASET, data_dir=root / "demo-data",
                                                          options={"n_items": N_ITEMS, "size": 64}))
    for name in ("alexnet", "bow"):
        run_extraction(cache, items, splits, create_encoder(name), workers=0, progress=False)
    (result,) = train_runs(cache, TrainRequest(dataset=DATASET, method="baseline", bits=(16,), progress=False))
    return DemoRun(cache, result.run_id)


@pytest.fixture(scope="session")
def demo_run(tmp_path_factory) -> DemoRun:
    """Built once per session; tests that change files on disk take ``private_run`` instead."""
    return build_demo_run(tmp_path_factory.mktemp("serve") / "cache")


@pytest.fixture
def private_run(demo_run, tmp_path) -> DemoRun:
    """A copy of the demo cache this test may change (retrain, re-index) without touching the others'."""
    copy = tmp_path / "cache"
    shutil.copytree(demo_run.cache.root, copy, symlinks=True)
    return DemoRun(Cache(copy), demo_run.run_id)


@pytest.fixture(scope="session")
def service(demo_run):
    from pipeline.orchestration.serving.service import SearchService

    loaded = SearchService(demo_run.cache, demo_run.run_id)
    yield loaded
    loaded.close()


@pytest.fixture(scope="session")
def client(service):
    from starlette.testclient import TestClient

    from pipeline.orchestration.serving.app import build_app

    with TestClient(build_app(service)) as test_client:
        yield test_client


class ServerThread:
    """uvicorn serving ``service`` on 127.0.0.1 and a free port, in a thread of this process."""

    def __init__(self, service) -> None:
        import uvicorn

        from pipeline.orchestration.serving.app import build_app
        from pipeline.orchestration.serving.server import bind

        self.sock = bind("127.0.0.1", 0)
        self.port = self.sock.getsockname()[1]
        self.server = uvicorn.Server(uvicorn.Config(build_app(service), log_config=None, access_log=False,
                                                    lifespan="off"))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True)

    def __enter__(self) -> "ServerThread":
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("the test server did not start within 30 s")
            time.sleep(0.05)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)
        self.sock.close()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


@pytest.fixture(scope="session")
def live_server(service) -> Iterator[ServerThread]:
    with ServerThread(service) as server:
        yield server
