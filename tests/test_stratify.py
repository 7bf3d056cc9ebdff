"""Iterative stratification of images with several labels: exact partitions and sizes, each
label's share in every split, seeded draws, images with no label, rare labels, bad fractions."""

import numpy as np
import pytest

from cnntrain.core.errors import UserError
from cnntrain.data.splits import carved_counts, three_way_split
from cnntrain.data.stratify import multilabel_split, multilabel_three_way_split, rare_labels

FRACTIONS = {"train": 0.7, "val": 0.15, "test": 0.15}
# Each split's count of a label of n images is within this many images of fraction · n: the
# counts it wants are round(fraction · n) for val and test (0.5 off at most each, so train, which
# keeps the rest, 1), or 1 where fraction · n < 1 (n ≥ 3 here: fraction · n ≥ 0.45, 0.55 off);
# rarest labels go first and get what they want; an image of a rarer label placed earlier can
# leave a commoner one off by about one more half image before its own turn evens it out.
SLACK = 1.5


def synthetic(seed: int, n: int = 600) -> np.ndarray:
    """(n, 8) 0/1 labels, independent, label frequencies 40% down to 1% (many rows all zero)."""
    rng = np.random.default_rng(seed)
    return (rng.random((n, 8)) < np.geomspace(0.4, 0.01, 8)).astype(np.int8)


def split_of(targets: np.ndarray, seed: int = 0) -> dict[str, np.ndarray]:
    return multilabel_three_way_split(targets, FRACTIONS["val"], FRACTIONS["test"], seed)


def off_by(targets: np.ndarray, made: dict[str, np.ndarray]) -> np.ndarray:
    """(3, L): how many images each split's count of each label is from fraction · n."""
    n = targets.sum(0)
    return np.array([np.abs(targets[made[s]].sum(0) - f * n) for s, f in FRACTIONS.items()])


def random_split(seed: int, sizes: dict[str, int], n: int) -> dict[str, np.ndarray]:
    order = np.random.default_rng(seed).permutation(n)
    test, val = sizes["test"], sizes["val"]
    return {"test": order[:test], "val": order[test : test + val], "train": order[test + val :]}


def test_a_split_is_an_exact_partition_of_the_sizes_carved_counts_gives():
    targets = synthetic(0)
    made = split_of(targets)
    joined = np.concatenate(list(made.values()))
    assert np.array_equal(np.sort(joined), np.arange(600))
    assert all(np.array_equal(rows, np.sort(rows)) and rows.dtype == np.int64
               for rows in made.values())  # fmt: skip
    counts = carved_counts(600, FRACTIONS["val"], FRACTIONS["test"])
    assert (len(made["val"]), len(made["test"])) == (counts["val"], counts["test"]) == (90, 90)
    no_test = multilabel_three_way_split(targets, 0.2, 0.0, 0)
    assert len(no_test["test"]) == 0 and len(no_test["val"]) == 120


def test_every_label_keeps_its_share_in_every_split_better_than_a_random_split():
    iterative, chance = [], []
    for seed in range(10):
        targets = synthetic(seed)
        made = split_of(targets, seed)
        n = targets.sum(0)
        for split in FRACTIONS:
            found = targets[made[split]].sum(0)
            assert (found[n >= 3] > 0).all(), (seed, split, n, found)
        iterative.append(off_by(targets, made))
        sizes = {s: len(rows) for s, rows in made.items()}
        chance.append(off_by(targets, random_split(seed, sizes, len(targets))))
    iterative, chance = np.array(iterative), np.array(chance)
    assert iterative.max() <= SLACK
    assert iterative.mean() < chance.mean() / 2


def test_the_same_seed_gives_the_same_split_and_another_seed_another():
    targets = synthetic(1)
    first, again, other = split_of(targets, 5), split_of(targets, 5), split_of(targets, 6)
    assert all(np.array_equal(first[s], again[s]) for s in FRACTIONS)
    assert not np.array_equal(first["test"], other["test"])


def test_the_test_split_does_not_move_with_data_val_split():
    targets = synthetic(2)
    assert np.array_equal(
        multilabel_three_way_split(targets, 0.1, 0.15, 3)["test"],
        multilabel_three_way_split(targets, 0.25, 0.15, 3)["test"],
    )


def test_images_with_no_label_fill_the_splits_to_their_sizes():
    blank = np.zeros((40, 3), dtype=np.int8)
    made = multilabel_three_way_split(blank, 0.25, 0.25, 0)
    assert [len(made[s]) for s in ("train", "val", "test")] == [20, 10, 10]
    targets = synthetic(3, n=200)
    targets[::2] = 0  # half the images have no label
    made = split_of(targets)
    assert [len(made[s]) for s in ("val", "test")] == [30, 30]
    for rows in made.values():
        assert (targets[rows].sum(1) == 0).any() and (targets[rows].sum(1) > 0).any()


def test_the_two_way_split_carves_val_from_train_keeping_each_label():
    targets = synthetic(4)
    train, val = multilabel_split(targets, 0.2, 7)
    assert np.array_equal(np.sort(np.concatenate([train, val])), np.arange(600))
    assert np.array_equal(val, np.sort(val)) and len(val) == 120
    n = targets.sum(0)
    assert (targets[val].sum(0)[n >= 2] > 0).all() and (targets[train].sum(0)[n >= 2] > 0).all()
    assert np.abs(targets[val].sum(0) - 0.2 * n).max() <= SLACK


def test_a_label_too_rare_for_every_split_is_named():
    targets = synthetic(5, n=100)
    targets[:, 7] = 0
    targets[42, 7] = 1  # one image of `rare`: train alone keeps it
    labels = [f"label{i}" for i in range(7)] + ["rare"]
    made = split_of(targets)
    assert 42 in made["train"]
    assert rare_labels(targets, made, labels) == ["'rare' (1 image(s): no val or test)"]
    no_test = multilabel_three_way_split(targets, 0.2, 0.0, 0)
    assert rare_labels(targets, no_test, labels) == ["'rare' (1 image(s): no val)"]


def test_val_and_test_that_leave_train_nothing_are_refused_as_for_classes():
    with pytest.raises(UserError) as single:
        three_way_split(np.zeros(10, dtype=np.int64), 0.5, 0.5, 0)
    with pytest.raises(UserError) as several:
        multilabel_three_way_split(np.zeros((10, 2)), 0.5, 0.5, 0)
    assert str(several.value) == str(single.value)
    assert "leave no image to train on" in str(several.value)
