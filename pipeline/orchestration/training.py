"""Training, the use case: cached features -> fit -> codes -> evaluate -> a run folder, per code length.

``train_runs`` reads as that sequence; each step is a small function below it. It reads only the
feature cache (never images). A run directory ``runs/<run_id>/`` holds the resolved
config, environment and data fingerprints, the trained weights, codes per split, the report and plots.
A run whose report already exists with the same resolved config is not trained again (``force`` redoes it).
The whole command holds the dataset's lock shared, so the features cannot be removed under it.
"""
from __future__ import annotations

import dataclasses
import functools
import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import torch

from pipeline.ground.errors import ConfigError
from pipeline.ground.provenance import environment, git_revision, hardware
from pipeline.ground.store.aligned import AlignedFeatures, FeatureRef, canonical_feature_spec
from pipeline.ground.store.cache import Cache, DatasetCache
from pipeline.ground.store.checkpoints import RunBusy, RunCheckpoints, training_lock
from pipeline.ground.store.codes import binarize
from pipeline.ground.store.features import config_hash
from pipeline.ground.store.lock import dataset_held_shared
from pipeline.ground.store.runs import RunDir, RunId, drop_leftovers, report_scores_problem
from pipeline.ground.versions import RESULTS_VERSION
from stages.train import coding
from stages.train import methods  # noqa: F401  (registers every method)
from stages.train.base import (METHODS, FeatureBatch, FeatureDims, HashingMethod, create_method, resolve_config,
                               save_method)
from stages.train.loop import TrainHistory, TrainingPaused, encode_split, fit_method
from stages.train.validation import K as VALIDATION_K, Validator, default_every
from stages.train.checks import device_kind, resolved_device

log = logging.getLogger(__name__)


@dataclass
class TrainRequest:
    dataset: str
    method: str
    bits: Sequence[int] = (16, 32, 64, 128)
    image: str | None = None  # None: the method's default_image_features (logged and recorded)
    text: str | None = None
    seed: int = 1
    epochs: int | None = None
    overrides: Mapping[str, Any] = field(default_factory=dict)
    eval_mode: str = "single"  # single | paired (labelled reference mode, UCMFH-style methods only)
    tie: str = "stable"
    device: str | None = None
    force: bool = False
    progress: bool = True
    #: epochs between checkpoints (None: every ``checkpoints.DEFAULT_INTERVAL_S`` seconds of training)
    checkpoint_every: int | None = None
    #: a ``time.time()`` after which a run checkpoints and pauses at its next epoch boundary (``cmh table --budget``)
    stop_at: float | None = None


#: Request fields that change how a run is carried out, never what it computes (kept out of config.json).
_NOT_RECORDED = ("force", "progress", "checkpoint_every", "stop_at")


@dataclass
class RunResult:
    run_id: str
    run_dir: Path
    bits: int
    summary: dict[str, float]
    skipped: bool = False
    resumed_from: int | None = None  # epochs a checkpoint had done when this run resumed
    paused: TrainingPaused | None = None  # the run stopped at its deadline; a checkpoint holds it

    def describe(self) -> str:
        """One line: the run id and its mAP@50, or where it paused."""
        if self.paused is not None:
            return f"{self.run_id}: {self.paused}"
        s = self.summary
        state = "cached" if self.skipped else f"trained in {s.get('train_s', 0):.1f}s"
        if self.resumed_from:
            state += f", resumed from epoch {self.resumed_from}"
        val = (f"; validation i2t {s['i2t_val_map@50']:.4f} t2i {s['t2i_val_map@50']:.4f}"
               if "i2t_val_map@50" in s else "")
        return (f"{self.run_id}: mAP@50 i2t {s.get('i2t_map@50', float('nan')):.4f} "
                f"t2i {s.get('t2i_map@50', float('nan')):.4f}{val} ({state})")


def _config_dict(cfg: Any) -> dict[str, Any]:
    return json.loads(json.dumps(dataclasses.asdict(cfg), default=str))


