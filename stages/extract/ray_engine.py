"""Extraction on Ray Data (``cmh extract --engine ray``): the same encoders, the same cache.

Planning, shard writing and the summary are the local runner's (``plan.py``); only the batches take
another road. The pending items (shard after shard) become a Ray dataset of one block per batch,
cut so that no batch straddles two shards (the local runner's batches, so the features match it);
images are decoded and transformed in CPU tasks (``map_batches`` with a function), and encoded in a
pool of actors (``map_batches`` with a class), each holding one copy of the prepared encoder, on
one GPU when the cluster has GPUs. The driver collects the encoded rows by shard and writes a shard
atomically once all its rows are in, so a killed job resumes at the missing shards. Unreadable
images travel as rows with a reason and end in ``errors.parquet``, as with the local runner.

The driver needs the cache folder; every node needs the same Python environment (``cmh``
installed) and the images at the paths the item table records (a shared filesystem).

Imported only for ``--engine ray``: nothing else in cmh imports ray.
"""
from __future__ import annotations

import contextlib
import logging
import os
import shutil
import socket
import time
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import pyarrow as pa
import ray
import torch

from pipeline.ground.item_table import ItemTable
from pipeline.ground.errors import ConfigError
from pipeline.ground.progress import progress_bar
from pipeline.ground.store.features import FeatureWriter, Shard, ShardSpec
from pipeline.ground.store.layout import CacheLayout
from stages.extract.base import Encoder
from stages.extract.plan import ExtractSummary, finish_extraction, plan_extraction, write_shard_batches
from stages.extract.runner import available_cores, decode_image, shard_batches

log = logging.getLogger(__name__)

#: CPUs a decoding task reserves. On CPU, decoding costs about a tenth of the model (runner.py
#: ``default_workers``), so a quarter core per task is generous; CPU actors take the rest of a core.
DECODE_CPUS = 0.25
CPU_ACTOR_CPUS = 1.0 - DECODE_CPUS
#: Seconds to wait for a TCP connection to the head's address before giving up.
CONNECT_TIMEOUT_S = 5.0


# -- the Ray session -----------------------------------------------------------------------------
@contextlib.contextmanager
def ray_session(address: str | None = None, *, num_cpus: int | None = None,
                object_store_memory: int | None = None) -> Iterator[None]:
    """Connect to the cluster at ``address`` ("host:port", "ray://host:port", "auto"), or start a
    local Ray with ``num_cpus`` (default: the cores this process may use). Reuses a session that is
    already up and then leaves it running; shuts down only what it started."""
    if ray.is_initialized():
        log.info("using the Ray session already running%s", f" (not connecting to {address})" if address else "")
        yield
        return
    _quiet_ray_logs()
    common: dict[str, Any] = {"include_dashboard": False, "logging_level": logging.WARNING,
                              "log_to_driver": True}
    if address:
        check_reachable(address)
        try:
            ray.init(address=address, **common)
        except (ConnectionError, RuntimeError, ValueError, TimeoutError) as exc:
            raise ConfigError(f"cannot connect to the Ray cluster at {address}: {_first_line(exc)}; "
                              f"start it with `ray start --head` there, or fix --ray-address/RAY_ADDRESS") from None
    else:
        cpus = num_cpus or available_cores()
        store = object_store_memory or default_object_store_memory()
        log.info("starting a local Ray: %d CPUs, object store %s", cpus,
                 f"{store / 2**20:.0f} MiB" if store else "Ray's default")
        ray.init(address="local", num_cpus=cpus, object_store_memory=store, runtime_env=_same_code(), **common)
    try:
        yield
    finally:
        ray.shutdown()


def _same_code() -> dict[str, Any]:
    """Local workers import cmh from the driver's own source tree (a checkout run with PYTHONPATH may differ
    from the installed copy); on a cluster each node runs its own installed cmh."""
    root = str(Path(__file__).resolve().parents[2])
    path = os.pathsep.join([root, *filter(None, [os.environ.get("PYTHONPATH")])])
    return {"env_vars": {"PYTHONPATH": path, "OMP_NUM_THREADS": "1", "RAY_DEDUP_LOGS": "1"}}


def _quiet_ray_logs() -> None:
    """Ray's warnings and errors stay; its per-dataset INFO lines and two notices that say nothing about
    this job (local token authentication; progress bars off, since ours counts the items) go to Ray's
    own log files only."""
    import ray.data  # noqa: F401  (configures the ray.data logger, whose console level is set below)
    from ray.util import log_once

    os.environ.setdefault("RAY_DEDUP_LOGS", "1")
    logging.getLogger("ray._private.authentication.authentication_token_setup").setLevel(logging.ERROR)
    for handler in logging.getLogger("ray.data").handlers:
        if not isinstance(handler, logging.FileHandler) and "File" not in type(handler).__name__:
            handler.setLevel(logging.WARNING)
    log_once("ray_data_progress_manager_disabled")  # consumes the once-only "progress bars disabled" notice


