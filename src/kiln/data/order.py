"""The order training sees its examples in: seeded per epoch, optionally grouped by length.

Shared by the training loop and distillation, so both batch the same way and a resumed or
data-parallel run sees the same order.
"""

from __future__ import annotations

import numpy as np


def epoch_order(n: int, seed: int, epoch: int, *, lengths: np.ndarray | None = None, batch_size: int = 1) -> np.ndarray:
    """The example order of one epoch: a permutation that depends only on seed and epoch.

    With ``lengths``, examples are grouped by length as HF Trainer's ``group_by_length`` does:
    the shuffled order is cut into mega-batches of 50 batches, each sorted by length, so a
    batch holds texts of similar length and padding (wasted compute) shrinks.
    """
    order = np.random.default_rng([seed, epoch]).permutation(n)
    if lengths is None:
        return order
    mega = 50 * batch_size
    chunks = [order[i : i + mega] for i in range(0, n, mega)]
    return np.concatenate([c[np.argsort(-lengths[c], kind="stable")] for c in chunks])