def feature_identity(spec: str | None) -> str | None:
    """A feature spec as a run's identity spells it (its id, config hash and report rows): ``alexnet.imagenet`` and
    ``alexnet`` name the same features, and train one run, spelled ``alexnet`` as the published runs are. The
    features are still read as the request spells them, so a preset id named is the one read."""
    from stages.extract.factory import spec_encoder_name

    return None if spec is None else canonical_feature_spec(spec, spec_encoder_name)


def run_id_for(req: TrainRequest, bits: int, resolved: Mapping[str, Any]) -> str:
    identity = {"image": feature_identity(req.image), "text": feature_identity(req.text),
                "eval_mode": req.eval_mode, "tie": req.tie, "config": resolved}
    kind = device_kind(resolved_device(req.device))
    if kind != "cpu":  # a GPU rounds otherwise, so its codes are another run's: its own folder, checkpoint and
        identity["device"] = kind  # result file, never the CPU's reused or resumed (whose ids stay as they were)
    key = config_hash(identity)
    return str(RunId.of(req.dataset, METHODS.resolve(req.method), bits, req.seed, key))


def check_request(req: TrainRequest) -> str:
    """Every check that needs no data (method, bits, device, settings, epochs); returns the method's id.

    ``cmh grid`` runs it on every request before training the first, so a bad value for the last
    method does not surface hours in."""
    from stages.evaluate.report import TIE_RULES
    from stages.train.checks import check_bits, check_device, check_training_length

    method_name = METHODS.resolve(req.method)
    if req.eval_mode not in ("single", "paired"):
        raise ConfigError(f"eval mode {req.eval_mode!r}: use 'single' or 'paired'")
    if req.tie not in TIE_RULES:
        raise ConfigError(f"tie rule {req.tie!r}: use one of {', '.join(TIE_RULES)}")
    check_bits(req.bits)
    check_device(req.device)
    for flag, spec in (("--image (IMAGE=)", req.image), ("--text (TEXT=)", req.text)):
        if spec is not None and not any(part.strip() for part in spec.split(",")):  # '' read as "the default"
            raise ConfigError(f"{flag} {spec!r} names no features: give them (e.g. alexnet:pool, bow), or leave the "
                              f"option out for the method's own")
    if not 0 <= req.seed < 2**32:  # numpy's seed range
        raise ConfigError(f"training seed {req.seed}: give a whole number from 0 to {2**32 - 1} (SEED=/--seed)")
    if req.checkpoint_every is not None and req.checkpoint_every < 1:
        raise ConfigError(f"--checkpoint-every {req.checkpoint_every}: give a number of epochs >= 1 (CHECKPOINT_EVERY=), "
                          f"or leave it out to checkpoint every few minutes")
    overrides = {**req.overrides, **({"epochs": req.epochs} if req.epochs is not None else {})}
    closed_form = METHODS.get(method_name).builder.closed_form
    check_training_length(method_name, resolve_config(method_name, req.dataset, overrides), closed_form)
    return method_name


def planned_run_ids(req: TrainRequest) -> list[str]:
    """The run id each code length of ``req`` trains into, without reading any data (``cmh table``)."""
    method_name = check_request(req)
    req = _with_default_features(req, method_name, quiet=True)
    return [_spec(req, method_name, bits).run_id for bits in req.bits]


def train_runs(cache: Cache, req: TrainRequest,
               on_result: Callable[[RunResult], None] = lambda r: None) -> list[RunResult]:
    """Train, code, evaluate and write one run per code length of ``req``; finished runs are reused.
    ``on_result`` hears of each run as it ends. A code length another process is training is left to it:
    the others go on, and RunBusy names it (or them) at the end."""
    method_name = check_request(req)
    req = _with_default_features(req, method_name)
    device = resolved_device(req.device)
    dataset = cache.dataset(req.dataset)
    # held shared for the whole command (load, train, code, evaluate, write), as an extraction or an encode
    # holds it: the features cannot be removed under a training, and trainers of one dataset share it
    with dataset_held_shared(cache, dataset.name, "training"):
        return _train_held(cache, req, method_name, device, dataset, on_result)


