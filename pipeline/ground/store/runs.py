"""A run directory: its layout, its atomic writes and whether it is complete.

A run is written in this order, so a killed training leaves a directory that says how far it got:
``config.json`` (before training) -> ``model.pt`` and ``history.json`` (after training) -> ``codes/``
(query and database codes) -> ``report.parquet`` and ``curves.parquet`` -> ``plots/``. A run is
*trained* once its model and database codes exist and *complete* once its report exists; a rerun
of the same request skips only complete runs.
"""
from __future__ import annotations

import json
import logging
import os
import re
import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from pipeline.ground.errors import CacheError, interruption
from pipeline.ground.registry import check_path_safe
from pipeline.ground.store.layout import TOMBSTONE_PREFIX, CacheLayout
from pipeline.ground.store.near import near_matches
from pipeline.ground.store.parquet import check_record, write_json_atomic
from pipeline.ground.store.tempfiles import PARTIAL_SUFFIX, partial_for

CONFIG_FILE = "config.json"
MODEL_FILE = "model.pt"
HISTORY_FILE = "history.json"
CODES_DIR = "codes"
REPORT_FILE = "report.parquet"
CURVES_FILE = "curves.parquet"
PLOTS_DIR = "plots"
PLOTS_SKIPPED = "skipped.json"  # plots/skipped.json: why training drew no figure (no matplotlib there)
ENCODED_DIR = "encoded"  # encoded/<dataset>/: another cached dataset coded with this run's model (cmh encode)
INDEX_DIR = "index"  # index/ beside a codes/ folder: its search index (cmh index)
ENCODE_RECORD = "_encode.json"  # encoded/<dataset>/_encode.json (cmh encode)

RETRAIN_HINT = "train the run again with `cmh train ... --force`"
#: The fields of a run's config.json that every reader relies on, with their JSON types.
CONFIG_FIELDS: dict[str, type] = {"dataset": str, "method": str, "bits": int}

_RUN_ID = re.compile(r"^(?P<stem>.+)-(?P<bits>\d+)b-s(?P<seed>\d+)-(?P<key>[0-9a-f]+)$")

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RunId:
    """``<dataset>-<method>-<bits>b-s<seed>-<key>``: what a run is, readable in a folder listing.

    ``key`` is the first 8 hex digits of the hash of the run's resolved config, so two requests that
    resolve to the same config share a folder. Dataset and method names may themselves contain "-", so
    a parsed id gives their joined ``stem``; the run's ``config.json`` holds them apart.
    """

    stem: str  # "<dataset>-<method>"
    bits: int
    seed: int
    key: str

    @classmethod
    def of(cls, dataset: str, method: str, bits: int, seed: int, config_key: str) -> "RunId":
        return cls(f"{dataset}-{method}", int(bits), int(seed), config_key[:8])

    @classmethod
    def parse(cls, run_id: str) -> "RunId":
        match = _RUN_ID.match(run_id)
        if match is None:
            raise CacheError(f"{run_id!r} is not a run id (<dataset>-<method>-<bits>b-s<seed>-<hash>)")
        return cls(match["stem"], int(match["bits"]), int(match["seed"]), match["key"])

    def __str__(self) -> str:
        return f"{self.stem}-{self.bits}b-s{self.seed}-{self.key}"


