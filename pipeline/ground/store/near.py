"""The cached names closest to one that is not cached, for the one-line errors that name it.

A prefix rule first (``mirflickr`` -> ``mirflickr-n2000``: a LIMIT= cache is another name), then difflib's
close matches (typos).
"""
from __future__ import annotations

import difflib
from typing import Iterable


def near_matches(name: str, names: Iterable[str], n: int = 3) -> list[str]:
    """Up to ``n`` of ``names`` that ``name`` probably meant, best first; [] when none is close."""
    names = sorted(set(names))
    prefixed = [c for c in names if name and (c.startswith(name) or name.startswith(c))]
    close = difflib.get_close_matches(name, names, n=n, cutoff=0.6)
    out: list[str] = []
    for c in prefixed + close:
        if c not in out and c != name:
            out.append(c)
    return out[:n]


def did_you_mean(name: str, names: Iterable[str], what: str = "cached") -> str:
    """``; cached: a, b`` naming the near matches (empty when there are none), to end a message with."""
    close = near_matches(name, names)
    return f"; {what}: {', '.join(close)}" if close else ""
