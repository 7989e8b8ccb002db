"""No project file points at a document that is not in the repository."""
from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# The background notes by name, and their section marks ("§11", "§15 #7"); a paper's own sections are
# written "paper §3.2", and the CCA-ITQ paper's named section as §"CCA-ITQ".
OUTSIDE = re.compile(r"\b(?:methods|design|ecosystem|style|offline-weights)\.md\b|(?<!paper )§\s*\d")


def test_no_reference_to_documents_outside_the_repository():
    hits = []
    for folder in ("pipeline", "stages", "tests", "bench", "docs", "cache"):
        for path in (ROOT / folder).rglob("*"):
            if path.suffix in (".py", ".md", ".toml", ".txt") and path != Path(__file__).resolve():
                for n, line in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), 1):
                    if OUTSIDE.search(line):
                        hits.append(f"{path.relative_to(ROOT)}:{n}")
    for name in ("README.md", "Makefile", "pyproject.toml"):
        text = (ROOT / name).read_text(encoding="utf-8")
        hits += [f"{name}:{n}" for n, line in enumerate(text.splitlines(), 1) if OUTSIDE.search(line)]
    assert not hits, f"state the fact in the project's own words (docs/ if longer): {hits[:20]}"