@dataclass(frozen=True)
class RunDir:
    path: Path

    @classmethod
    def of(cls, layout: CacheLayout, run_id: str) -> "RunDir":
        return cls(layout.run_dir(run_id))

    @classmethod
    def find(cls, layout: CacheLayout, run: str) -> "RunDir":
        """A run named by its id (under the cache's runs/) or by its directory; CacheError listing the runs."""
        if not run.strip():  # "" would name runs/ itself, blamed as a run folder without config.json
            raise CacheError(f"--run is empty: give a run id (a folder under {layout.runs_dir()}) or a run folder's path")
        if Path(run).name.startswith(TOMBSTONE_PREFIX):  # a folder `cmh rm` is deleting: never read as a run
            raise CacheError(f"{run} is a run folder that `cmh rm` is deleting (or was killed deleting), not a run: "
                             f"pick a run from `cmh ls --kind runs`")
        for path in (Path(run), layout.runs_dir() / run):
            if (path / CONFIG_FILE).exists():
                _require_in_cache(layout, path)
                return cls(path)
        named = layout.runs_dir() / run if Path(run).name == run and run not in (".", "..") else None
        for path in (named, Path(run)):
            if path is not None and path.is_dir() and (
                    path == named or (path / REPORT_FILE).exists() or (path / MODEL_FILE).exists()):
                raise CacheError(f"run folder {path} has no {CONFIG_FILE} (deleted, or damaged by hand), so what it "
                                 f"was trained on is unknown: train it again with `cmh train ... --force`, or delete "
                                 f"the folder")
        have = [p.name for p in layout.run_paths() if (p / REPORT_FILE).exists() and (p / CONFIG_FILE).exists()]
        close = near_matches(Path(run).name, have)
        if close:
            raise CacheError(f"no run {run!r} under {layout.runs_dir()}; closest: {', '.join(close)} "
                             f"(`cmh ls --kind runs` lists them all)")
        listed = ", ".join(have[:20]) + (f" and {len(have) - 20} more" if len(have) > 20 else "")
        raise CacheError(f"no run {run!r} under {layout.runs_dir()}; runs: {listed or 'none'} "
                         f"(train one with `make train`)")

    @property
    def run_id(self) -> str:
        return self.path.name

    @property
    def config_hash(self) -> str:
        """The key part of the run id: the first 8 hex digits of the resolved config's hash."""
        return RunId.parse(self.run_id).key

    @property
    def dataset(self) -> str | None:
        """The dataset the run was trained on (its config.json, else its report), or None when unreadable."""
        from pipeline.ground.store.parquet import read_metadata

        if self.config_path.exists():
            try:
                return self.read_config().get("dataset")
            except (CacheError, OSError):
                pass  # damaged: the report's own record says it, so a listing of the dataset still finds the run
        try:
            return read_metadata(self.report_path).get("dataset") if self.report_path.exists() else None
        except (CacheError, OSError):
            return None

    @property
    def config_path(self) -> Path:
        return self.path / CONFIG_FILE

    @property
    def model_path(self) -> Path:
        return self.path / MODEL_FILE

    @property
    def history_path(self) -> Path:
        return self.path / HISTORY_FILE

    @property
    def codes_dir(self) -> Path:
        return self.path / CODES_DIR

    @property
    def report_path(self) -> Path:
        return self.path / REPORT_FILE

    @property
    def curves_path(self) -> Path:
        return self.path / CURVES_FILE

    @property
    def plots_dir(self) -> Path:
        return self.path / PLOTS_DIR

    @property
    def plots_skipped_path(self) -> Path:
        return self.plots_dir / PLOTS_SKIPPED

    def plots(self) -> list[Path]:
        """The run's curve figures (``plots/pr_*.png``, ``plots/pk_*.png``), sorted."""
        return sorted(self.plots_dir.glob("p[rk]_*.png"))

    def encoded_dir(self, dataset: str) -> Path:
        """``encoded/<dataset>/``: ``codes/`` and ``index/`` of another dataset coded with this run."""
        return self.path / ENCODED_DIR / check_path_safe(dataset)

    def encoded_codes_dir(self, dataset: str) -> Path:
        """The codes of another dataset coded with this run (the run's own codes layout)."""
        return self.encoded_dir(dataset) / CODES_DIR

    def encode_record_path(self, dataset: str) -> Path:
        """``_encode.json``: what an encoding of ``dataset`` was made from, and whether it is complete."""
        return self.encoded_dir(dataset) / ENCODE_RECORD

    def index_dir(self, dataset: str | None = None) -> Path:
        """``index/`` beside the codes it searches: the run's database, or an encoded dataset's items."""
        return (self.path if dataset is None else self.encoded_dir(dataset)) / INDEX_DIR

    def write_codes(self, split: str, item_id: Any, image: Any, text: Any, meta: dict[str, Any]) -> Path:
        """The ±1 codes of one split (``codes/split=<split>/``), written atomically."""
        from pipeline.ground.store.codes import write_codes

        return write_codes(self.codes_dir, split, item_id, image, text, meta)

    def read_codes(self, split: str, unpack: bool = True) -> dict[str, Any]:
        """One split's codes: item ids, bits, and the codes (``unpack``) or their packed words; CacheError when
        they are fewer or more than the run coded (its config.json's ``n_<split>``), since a search or a table
        over part of the codes would look like one over all of them."""
        from pipeline.ground.store.codes import read_codes

        codes = read_codes(self.codes_dir, split, unpack=unpack)
        coded = self.read_config().get(f"n_{split}") if self.config_path.exists() else None
        if isinstance(coded, int) and not isinstance(coded, bool) and len(codes["item_id"]) != coded:
            raise CacheError(f"the {split} codes of run {self.run_id} hold {len(codes['item_id'])} item(s) where "
                             f"{coded} were coded (a codes file replaced or cut short): {RETRAIN_HINT}")
        return codes

    def mark_incomplete(self) -> None:
        """Retraining in place: drop the report (and curves) first, so that until the new report is written
        the run reads as unfinished, never as the old run."""
        for path in (self.report_path, self.curves_path):
            path.unlink(missing_ok=True)

    def is_complete(self) -> bool:
        return self.report_path.exists()

    def is_trained(self) -> bool:
        """Its model and a database codes file are there (a codes folder without a part file is not enough)."""
        return not self._missing_outputs()

    def _missing_outputs(self) -> list[str]:
        from pipeline.ground.store.codes import codes_parts

        missing = [] if self.model_path.is_file() else [MODEL_FILE]
        if not codes_parts(self.codes_dir, "database"):
            missing.append(f"{CODES_DIR}/split=database")
        return missing

    def leftover_partials(self) -> list[Path]:
        """The ``.partial`` files interrupted writes left in the run's own files, codes and plots (those under
        ``encoded/`` and ``index/`` are `cmh encode`'s and `cmh index`'s: ``encode_partials``,
        ``index_partials``). Only the holder of the run's writer lock may take them for leftovers: outside
        it, a live writer may own one."""
        return _partials_in(self.path, self.codes_dir / "split=query", self.codes_dir / "split=database",
                            self.plots_dir)

    def encode_partials(self, dataset: str) -> list[Path]:
        """The ``.partial`` files an interrupted `cmh encode` of ``dataset`` left: its record and codes parts
        (its index is `cmh index`'s). As ``leftover_partials``: for the writer lock's holder only."""
        codes = self.encoded_codes_dir(dataset)
        splits = sorted(codes.glob("split=*")) if codes.is_dir() else []
        return _partials_in(self.encoded_dir(dataset), *splits)

    def index_partials(self, dataset: str | None = None) -> list[Path]:
        """The ``.partial`` files an interrupted `cmh index` left in the ``index/`` it writes (the run's
        database's, or ``dataset``'s). As ``leftover_partials``: for the writer lock's holder only."""
        return _partials_in(self.index_dir(dataset))

    def require_trained(self) -> None:
        """CacheError when the run was killed before its model and database codes were written."""
        missing = self._missing_outputs()
        if missing:
            raise CacheError(f"run {self.run_id} is incomplete ({', '.join(missing)} missing): its training was "
                             f"interrupted; run the same `cmh train` command again to finish it")

    def write_config(self, config: dict[str, Any]) -> Path:
        self.path.mkdir(parents=True, exist_ok=True)
        return write_json_atomic(config, self.config_path)

    def read_config(self) -> dict[str, Any]:
        if not self.config_path.exists():
            raise CacheError(f"{self.config_path} is missing, so what run {self.run_id} was trained on is unknown; "
                             f"{RETRAIN_HINT}")
        try:
            config = json.loads(self.config_path.read_text(encoding="utf-8"))
        except (ValueError, UnicodeDecodeError) as exc:
            raise CacheError(f"{self.config_path} is unreadable ({exc}); {RETRAIN_HINT}") from None
        # what every reader of a run takes from it: without these it could not be told apart from another run
        return check_record(config, self.config_path, RETRAIN_HINT, CONFIG_FIELDS)

    def write_history(self, history: dict[str, Any]) -> Path:
        return write_json_atomic(history, self.history_path)

    def write_model(self, save: Callable[[Any], None]) -> Path:
        """``save(fh)`` writes the model into an open binary file; it is renamed into place only when complete.

        An open file rather than a path, so that a full disk reaches the caller as the OSError it is
        (``torch.save`` to a path wraps it in a RuntimeError that names no file)."""
        self.path.mkdir(parents=True, exist_ok=True)
        fd, tmp = partial_for(self.model_path)
        try:
            with os.fdopen(fd, "wb") as fh:
                save(fh)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, self.model_path)
        except RuntimeError as exc:
            stop = interruption(exc)
            if stop is not None:  # Ctrl-C or SIGTERM mid-write, then torch's writer failed on its way out
                raise stop from None
            cause = exc.__context__ or exc.__cause__
            if isinstance(cause, OSError):  # torch's writer wraps the OSError it met
                raise OSError(cause.errno, cause.strerror, str(self.model_path)) from None
            raise
        except OSError as exc:
            raise OSError(exc.errno, exc.strerror, str(self.model_path)) from None
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
        return self.model_path