def _train_held(cache: Cache, req: TrainRequest, method_name: str, device: str, dataset: DatasetCache,
                on_result: Callable[[RunResult], None]) -> list[RunResult]:
    """``train_runs`` holding the dataset's lock."""
    _feature_refs(dataset, req)  # what is not cached is refused now, whether or not a run needs training
    data: _Data | None = None  # read when a code length first needs training: a rerun of finished runs reads no split
    results: list[RunResult] = []
    busy: list[RunBusy] = []
    for bits in req.bits:
        spec = _spec(req, method_name, bits)
        run = cache.run(spec.run_id)
        if run.is_complete() and not req.force:
            problem = _reuse_problem(run, device)
            if problem is None:
                changed = cache.data_change(run)  # the id is the config alone: the data may have been re-extracted
                problem = changed and f"was trained on other data than {req.dataset!r} holds now ({changed})"
            if problem is None:
                _drop_partials_unless_busy(run)  # a kill while its plots were drawn leaves one in a finished run
                log.info("run %s exists (same config): skipped; pass --force to retrain", spec.run_id)
                results.append(RunResult(spec.run_id, run.path, bits, _summary_from_report(run), skipped=True))
                on_result(results[-1])
                continue
            log.warning("run %s %s: training it again", spec.run_id, problem)
            fresh = True
        else:
            fresh = req.force
        try:
            with training_lock(run.path, spec.run_id):
                _drop_partials(run)
                data = data or _load(dataset, req)
                results.append(_train_one(run, spec, req, dataset, data, device, fresh=fresh))
        except RunBusy as exc:
            busy.append(exc)
            continue
        on_result(results[-1])
    if len(busy) == 1 and not results:
        raise busy[0]
    if busy:
        holders = sorted({b.holder for b in busy})
        raise RunBusy(f"{'; '.join(map(str, busy))} (the other {len(results)} run(s) of this command are done)",
                      " and ".join(holders))
    return results


def _reuse_problem(run: RunDir, device: str) -> str | None:
    """Why a run with a report cannot be reused as it is (its config, model, codes or report damaged or
    missing, written by another code version, or trained on another kind of device than ``device``), or None.
    Only file footers are read: cheap on a rerun."""
    import pyarrow.parquet as pq

    from pipeline.ground.errors import CMHError
    from pipeline.ground.store.codes import codes_parts
    from pipeline.ground.store.parquet import read_metadata, read_table

    from pipeline.ground.store.lineage import MISSING_RECORD

    if not run.config_path.exists():
        return f"cannot be reused: {MISSING_RECORD}"
    try:
        config = run.read_config()
    except CMHError:
        return f"has a damaged {run.config_path.name}"
    if device_kind(config.get("device")) != device_kind(device):  # a GPU rounds otherwise: not this run's codes
        return f"was trained on {config.get('device') or 'cpu'}, not on {device_kind(device)}"
    if not run.model_path.is_file():
        return f"has no {run.model_path.name}"
    for split in ("query", "database"):
        parts = codes_parts(run.codes_dir, split)
        if not parts:
            return f"has no {split} codes"
        try:
            for part in parts:
                read_metadata(part)
        except CMHError:
            return f"has damaged {split} codes ({part.name})"
        rows = sum(pq.ParquetFile(part).metadata.num_rows for part in parts)
        coded = config.get(f"n_{split}")
        if isinstance(coded, int) and rows != coded:  # a codes file replaced or cut short
            return f"has {rows} {split} codes where {coded} were written"
    try:
        report = read_table(run.report_path)
    except CMHError:
        return f"has a damaged {run.report_path.name}"
    problem = report_scores_problem(report.schema)
    if problem:
        return f"has a {run.report_path.name} {problem}"
    if "code_version" not in report.column_names:
        return f"has a {run.report_path.name} without a code version (an older cmh)"
    versions = {str(v) for v in report.column("code_version").to_pylist()}
    if versions != {RESULTS_VERSION}:
        return f"was trained by code version {', '.join(sorted(versions)) or 'unknown'}, not {RESULTS_VERSION}"
    return None


