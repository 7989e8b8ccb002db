"""The extraction loop: one encoder over one dataset into the feature cache.

``run_extraction`` fits the encoder's data-dependent parts on the train split (``prepare``), plans the
shards (``FeatureWriter.pending``), decodes and transforms images in DataLoader workers while the main
process runs the model, writes each shard atomically as soon as its last batch is encoded, records
unreadable images in ``errors.parquet``, and gathers ``train``/``validation`` from the database shards
once every part exists (``FeatureWriter.finalize``). A killed run resumes at the first missing shard;
``--shard i/n`` workers split the parts between them and the last one to finish finalises.
"""
from __future__ import annotations

import contextlib
import logging
import os
import time
from dataclasses import dataclass
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from pipeline.ground.item_table import ItemTable
from pipeline.ground.images import load_image
from pipeline.ground.progress import progress_bar
from pipeline.ground.errors import ConfigError, DataError
from pipeline.ground.store.features import ShardSpec
from pipeline.ground.store.layout import CacheLayout
from stages.extract.base import Encoder
from stages.extract.plan import ExtractSummary, finish_extraction, plan_extraction, write_shard_batches

log = logging.getLogger(__name__)


# -- device -----------------------------------------------------------------------------------
def resolve_device(device: str | None) -> torch.device:
    """None -> cuda when available, else cpu."""
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device {device!r} requested but CUDA is not available here; use --device cpu")
    return dev


# -- data loading --------------------------------------------------------------------------------
def _plain_sigterm(worker_id: int) -> None:
    """In a loader worker (forked: it inherits the command's handlers): SIGTERM, which the loader sends a worker
    it stops, ends it at once instead of raising the command's one-line stop inside it."""
    import signal

    signal.signal(signal.SIGTERM, signal.SIG_DFL)


class _ImageDataset(Dataset):
    """Flat position -> (position, image tensor, None) or (position, None, reason) for an unreadable image."""

    def __init__(self, refs: Sequence[str], transform: Callable[[Any], torch.Tensor]) -> None:
        self.refs, self.transform = refs, transform

    def __len__(self) -> int:
        return len(self.refs)

    def __getitem__(self, pos: int) -> tuple[int, torch.Tensor | None, str | None]:
        return (pos, *decode_image(self.refs[pos], self.transform))


def decode_image(ref: str, transform: Callable[[Any], torch.Tensor]) -> tuple[torch.Tensor | None, str | None]:
    """(transformed image, None), or (None, reason) for an image that does not decode (an errors.parquet row)."""
    try:
        image = load_image(ref)
    except DataError as exc:
        return None, str(exc)
    return transform(image), None


def _collate(batch: list[tuple[int, torch.Tensor | None, str | None]]):
    """Drop failed items: (positions (k,), images (k, 3, H, W) or None, [(position, reason), ...])."""
    ok = [(pos, x) for pos, x, err in batch if err is None]
    failed = [(pos, err) for pos, _, err in batch if err is not None]
    positions = np.array([pos for pos, _ in ok], dtype=np.int64)
    images = torch.stack([x for _, x in ok]) if ok else None
    return positions, images, failed


def shard_batches(shard_sizes: Sequence[int], batch_size: int) -> list[list[int]]:
    """Flat positions in batches that never straddle two shards."""
    out, start = [], 0
    for size in shard_sizes:
        out += [list(range(s, min(s + batch_size, start + size))) for s in range(start, start + size, batch_size)]
        start += size
    return out


#: A batch counts as waited for when the model sat idle longer than this (a ready batch takes well under a
#: millisecond to hand over: it sits in shared memory) and longer than this share of its mean encode time
#: (on CPU a batch takes seconds, and a worker that was scheduled out for a few ms is no bottleneck).
WAITED_S = 0.002
WAITED_SHARE = 0.05
#: Batches decoded ahead of a GPU (all workers together): the model eats a 64-image batch in milliseconds,
#: a worker decodes one in ~0.1 s, so a deep queue absorbs slow images (a large JPEG, a cold disk block)
#: that would otherwise stall the GPU. CPU runs need less: the model is the slow side there.
IN_FLIGHT = {"cuda": 32, "cpu": 8}
#: Ceiling of the memory the batches in flight take (pinned on CUDA: page-locked, so kept modest).
IN_FLIGHT_BYTES = 2 << 30


@dataclass(frozen=True)
class LoaderSettings:
    workers: int
    prefetch_factor: int | None  # batches each worker decodes ahead (None without workers)
    pin_memory: bool  # page-locked batches: the host-to-GPU copy runs asynchronously (non_blocking)


