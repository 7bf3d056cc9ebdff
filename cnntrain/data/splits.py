"""Seeded index arithmetic: the validation split, sample caps, and each epoch's order.

Everything here is a pure function of seeds and counters, so a resumed run draws exactly the
batches an uninterrupted one would, on either data path.
"""

import numpy as np
import torch

from cnntrain.core.seeds import derived_seed


def stratified_split(
    targets: np.ndarray, fraction: float, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """(train, val) indices; val takes round(fraction · n_c) of each class c, drawn with `seed`."""
    rng = np.random.default_rng(seed)
    train, val = [], []
    for c in np.unique(targets):
        members = rng.permutation(np.flatnonzero(targets == c))
        n_val = round(fraction * len(members))
        val.append(members[:n_val])
        train.append(members[n_val:])
    return np.sort(np.concatenate(train)), np.sort(np.concatenate(val))


def seeded_subset(indices: np.ndarray, limit: int | None, seed: int) -> np.ndarray:
    """At most `limit` of `indices`, chosen with `seed` (sorted, so the order stays the data's)."""
    if limit is None or limit >= len(indices):
        return indices
    return np.sort(np.random.default_rng(seed).choice(indices, size=limit, replace=False))


def balanced_weights(targets: torch.Tensor) -> torch.Tensor:
    """Per-sample weights ∝ 1 / (count of its class): every class is drawn equally often."""
    counts = torch.bincount(targets)
    return 1.0 / counts[targets].double()


def epoch_order(n: int, seed: int, epoch: int, weights: torch.Tensor | None = None) -> torch.Tensor:
    """The sample order of one training epoch: a permutation, or weighted draws with replacement."""
    g = torch.Generator().manual_seed(derived_seed(seed, epoch))
    if weights is None:
        return torch.randperm(n, generator=g)
    return torch.multinomial(weights, n, replacement=True, generator=g)


def batch_bounds(n: int, batch_size: int, drop_last: bool) -> list[tuple[int, int]]:
    """[start, end) of each batch. Training drops a ragged tail (BatchNorm dislikes tiny batches)
    but always keeps one batch, even when n < batch_size."""
    count = max(1, n // batch_size) if drop_last else -(-n // batch_size)
    return [(i * batch_size, min(n, (i + 1) * batch_size)) for i in range(count)]
