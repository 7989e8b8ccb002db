"""Dataset sources. Each module registers one source; importing this package registers them all."""
from stages.prepare.datasets.base import DATASETS, ItemTable, register_dataset

__all__ = ["DATASETS", "ItemTable", "register_dataset", "get_dataset"]


def get_dataset(name: str):
    """The registry entry of a dataset source (``entry.builder(data_dir, **options) -> ItemTable``)."""
    _import_sources()
    return DATASETS.get(name)


def _import_sources() -> None:
    # explicit imports, so listing is complete without scanning the disk
    from stages.prepare.datasets import coco, demo, mirflickr, nuswide, pairs  # noqa: F401
