"""`cmh serve` as a user runs it: it starts, answers, and stops cleanly on SIGTERM or Ctrl-C; a stale run is
refused before the port is bound; a port in use or a public host are said in one line."""
from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import pytest

from tests.faults.conftest import cli, one_line_error  # noqa: F401  (the in-process CLI fixture)

REPO = Path(__file__).resolve().parents[2]
SERVING = re.compile(r"serving run \S+ .* on http://(?P<host>[^/]+):(?P<port>\d+)/")


class Served:
    """`cmh serve` in its own process; its stderr read by a thread so the pipe never fills."""

    def __init__(self, *args: str) -> None:
        self.proc = subprocess.Popen([sys.executable, "-m", "pipeline", "serve", *args], cwd=REPO, text=True,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
        self.lines: list[str] = []
        self.reader = threading.Thread(target=lambda: self.lines.extend(self.proc.stderr), daemon=True)
        self.reader.start()

    def port(self, timeout: float = 180) -> int:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for line in list(self.lines):
                match = SERVING.search(line)
                if match:
                    return int(match["port"])
            if self.proc.poll() is not None:
                break
            time.sleep(0.1)
        self.kill()
        pytest.fail(f"cmh serve did not start: {''.join(self.lines)[-3000:]}")

    def stop(self, sig: int, timeout: float = 60) -> int:
        self.proc.send_signal(sig)
        try:
            code = self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            pytest.fail(f"cmh serve did not stop within {timeout} s of signal {sig}")
        self.reader.join(timeout=10)
        return code

    def kill(self) -> None:
        os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait()

    @property
    def err(self) -> str:
        return "".join(self.lines)


@pytest.mark.parametrize("sig, host", [(signal.SIGTERM, "127.0.0.1"), (signal.SIGINT, "0.0.0.0")])
def test_serve_answers_then_stops_cleanly_on_a_signal(demo_run, sig, host):
    served = Served("--run", demo_run.run_id, "--cache", str(demo_run.cache.root), "--port", "0", "--host", host)
    port = served.port()
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=30) as r:
        assert json.load(r)["run"] == demo_run.run_id
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/search?text=sky&k=3", timeout=30) as r:
        assert len(json.load(r)["results"]) == 3
    code = served.stop(sig)
    assert code == 0, served.err[-3000:]
    assert f"stopped ({signal.Signals(sig).name})" in served.err and "Traceback" not in served.err
    public = "warning: serving on 0.0.0.0" in served.err
    assert public == (host == "0.0.0.0")
    with socket.socket() as s:  # the port is free again
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("127.0.0.1", port))


def _occupied_port() -> socket.socket:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen(1)
    return s


def test_a_stale_index_is_refused_before_the_port_is_bound(cli, private_run):  # noqa: F811
    from pipeline.orchestration.indexing import build_indexes

    (image_index, *_) = build_indexes(private_run.cache, private_run.run_id, kind="flat")
    record = image_index.path.with_suffix(".json")
    record.write_text(record.read_text().replace('"bits": 16', '"bits": 32'))
    with _occupied_port() as taken:  # the refusal is about the index, so it came before any bind
        line = one_line_error(cli("serve", "--run", private_run.run_id, "--cache", private_run.cache.root,
                                  "--port", taken.getsockname()[1]))
    assert "cmh index" in line and "port" not in line


def test_a_port_in_use_is_one_line_naming_the_fix(cli, demo_run):  # noqa: F811
    with _occupied_port() as taken:
        port = taken.getsockname()[1]
        line = one_line_error(cli("serve", "--run", demo_run.run_id, "--cache", demo_run.cache.root, "--port", port))
    assert f"port {port}" in line and "in use" in line and "--port" in line


@pytest.mark.parametrize("args, expect", [(["--port", "70000"], "--port 70000"),
                                          (["--max-upload-mb", "0"], "--max-upload-mb"),
                                          (["--host", "no-such-host.invalid"], "not an IP address"),
                                          (["--host", "10.255.255.254"], "not an address of this machine")])
def test_bad_options_are_one_line(cli, demo_run, args, expect):  # noqa: F811
    line = one_line_error(cli("serve", "--run", demo_run.run_id, "--cache", demo_run.cache.root, *args))
    assert expect in line


def test_an_unknown_run_is_one_line(cli, demo_run):  # noqa: F811
    line = one_line_error(cli("serve", "--run", "nope", "--cache", demo_run.cache.root))
    assert "no run 'nope'" in line and demo_run.run_id in line
