"""The train stage: cached features -> trained method -> codes -> report, one run directory per code length.

Reads only the feature cache (never images). A run directory ``runs/<run_id>/`` holds the resolved
config, environment and data fingerprints, the trained weights, codes per split, the report and plots.
A run whose report already exists with the same resolved config is not trained again (``force`` redoes it).
"""
from __future__ import annotations

import dataclasses
import functools
import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch

from pipeline.ground.errors import ConfigError
from pipeline.ground.versions import RESULTS_VERSION
from pipeline.ground.provenance import environment, git_revision, hardware
from pipeline.ground.store.features import config_hash, read_manifest
from pipeline.ground.store.items import items_meta, splits_meta
from pipeline.ground.store.layout import CacheLayout
from pipeline.ground.store.runs import RunDir
from pipeline.ground.store.reader import load_split, parse_feature_spec
from stages.train.base import FeatureBatch, FeatureDims, METHODS, create_method, resolve_config, save_method
from stages.train.loop import encode_split, fit_method
from stages.train.validation import K as VALIDATION_K, Validator, default_every

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


@dataclass
class RunResult:
    run_id: str
    run_dir: Path
    bits: int
    summary: dict[str, float]
    skipped: bool = False


def _config_dict(cfg: Any) -> dict[str, Any]:
    return json.loads(json.dumps(dataclasses.asdict(cfg), default=str))


def run_id_for(req: TrainRequest, bits: int, resolved: Mapping[str, Any]) -> str:
    key = config_hash({"image": req.image, "text": req.text, "eval_mode": req.eval_mode, "tie": req.tie,
                       "config": resolved})[:8]
    return f"{req.dataset}-{METHODS.resolve(req.method)}-{bits}b-s{req.seed}-{key}"


def check_request(req: TrainRequest) -> str:
    """Every check that needs no data (method, bits, device, settings, epochs); returns the method's id.

    ``cmh grid`` runs it on every request before training the first, so a bad value for the last
    method does not surface hours in."""
    from stages.train import methods  # noqa: F401  (registers every method)
    from stages.evaluate.report import TIE_RULES
    from stages.train.checks import check_bits, check_device, check_training_length

    method_name = METHODS.resolve(req.method)
    if req.eval_mode not in ("single", "paired"):
        raise ConfigError(f"eval mode {req.eval_mode!r}: use 'single' or 'paired'")
    if req.tie not in TIE_RULES:
        raise ConfigError(f"tie rule {req.tie!r}: use one of {', '.join(TIE_RULES)}")
    check_bits(req.bits)
    check_device(req.device)
    if req.seed < 0:
        raise ConfigError(f"training seed {req.seed}: give a whole number >= 0 (SEED=/--seed)")
    overrides = {**req.overrides, **({"epochs": req.epochs} if req.epochs is not None else {})}
    closed_form = METHODS.get(method_name).builder.closed_form
    check_training_length(method_name, resolve_config(method_name, req.dataset, overrides), closed_form)
    return method_name