def report_scores_problem(schema: Any) -> str | None:
    """Why a run's report (its Arrow schema) cannot be read as scores, or None: a column of task, metric or
    value missing, or values that are not numbers. `cmh train` retrains such a run and `cmh ls` lists it
    damaged."""
    import pyarrow as pa

    missing = [c for c in ("task", "metric", "value") if c not in schema.names]
    if missing:
        return f"without column(s) {', '.join(missing)}"
    if not pa.types.is_floating(schema.field("value").type):
        return f"whose scores are {schema.field('value').type}, not numbers"
    return None


def drop_leftovers(paths: list[Path], writer: str) -> None:
    """Remove the ``.partial`` files an interrupted ``writer`` left (``RunDir.leftover_partials``,
    ``encode_partials``, ``index_partials``); only the holder of the run's writer lock may call it."""
    for path in paths:
        log.info("removing %s, left by an interrupted %s", path, writer)
        path.unlink(missing_ok=True)


def _partials_in(*folders: Path) -> list[Path]:
    """The ``.partial`` files directly in ``folders`` (regular files only: a link is never followed to delete)."""
    return sorted(p for folder in folders if folder.is_dir() for p in folder.glob(f"*{PARTIAL_SUFFIX}")
                  if p.is_file() and not p.is_symlink())


def _require_in_cache(layout: CacheLayout, path: Path) -> None:
    """CacheError when ``path`` is a run folder of another cache (``<other>/runs/<run>`` beside a ``datasets/``):
    its items, features and encodings would be looked for in ``layout``'s cache, which then either lacks the
    dataset (and the message would say to extract it) or holds another extraction of it."""
    home = path.resolve().parent
    if home.name != "runs" or home == layout.runs_dir().resolve() or not (home.parent / "datasets").is_dir():
        return
    raise CacheError(f"run folder {path} belongs to the cache {home.parent}, not to the one this command reads "
                     f"({layout.root}): add --cache {shlex.quote(str(home.parent))} (or set CMH_CACHE to it)")
