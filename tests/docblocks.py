"""The fenced shell and SQL blocks of the project's Markdown files, and the marker that exempts one.

Convention (stated in README.md, "Every command in this README runs"): a ```bash (sh, shell, console) or
```sql block runs as written in ``tests/test_readme_blocks.py`` against a demo cache, unless the line just
before its opening fence (blank lines between are allowed) is

    <!-- not run: <the reason, e.g. needs the full MIRFlickr data> -->

In a block that runs, ``RUN`` stands for a run id and is replaced by one of the demo's runs; every other word
runs as written, from a folder whose ``cache/`` is the demo cache and with ``cmh`` on PATH.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
#: The Markdown files whose blocks are checked: the guide, the docs, the cache layout.
DOCUMENTS = ("README.md", "docs/*.md", "cache/README.md")
SHELL = ("bash", "sh", "shell", "console")
SQL = ("sql",)
FENCE = re.compile(r"^(`{3,}|~{3,})\s*([\w+-]*)")
MARKER = re.compile(r"^<!--\s*not run:(.*?)-->\s*$")


@dataclass(frozen=True)
class Block:
    path: Path  # relative to ROOT
    line: int  # of the opening fence, 1-based
    lang: str
    text: str
    not_run: str | None  # the marker's reason; None: the block runs

    @property
    def name(self) -> str:
        return f"{self.path}:{self.line}"

    @property
    def kind(self) -> str | None:
        return "shell" if self.lang in SHELL else "sql" if self.lang in SQL else None


def documents() -> list[Path]:
    out: list[Path] = []
    for pattern in DOCUMENTS:
        out += sorted(p.relative_to(ROOT) for p in ROOT.glob(pattern))
    return out


def blocks_of(text: str, path: Path) -> list[Block]:
    """Every fenced block of one Markdown text, with the not-run marker that precedes it (if any)."""
    lines = text.splitlines()
    out, i = [], 0
    while i < len(lines):
        m = FENCE.match(lines[i])
        if not m:
            i += 1
            continue
        fence, lang, start = m.group(1), m.group(2).lower(), i
        j = i + 1
        while j < len(lines) and not lines[j].startswith(fence):
            j += 1
        k = start - 1
        while k >= 0 and not lines[k].strip():
            k -= 1
        marker = MARKER.match(lines[k].strip()) if k >= 0 else None
        out.append(Block(path, start + 1, lang, "\n".join(lines[start + 1:j]) + "\n",
                         marker.group(1).strip() if marker else None))
        i = j + 1
    return out


def all_blocks() -> list[Block]:
    return [b for p in documents() for b in blocks_of((ROOT / p).read_text(encoding="utf-8"), p)]


def checked_blocks() -> list[Block]:
    """The shell and SQL blocks: each one runs, or carries a marker with its reason."""
    return [b for b in all_blocks() if b.kind]