def _drop_partials(run: RunDir) -> None:
    """Remove what interrupted writes left in the run; called holding its writer lock, so no live writer
    of these folders can own one."""
    drop_leftovers(run.leftover_partials(), "write")


def _drop_partials_unless_busy(run: RunDir) -> None:
    """``_drop_partials`` for a finished run, when it has leftovers and no process is writing it now."""
    if not run.leftover_partials():
        return
    try:
        with training_lock(run.path, run.run_id):
            _drop_partials(run)
    except RunBusy:
        pass  # its trainer's own files, or left for the next run to clean


def _train_one(run: RunDir, spec: "_Spec", req: TrainRequest, dataset: DatasetCache, data: "_Data",
               device: str, *, fresh: bool = False) -> RunResult:
    """One run, holding its lock: fit (resuming a checkpoint) -> codes -> evaluate -> write."""
    checkpoints = RunCheckpoints(run.path, {"run_id": spec.run_id, "config_hash": RunId.parse(spec.run_id).key,
                                            "code_version": RESULTS_VERSION, "device": device_kind(device),
                                            "data_fingerprint": dataset.items_meta.get("fingerprint")},
                                 every=req.checkpoint_every)
    if fresh:  # --force, or the data changed: from scratch, and the old report is no longer the run's
        checkpoints.discard()
        run.mark_incomplete()
    method = _new_method(spec, data, req)
    meta = _meta(spec, req, method, data, dataset, device)
    run.write_config({**meta, **_provenance(spec, req, data, dataset)})  # written before training starts
    try:
        history = _fit(method, spec, data, req, device, checkpoints)
    except TrainingPaused as paused:
        return RunResult(spec.run_id, run.path, spec.bits, {}, paused=paused)
    run.write_model(lambda path: save_method(method, path, run_id=spec.run_id))
    run.write_history({"epochs": history.epochs, "seconds": history.seconds, "validation": history.validation,
                       "validation_protocol": VALIDATION_PROTOCOL, "selection": history.selection,
                       "resumed_from": history.resumed_from, "checkpoints": history.checkpoints,
                       "checkpoint_s": history.checkpoint_s})
    codes, encode_s = _write_codes(run, method, spec, data, req)
    rows, curves, eval_s = _evaluate(codes, history, req)
    timings = {"load_s": data.load_s, "train_s": history.seconds, "train_s_per_epoch": history.seconds_per_epoch,
               "validation_s": history.validation_s, "encode_s": encode_s, "eval_s": eval_s}
    _write_report(run, rows, curves, {**meta, "n_validation": len(data.features["validation"]),
                                      **_selection(history), **timings})
    checkpoints.discard()  # a finished run keeps its model, not its checkpoint
    return RunResult(spec.run_id, run.path, spec.bits, {**_summary(rows), **timings},
                     resumed_from=history.resumed_from)


@dataclass
class _Data:
    """The four splits of one request, read once, and what the methods are built for."""

    features: dict[str, AlignedFeatures]
    batches: dict[str, FeatureBatch]
    dims: FeatureDims
    image_refs: list[FeatureRef]
    text_refs: list[FeatureRef]
    load_s: float


@dataclass
class _Spec:
    """One run: the method, its resolved config and the id they give."""

    method: str
    bits: int
    config: Any  # the method's resolved config dataclass
    resolved: dict[str, Any]  # the same, in its JSON form
    paper_epochs: int
    overrides: dict[str, Any]
    run_id: str


