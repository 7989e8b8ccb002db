"""Validation scores while a method trains: the only data any choice of ``cmh`` may read.

The validation split (``stages.prepare.splits``) is drawn from the database minus train. Its items are the
queries; the training split is the retrieval set (disjoint from them, and already in memory), so a
score costs one encoding of validation + train and one ranking. The score is mAP@50 per task
(image→text, text→image), the papers' headline metric, computed by the evaluation stage's metric,
which the caller passes in (the train stage does not rank codes itself).

Two uses:

* **curves**: a deep method is scored every ``every`` epochs and after the last one; the points go
  into ``history.json`` and the run report (``val_map@50``), so a user can see whether it converged.
  The kept model is still the last epoch's: the curve never selects an epoch.
* **choices**: a setting a paper leaves open (CCA-ITQ's ridge and PCA width) is chosen on the mean of
  the two tasks' scores.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
from torch import Tensor

from stages.train.base import FeatureBatch, HashingMethod

#: (relaxed query codes, relaxed retrieval codes, query labels, retrieval labels, k) -> mean AP@k; the
#: caller binarises with the project's sign rule
MapFn = Callable[[np.ndarray, np.ndarray, np.ndarray, np.ndarray, int], float]
#: relaxed codes (n, bits) of one modality of a batch, in row order
EncodeFn = Callable[[HashingMethod, FeatureBatch, str], Tensor]

K = 50


def default_every(epochs: int) -> int:
    """About ten points per curve: cheap (one 2,000 × 5,000 ranking each) and enough to see a plateau."""
    return max(1, epochs // 10)


@dataclass
class Validator:
    """Scores a method's current codes: validation queries against the training split."""

    queries: FeatureBatch  # the validation split
    retrieval: FeatureBatch  # the training split
    map_at_k: MapFn
    encode: EncodeFn
    every: int = 1
    k: int = K

    def __call__(self, method: HashingMethod, epoch: int) -> dict[str, float]:
        codes = {(split, m): self.encode(method, batch, m).cpu().numpy()
                 for split, batch in (("q", self.queries), ("r", self.retrieval)) for m in ("image", "text")}
        q_labels, r_labels = self.queries.labels.cpu().numpy(), self.retrieval.labels.cpu().numpy()
        i2t = self.map_at_k(codes["q", "image"], codes["r", "text"], q_labels, r_labels, self.k)
        t2i = self.map_at_k(codes["q", "text"], codes["r", "image"], q_labels, r_labels, self.k)
        return {"epoch": int(epoch) + 1, "i2t": float(i2t), "t2i": float(t2i), "mean": (float(i2t) + float(t2i)) / 2}

    def due(self, epoch: int, n_epochs: int) -> bool:
        """Score after every ``every``-th epoch and after the last one (epoch is 0-based)."""
        return (epoch + 1) % self.every == 0 or epoch == n_epochs - 1
