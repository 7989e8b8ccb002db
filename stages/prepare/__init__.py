"""The prepare stage: read a dataset source once, write its item table and split membership to the cache.

- ``runner``       ``prepare_dataset(layout, DatasetRequest)``: the stage's one entry point
- ``datasets/``    the sources (MIRFlickr, NUS-WIDE, COCO, DCMH ``.mat``, your own pairs, the demo)
- ``splits``       the split protocols (DJSRH's MIRFlickr / NUS-WIDE splits, random), seeded
- ``fingerprint``  what identifies the data a table was read from (files, folder, options)
"""
from stages.prepare.runner import DatasetRequest, prepare_dataset, resolve_data_dir

__all__ = ["DatasetRequest", "prepare_dataset", "resolve_data_dir"]
