"""Whether a run still describes the data its dataset name holds now: the one comparison of the two.

A run id is the method's resolved config alone (published results are keyed by it), so after
``cmh extract --overwrite`` (other pixels, other labels, another split seed) a run keeps its id while
its model, codes and report describe data the cache no longer holds. ``config.json`` records what the
run was trained on: the item table's fingerprint, the split parameters and sizes, and the fingerprints
of each encoder manifest it read. :func:`data_change` compares that record with the cache as it is
now; training retrains a finished run it names, and query, encode, index, report and publish refuse
or leave out such a run, each with the ``cmh train`` command that makes it current again.
A record that lacks an entry (a run from an older cmh) is compared on what it has.
"""
from __future__ import annotations

import json
import shlex
from typing import Any, Mapping, Protocol, Sequence

from pipeline.ground.errors import CacheError

#: Why a run folder without its config.json cannot be compared (it is treated as a run whose data changed).
MISSING_RECORD = "its config.json is missing, so the data it was trained on is unknown"
DAMAGED_RECORD = "its config.json is damaged, so the data it was trained on is unknown"
#: Manifest fields that decide what an encoder wrote (weights, vocabulary, code, the items it read).
FEATURE_KEYS = ("config_hash", "code_version", "dataset_fingerprint")


class _Dataset(Protocol):
    name: str

    def exists(self) -> bool: ...

    @property
    def items_meta(self) -> dict[str, Any]: ...

    @property
    def splits_meta(self) -> dict[str, Any]: ...

    def manifest(self, encoder: str) -> dict[str, Any]: ...


def data_change(config: Mapping[str, Any], dataset: _Dataset) -> str | None:
    """Why the data recorded in a run's ``config.json`` is not the data ``dataset`` holds now; None when
    it is (or when the dataset is no longer cached: then nothing can be compared, and readers say so)."""
    if not dataset.exists():
        return None
    recorded = (config.get("data") or {}).get("fingerprint")
    now = dataset.items_meta.get("fingerprint")
    if recorded is not None and recorded != now:
        return f"its items were extracted again, data fingerprint {recorded} -> {now}"
    splits = config.get("splits") or {}
    for key, what in (("params", "split settings"), ("sizes", "split sizes")):
        before, after = splits.get(key), dataset.splits_meta.get(key)
        if before is not None and before != after:
            return f"its splits were drawn again, {what} {_diff(before, after)}"
    for encoder, before in (config.get("features") or {}).items():
        try:
            manifest = dataset.manifest(encoder)
        except CacheError:
            continue  # features removed, not replaced: the scores stand, and a reader that needs them says so
        changed = [k for k in FEATURE_KEYS if (before or {}).get(k) is not None and before[k] != manifest.get(k)]
        if changed:
            return f"its {encoder} features were extracted again, {' and '.join(changed)} changed"
    return None


def _diff(before: Any, after: Any) -> str:
    if isinstance(before, Mapping) and isinstance(after, Mapping):
        keys = [k for k in sorted(set(before) | set(after)) if before.get(k) != after.get(k)]
        return ", ".join(f"{k} {before.get(k)} -> {after.get(k)}" for k in keys)
    return f"{before} -> {after}"


def train_command(config: Mapping[str, Any]) -> str:
    """The ``cmh train`` command a run was trained with (its recorded request, at its own code length)."""
    req = config.get("request") or {}
    parts = ["cmh train", "--method", str(config.get("method") or req.get("method")),
             "--dataset", str(config.get("dataset") or req.get("dataset")), "--bits", str(config.get("bits")),
             "--seed", str(config.get("seed", req.get("seed", 1)))]
    for key in ("image", "text"):
        if req.get(key):
            parts += [f"--{key}", str(req[key])]
    if req.get("epochs") is not None:
        parts += ["--epochs", str(req["epochs"])]
    for key, value in sorted((req.get("overrides") or {}).items()):
        parts += ["--set", f"{key}={value if isinstance(value, str) else json.dumps(value)}"]
    if req.get("eval_mode", "single") != "single":
        parts += ["--eval-mode", str(req["eval_mode"])]
    if req.get("tie", "stable") != "stable":
        parts += ["--tie", str(req["tie"])]
    return " ".join(parts[:1] + [shlex.quote(p) for p in parts[1:]])


def stale_run_error(run_id: str, config: Mapping[str, Any], reason: str) -> CacheError:
    """The one-line refusal of a run whose data changed, naming the command that retrains it."""
    return CacheError(f"run {run_id} was trained on other data than {config.get('dataset')!r} holds now ({reason}); "
                      f"its model, codes and scores describe the old data: retrain it with `{train_command(config)}` "
                      f"(a finished run whose data changed is trained again)")


def stale_summary(stale: Sequence[tuple[Any, str]], total: int) -> str:
    """``2 of 5 runs were trained on other data than ... (e.g. RUN: why); retrain them: `cmh train ...```
    for ``(RunDir, reason)`` pairs, naming the first run's own command."""
    run, reason = stale[0]
    try:
        config = run.read_config() if run.config_path.exists() else {}
    except CacheError:
        config = {}
    command = train_command(config) if config else "cmh train ... --force"
    return (f"{len(stale)} of {total} run(s) were trained on other data than their dataset holds now (e.g. "
            f"{run.run_id}: {reason}); retrain them with the commands they were trained with, e.g. `{command}`")
