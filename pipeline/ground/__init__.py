"""The ground every layer stands on; it imports nothing above it.

- ``store/``       the cache on disk: layout, atomic Parquet/JSON writes, items, features, runs, the
                   lineage of a run (is its data still the cached data) and the lock of a dataset
- ``item_table``   the item table every dataset source produces
- ``images``       opening an image reference safely (files and HDF5 stacks)
- ``registry``     name -> builder registries (methods, encoders, datasets)
- ``config``       merging config dataclasses with presets and overrides
- ``errors``       the one-line error classes the CLI prints
- ``settings``     the project, data and cache roots
- ``paths``        folders a user names for cmh to write into (a file in the way is one line)
- ``provenance``   environment, hardware and git revision recorded beside artifacts
- ``progress``     progress bars that degrade to log lines off a terminal
- ``versions``     package, results and cache-schema versions
"""