def default_object_store_memory() -> int | None:
    """None (Ray's default, 30% of RAM) when /dev/shm holds that; else 80% of /dev/shm's free space
    (logged), since Ray's store lives there and a larger request falls back to slow disk."""
    try:
        free = shutil.disk_usage("/dev/shm").free
    except OSError:
        return None
    ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") if hasattr(os, "sysconf") else 0
    if free >= 0.3 * ram:
        return None
    store = max(int(free * 0.8), 80 * 2**20)
    log.warning("/dev/shm has %.0f MiB free, less than Ray's default object store: using %.0f MiB",
                free / 2**20, store / 2**20)
    return store


#: The HTTP/2 client preface and an empty SETTINGS frame: a gRPC server (Ray's GCS, the Ray Client
#: server) answers with a SETTINGS frame of its own (frame type 4 in byte 3 of the 9-byte header).
_HTTP2_HELLO = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + bytes([0, 0, 0, 4, 0, 0, 0, 0, 0])


def check_reachable(address: str) -> None:
    """ConfigError naming ``address`` unless a gRPC server answers there within CONNECT_TIMEOUT_S.

    ray.init retries for minutes against a closed port, and waits without end on a port where
    something else listens; this probe answers in seconds either way."""
    if address == "auto":
        return
    bare = address.split("://", 1)[-1]
    host, sep, port = bare.rpartition(":")
    if not sep or not port.isdigit():
        raise ConfigError(f"--ray-address {address!r}: expected HOST:PORT (e.g. 10.0.0.1:6379, the head's "
                          f"`ray start --head` address), ray://HOST:PORT or auto")
    try:
        conn = socket.create_connection((host, int(port)), timeout=CONNECT_TIMEOUT_S)
    except OSError as exc:
        raise ConfigError(f"cannot reach the Ray cluster at {address} ({exc.strerror or exc}); start it with "
                          f"`ray start --head` on that machine, or fix --ray-address/RAY_ADDRESS") from None
    try:
        conn.settimeout(CONNECT_TIMEOUT_S)
        conn.sendall(_HTTP2_HELLO)
        reply = conn.recv(9)
    except OSError:
        reply = b""
    finally:
        conn.close()
    if len(reply) < 4 or reply[3] != 4:
        raise ConfigError(f"{address} answers but is not a Ray head (no gRPC reply within {CONNECT_TIMEOUT_S:g} s); "
                          f"give the address `ray start --head` printed (port 6379 by default), or fix "
                          f"--ray-address/RAY_ADDRESS")


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


# -- the pipeline stages (run in Ray workers) ----------------------------------------------------
def _decode(batch: dict[str, np.ndarray], transform: Callable[[Any], torch.Tensor]) -> dict[str, np.ndarray]:
    """Decode and transform one block of images; a failed image keeps its row with zero pixels and a reason."""
    torch.set_num_threads(1)
    pixels, reasons = [], []
    for ref in batch["image"]:
        tensor, reason = decode_image(str(ref), transform)
        pixels.append(None if tensor is None else tensor.numpy())
        reasons.append(reason or "")
    shape = next((p.shape for p in pixels if p is not None), None)
    dtype = next((p.dtype for p in pixels if p is not None), np.uint8)
    if shape is None:  # every image of the block failed: a 1-pixel placeholder keeps the column typed
        shape = (1,)
    out = {k: v for k, v in batch.items() if k != "image"}
    out["pixels"] = np.stack([np.zeros(shape, dtype) if p is None else p for p in pixels])
    out["error"] = np.array(reasons, dtype=object)
    return out


class _EncodeActor:
    """One prepared encoder on this actor's device; encodes the rows of a block that decoded."""

    def __init__(self, encoder_ref: list["ray.ObjectRef"], use_gpu: bool) -> None:
        torch.set_num_threads(1)
        self.device = torch.device("cuda" if use_gpu else "cpu")
        self.encoder: Encoder = ray.get(encoder_ref[0]).to(self.device)
        self.amp = use_gpu

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        start = time.perf_counter()
        n = len(batch["pos"])
        errors = batch["error"] if "error" in batch else np.full(n, "", dtype=object)
        ok = np.array([not e for e in errors], dtype=bool)
        enc = self.encoder
        out: dict[str, np.ndarray] = {"pos": batch["pos"], "error": errors}
        arrays = {name: np.zeros((n, spec.dim), dtype=spec.dtype) for name, spec in enc.columns.items()}
        if ok.any():
            images = None
            if "image" in enc.inputs:
                images = torch.from_numpy(np.ascontiguousarray(batch["pixels"][ok])).to(self.device)
            texts = [[str(t) for t in batch["texts"][r]] for r in np.flatnonzero(ok)] if "text" in enc.inputs else None
            autocast = torch.autocast("cuda", dtype=torch.float16) if self.amp else contextlib.nullcontext()
            with torch.inference_mode(), autocast:
                encoded = enc.encode(images, texts, batch["item_id"][ok])
            for name in arrays:
                arrays[name][ok] = encoded[name]
        out.update(arrays)
        out["encode_s"] = np.full(n, (time.perf_counter() - start) / n)
        return out


