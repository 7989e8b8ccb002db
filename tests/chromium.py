"""Headless Chromium driven over the DevTools protocol on a pipe: no network port, no extra Python package.

Used by the browser tests (console errors, images that fail to load, page-load time, screenshots) and
by hand for the README screenshot::

    python -m tests.chromium cache/reports/mirflickr.html shot.png --open 'details.run' --height 1800

Chromium reads protocol messages from fd 3 and writes to fd 4, each a JSON object ended by a NUL byte
(``--remote-debugging-pipe``).
"""
from __future__ import annotations

import argparse
import base64
import fcntl
import json
import os
import queue
import shutil
import subprocess
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

BINARIES = ("chromium", "chromium-browser", "google-chrome")
ERROR_LEVELS = ("error", "assert")


def chromium_binary() -> str | None:
    """The first Chromium on PATH, or None."""
    for name in BINARIES:
        found = shutil.which(name)
        if found:
            return found
    return None


class Browser:
    """One headless Chromium process with one page; collects console errors and failed loads."""

    def __init__(self, binary: str, width: int = 1400, height: int = 1000, timeout: float = 60.0) -> None:
        self.timeout = timeout
        self.profile = tempfile.mkdtemp(prefix="cmh-chromium-")
        to_chrome_r, self._to_chrome = os.pipe()
        self._from_chrome, from_chrome_w = os.pipe()
        # the child's ends move above fd 9 so that placing them on 3 and 4 cannot clobber one another
        to_chrome_r, from_chrome_w = (self._high_fd(to_chrome_r), self._high_fd(from_chrome_w))
        args = [binary, "--headless", "--remote-debugging-pipe", "--no-sandbox", "--disable-gpu",
                "--no-first-run", "--no-default-browser-check", "--disable-extensions", "--hide-scrollbars",
                f"--user-data-dir={self.profile}", "about:blank"]
        # bash (dash cannot name fds above 9) moves our pipe ends onto the fds 3 and 4 Chromium expects
        script = f'exec "$@" 3<&{to_chrome_r} 4>&{from_chrome_w} {to_chrome_r}<&- {from_chrome_w}>&-'
        self.proc = subprocess.Popen(["bash", "-c", script, "bash", *args], pass_fds=(to_chrome_r, from_chrome_w),
                                     stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL)
        os.close(to_chrome_r)
        os.close(from_chrome_w)
        self._next_id = 0
        self._replies: dict[int, dict] = {}
        self._events: queue.Queue = queue.Queue()
        self._cond = threading.Condition()
        self.errors: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        target = self.call("Target.createTarget", url="about:blank")["targetId"]
        self.session = self.call("Target.attachToTarget", targetId=target, flatten=True)["sessionId"]
        for domain in ("Page.enable", "Runtime.enable", "Log.enable"):
            self.call(domain, session=True)
        self.call("Emulation.setDeviceMetricsOverride", session=True, width=width, height=height,
                  deviceScaleFactor=1, mobile=False)

    @staticmethod
    def _high_fd(fd: int) -> int:
        high = fcntl.fcntl(fd, fcntl.F_DUPFD, 10)
        os.close(fd)
        return high

    # --- protocol -------------------------------------------------------------------------------------
    def _read(self) -> None:
        buf = b""
        with os.fdopen(self._from_chrome, "rb", buffering=0) as pipe:
            while True:
                chunk = pipe.read(1 << 16)
                if not chunk:
                    break
                buf += chunk
                while b"\0" in buf:
                    raw, buf = buf.split(b"\0", 1)
                    message = json.loads(raw)
                    if "id" in message:
                        with self._cond:
                            self._replies[message["id"]] = message
                            self._cond.notify_all()
                    else:
                        self._note(message)
                        self._events.put(message)

    def _note(self, event: dict) -> None:
        method, params = event.get("method"), event.get("params", {})
        if method == "Runtime.exceptionThrown":
            details = params.get("exceptionDetails", {})
            self.errors.append(f"exception: {details.get('exception', {}).get('description') or details.get('text')}")
        elif method == "Runtime.consoleAPICalled" and params.get("type") in ERROR_LEVELS:
            self.errors.append("console: " + " ".join(str(a.get("value", a.get("description"))) for a in params.get("args", [])))
        elif method == "Log.entryAdded" and params.get("entry", {}).get("level") == "error":
            entry = params["entry"]
            self.errors.append(f"log: {entry.get('text')} {entry.get('url', '')}".strip())

    def call(self, method: str, session: bool = False, **params: Any) -> dict:
        self._next_id += 1
        msg: dict[str, Any] = {"id": self._next_id, "method": method, "params": params}
        if session:
            msg["sessionId"] = self.session
        os.write(self._to_chrome, json.dumps(msg).encode() + b"\0")
        deadline = time.monotonic() + self.timeout
        with self._cond:
            while self._next_id not in self._replies:
                left = deadline - time.monotonic()
                if left <= 0 or self.proc.poll() is not None:
                    raise TimeoutError(f"Chromium did not answer {method} within {self.timeout:.0f} s")
                self._cond.wait(min(left, 0.5))
            reply = self._replies.pop(self._next_id)
        if "error" in reply:
            raise RuntimeError(f"{method}: {reply['error']}")
        return reply.get("result", {})

    def wait_event(self, method: str) -> dict:
        deadline = time.monotonic() + self.timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"no {method} within {self.timeout:.0f} s")
            try:
                event = self._events.get(timeout=min(left, 0.5))
            except queue.Empty:
                continue
            if event.get("method") == method:
                return event

    def evaluate(self, expression: str) -> Any:
        result = self.call("Runtime.evaluate", session=True, expression=expression, awaitPromise=True,
                           returnByValue=True)
        if "exceptionDetails" in result:
            raise RuntimeError(f"page script failed: {result['exceptionDetails']}")
        return result["result"].get("value")

    # --- what the tests ask -----------------------------------------------------------------------------
    def load(self, url: str) -> float:
        """Open ``url`` and wait for its load event; returns the page's own navigation-to-load time in s."""
        while not self._events.empty():
            self._events.get_nowait()
        self.call("Page.navigate", session=True, url=url)
        self.wait_event("Page.loadEventFired")
        ms = self.evaluate("performance.getEntriesByType('navigation')[0].loadEventEnd")
        return float(ms) / 1000.0

    def open_all_and_check_images(self) -> dict:
        """Unfold every ``<details>``, load every image eagerly; ``{"n": images, "broken": [src, ...]}``."""
        return self.evaluate("""(async () => {
            document.querySelectorAll('details').forEach(d => { d.open = true; });
            const imgs = [...document.images];
            imgs.forEach(i => { i.loading = 'eager'; });
            const broken = [];
            await Promise.all(imgs.map(i => i.decode().then(
                () => { if (!i.naturalWidth) broken.push(i.getAttribute('src')); },
                () => broken.push(i.getAttribute('src')))));
            return {n: imgs.length, broken: broken};
        })()""")

    def screenshot(self, path: Path) -> Path:
        data = self.call("Page.captureScreenshot", session=True, format="png")["data"]
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(base64.b64decode(data))
        return path

    def close(self) -> None:
        try:
            self.call("Browser.close")
        except (TimeoutError, RuntimeError, OSError):
            pass
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        os.close(self._to_chrome)
        shutil.rmtree(self.profile, ignore_errors=True)

    def __enter__(self) -> "Browser":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def main() -> None:
    parser = argparse.ArgumentParser(description="Screenshot a local HTML page with headless Chromium.")
    parser.add_argument("page", type=Path)
    parser.add_argument("png", type=Path)
    parser.add_argument("--open", default=None, help="CSS selector of the <details> to unfold before the shot")
    parser.add_argument("--width", type=int, default=1400)
    parser.add_argument("--height", type=int, default=1000)
    parser.add_argument("--scroll-to", default=None, help="CSS selector to scroll to the top of the shot")
    args = parser.parse_args()
    binary = chromium_binary()
    if binary is None:
        raise SystemExit("error: no chromium on PATH; install it with `apt-get install -y chromium`")
    with Browser(binary, args.width, args.height) as browser:
        seconds = browser.load(args.page.resolve().as_uri())
        if args.open:
            browser.evaluate(f"(async () => {{ document.querySelectorAll({json.dumps(args.open)})"
                             ".forEach(d => { d.open = true; d.querySelectorAll('img').forEach(i => i.loading = 'eager'); });"
                             "await Promise.all([...document.images].filter(i => i.loading === 'eager')"
                             ".map(i => i.decode().catch(() => null))); })()")
        if args.scroll_to:
            browser.evaluate(f"document.querySelector({json.dumps(args.scroll_to)}).scrollIntoView()")
        browser.screenshot(args.png)
        print(f"loaded in {seconds:.2f} s; errors: {browser.errors or 'none'}; screenshot {args.png}")


if __name__ == "__main__":
    main()