def _with_default_features(req: TrainRequest, method_name: str, quiet: bool = False) -> TrainRequest:
    builder = METHODS.get(method_name).builder
    # the spec is part of the run id: "alexnet:pool " or "alexnet:pool," would train a second run of the same features
    req = dataclasses.replace(req, image=None if req.image is None else canonical_feature_spec(req.image),
                              text=None if req.text is None else canonical_feature_spec(req.text))
    if req.image is not None and req.text is not None:
        return req
    req = dataclasses.replace(req, image=builder.default_image_features if req.image is None else req.image,
                              text=builder.default_text_features if req.text is None else req.text)
    said = (method_name, req.image, req.text)
    if not quiet and said not in _SAID_DEFAULTS:  # once per process: a grid asks for every code length
        _SAID_DEFAULTS.add(said)
        log.info("%s reads image=%s text=%s (its defaults; set IMAGE=/TEXT= to choose)", method_name, req.image,
                 req.text)
    return req


_SAID_DEFAULTS: set[tuple[str, str | None, str | None]] = set()


def _check_encoders_known(dataset: DatasetCache, spec: str, flag: str) -> None:
    """ConfigError for a feature spec naming an encoder that is neither cached nor registered: the missing-
    features error would suggest `cmh extract --encoders <that name>`, a command that cannot work."""
    from pipeline.orchestration.extraction import encoder_kind
    from stages.extract import ENCODERS, load_encoders

    cached = dataset.layout.encoder_folders(dataset.name) if dataset.exists() else []
    for part in [p.strip() for p in spec.split(",") if p.strip()]:
        name = part.partition(":")[0].strip()
        if any(c == name or c.startswith((name + ".", name + "-")) for c in cached):
            continue
        load_encoders()
        try:
            ENCODERS.resolve(encoder_kind(name))
        except KeyError as exc:
            raise ConfigError(f"{flag} {spec!r}: {exc.args[0]}") from None


def _feature_refs(dataset: DatasetCache, req: TrainRequest) -> tuple[list[FeatureRef], list[FeatureRef]]:
    """The request's image and text columns, from the manifests alone: a dataset, encoder or column that is not
    cached is refused here, before any run is looked at."""
    dataset.items_meta, dataset.splits_meta  # file footers: a dataset gone or renamed is named, with the fix
    _check_encoders_known(dataset, req.image, "--image (IMAGE=)")
    _check_encoders_known(dataset, req.text, "--text (TEXT=)")
    return dataset.feature_refs(req.image, "image"), dataset.feature_refs(req.text, "text")


def _load(dataset: DatasetCache, req: TrainRequest) -> _Data:
    t0 = time.perf_counter()
    image_refs, text_refs = _feature_refs(dataset, req)
    features = {s: dataset.features(s, image_refs, text_refs) for s in ("train", "validation", "query", "database")}
    return _Data(features, {s: FeatureBatch.from_features(v) for s, v in features.items()},
                 FeatureDims.from_features(features["train"]), image_refs, text_refs, time.perf_counter() - t0)


def _spec(req: TrainRequest, method_name: str, bits: int) -> _Spec:
    overrides = dict(req.overrides)
    if req.epochs is not None:
        overrides["epochs"] = req.epochs
    builder = METHODS.get(method_name).builder
    if req.eval_mode == "paired" and not builder.supports_paired:
        raise ConfigError(f"{method_name} has no paired evaluation mode; it is for UCMFH-style fusion methods")
    cfg_fields = {f.name for f in dataclasses.fields(METHODS.get(method_name).config)}
    if builder.supports_paired and "eval_mode" in cfg_fields:
        overrides["eval_mode"] = req.eval_mode  # UCMFH trains differently for the two modes
    cfg = resolve_config(method_name, req.dataset, overrides)
    paper_epochs = resolve_config(method_name, req.dataset, {k: v for k, v in overrides.items()
                                                             if k != "epochs"}).epochs
    resolved = _config_dict(cfg)
    return _Spec(method_name, bits, cfg, resolved, paper_epochs, overrides, run_id_for(req, bits, resolved))