# -- the driver ----------------------------------------------------------------------------------
def run_extraction_ray(
    layout: CacheLayout,
    items: ItemTable,
    splits: dict[str, np.ndarray],
    encoder: Encoder,
    *,
    shard: ShardSpec = ShardSpec(),
    device: str | None = None,
    batch_size: int = 64,
    concurrency: int | None = None,
    shard_size: int = 1024,
    overwrite: bool = False,
    progress: bool = True,
) -> ExtractSummary:
    """Encode the query and database items of ``splits`` into ``layout`` on the Ray session that is up
    (``ray_session``); same arguments and result as ``run_extraction``, plus ``concurrency`` (encoder
    actors; default: one per GPU, else one per CPU)."""
    if not ray.is_initialized():
        raise RuntimeError("run_extraction_ray needs a Ray session: wrap it in ray_session()")
    if batch_size < 1 or shard_size < 1:
        raise ConfigError(f"batch_size and shard_size must be >= 1 (got {batch_size}, {shard_size})")
    use_gpu, n_actors, actor_cpus = actor_resources(device, concurrency, "image" in encoder.inputs)
    log.info("extract %s/%s on Ray: %d encoder actor(s) on %s, batch %d", items.dataset, encoder.id, n_actors,
             "GPU (fp16 autocast)" if use_gpu else "CPU", batch_size)
    plan = plan_extraction(layout, items, splits, encoder, shard=shard, shard_size=shard_size, overwrite=overwrite,
                           engine="ray")
    failed = written = seen = 0
    wait_s = encode_s = write_s = first_batch_s = 0.0
    loop_start = time.perf_counter()
    if plan.todo:
        rows = plan.rows()
        sizes = np.array([len(s.item_ids) for s in plan.todo])
        shard_of = np.repeat(np.arange(len(plan.todo)), sizes)
        ds = _dataset(items, encoder, rows, sizes, batch_size, use_gpu, n_actors, actor_cpus)
        got: dict[int, list[dict[str, np.ndarray]]] = {}
        count = np.zeros(len(plan.todo), dtype=np.int64)
        bar = progress_bar(int(sizes.sum()), f"{items.dataset}/{encoder.id} (ray)", unit="items") if progress else None
        batches = iter(ds.iter_batches(batch_size=None, batch_format="numpy"))
        try:
            while True:
                t = time.perf_counter()
                batch = next(batches, None)
                wait_s += time.perf_counter() - t
                if batch is None:
                    break
                encode_s += float(batch["encode_s"].sum())
                parts = shard_of[batch["pos"]]
                for part in np.unique(parts):
                    sel = parts == part
                    got.setdefault(int(part), []).append({k: v[sel] for k, v in batch.items()})
                    count[part] += int(sel.sum())
                    if count[part] == sizes[part]:
                        t = time.perf_counter()
                        failed += _write_part(plan.writer, plan.todo[int(part)], got.pop(int(part)), items, rows,
                                              list(encoder.columns))
                        write_s += time.perf_counter() - t
                        written += 1
                first_batch_s = first_batch_s or time.perf_counter() - loop_start
                seen += len(parts)
                if bar is not None:
                    bar.update(len(parts))
        finally:
            if hasattr(batches, "close"):
                batches.close()  # stops the streaming execution and frees its actors, also after an error
            if bar is not None:
                bar.close()
        if got:  # a row lost on the way would otherwise leave a shard silently unwritten
            raise RuntimeError(f"Ray returned {int(count[list(got)].sum())} of {int(sizes[list(got)].sum())} rows "
                               f"for shard(s) {sorted(got)}; re-run to resume")
    loop_seconds = time.perf_counter() - loop_start
    return finish_extraction(layout, items, encoder, plan, device="cuda" if use_gpu else "cpu", engine="ray",
                             failed=failed, written=written, seen=seen, loop_seconds=loop_seconds, wait_s=wait_s,
                             encode_s=encode_s, write_s=write_s, first_batch_s=first_batch_s,
                             startup_s=(loop_start - plan.started + first_batch_s) if first_batch_s else 0.0)


