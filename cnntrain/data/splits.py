"""Seeded index arithmetic: validation and three-way splits, sample caps, each epoch's order.

Everything here is a pure function of seeds and counters, so a resumed run draws exactly the
batches an uninterrupted one would, on either data path.
"""

import numpy as np
import torch

from cnntrain.core.errors import UserError
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


def three_way_split(
    targets: np.ndarray, val: float, test: float, seed: int
) -> dict[str, np.ndarray]:
    """{"train", "val", "test"}: sorted indices of a split the tool makes, per class (`targets`:
    (N,) class indices). Each class's images are permuted with `seed`; test takes the first
    carved_counts(n)["test"], val the next ones, train the rest: the test images depend on `seed`
    and data.test_split alone, not on data.val_split."""
    check_fractions(val, test)
    rng = np.random.default_rng(seed)
    parts = {"train": [], "val": [], "test": []}
    order = np.argsort(targets, kind="stable")  # each class's indices, ascending, class by class
    for group in np.split(order, np.flatnonzero(np.diff(targets[order])) + 1):
        members = rng.permutation(group)
        counts = carved_counts(len(members), val, test)
        parts["test"].append(members[: counts["test"]])
        parts["val"].append(members[counts["test"] : counts["test"] + counts["val"]])
        parts["train"].append(members[counts["test"] + counts["val"] :])
    return {name: np.sort(np.concatenate(p)).astype(np.int64) for name, p in parts.items()}


def check_fractions(val: float, test: float) -> None:
    """Refuse val and test fractions that leave train nothing."""
    if val + test >= 1:
        raise UserError(
            f"data.val_split={val} + data.test_split={test} leave no image to train on; "
            "make their sum < 1"
        )


def carved_counts(n: int, val: float, test: float) -> dict[str, int]:
    """Images of a class of `n` that val and test take: round(fraction · n), at least one when
    the fraction is > 0; but one image always stays in train, and val gets its share before
    test (a class of 2 is in train and val, one of 1 in train alone)."""
    left, counts = n - 1, {}
    for name, fraction in (("val", val), ("test", test)):
        wanted = max(1, round(fraction * n)) if fraction > 0 else 0
        counts[name] = max(0, min(wanted, left))
        left -= counts[name]
    return counts


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
