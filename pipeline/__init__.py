"""cmh: cross-modal hashing retrieval, from a Parquet feature cache to binary codes and mAP reports.

The package is in three layers, one folder each, and imports flow down only (import-linter checks it):

- ``pipeline.cli``: the command line; it parses and calls one use case per command.
- ``pipeline.orchestration``: the use cases (train, grid, extract, report, publish, query, encode, index).
- ``stages``: prepare | extract | train | evaluate, and ``stages.present`` (tables, figures, pages) above them.
- ``pipeline.ground``: the cache store, registries, config, errors, settings, provenance, progress.
"""
from pipeline.ground.versions import CACHE_SCHEMA_VERSION, RESULTS_VERSION, __version__

__all__ = ["__version__", "RESULTS_VERSION", "CACHE_SCHEMA_VERSION"]