def train_runs(layout: CacheLayout, req: TrainRequest) -> list[RunResult]:
    from stages.train import methods  # noqa: F401  (registers every method)
    from pipeline.ground.store.codes import binarize, write_codes
    from stages.present.plots import plot_run
    from stages.evaluate.report import evaluate_codes_and_curves, write_curves, write_report

    method_name = check_request(req)
    device = req.device or ("cuda" if torch.cuda.is_available() else "cpu")
    builder = METHODS.get(method_name).builder
    if req.image is None or req.text is None:
        req = dataclasses.replace(req, image=req.image or builder.default_image_features,
                                  text=req.text or builder.default_text_features)
        log.info("%s reads image=%s text=%s (its defaults; set IMAGE=/TEXT= to choose)", method_name, req.image, req.text)
    image_refs = parse_feature_spec(layout, req.dataset, req.image, "image")
    text_refs = parse_feature_spec(layout, req.dataset, req.text, "text")

    t0 = time.perf_counter()
    data = {s: load_split(layout, req.dataset, s, image_refs, text_refs)
            for s in ("train", "validation", "query", "database")}
    load_s = time.perf_counter() - t0
    dims = FeatureDims.from_split(data["train"])
    batches = {s: FeatureBatch.from_split(v) for s, v in data.items()}
    overrides = dict(req.overrides)
    if req.epochs is not None:
        overrides["epochs"] = req.epochs
    supports_paired = builder.supports_paired
    if req.eval_mode == "paired" and not supports_paired:
        raise ConfigError(f"{method_name} has no paired evaluation mode; it is for UCMFH-style fusion methods")
    cfg_fields = {f.name for f in dataclasses.fields(METHODS.get(method_name).config)}
    if supports_paired and "eval_mode" in cfg_fields:
        overrides["eval_mode"] = req.eval_mode  # UCMFH trains differently for the two modes

    results = []
    for bits in req.bits:
        cfg = resolve_config(method_name, req.dataset, overrides)
        paper_epochs = resolve_config(method_name, req.dataset, {k: v for k, v in overrides.items()
                                                                 if k != "epochs"}).epochs
        resolved = _config_dict(cfg)
        run_id = run_id_for(req, bits, resolved)
        run = RunDir.of(layout, run_id)
        run_dir = run.path
        if run.is_complete() and not req.force:
            log.info("run %s exists (same config): skipped; pass --force to retrain", run_id)
            results.append(RunResult(run_id, run_dir, bits, _summary_from_report(run_dir), skipped=True))
            continue
        torch.manual_seed(req.seed)
        np.random.seed(req.seed)
        method = create_method(method_name, dims=dims, bits=bits, dataset=req.dataset, overrides=overrides)
        meta = {
            "run_id": run_id, "config_hash": run_id.rsplit("-", 1)[1],
            "epochs": None if method.closed_form else int(cfg.epochs), "method": method_name, "dataset": req.dataset, "bits": bits, "seed": req.seed,
            "image_features": req.image, "text_features": req.text, "eval_mode": req.eval_mode,
            "tie_rule": req.tie, "supervised": bool(method.supervised), "device": device,
            "n_train": len(data["train"]), "n_query": len(data["query"]), "n_database": len(data["database"]),
            "dropped_items": sum(len(v.dropped) for v in data.values()),
            # provenance a published result row carries (results/; cmh report --results)
            "paper_epochs": None if method.closed_form else int(paper_epochs),
            "split_protocol": _split_protocol(layout, req.dataset), "hardware": hardware(),
            "code_version": RESULTS_VERSION, "git": git_revision(),
        }
        provenance = {
            "request": {k: v for k, v in dataclasses.asdict(req).items() if k not in ("force", "progress")},
            "config": resolved, "dims": dataclasses.asdict(dims), "environment": environment(),
            "data": {k: items_meta(layout, req.dataset).get(k) for k in ("fingerprint", "source", "text_kind")},
            "splits": splits_meta(layout, req.dataset),
            "features": {ref.encoder: {k: read_manifest(layout, req.dataset, ref.encoder).get(k)
                                       for k in ("config_hash", "code_version", "dataset_fingerprint", "encoder_config")}
                         for ref in [*image_refs, *text_refs]},
        }
        run.write_config({**meta, **provenance})  # written before training starts

        log.info("training %s at %d bits on %d items (%s / %s) on %s", method_name, bits, len(data["train"]),
                 req.image, req.text, device)
        paired = req.eval_mode == "paired"
        # validation encodes the way the test does: a paired-mode run is scored in paired mode
        validator = Validator(batches["validation"], batches["train"], map_at_k=_validation_map,
                              encode=functools.partial(encode_split, paired=paired),
                              every=default_every(int(cfg.epochs)) if not method.closed_form else 1)
        history = fit_method(method, batches["train"], seed=req.seed, device=device, progress=req.progress,
                             validator=validator)
        run.write_model(lambda path: save_method(method, path))
        run.write_history({"epochs": history.epochs, "seconds": history.seconds, "validation": history.validation,
                           "validation_protocol": VALIDATION_PROTOCOL, "selection": history.selection})

        t1 = time.perf_counter()
        codes: dict[str, dict[str, np.ndarray]] = {}
        for split in ("query", "database"):
            codes[split] = {m: binarize(encode_split(method, batches[split].to("cpu"), m, paired=paired))
                            for m in ("image", "text")}
            codes[split]["labels"] = data[split].labels
            write_codes(run.codes_dir, split, data[split].item_id, codes[split]["image"], codes[split]["text"],
                        {"run_id": run_id, "bits": bits, "method": method_name})
        encode_s = time.perf_counter() - t1
        t2 = time.perf_counter()
        evaluation = evaluate_codes_and_curves(codes["query"], codes["database"], tie=req.tie)
        rows = evaluation.rows + _validation_rows(history.validation)
        eval_s = time.perf_counter() - t2
        timings = {"load_s": load_s, "train_s": history.seconds, "train_s_per_epoch": history.seconds_per_epoch,
                   "validation_s": history.validation_s, "encode_s": encode_s, "eval_s": eval_s}
        meta["n_validation"] = len(data["validation"])
        if history.selection:
            meta["chosen_on_validation"] = json.dumps(history.selection.get("chosen"))
            meta["validation_grid"] = json.dumps(history.selection.get("grid"))
        write_report(run_dir, rows, {**meta, **timings})
        write_curves(run_dir, evaluation.curves, {**meta, **timings})
        plot_run(run_dir)
        results.append(RunResult(run_id, run_dir, bits, {**_summary(rows), **timings}))
    return results


#: How validation scores are computed (stored with every run that has them).
VALIDATION_PROTOCOL = ("mAP@50 of the validation split's items (queries) against the training split "
                       "(retrieval set); validation is drawn from the database minus train, never the query set")


def _split_protocol(layout: CacheLayout, dataset: str) -> str:
    """e.g. ``djsrh-mirflickr seed 1: query 2000, database 18015, train 5000, validation 2000``."""
    meta = splits_meta(layout, dataset)
    params = meta.get("params") or {}
    sizes = meta.get("sizes") or {}
    shown = ", ".join(f"{k} {sizes[k]}" for k in ("query", "database", "train", "validation") if k in sizes)
    return f"{params.get('protocol')} seed {params.get('seed')}" + (f": {shown}" if shown else "")


def _validation_map(q: np.ndarray, d: np.ndarray, q_labels: np.ndarray, d_labels: np.ndarray, k: int) -> float:
    from pipeline.ground.store.codes import binarize
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


def _summary_from_report(run_dir: Path) -> dict[str, float]:
    from stages.evaluate.report import read_rows

    return _summary(read_rows(RunDir(run_dir).report_path))
