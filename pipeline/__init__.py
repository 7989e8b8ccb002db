"""cmh: cross-modal hashing retrieval, from a Parquet feature cache to binary codes and mAP reports."""

__version__ = "0.1.0"

# Bumped whenever the on-disk layout of the cache changes; a cache written by another schema
# version is refused with a clear error instead of being misread.
CACHE_SCHEMA_VERSION = 1
