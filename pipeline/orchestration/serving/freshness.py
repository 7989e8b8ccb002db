"""Whether the files a loaded run was read from are still the ones on disk.

The service loads a run once. When the run is trained again (``cmh train --force``), re-encoded
(``cmh encode``), re-indexed (``cmh index``) or its dataset extracted again while it serves, the
model and codes in memory no longer match the cache, and answers would silently mix old and new.
So every request compares a few ``stat`` results (inode, size, modification time) of those files
with the ones taken at load, and a changed file turns the answer into a 409 naming the restart.
"""
from __future__ import annotations

import dataclasses
import os
import time
from dataclasses import dataclass
from pathlib import Path

from pipeline.ground.store.codes import codes_parts, codes_path
from pipeline.ground.store.layout import PHYSICAL_SPLITS
from pipeline.orchestration.searcher import Searcher

Signature = tuple[int, int, int] | None  # (inode, size, mtime in ns), None when the file is absent


def _signature(path: Path) -> Signature:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_ino, st.st_size, st.st_mtime_ns


@dataclass(frozen=True)
class Watched:
    what: str  # what a change means, for the message
    path: Path
    removed: bool = False  # the file is gone (not replaced): the change found, not the one watched for


def watched_files(searcher: Searcher) -> list[Watched]:
    """Every file (and codes folder) whose change makes the loaded run stale."""
    run, source, cache = searcher.run, searcher.source, searcher.cache
    out = [Watched("its config.json changed (trained again)", run.config_path),
           Watched("its model.pt changed (trained again)", run.model_path)]
    splits = ("database",) if searcher.searched is None else PHYSICAL_SPLITS
    what = "its database codes changed (trained again)" if searcher.searched is None else \
        f"the codes of {searcher.searched!r} changed (encoded again)"
    for split in splits:
        out.append(Watched(what, codes_path(source.codes_dir, split).parent))  # a part added or removed
        out += [Watched(what, part) for part in codes_parts(source.codes_dir, split)]
    if searcher.searched is not None:
        out.append(Watched(f"the encoding of {searcher.searched!r} changed (encoded again)",
                           run.encode_record_path(searcher.searched)))
    for modality in searcher.kinds:
        for path in source.index_paths(modality):
            out.append(Watched(f"its {modality} index changed (`cmh index` ran)", path))
    for name in dict.fromkeys((searcher.config["dataset"], searcher.dataset)):
        out.append(Watched(f"the items of dataset {name!r} changed (extracted again)", cache.items_path(name)))
    for encoder in searcher.encoders:
        out.append(Watched(f"the {encoder} features of {searcher.config['dataset']!r} changed (extracted again)",
                           cache.manifest_path(searcher.config["dataset"], encoder)))
    return out


class Freshness:
    """The signatures taken when the run was loaded, and the first change found since.

    The files are compared at most every ``interval_s`` seconds (a ``stat`` cost 30 µs on this project's
    shared disk, eleven per request otherwise); a retraining or re-encoding takes seconds, so a change is
    still reported within that interval of the file being replaced. Until then answers come from the run
    as loaded, whose model, codes and index are consistent with each other. A change once found stays."""

    def __init__(self, searcher: Searcher, interval_s: float = 0.2) -> None:
        self.files = watched_files(searcher)
        self.at_load = [_signature(w.path) for w in self.files]
        self.interval_s = interval_s
        self._checked = time.monotonic()
        self._found: Watched | None = None

    def change(self) -> Watched | None:
        """The first watched file that differs from load time, or None when all are as loaded."""
        if self._found is not None:
            return self._found
        now = time.monotonic()
        if now - self._checked < self.interval_s:
            return None
        self._checked = now
        for watched, before in zip(self.files, self.at_load):
            now = _signature(watched.path)
            if now != before:
                # a file gone is not "trained again": `cmh rm` (or a hand) removed it, and a restart would fail
                self._found = watched if now is not None else dataclasses.replace(
                    watched, what=f"{watched.path.name} was removed from {watched.path.parent}", removed=True)
                return self._found
        return None