def _new_method(spec: _Spec, data: _Data, req: TrainRequest) -> HashingMethod:
    torch.manual_seed(req.seed)
    np.random.seed(req.seed)
    return create_method(spec.method, dims=data.dims, bits=spec.bits, dataset=req.dataset, overrides=spec.overrides)


def _meta(spec: _Spec, req: TrainRequest, method: HashingMethod, data: _Data, dataset: DatasetCache,
          device: str) -> dict[str, Any]:
    """The run's identity and provenance: config.json's head, and a column of every report row."""
    closed = method.closed_form
    return {
        "run_id": spec.run_id, "config_hash": RunId.parse(spec.run_id).key,
        "epochs": None if closed else int(spec.config.epochs), "method": spec.method, "dataset": req.dataset,
        "bits": spec.bits, "seed": req.seed, "image_features": feature_identity(req.image),
        "text_features": feature_identity(req.text),
        "eval_mode": req.eval_mode, "tie_rule": req.tie, "supervised": bool(method.supervised), "device": device,
        "n_train": len(data.features["train"]), "n_query": len(data.features["query"]),
        "n_database": len(data.features["database"]),
        "dropped_items": sum(len(v.dropped) for v in data.features.values()),
        # provenance a published result row carries (results/; cmh report --results)
        "paper_epochs": None if closed else int(spec.paper_epochs),
        "split_protocol": _split_protocol(dataset), "hardware": hardware(),
        "code_version": RESULTS_VERSION, "git": git_revision(),
    }


def _provenance(spec: _Spec, req: TrainRequest, data: _Data, dataset: DatasetCache) -> dict[str, Any]:
    """What config.json adds: the request, resolved config, widths, environment and the data's fingerprints."""
    return {
        "request": {k: v for k, v in dataclasses.asdict(req).items() if k not in _NOT_RECORDED},
        "config": spec.resolved, "dims": dataclasses.asdict(data.dims), "environment": environment(),
        "data": {k: dataset.items_meta.get(k) for k in ("fingerprint", "source", "text_kind")},
        "splits": dataset.splits_meta,
        "features": {ref.encoder: {k: dataset.manifest(ref.encoder).get(k)
                                   for k in ("config_hash", "code_version", "dataset_fingerprint", "encoder_config")}
                     for ref in [*data.image_refs, *data.text_refs]},
    }


def _fit(method: HashingMethod, spec: _Spec, data: _Data, req: TrainRequest, device: str,
         checkpoints: RunCheckpoints) -> TrainHistory:
    log.info("training %s at %d bits on %d items (%s / %s) on %s", spec.method, spec.bits,
             len(data.features["train"]), req.image, req.text, device)
    paired = req.eval_mode == "paired"
    # validation encodes the way the test does: a paired-mode run is scored in paired mode
    validator = Validator(data.batches["validation"], data.batches["train"], map_at_k=_validation_map,
                          encode=functools.partial(encode_split, paired=paired),
                          every=default_every(int(spec.config.epochs)) if not method.closed_form else 1)
    return fit_method(method, data.batches["train"], seed=req.seed, device=device, progress=req.progress,
                      validator=validator, checkpoints=checkpoints, stop_at=req.stop_at)


def _write_codes(run: RunDir, method: HashingMethod, spec: _Spec, data: _Data,
                 req: TrainRequest) -> tuple[dict[str, dict[str, np.ndarray]], float]:
    """±1 codes of the query and database splits (and their labels), written under the run."""
    t0 = time.perf_counter()
    out: dict[str, dict[str, np.ndarray]] = {}
    for split in ("query", "database"):
        features = data.features[split]
        out[split] = {**coding.codes(method, features, paired=req.eval_mode == "paired"), "labels": features.labels}
        run.write_codes(split, features.item_id, out[split]["image"], out[split]["text"],
                        {"run_id": spec.run_id, "bits": spec.bits, "method": spec.method})
    return out, time.perf_counter() - t0