def loader_settings(device: torch.device, workers: int, batch_size: int, image_bytes: int = 3 * 224 * 224) -> LoaderSettings:
    """DataLoader settings for ``workers`` decoding processes: on CUDA, pinned memory and enough batches in
    flight (``IN_FLIGHT``, within ``IN_FLIGHT_BYTES``) that the GPU finds a batch ready; on CPU, 8 batches."""
    if workers < 1:
        return LoaderSettings(0, None, device.type == "cuda")
    in_flight = IN_FLIGHT["cuda" if device.type == "cuda" else "cpu"]
    in_flight = max(workers * 2, min(in_flight, IN_FLIGHT_BYTES // max(1, batch_size * image_bytes)))
    return LoaderSettings(workers, max(2, -(-in_flight // workers)), device.type == "cuda")


def _iterate(encoder: Encoder, refs: Sequence[str], batches: list[list[int]],
             loader: LoaderSettings) -> Iterator[tuple[np.ndarray, torch.Tensor | None, list[tuple[int, str]]]]:
    if "image" not in encoder.inputs:  # text-only: nothing to decode, no workers
        for b in batches:
            yield np.asarray(b, dtype=np.int64), None, []
        return
    transform = encoder.image_transform()
    if transform is None:
        raise TypeError(f"encoder {encoder.id} reads images but has no image_transform()")
    data = DataLoader(_ImageDataset(refs, transform), batch_sampler=batches, num_workers=loader.workers,
                      collate_fn=_collate, pin_memory=loader.pin_memory, prefetch_factor=loader.prefetch_factor,
                      worker_init_fn=_plain_sigterm)
    it = iter(data)
    try:
        yield from it
    finally:
        shutdown = getattr(it, "_shutdown_workers", None)
        if shutdown is not None:  # at once, also when the loop stops early, rather than when it is collected
            shutdown()


class _Timer:
    """Accumulates wall time per phase: ``with timer("encode"): ...``."""

    def __init__(self) -> None:
        self.totals: dict[str, float] = {"wait": 0.0, "encode": 0.0, "write": 0.0}

    @contextlib.contextmanager
    def __call__(self, phase: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.totals[phase] += time.perf_counter() - start


# -- the loop ------------------------------------------------------------------------------------
def run_extraction(
    layout: CacheLayout,
    items: ItemTable,
    splits: dict[str, np.ndarray],
    encoder: Encoder,
    *,
    shard: ShardSpec = ShardSpec(),
    device: str | None = None,
    batch_size: int = 64,
    workers: int | None = None,
    shard_size: int = 1024,
    overwrite: bool = False,
    progress: bool = True,
    threads: int | None = None,
) -> ExtractSummary:
    """Encode the query and database items of ``splits`` into ``layout``; see the module docstring.

    ``workers``: DataLoader processes decoding images (0 decodes in this process); default
    ``default_workers``. ``threads``: torch intra-op threads for this run (restored afterwards);
    default ``default_threads``.
    """
    dev = resolve_device(device)
    reads_images = "image" in encoder.inputs
    cores = available_cores()
    n_workers = (default_workers(dev, cores) if workers is None else workers) if reads_images else 0
    if batch_size < 1 or shard_size < 1 or n_workers < 0:
        raise ConfigError(f"batch_size and shard_size must be >= 1 and workers >= 0 "
                          f"(got {batch_size}, {shard_size}, {n_workers})")
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(threads or default_threads(dev, cores, n_workers, previous_threads))
    try:
        return _run(layout, items, splits, encoder, shard=shard, dev=dev, batch_size=batch_size, n_workers=n_workers,
                    shard_size=shard_size, overwrite=overwrite, progress=progress)
    finally:
        torch.set_num_threads(previous_threads)


def available_cores() -> int:
    """CPU cores this process may use (respects taskset/cgroup affinity where the OS reports it)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def default_workers(device: torch.device, cores: int) -> int:
    """Image-decoding processes. CUDA: every core but one, up to 16 (the model outruns JPEG decoding
    by an order of magnitude: AlexNet ~45k images/s on an H100, decoding ~1 ms per image per core).
    CPU: max(2, cores // 8), capped at cores (decoding costs about a tenth of the model on CPU).

    Measured with bench/bench_extract.py on a 16-vCPU machine (pipeline / bare model): 14 threads +
    2 workers 0.82, 12 + 4 0.74, 15 + 1 0.72, 16 + 2 0.60, 16 + 4 0.55; on 2 cores (taskset) 2 + 2
    ran 112-121 items/s and 2 + 1 102 (the bare model: 124-142, noisy).
    """
    if device.type == "cuda":
        return max(1, min(16, cores - 1))
    return min(cores, max(2, cores // 8))


def default_threads(device: torch.device, cores: int, workers: int, current: int) -> int:
    """torch threads on CPU: the cores the workers leave free on 8+ cores, else every core; never more
    than ``current`` (torch's setting, by default the core count), so a process limited on purpose
    (tests, a shared machine) stays limited.

    OpenMP's parallel regions wait for their slowest thread, so a worker preempting one of them
    stalls all of them: on many cores, threads + workers must not exceed the cores (numbers in
    ``default_workers``). On a few cores the workers idle most of the time and every core computes.
    """
    if device.type != "cpu":
        return current
    return min(current, max(1, cores - workers)) if cores >= 8 else current


def _run(layout: CacheLayout, items: ItemTable, splits: dict[str, np.ndarray], encoder: Encoder, *, shard: ShardSpec,
         dev: torch.device, batch_size: int, n_workers: int, shard_size: int, overwrite: bool,
         progress: bool) -> ExtractSummary:
    amp = dev.type == "cuda"
    log.info("extract %s/%s on %s (%s; torch threads %d, %d loader workers, batch %d)", items.dataset,
             getattr(encoder, "id", "?"), dev, "fp16 autocast" if amp else "float32", torch.get_num_threads(),
             n_workers, batch_size)
    plan = plan_extraction(layout, items, splits, encoder, shard=shard, shard_size=shard_size, overwrite=overwrite,
                           engine="local")
    writer, todo = plan.writer, plan.todo

    failed, written, seen, first_batch_s, first_batch_at = 0, 0, 0, 0.0, 0.0
    n_batches = waited = 0
    startup_s = 0.0
    timer = _Timer()
    loop_start = time.perf_counter()
    if todo:
        encoder.to(dev)
        rows = plan.rows()
        refs = [items.image[r] for r in rows] if "image" in encoder.inputs else []
        sizes = [len(s.item_ids) for s in todo]
        ends = np.cumsum(sizes)  # flat position where each shard ends
        bar = progress_bar(int(ends[-1]), f"{items.dataset}/{encoder.id}", unit="items") if progress else None
        autocast = torch.autocast("cuda", dtype=torch.float16) if amp else contextlib.nullcontext()
        part, acc, errors = 0, [], []
        # one background thread writes shards (Parquet encoding + fsync release the GIL), at most one
        # in flight, so the model does not wait for the disk
        pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="shard-writer")
        pending_write: Future | None = None
        loader = loader_settings(dev, n_workers, batch_size)
        batches = iter(_iterate(encoder, refs, shard_batches(sizes, batch_size), loader))
        try:
            while True:
                asked = time.perf_counter()
                batch = next(batches, None)
                got = time.perf_counter()
                if not n_batches:  # the first batch: loader start-up, not a wait of the model
                    startup_s = got - plan.started
                    first_batch_at = time.time()
                elif batch is not None:
                    timer.totals["wait"] += got - asked
                    # idle for a noticeable share of what a batch costs the model (CPU: seconds; GPU: ms)
                    waited += got - asked > max(WAITED_S, WAITED_SHARE * timer.totals["encode"] / n_batches)
                if batch is None:
                    break
                n_batches += 1
                positions, images, bad = batch
                errors += [(int(items.item_id[rows[p]]), items.image[rows[p]], why) for p, why in bad]
                if len(positions):
                    ids = items.item_id[rows[positions]]
                    texts = [items.texts[r] for r in rows[positions]] if "text" in encoder.inputs else None
                    with timer("encode"), torch.inference_mode(), autocast:
                        if images is not None:
                            images = images.to(dev, non_blocking=True)
                        acc.append((ids, encoder.encode(images, texts, ids)))
                if bar is not None:
                    bar.update(len(positions) + len(bad))
                first_batch_s = first_batch_s or time.perf_counter() - loop_start
                seen += len(positions) + len(bad)
                if seen == ends[part]:  # the last batch of this shard
                    with timer("write"):
                        if pending_write is not None:
                            pending_write.result()  # raises what the previous write raised
                        pending_write = pool.submit(write_shard_batches, writer, todo[part], acc, errors,
                                                    list(encoder.columns))
                    failed += len(errors)
                    written += 1
                    part, acc, errors = part + 1, [], []
            with timer("write"):
                if pending_write is not None:
                    pending_write.result()
        finally:
            close = getattr(batches, "close", None)
            if close is not None:
                close()  # ends the loader now: its workers exit here, not at interpreter exit
            pool.shutdown(wait=True)
            if bar is not None:
                bar.close()
    loop_end = time.perf_counter()
    loop_seconds = loop_end - loop_start
    if seen:
        log.debug("%s/%s: start-up %.1f s; then %.1f s waiting for decoded images (%d of %d batches), %.1f s "
                 "encoding, %.1f s waiting for shard writes", items.dataset, encoder.id, startup_s,
                 timer.totals["wait"], waited, n_batches, timer.totals["encode"], timer.totals["write"])
        if dev.type == "cuda" and n_batches >= 20 and waited > 0.1 * n_batches:
            log.warning("%s/%s: the GPU waited for decoded images in %d of %d batches (%.1f s): decoding is the "
                        "bottleneck; more --workers (this machine has %d cores) or a faster disk would help",
                        items.dataset, encoder.id, waited, n_batches, timer.totals["wait"], available_cores())

    return finish_extraction(layout, items, encoder, plan, device=str(dev), engine="local", failed=failed,
                             written=written, seen=seen, loop_seconds=loop_seconds, wait_s=timer.totals["wait"],
                             encode_s=timer.totals["encode"], write_s=timer.totals["write"],
                             first_batch_s=first_batch_s, startup_s=startup_s, batches=n_batches,
                             waited_batches=waited, first_batch_at=first_batch_at, loop_end=loop_end)
