"""Versions stored with every artifact: the package, the results' code version and the cache schema."""

__version__ = "0.2.0"

# The code version stored with every published result row (results/). Bump it whenever a change can
# alter any method's codes for the same seed; rows of another version are then listed as stale by
# `cmh report --results` instead of being mixed into the table.
RESULTS_VERSION = "0.2.0"

# Bumped whenever the on-disk layout of the cache changes; a cache written by another schema
# version is refused with a clear error instead of being misread.
CACHE_SCHEMA_VERSION = 1
