"""Training time per epoch for every method on the cached MIRFlickr features (alexnet + bow).

The baseline, measured in the same run, is one epoch of a plain two-layer MLP per modality with an
MSE loss on the same batches (the least any deep method here can cost); each method's seconds per
epoch is printed with its ratio to that. Needs `make extract DATASET=mirflickr` first; with
--quick (or without that cache) it runs on a LIMIT=600 demo-sized cache it builds itself.
"""
from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path

import torch
from torch import nn


def _mlp_epoch(batch, bits: int, batch_size: int) -> float:
    img = nn.Sequential(nn.Linear(batch.image.shape[1], 4096), nn.ReLU(), nn.Linear(4096, bits))
    txt = nn.Sequential(nn.Linear(batch.text.shape[1], 4096), nn.ReLU(), nn.Linear(4096, bits))
    opt = torch.optim.SGD([*img.parameters(), *txt.parameters()], lr=0.01)
    start = time.perf_counter()
    n = batch.image.shape[0]
    for s in range(0, n - batch_size + 1, batch_size):
        loss = ((torch.tanh(img(batch.image[s:s + batch_size])) - torch.tanh(txt(batch.text[s:s + batch_size]))) ** 2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    return time.perf_counter() - start


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

    from pipeline.settings import cache_root
    from pipeline.store.layout import CacheLayout
    from pipeline.store.reader import load_split, parse_feature_spec
    from stages.train import methods  # noqa: F401
    from stages.train.base import create_method
    from stages.train.loop import fit_method
    from stages.train.run import feature_dims, to_batch

    layout = CacheLayout(cache_root(args.cache))
    dataset = args.dataset
    if args.quick or not layout.items_path(dataset).exists():
        from pipeline.prepare import DatasetRequest, prepare_dataset
        from stages.extract import create_encoder, load_encoders
        from stages.extract.runner import run_extraction

        dataset = "demo"
        print(f"(no cache for {args.dataset!r} or --quick: timing on the demo set instead)")
        items, splits = prepare_dataset(layout, DatasetRequest(dataset="demo", data_dir=layout.root / "demo-data"))
        load_encoders()
        for name in ("alexnet", "bow"):
            run_extraction(layout, items, splits, create_encoder(name), progress=False)
    train = load_split(layout, dataset, "train", parse_feature_spec(layout, dataset, "alexnet", "image"),
                       parse_feature_spec(layout, dataset, "bow", "text"))
    dims, batch = feature_dims(train), to_batch(train)
    base = _mlp_epoch(batch, args.bits, 32)
    print(f"{dataset}: {len(train)} training pairs, image {dims.image}-d, text {dims.text}-d, {args.bits} bits, "
          f"{torch.get_num_threads()} threads")
    print(f"{'method':10s} {'s/epoch':>9s} {'x MLP epoch':>12s}")
    print(f"{'mlp-base':10s} {base:9.2f} {1.0:12.2f}")
    for name in [m.strip() for m in args.methods.split(",") if m.strip()]:
        torch.manual_seed(0)
        method = create_method(name, dims=dims, bits=args.bits, dataset=dataset)
        history = fit_method(method, batch, seed=0, epochs=args.epochs)
        per_epoch = history.seconds_per_epoch if not method.closed_form else history.seconds
        label = " (closed form, whole fit)" if method.closed_form else f" (batch {method.cfg.batch_size})"
        print(f"{name:10s} {per_epoch:9.2f} {per_epoch / base:12.2f}{label}")


if __name__ == "__main__":
    main()