def actor_resources(device: str | None, concurrency: int | None, reads_images: bool = False) -> tuple[bool, int, float]:
    """(actors on GPUs?, actor count, CPUs per actor), checked against the cluster so that Ray never
    waits for resources it will not get."""
    cluster = ray.cluster_resources()
    cpus, gpus = float(cluster.get("CPU", 0)), int(cluster.get("GPU", 0))
    if device not in (None, "cpu", "cuda"):
        raise ConfigError(f"--device {device!r}: with --engine ray give cuda or cpu (each actor gets its own GPU)")
    if device == "cuda" and gpus == 0:
        raise ConfigError("--device cuda requested but the Ray cluster has no GPU; use --device cpu")
    use_gpu = device != "cpu" and gpus > 0
    if concurrency is not None and concurrency < 1:
        raise ConfigError(f"--concurrency must be >= 1, got {concurrency}")
    actor_cpus = 1.0 if use_gpu else CPU_ACTOR_CPUS
    n = concurrency or (gpus if use_gpu else max(1, int(cpus)))
    need_cpus = n * actor_cpus + (DECODE_CPUS if reads_images else 0.0)
    if need_cpus > cpus + 1e-9 or (use_gpu and n > gpus):
        have = f"{cpus:g} CPU(s)" + (f" and {gpus} GPU(s)" if use_gpu else "")
        raise ConfigError(f"--concurrency {n} needs {need_cpus:g} CPU(s)" + (f" and {n} GPU(s)" if use_gpu else "")
                          + f" but the Ray cluster has {have}; lower --concurrency or add nodes")
    return use_gpu, n, actor_cpus


def _dataset(items: ItemTable, encoder: Encoder, rows: np.ndarray, sizes: np.ndarray, batch_size: int,
             use_gpu: bool, n_actors: int, actor_cpus: float) -> "ray.data.Dataset":
    """Pending items as blocks of at most ``batch_size`` rows that never straddle two shards, then decode
    tasks and the encoder actor pool."""
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False  # ours counts items; Ray's would interleave with it
    ctx.print_on_execution_start = False
    columns: dict[str, Any] = {"pos": np.arange(len(rows), dtype=np.int64),
                               "item_id": np.asarray(items.item_id[rows], dtype=np.int64)}
    if "image" in encoder.inputs:
        columns["image"] = pa.array([items.image[r] for r in rows], pa.string())
    if "text" in encoder.inputs:
        columns["texts"] = pa.array([list(items.texts[r]) for r in rows], pa.list_(pa.string()))
    table = pa.table(columns)
    ds = ray.data.from_arrow([table.slice(b[0], len(b)) for b in shard_batches(list(sizes), batch_size)])
    if "image" in encoder.inputs:
        transform = encoder.image_transform()
        if transform is None:
            raise TypeError(f"encoder {encoder.id} reads images but has no image_transform()")
        ds = ds.map_batches(_decode, fn_kwargs={"transform": transform}, batch_size=None, batch_format="numpy",
                            num_cpus=DECODE_CPUS)
    # the encoder goes into the object store once, owned by this driver for the whole run, and each actor
    # fetches it; in a list, so that Ray passes the reference instead of the weights (a restarted actor
    # can fetch it again)
    encoder_ref = [ray.put(encoder)]
    return ds.map_batches(_EncodeActor, fn_constructor_kwargs={"encoder_ref": encoder_ref, "use_gpu": use_gpu},
                          batch_size=None, batch_format="numpy", compute=ray.data.ActorPoolStrategy(size=n_actors),
                          num_cpus=actor_cpus, num_gpus=1 if use_gpu else 0)


def _write_part(writer: FeatureWriter, shard: Shard, pieces: list[dict[str, np.ndarray]], items: ItemTable, rows: np.ndarray,
                columns: list[str]) -> int:
    """Write one shard from its collected rows, in the shard's item order; returns its failure count."""
    batch = {k: np.concatenate([p[k] for p in pieces]) for k in pieces[0]}
    order = np.argsort(batch["pos"], kind="stable")
    batch = {k: v[order] for k, v in batch.items()}
    bad = np.array([bool(e) for e in batch["error"]], dtype=bool)
    errors = [(int(items.item_id[rows[p]]), items.image[rows[p]], str(e))
              for p, e in zip(batch["pos"][bad], batch["error"][bad])]
    ok = ~bad
    acc = [(np.asarray(items.item_id[rows[batch["pos"][ok]]], dtype=np.int64), {c: batch[c][ok] for c in columns})]
    write_shard_batches(writer, shard, acc if ok.any() else [], errors, columns)
    return len(errors)
