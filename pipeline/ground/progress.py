"""Progress bars that degrade to periodic log lines when stderr is not a terminal (CI, redirected make)."""
from __future__ import annotations

import logging
import sys
import time

log = logging.getLogger("cmh.progress")


class _Bar:
    def __init__(self, total: int, description: str, unit: str) -> None:
        self.total, self.description, self.unit = total, description, unit
        self.done = 0
        self.skipped = 0  # units done before this process (a resumed run): no part of the rate
        self.start = time.perf_counter()
        self.last_log = self.start
        self.postfix = ""
        self._rich = None
        if sys.stderr.isatty():
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

            self._rich = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                  TextColumn("{task.fields[rate]}"), TextColumn("{task.fields[postfix]}"),
                                  TimeRemainingColumn(), transient=False)
            self._task = self._rich.add_task(description, total=total, rate="", postfix="")
            self._rich.start()

    def rate(self) -> float:
        return (self.done - self.skipped) / max(1e-9, time.perf_counter() - self.start)

    def resume(self, n: int, postfix: str = "") -> None:
        """Count ``n`` units done by an earlier process (shown as done, left out of the rate)."""
        self.skipped += n
        self.update(n, postfix)

    def rate_text(self) -> str:
        """``12.3 items/s``, or ``4.2 s/epoch`` when a unit takes longer than a second (a rate would read
        ``0.1 epoch/s``, and ``0.0`` when rounded); empty before the first unit is done."""
        if self.done - self.skipped <= 0:
            return ""
        rate = self.rate()
        if rate >= 1:
            return f"{rate:.1f} {self.unit}/s"
        one = self.unit[:-1] if self.unit.endswith("s") and len(self.unit) > 1 else self.unit
        return f"{1 / rate:.1f} s/{one}"

    def update(self, n: int = 1, postfix: str = "") -> None:
        self.done += n
        self.postfix = postfix or self.postfix
        rate = self.rate_text()
        if self._rich is not None:
            self._rich.update(self._task, advance=n, rate=rate, postfix=self.postfix)
        elif time.perf_counter() - self.last_log > 10 or self.done == self.total:
            self.last_log = time.perf_counter()
            log.info("%s: %d/%d %s%s%s", self.description, self.done, self.total, self.unit,
                     f" ({rate})" if rate else "", f" {self.postfix}" if self.postfix else "")

    def close(self) -> None:
        if self._rich is not None:
            self._rich.stop()


def progress_bar(total: int, description: str, unit: str = "it") -> _Bar:
    return _Bar(total, description, unit)
