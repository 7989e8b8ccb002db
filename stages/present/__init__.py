"""Presentation across runs: what people look at, read only through the store.

- ``tables``     methods x bits tables in the papers' layout (Markdown, Parquet, PNG)
- ``plots``      a run's PR / P@K / validation figures, and mAP against code length across runs
- ``results``    the committed ``results/`` registry and the README block generated from it
- ``published``  the papers' own numbers, for comparison
- ``sql``        DuckDB SQL over codes and report rows
- ``html/``      the HTML report, retrieval galleries, thumbnails and the query page
"""
