"""Splits of images with several labels each that keep each label's share: iterative stratification.

Sechidis, Tsoumakas & Vlahavas, "On the stratification of multi-label data" (ECML-PKDD 2011):
the label with the fewest images not yet placed goes first, each of its images to the fold that
still wants most of that label (ties: the fold with the most room left, then a seeded draw);
images with no label fill the room left. Two changes from the paper: a fold takes exactly its
size (a full one takes no more), and the images of a label a fold wants are carved_counts' for a
class (round(fraction · n), at least one while one stays in train, val before test), so a label
of 3 images is in train, val and test, as a class of 3 is in single-label splits.
"""

import numpy as np

from cnntrain.core.safe_text import printable
from cnntrain.data.splits import carved_counts, check_fractions


def multilabel_three_way_split(
    targets: np.ndarray, val: float, test: float, seed: int
) -> dict[str, np.ndarray]:
    """{"train", "val", "test"}: sorted int64 indices of a split the tool makes of images with
    several labels each (`targets` (N, L) 0/1; a row may be all zero). As three_way_split does
    per class, test is carved first and val then from the rest: the test images depend on `seed`
    and data.test_split, not on data.val_split (but through labels of too few images to give
    both their share, where val goes first)."""
    check_fractions(val, test)
    positives = label_matrix(targets)
    rng = np.random.default_rng(seed)
    counts = carved_counts(len(positives), val, test)
    wanted = [carved_counts(int(n), val, test)["test"] for n in positives.sum(0)]
    in_test = carve(positives, counts["test"], np.array(wanted, dtype=np.int64), rng)
    rest = np.flatnonzero(~in_test)
    in_val = carve_share(positives[rest], counts["val"], rng)
    made = {"train": rest[~in_val], "val": rest[in_val], "test": np.flatnonzero(in_test)}
    return {name: np.sort(rows).astype(np.int64) for name, rows in made.items()}


def multilabel_split(
    targets: np.ndarray, fraction: float, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """(train, val): sorted int64 indices, val carved from the images of `targets` (N, L) by
    iterative stratification; it takes carved_counts' share `fraction` of them."""
    check_fractions(fraction, 0.0)
    positives = label_matrix(targets)
    rng = np.random.default_rng(seed)
    in_val = carve_share(positives, carved_counts(len(positives), fraction, 0.0)["val"], rng)
    return np.flatnonzero(~in_val).astype(np.int64), np.flatnonzero(in_val).astype(np.int64)


def rare_labels(targets: np.ndarray, made: dict[str, np.ndarray], labels: list[str]) -> list[str]:
    """Labels with images that a non-empty split of `made` lacks (train included, though it
    lacks one only when a rarer label's images took them), each as "'name' (n image(s): no val
    or test)" as listing.check_carved names classes, for one warning line."""
    positives = label_matrix(targets)
    total = positives.sum(0)  # (L,) images of each label
    per_split = {split: positives[rows].sum(0) for split, rows in made.items() if len(rows)}
    short = []
    for label in np.flatnonzero(total):
        lacking = [split for split, counts in per_split.items() if counts[label] == 0]
        if lacking:
            name = printable(labels[label])
            short.append(f"{name!r} ({total[label]} image(s): no {' or '.join(lacking)})")
    return short


def label_matrix(targets: np.ndarray) -> np.ndarray:
    """`targets` as (N, L) bool: whether image i has label l."""
    return np.asarray(targets) != 0


def carve_share(positives: np.ndarray, size: int, rng: np.random.Generator) -> np.ndarray:
    """Which images (N,) bool make a part of `size` of `positives` (N, L): it wants of each
    label carved_counts' share of it for the fraction `size` / N."""
    share = size / max(1, len(positives))
    wanted = [carved_counts(int(n), share, 0.0)["val"] for n in positives.sum(0)]
    return carve(positives, size, np.array(wanted, dtype=np.int64), rng)


def carve(positives: np.ndarray, size: int, wanted: np.ndarray,
          rng: np.random.Generator) -> np.ndarray:  # fmt: skip
    """Which images (N,) bool make a part of exactly `size` that holds, as near as it can,
    `wanted` (L,) images of each label; the others keep the rest."""
    sizes = np.array([len(positives) - size, size], dtype=np.int64)
    kept = positives.sum(0) - wanted
    return iterative_folds(positives, sizes, np.stack([kept, wanted]), rng) == 1


def iterative_folds(positives: np.ndarray, sizes: np.ndarray, wanted: np.ndarray,
                    rng: np.random.Generator) -> np.ndarray:  # fmt: skip
    """Each image's fold (N,) int64: fold j takes exactly sizes[j] images (`sizes` (k,), summing
    to N) and as near as it can wanted[j, l] images of label l (`wanted` (k, L))."""
    room = sizes.astype(np.int64)  # (k,) images each fold still takes
    wanted = wanted.astype(np.int64)  # (k, L) images of each label each fold still wants
    left = positives.sum(0)  # (L,) images of each label not yet placed
    fold = np.full(len(positives), -1, dtype=np.int64)
    order = rng.permutation(len(positives))  # the order a label's images are placed in
    while left.any():
        label = pick(np.flatnonzero(left == left[left > 0].min()), rng)
        for row in order[(fold[order] < 0) & positives[order, label]]:
            j = best_fold(wanted[:, label], room, rng)
            fold[row] = j
            room[j] -= 1
            wanted[j] -= positives[row]
            left -= positives[row]
    # what is left has no label: it fills each fold's room, in the seeded order
    fold[order[fold[order] < 0]] = np.repeat(np.arange(len(room)), room)
    return fold


def best_fold(wants: np.ndarray, room: np.ndarray, rng: np.random.Generator) -> int:
    """Of the folds with room, the one that wants most of a label (`wants` (k,)), then the one
    with the most room, then a seeded draw."""
    open_ = room > 0
    choices = np.flatnonzero(open_ & (wants == wants[open_].max()))
    return pick(choices[room[choices] == room[choices].max()], rng)


def pick(choices: np.ndarray, rng: np.random.Generator) -> int:
    """One of `choices`, drawn with `rng` when there is more than one."""
    return int(choices[0] if len(choices) == 1 else choices[rng.integers(len(choices))])
