"""Publishing, the use case: copy finished runs' report rows into the committed ``results/`` registry."""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

from pipeline.ground.errors import CacheError, ConfigError
from pipeline.ground.paths import require_folder
from pipeline.ground.store.cache import Cache
from pipeline.ground.store.near import did_you_mean
from pipeline.ground.store.lineage import stale_summary


def publish(cache: Cache, dataset: str, run_ids: Sequence[str], results: Path, *, replace: bool = False) -> list[Path]:
    """Publish ``run_ids`` (default: every finished run of ``dataset``); returns the files written.

    A run trained on data that ``dataset`` no longer holds is refused (its numbers describe the old data),
    and so are rows of other splits or data than those published for the dataset unless ``replace``."""
    from stages.present.results import publish_runs

    require_folder(Path(results), "--results", "the results registry folder (results/)")
    runs = [cache.find_run(r) for r in run_ids] if run_ids else cache.runs(dataset)
    runs = list({run.path.resolve(): run for run in runs}.values())  # `--run X --run X` (or its id and its folder)
    # is one run: it was written twice and counted as two result files
    if not runs:
        have = {r.dataset for r in cache.runs()} - {None}
        raise CacheError(f"no finished runs of {dataset!r} under {cache.runs_dir()}; train them first (`cmh train`)"
                         f"{did_you_mean(dataset, have, 'runs are cached for')}")
    for run in runs:
        if run.config_path.exists():
            run.read_config()  # a damaged config.json is named with its fix, not read as "trained on None"
        of = run.dataset
        if of != dataset:
            raise ConfigError(f"run {run.run_id} was trained on {of!r}, not on {dataset!r}: publish it with "
                              f"--dataset {of}")
    _, stale = cache.split_current(runs)
    if stale:
        raise CacheError(f"nothing published: {stale_summary(stale, len(runs))}")
    return publish_runs(runs, results, replace=replace)
