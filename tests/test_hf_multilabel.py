"""Hugging Face datasets whose label column holds a list of labels per image: each file's labels
(maybe none) and the class names, while a single ClassLabel column is read as before."""

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cnntrain.core.errors import UserError
from cnntrain.data.hf import hf_listing
from cnntrain.data.limits import limits_of
from tests.conftest import compose_config

datasets = pytest.importorskip("datasets")
NAMES = ["cloud", "river", "road"]


def saved(tmp_path: Path, labels: dict[str, list], label_feature) -> Path:
    """A DatasetDict of tiny images and the `labels` column of each split, saved to disk."""
    rng = np.random.default_rng(0)
    features = datasets.Features({"image": datasets.Image(), "labels": label_feature})
    splits = {}
    for split, column in labels.items():
        images = [Image.fromarray(rng.integers(0, 255, (8, 8, 3), np.uint8)) for _ in column]
        data = {"image": images, "labels": column}
        splits[split] = datasets.Dataset.from_dict(data, features=features)
    datasets.DatasetDict(splits).save_to_disk(str(tmp_path / "saved"))
    return tmp_path / "saved"


def listing_of(root: Path, tmp_path: Path):
    d = compose_config("data=hf", f"data.root={root}", "data.label_column=labels").data
    return hf_listing(d, tmp_path / "cache", limits_of(d))


def test_a_sequence_of_class_labels_gives_each_image_its_labels_maybe_none(tmp_path):
    train = [[0, 2], [1], [], None, [2, 0, 0]]  # repeats go; [] and None: no label
    feature = datasets.Sequence(datasets.ClassLabel(names=NAMES))
    listing = listing_of(saved(tmp_path, {"train": train, "test": [[1, 2]]}, feature), tmp_path)
    assert listing.classes == NAMES
    assert listing.label_sets == [
        ("cloud", "road"), ("river",), (), (), ("cloud", "road"), ("river", "road"),
    ]  # fmt: skip
    assert listing.labels == [""] * 6 and listing.bad_rows == []
    assert listing.given == ["train"] * 5 + ["test"]
    assert all(Path(f).is_file() for f in listing.files)


def test_a_list_of_strings_gives_the_sorted_labels_as_classes(tmp_path):
    train = [["road", "forest"], ["forest", " "], None, ["10", "road"]]
    feature = datasets.Sequence(datasets.Value("string"))
    listing = listing_of(saved(tmp_path, {"train": train}, feature), tmp_path)
    assert listing.classes == ["10", "forest", "road"]
    assert listing.label_sets == [("forest", "road"), ("forest",), (), ("10", "road")]


def test_a_single_class_label_column_has_no_label_sets(tmp_path):
    feature = datasets.ClassLabel(names=NAMES)
    listing = listing_of(saved(tmp_path, {"train": [2, 0, -1, 1]}, feature), tmp_path)
    assert listing.label_sets is None and listing.classes == NAMES
    assert listing.labels == ["road", "cloud", "river"]
    assert [(row, reason) for _, row, _, reason in listing.bad_rows] == [(2, "no label")]


def test_splits_that_disagree_on_one_label_or_several_are_refused(tmp_path):
    root = saved(tmp_path, {"train": [[0]]}, datasets.Sequence(datasets.ClassLabel(names=NAMES)))
    other = saved(tmp_path / "other", {"test": [0]}, datasets.ClassLabel(names=NAMES))
    whole = datasets.DatasetDict(
        {"train": datasets.load_from_disk(str(root))["train"],
         "test": datasets.load_from_disk(str(other))["test"]}
    )  # fmt: skip
    whole.save_to_disk(str(tmp_path / "mixed"))
    with pytest.raises(UserError, match="disagree on class names or on one label per image"):
        listing_of(tmp_path / "mixed", tmp_path)
