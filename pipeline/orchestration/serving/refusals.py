"""What the search service answers instead of a result: an HTTP status, what was wrong and how to fix it.

Every refusal leaves the service as it was; the next request is served as if this one had not come.
"""
from __future__ import annotations

from typing import Any


class Refusal(Exception):
    """A request the service will not answer with a result; becomes ``{"error": ..., "fix": ...}`` with ``status``."""

    def __init__(self, status: int, error: str, fix: str, **extra: Any) -> None:
        super().__init__(error)
        self.status = status
        self.error = error
        self.fix = fix
        self.extra = extra  # further fields of the JSON answer (e.g. close_terms)

    def body(self) -> dict[str, Any]:
        return {"error": self.error, "fix": self.fix, **self.extra}
