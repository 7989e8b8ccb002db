"""Publishing, the use case: copy finished runs' report rows into the committed ``results/`` registry."""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

from pipeline.ground.errors import CacheError
from pipeline.ground.store.cache import Cache


def publish(cache: Cache, dataset: str, run_ids: Sequence[str], results: Path) -> list[Path]:
    """Publish ``run_ids`` (default: every finished run of ``dataset``); returns the files written."""
    from stages.present.results import publish_runs

    runs = [cache.find_run(r) for r in run_ids] if run_ids else cache.runs(dataset)
    if not runs:
        raise CacheError(f"no finished runs of {dataset!r} under {cache.runs_dir()}; train them first (`cmh train`)")
    return publish_runs(runs, results)
