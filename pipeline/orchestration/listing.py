"""``cmh list``: the registered methods, encoders or dataset sources."""
from __future__ import annotations

from pipeline.ground.errors import ConfigError

WHAT = ("methods", "encoders", "datasets")


def list_entries(what: str, pattern: str = "*") -> list[str]:
    """One line per registered entry matching ``pattern``: name, summary and aliases."""
    if what == "methods":
        from stages.train import methods  # noqa: F401
        from stages.train.base import METHODS as reg
    elif what == "encoders":
        from stages.extract import ENCODERS as reg, load_encoders

        load_encoders()
    elif what == "datasets":
        from stages.prepare.datasets import DATASETS as reg, _import_sources

        _import_sources()
    else:
        raise ConfigError(f"cmh list {what!r}: choose {', '.join(WHAT)}")
    lines = []
    for entry in reg.entries(pattern):
        alias = f" (aliases: {', '.join(entry.aliases)})" if entry.aliases else ""
        lines.append(f"{entry.name:12s} {entry.summary}{alias}")
    return lines
