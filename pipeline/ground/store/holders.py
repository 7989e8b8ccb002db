"""Who holds a writer lock: the record a holder writes (its pid and what it does), and the one wording of a refusal.

A run's lock (``checkpoints.run_lock``) and a dataset's (``lock.DatasetLock``) are ``flock``s, which the
kernel releases when their holder dies, so neither ever blocks a rerun. Beside the lock each holder writes
``<pid>\\n<activity>\\n`` (in the lock file itself for a run, whose lock has one holder; in a record file of
its own for a dataset, whose lock is shared), so that a process refused can say which process to wait for,
and a record left by a killed holder is taken over with one log line.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Mapping

log = logging.getLogger(__name__)

#: What a writer holding a lock does -> the participle a refusal names it by.
ACTIVITIES = {"training": "trained", "encoding": "encoded", "indexing": "indexed", "removing": "removed",
              "extracting": "extracted"}

#: The same for a dataset's lock, whose holders read it as well as write it: a training reads it, and is named so.
DATASET_ACTIVITIES = {**ACTIVITIES, "training": "trained on"}


def holder_record(activity: str) -> bytes:
    """What this process writes into the lock (or record) it holds."""
    return f"{os.getpid()}\n{activity}\n".encode()


def parse_holder(raw: bytes) -> tuple[str, str]:
    """(pid, activity) as a record names them; older run locks hold the pid alone (training)."""
    words = raw.decode(errors="replace").split()
    return (words[0] if words else "another process"), (words[1] if len(words) > 1 else "training")


def being_written(subject: str, holder: str, doing: str, what: str, or_else: str = "",
                  participles: Mapping[str, str] = ACTIVITIES) -> str:
    """The refusal of a command that would write (or remove) ``subject`` ("run X", "dataset 'X'") while another
    process holds it: that process and what it does (``doing``, a key of ``participles``), what is held
    (``what``: the lock file, the checkpoint), and to wait for it or stop it. One wording for every such refusal."""
    by = f"process {holder}" if holder.isdigit() else "another process"
    return (f"{subject} is being {participles.get(doing, 'written')} by {by} ({what}); wait for it to finish, or "
            f"stop it, then run the command again{or_else}")


def say_taken_over(subject: str, path: Path, raw: bytes) -> None:
    """One log line for a lock (or record) whose holder ended without releasing it (killed), now taken over."""
    holder, doing = parse_holder(raw)
    log.info("%s: process %s, %s it, ended without releasing %s (killed?); taken over", subject, holder, doing, path)
