"""``cmh encode --engine ray``: the parts of an encoding coded by a pool of Ray actors.

The unit of work is one part (``chunk_rows`` planned items of one split), the same unit the local
encoder writes, so both engines produce the same files and either can resume the other's work. Ray
Data holds the list of parts still to write; each actor loads the run's model once, reads its parts'
features from the cache, codes them and writes each part atomically itself. On a cluster the cache
(features and the run directory) must therefore be on storage every node can read and write.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np

from pipeline.ground.store.cache import Cache
from pipeline.ground.store.aligned import FeatureRef

log = logging.getLogger(__name__)


class _PartCoder:
    """One actor: the run's model, loaded once, coding and writing whole parts."""

    def __init__(self, root: str, dataset: str, model_path: str, codes_dir: str, image: Sequence[FeatureRef],
                 text: Sequence[FeatureRef], chunk_rows: int, paired: bool, meta: dict[str, Any],
                 use_gpu: bool) -> None:
        import torch

        from stages.train import methods  # noqa: F401  (registers every method)
        from stages.train.base import load_method

        torch.set_num_threads(1)  # one core per actor; the actors are the parallelism
        self.dataset = Cache(Path(root)).dataset(dataset)  # items and splits read once per actor
        self.method = load_method(Path(model_path))
        if use_gpu:
            self.method.to(torch.device("cuda"))
        self.codes_dir, self.image, self.text = Path(codes_dir), list(image), list(text)
        self.chunk_rows, self.paired, self.meta = chunk_rows, paired, meta

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        from pipeline.ground.store.codes import write_codes
        from stages.train import coding

        rows, dropped = [], []
        for split, part in zip(batch["split"].tolist(), batch["part"].tolist()):
            chunk = next(self.dataset.chunks(split, self.image, self.text, chunk_rows=self.chunk_rows,
                                             start=int(part) * self.chunk_rows))
            coded = coding.codes(self.method, chunk, paired=self.paired)
            write_codes(self.codes_dir, split, chunk.item_id, coded["image"], coded["text"],
                        {**self.meta, "part": int(part), "rows": len(chunk), "dropped": len(chunk.dropped)},
                        part=int(part))
            rows.append(len(chunk))
            dropped.append(len(chunk.dropped))
        return {"split": batch["split"], "part": batch["part"], "rows": np.asarray(rows, np.int64),
                "dropped": np.asarray(dropped, np.int64)}


def code_parts_ray(cache: Cache, dataset: str, model_path: Path, codes_dir: Path,
                   image: Sequence[FeatureRef], text: Sequence[FeatureRef], todo: Sequence[tuple[str, int]], *,
                   chunk_rows: int, paired: bool, meta: dict[str, Any], concurrency: int | None = None,
                   device: str | None = None) -> Iterator[tuple[str, int, int, int]]:
    """Code and write the parts ``todo`` ((split, part) pairs) on the Ray session that is up; yields
    (split, part, rows written, items dropped) as parts finish, in no fixed order."""
    import ray

    if not ray.is_initialized():
        raise RuntimeError("code_parts_ray needs a Ray session: wrap it in ray_session()")
    from stages.extract.ray_engine import actor_resources

    use_gpu, n_actors, actor_cpus = actor_resources(device, concurrency)
    n_actors = max(1, min(n_actors, len(todo)))
    log.info("encode %s on Ray: %d part(s) on %d actor(s) (%s)", dataset, len(todo), n_actors, "GPU" if use_gpu else "CPU")
    ds = ray.data.from_items([{"split": s, "part": int(p)} for s, p in todo], override_num_blocks=len(todo))
    ds = ds.map_batches(_PartCoder, batch_size=1, batch_format="numpy",
                        compute=ray.data.ActorPoolStrategy(size=n_actors),
                        num_cpus=actor_cpus, num_gpus=1 if use_gpu else 0,
                        fn_constructor_kwargs={"root": str(cache.root), "dataset": dataset,
                                               "model_path": str(model_path), "codes_dir": str(codes_dir),
                                               "image": list(image), "text": list(text), "chunk_rows": chunk_rows,
                                               "paired": paired, "meta": meta, "use_gpu": use_gpu})
    for row in ds.iter_rows():
        yield str(row["split"]), int(row["part"]), int(row["rows"]), int(row["dropped"])
