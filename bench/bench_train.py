"""Training time per epoch for every method on its own default features of the cached MIRFlickr set.

Each method reads what it reads in `cmh train` (``alexnet:pool`` + ``bow`` for most, the three
``alexnet`` branches for DSPRH). The baseline, measured in the same run on the same features and
batch size, is one epoch of a plain two-layer MLP per modality with an MSE loss (about the least any
deep method here can cost); each method's seconds per epoch is printed beside it, with the ratio and
the time its paper's schedule would take at that speed. The last columns time one checkpoint (model,
optimiser, RNG states) and its share of an epoch when saved every epoch and at the default interval. Needs `make extract DATASET=mirflickr` first;
with --quick (or without that cache) it runs on the demo set it builds itself.
"""
from __future__ import annotations

import argparse
import logging
import tempfile
import time
from pathlib import Path

import torch
from torch import nn


def _mlp_epoch(batch, bits: int, batch_size: int) -> float:
    img = nn.Sequential(nn.Linear(batch.image.shape[1], 4096), nn.ReLU(), nn.Linear(4096, bits))
    txt = nn.Sequential(nn.Linear(batch.text.shape[1], 4096), nn.ReLU(), nn.Linear(4096, bits))
    opt = torch.optim.SGD([*img.parameters(), *txt.parameters()], lr=0.01)
    start = time.process_time()
    n = batch.image.shape[0]
    for s in range(0, n - batch_size + 1, batch_size):
        loss = ((torch.tanh(img(batch.image[s:s + batch_size])) - torch.tanh(txt(batch.text[s:s + batch_size]))) ** 2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    return time.process_time() - start


#: Batches on which matrix-product FLOPs are counted (the count does not depend on the values, only the shapes).
FLOP_BATCHES = 4


def _head(batch, rows: int):
    """The first ``rows`` items of a FeatureBatch."""
    import dataclasses

    return dataclasses.replace(batch, image=batch.image[:rows], text=batch.text[:rows], labels=batch.labels[:rows],
                               index=batch.index[:rows],
                               image_parts={k: v[:rows] for k, v in batch.image_parts.items()},
                               text_parts={k: v[:rows] for k, v in batch.text_parts.items()})


def _flops(work) -> int:
    """Matrix-product FLOPs (mm, addmm, bmm, convolutions, attention) that ``work()`` runs, forward and backward,
    as torch's FlopCounterMode counts them; element-wise work is not counted."""
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter:
        work()
    return counter.get_total_flops()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--dataset", default="mirflickr")
    parser.add_argument("--cache", type=Path, default=None)
    parser.add_argument("--bits", type=int, default=64)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--methods", default="baseline,cca-itq,djsrh,dsah,ccah,ucmfh,cfrh,dsprh,fjsph")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)

    from pipeline.ground.settings import cache_root
    from pipeline.ground.store.cache import Cache
    from stages.train import methods  # noqa: F401
    from stages.train.base import create_method
    from pipeline.ground.store.checkpoints import DEFAULT_INTERVAL_S, RunCheckpoints
    from stages.train.loop import fit_method
    from stages.train.base import FeatureBatch, FeatureDims

    layout = Cache(cache_root(args.cache))
    dataset = args.dataset
    if args.quick or not layout.items_path(dataset).exists():
        from stages.prepare import DatasetRequest, prepare_dataset
        from stages.extract import create_encoder, load_encoders
        from stages.extract.runner import run_extraction

        dataset = "demo"
        print(f"(no cache for {args.dataset!r} or --quick: timing on the demo set instead)")
        items, splits = prepare_dataset(layout, DatasetRequest(dataset="demo", data_dir=layout.root / "demo-data"))
        load_encoders()
        for name in ("alexnet", "bow"):
            run_extraction(layout, items, splits, create_encoder(name), progress=False)
    from stages.train.base import METHODS, resolve_config

    loaded: dict[tuple[str, str], tuple] = {}
    mlp_flops: dict[tuple[tuple[str, str], int], int] = {}
    print(f"{dataset}: {args.bits} bits, {torch.get_num_threads()} threads; CPU seconds per epoch; MLP = two 2-layer "
          f"MLPs, same features and batch size, measured in this run; mm FLOPs: the method's matrix-product FLOPs "
          f"per epoch over the MLP's (counted on {FLOP_BATCHES} batches): the ratio no exact speed-up goes below; "
          f"checkpoint: wall seconds of one save")
    print(f"{'method':8s} {'features':22s} {'s/epoch':>8s} {'MLP s/ep':>9s} {'ratio':>6s} {'mm FLOPs':>8s} {'paper ep':>8s} "
          f"{'paper schedule':>15s} {'ckpt s':>7s} {'ckpt/epoch':>10s} {'ckpt/default':>12s}")
    for name in [m.strip() for m in args.methods.split(",") if m.strip()]:
        builder = METHODS.get(name).builder
        spec = (builder.default_image_features, builder.default_text_features)
        if spec not in loaded:
            ds = layout.dataset(dataset)
            train = ds.features("train", ds.feature_refs(spec[0], "image"), ds.feature_refs(spec[1], "text"))
            loaded[spec] = (FeatureDims.from_features(train), FeatureBatch.from_features(train), {})
        dims, batch, mlp = loaded[spec]
        torch.manual_seed(0)
        method = create_method(name, dims=dims, bits=args.bits, dataset=dataset)
        if method.closed_form:
            closed = create_method(name, dims=dims, bits=args.bits, dataset=dataset,
                                   overrides={"reg": 1e-2, "pca_dim": 0} if name == "cca-itq" else None)
            seconds = fit_method(closed, batch, seed=0).seconds
            print(f"{name:8s} {'+'.join(spec):22s} {seconds:8.2f} {'':>9s} {'':>6s} {'':>8s} {'closed':>8s} "
                  f"{'one fit':>15s}")
            continue
        size = method.cfg.batch_size
        if size not in mlp:
            mlp[size] = _mlp_epoch(batch, args.bits, size)
        head = _head(batch, size * FLOP_BATCHES)
        if (spec, size) not in mlp_flops:
            mlp_flops[spec, size] = _flops(lambda: _mlp_epoch(head, args.bits, size))
        counted = create_method(name, dims=dims, bits=args.bits, dataset=dataset)
        flop_ratio = _flops(lambda: fit_method(counted, head, seed=0, epochs=1)) / max(1, mlp_flops[spec, size])
        torch.manual_seed(0)
        method = create_method(name, dims=dims, bits=args.bits, dataset=dataset)
        with tempfile.TemporaryDirectory() as tmp:  # one checkpoint, after epoch `epochs` of epochs + 1
            store = RunCheckpoints(Path(tmp), {"bench": name}, every=args.epochs)
            cpu0 = time.process_time()
            history = fit_method(method, batch, seed=0, epochs=args.epochs + 1, checkpoints=store)
            cpu = time.process_time() - cpu0
        # CPU seconds (not wall): other jobs on a shared machine stretch wall time, not the work done
        per_epoch = max(1e-9, cpu - history.checkpoint_s) / (args.epochs + 1)
        save_s = history.checkpoint_s / max(1, history.checkpoints)
        paper = resolve_config(name, dataset).epochs
        # the default saves once per DEFAULT_INTERVAL_S of training (at least one epoch apart)
        default_share = save_s / max(per_epoch, DEFAULT_INTERVAL_S)
        print(f"{name:8s} {'+'.join(spec):22s} {per_epoch:8.2f} {mlp[size]:9.2f} {per_epoch / mlp[size]:6.2f} "
              f"{flop_ratio:8.2f} {paper:8d} {per_epoch * paper / 60:13.1f} m {save_s:7.2f} {save_s / per_epoch:9.1%} "
              f"{default_share:11.2%}")


if __name__ == "__main__":
    main()
