"""The images an audit looks at: every labelled file of a dataset, with its class and split."""

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Pool:
    """Every labelled image of one dataset, in one order that every audit file follows."""

    root: Path  # the data's root folder (an archive's unpacked copy): `names` are relative to it
    files: list[Path]  # each image file, absolute
    names: list[str]  # each file relative to `root`, POSIX: as splits.csv names it
    labels: list[int]  # each image's class index into `classes`
    splits: list[str]  # each image's split: "train" | "val" | "test"
    classes: list[str]  # class names, in the data's (and a trained model's logit) order
    overrides: list[str]  # a run's own overrides its fold jobs may take (gather.run_overrides)