def _evaluate(codes: dict[str, dict[str, np.ndarray]], history: TrainHistory,
              req: TrainRequest) -> tuple[list[dict[str, Any]], list[dict[str, Any]], float]:
    from stages.evaluate.report import evaluate_codes_and_curves

    t0 = time.perf_counter()
    evaluation = evaluate_codes_and_curves(codes["query"], codes["database"], tie=req.tie)
    return evaluation.rows + _validation_rows(history.validation), evaluation.curves, time.perf_counter() - t0


def _selection(history: TrainHistory) -> dict[str, Any]:
    if not history.selection:
        return {}
    return {"chosen_on_validation": json.dumps(history.selection.get("chosen")),
            "validation_grid": json.dumps(history.selection.get("grid"))}


def _write_report(run: RunDir, rows: list[dict[str, Any]], curves: list[dict[str, Any]], meta: dict[str, Any]) -> None:
    from stages.evaluate.report import write_curves, write_report
    from stages.present.plots import plot_run

    write_report(run, rows, meta)
    write_curves(run, curves, meta)
    try:
        plot_run(run)
    except ModuleNotFoundError as exc:  # the GPU pass's machine has no matplotlib: the figures are optional there
        if (exc.name or "").split(".")[0] != "matplotlib":
            raise
        _plots_skipped(run, f"{exc.name} is not installed where this run was trained")


def _plots_skipped(run: RunDir, why: str) -> None:
    """Say once per process, and record in the run (``plots/skipped.json``), that its figures were not drawn;
    `cmh report --html` draws them later from its curves."""
    from pipeline.ground.store.parquet import write_json_atomic

    fix = "`cmh report --html` (make report) draws them from the run's curves.parquet"
    write_json_atomic({"reason": why, "fix": fix}, run.plots_skipped_path)
    if why not in _SAID_PLOTS:
        _SAID_PLOTS.add(why)
        log.warning("run plots not drawn (%s); recorded in plots/skipped.json of each run; %s", why, fix)


_SAID_PLOTS: set[str] = set()


#: How validation scores are computed (stored with every run that has them).
VALIDATION_PROTOCOL = ("mAP@50 of the validation split's items (queries) against the training split "
                       "(retrieval set); validation is drawn from the database minus train, never the query set")


def _split_protocol(dataset: DatasetCache) -> str:
    """e.g. ``djsrh-mirflickr seed 1: query 2000, database 18015, train 5000, validation 2000``."""
    meta = dataset.splits_meta
    params = meta.get("params") or {}
    sizes = meta.get("sizes") or {}
    shown = ", ".join(f"{k} {sizes[k]}" for k in ("query", "database", "train", "validation") if k in sizes)
    return f"{params.get('protocol')} seed {params.get('seed')}" + (f": {shown}" if shown else "")


def _validation_map(q: np.ndarray, d: np.ndarray, q_labels: np.ndarray, d_labels: np.ndarray, k: int) -> float:
    from stages.evaluate.metrics import map_at_k

    return float(map_at_k(binarize(q), binarize(d), q_labels, d_labels, k).mean)


def _validation_rows(points: Sequence[Mapping[str, float]]) -> list[dict[str, Any]]:
    """The last validation point as report rows (metric ``val_map@50``); the whole curve is in history.json."""
    if not points:
        return []
    last = points[-1]
    return [{"task": task, "metric": f"val_map@{VALIDATION_K}", "k": VALIDATION_K, "value": float(last[task])}
            for task in ("i2t", "t2i")]


def _summary(rows: Sequence[Mapping[str, Any]]) -> dict[str, float]:
    """The one-line summary (mAP@50 and mAP per task) of a run's report rows."""
    return {f"{r['task']}_{r['metric']}": r["value"] for r in rows
            if r["metric"] in ("map@50", "map", f"val_map@{VALIDATION_K}")}


def _summary_from_report(run: RunDir) -> dict[str, float]:
    from stages.evaluate.report import read_rows

    return _summary(read_rows(run.report_path))
