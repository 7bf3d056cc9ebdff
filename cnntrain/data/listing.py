"""Labelled files before a split (flat folders, label files, HF exports) made into `Splits`.

Which split each file joins: data.splits' table when given (a run's splits.csv: the same files
go to the same splits); else the data's own word where it has one (a split column, the
dataset's splits), the tool carving what it lacks (val, test) from train, seeded and per class
(splits.three_way_split). Whenever the table or the tool decided, `Splits.records.table` holds
the assignment, for the run folder's splits.csv.
"""

import logging
import re
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from cnntrain.core.errors import UserError
from cnntrain.core.safe_text import first_few, printable
from cnntrain.core.schema import data_defaults
from cnntrain.data.limits import Limits
from cnntrain.data.sources import SPLIT_NAMES, ImageSource, Records, Splits, fingerprint
from cnntrain.data.split_table import read_split_table
from cnntrain.data.splits import three_way_split
from cnntrain.data.stratify import multilabel_three_way_split, rare_labels

log = logging.getLogger(__name__)
SHOWN = 3  # bad rows, left-out files or small classes a warning names before `…`
INTEGER = re.compile(r"-?[0-9]+")  # a class name sorted by value (not `--5`, `²`: int() refuses)
LABEL_JOIN = "|"  # between an image's labels: splits.csv's `class` cell, predictions' CSVs


@dataclass
class Listing:
    """Labelled image files as a source lists them, before any split is made."""

    root: Path  # what the split table's paths are relative to
    files: list[str]  # image paths
    labels: list[str]  # each file's class name ("" where `label_sets` holds its labels)
    given: list[str] | None = None  # each file's split as the data says it; None: the tool splits
    classes: list[str] | None = None  # class names in index order; None: sorted labels
    bad_rows: list[tuple[str, int, str, str]] = field(default_factory=list)  # Records.bad_rows'
    fixed: bool = False  # its files never change under the same names (a cache's): not stat-ed
    # Sources that may give an image several labels (a label file with data.label_separator or
    # 0/1 columns, a Sequence(ClassLabel) column): each file's labels, maybe none; else None
    label_sets: list[tuple[str, ...]] | None = None


@dataclass(frozen=True)
class SplitOptions:
    """How the tool splits a listing (conf/config.yaml's data.* keys)."""

    val: float  # data.val_split: fraction of all images (of train when the data has test)
    test: float  # data.test_split: fraction of all images (of train when the data has val)
    seed: int  # data.split_seed
    table: str | None  # data.splits: a splits.csv to follow instead
    task: str = "auto"  # data.task: single, multi, or auto (multi when a file has ≠ 1 label)

    @classmethod
    def of(cls, d) -> "SplitOptions":
        """From a `data` config; keys it lacks (a config saved before test_split and splits
        existed, a script's partial one) take conf/config.yaml's defaults."""
        val, test, seed, task = (
            d.get(k, data_defaults()[k]) for k in ("val_split", "test_split", "split_seed", "task")
        )
        return cls(float(val), float(test), int(seed), d.get("splits"), str(task))


def listing_splits(listing: Listing, origin: str, options: SplitOptions, limits: Limits,
                   training: bool = True) -> Splits:  # fmt: skip
    """`listing` split as the module docstring says; `origin`: where it comes from (the log's,
    the caches' key); `training`: a train split is needed."""
    listing = with_task(listing, options.task, origin)
    multi = listing.label_sets is not None
    names = [n for labels in listing.label_sets for n in labels] if multi else listing.labels
    classes = listing.classes or class_order(names)
    targets = label_targets(listing, classes)  # (N,) int64, or (N, L) float32 0/1
    texts = label_texts(listing, classes, targets)
    keys = [table_key(f, listing.root) for f in listing.files]
    bad = list(listing.bad_rows)
    if options.table:
        table = Path(options.table).expanduser()
        assigned, decided = follow_table(table, keys, texts, bad, limits), True
    else:
        assigned, decided = assign(listing.given, targets, classes, options)
    report_bad_rows(bad)
    splits = {}
    for split in SPLIT_NAMES:
        rows = [i for i, s in enumerate(assigned) if s == split]
        if rows:
            files = [listing.files[i] for i in rows]
            splits[split] = ImageSource(targets[rows], files=files,
                                        max_pixels=limits.max_image_pixels)  # fmt: skip
    if training and "train" not in splits:
        raise UserError(f"{origin}: no image is in the train split; there is nothing to train on")
    table = [(keys[i], texts[i], s) for i, s in enumerate(assigned) if s] if decided else []
    records = Records(table=table, bad_rows=bad)
    found = fingerprint(splits, limits, stat=not listing.fixed)
    return Splits(classes, splits, origin=origin, fingerprint=found, records=records,
                  multi_label=multi)  # fmt: skip


def with_task(listing: Listing, task: str, origin: str) -> Listing:
    """`listing` as data.task reads it: `label_sets` set with several labels per image (multi, or
    auto when a file has more or fewer than one), else None with one class per file in `labels`."""
    sets = listing.label_sets
    if sets is None:
        sets = [(name,) for name in listing.labels]
    odd = next((i for i, labels in enumerate(sets) if len(labels) != 1), None)
    if task == "multi" or (task == "auto" and odd is not None):
        log.info(
            "several labels per image (data.task=%s): %s has %d image(s) with none and %d with "
            "more than one; sigmoid outputs, one per label", task, origin,
            sum(not labels for labels in sets), sum(len(labels) > 1 for labels in sets),
        )  # fmt: skip
        return replace(listing, label_sets=sets)
    if odd is not None:
        raise UserError(
            f"data.task=single but {printable(listing.files[odd])} has {len(sets[odd])} labels in "
            f"{origin}; give each image one label, or set data.task=multi (or auto)"
        )
    return replace(listing, labels=[labels[0] for labels in sets], label_sets=None)


def label_targets(listing: Listing, classes: list[str]) -> np.ndarray:
    """Each file's class index (N,) int64, or with several labels per image its 0/1 row (N, L)
    float32 over `classes`."""
    to_index = {name: i for i, name in enumerate(classes)}
    if listing.label_sets is None:
        return np.array([to_index[name] for name in listing.labels], dtype=np.int64)
    targets = np.zeros((len(listing.files), len(classes)), dtype=np.float32)
    for row, labels in enumerate(listing.label_sets):
        targets[row, [to_index[name] for name in labels]] = 1
    return targets


def label_texts(listing: Listing, classes: list[str], targets: np.ndarray) -> list[str]:
    """Each file's labels as splits.csv's `class` cell: its class, or label_set_text of its
    row of `targets` ((N, L) 0/1, label_targets')."""
    if listing.label_sets is None:
        return listing.labels
    return [label_set_text(classes, row) for row in targets.astype(bool).tolist()]


def label_set_text(classes: list[str], flags) -> str:
    """The labels of `classes` whose flag is set, in the classes' order, joined by LABEL_JOIN
    ("" for none): how every file cnntrain writes names an image's labels."""
    return LABEL_JOIN.join(c for c, on in zip(classes, flags, strict=True) if on)


def evaluation_splits(listing: Listing, origin: str, options: SplitOptions,
                      limits: Limits) -> Splits:  # fmt: skip
    """Other labelled data to test a model on: split as for training when a table or the data
    says how (the run's own data: its splits.csv), else every file of it as the test split."""
    if not options.table and listing.given is None:
        listing = replace(listing, given=["test"] * len(listing.files))
    return listing_splits(listing, origin, options, limits, training=False)


def refuse_table(options: SplitOptions, data: str) -> None:
    """Refuse data.splits for data that comes split (`data` names it)."""
    if options.table:
        raise UserError(
            f"data.splits={options.table!r}: {data} comes with its own splits; data.splits "
            "applies to class folders, label files and Hugging Face datasets: unset it"
        )


def class_order(labels: list[str]) -> list[str]:
    """The sorted class names: by value when all are integers (`2` before `10`), else as text."""
    names = set(labels)
    if all(INTEGER.fullmatch(name) for name in names):
        return sorted(names, key=lambda name: (int(name), name))  # `7` before `007`: one order
    return sorted(names)


def table_key(file: str, root: Path) -> str:
    """`file` as splits.csv names it: relative to `root` with POSIX separators (absolute when
    outside it)."""
    path = Path(file)
    return (path.relative_to(root) if path.is_relative_to(root) else path).as_posix()


def assign(given: list[str] | None, targets: np.ndarray, classes: list[str],
           options: SplitOptions):  # fmt: skip
    """(each file's split, whether the tool decided any): the data's splits (`given`; None: all
    train), with val and test carved from train by the tool where the data has none: per class,
    or with several labels per image (`targets` (N, L)) by iterative stratification."""
    given = given or ["train"] * len(targets)
    present = set(given)
    val = options.val if "val" not in present else 0.0
    test = options.test if "test" not in present else 0.0
    rows = np.array([i for i, s in enumerate(given) if s == "train"], dtype=np.int64)
    if (val == 0 and test == 0) or len(rows) == 0:
        return given, False
    multi = targets.ndim == 2
    split = multilabel_three_way_split if multi else three_way_split
    made = split(targets[rows], val, test, options.seed)
    assigned = list(given)
    for name, chosen in made.items():
        for i in rows[chosen]:
            assigned[i] = name
    carved = {"val": val, "test": test}
    check_carved(made, targets[rows], classes, carved)
    own = f" (besides its own {', '.join(sorted(present - {'train'}))})" if len(present) > 1 else ""
    how = "keeping each label's share (iterative stratification)" if multi else "per class"
    log.info(
        "split the data%s %s, seeded by data.split_seed=%d: %s of the images; splits.csv in the "
        "run folder keeps the split (data.splits=FILE reuses one)", own, how, options.seed,
        " and ".join(f"{s} {f:.0%}" for s, f in carved.items() if f > 0),
    )  # fmt: skip
    return assigned, True


def check_carved(made: dict, targets: np.ndarray, classes: list[str], fractions: dict) -> None:
    """Refuse a carved split left empty; warn, in one line, of classes missing from one."""
    for split, fraction in fractions.items():
        if fraction > 0 and len(made[split]) == 0:
            raise UserError(
                f"data.{split}_split={fraction} gives the {split} split no image (too few images "
                f"per class); add images or set data.{split}_split=0"
            )
    if targets.ndim == 2:
        rare = rare_labels(targets, made, classes)
        if rare:
            log.warning("%d label(s) too rare for every split: %s", len(rare), shown(rare))
        return
    short = rare_labels(np.eye(len(classes), dtype=bool)[targets], made, classes)  # one-hot
    if short:
        log.warning(
            "%d class(es) too small for every split: %s; a class keeps 1 image for train, then "
            "gives val 1 before test", len(short), shown(short),
        )  # fmt: skip


def follow_table(table: Path, keys: list[str], texts: list[str], bad: list,
                 limits: Limits) -> list[str | None]:  # fmt: skip
    """Each file's split as the split table `table` (data.splits) says; a listed file that the
    data lacks is a bad row, a file it does not list is left out (None, one warning), a class
    (`texts`: each file's label_texts) that disagrees is refused."""
    rows, unreadable = read_split_table(table, limits)
    bad += unreadable
    index = {key: i for i, key in enumerate(keys)}
    assigned: list[str | None] = [None] * len(keys)
    for row in rows:
        i = index.get(row.path)
        if i is None or assigned[i] is not None:
            reason = "not found in the data" if i is None else "listed again"
            bad.append((str(table), row.line, row.path, reason))
            continue
        if row.label != texts[i]:
            raise UserError(
                f"data.splits={str(table)!r} line {row.line}: {printable(row.path)} is class "
                f"{printable(row.label)!r} there but {printable(texts[i])!r} in the "
                "data; fix the table or the data, or leave data.splits unset to split anew"
            )
        assigned[i] = row.split
    unlisted = [printable(keys[i]) for i, s in enumerate(assigned) if s is None]
    if unlisted:
        log.warning("left out %d image file(s) that data.splits=%s does not list: %s",
                    len(unlisted), table, shown(unlisted))  # fmt: skip
    return assigned


def report_bad_rows(bad: list[tuple[str, int, str, str]]) -> None:
    """One warning line for every row left out (the first SHOWN named); the run folder's
    bad_rows.csv lists them all."""
    if bad:
        named = [f"{Path(f).name} row {row} {printable(path)!r}: {reason}"
                 for f, row, path, reason in bad]  # fmt: skip
        log.warning("left out %d row(s): %s; the run folder's bad_rows.csv lists them all",
                    len(bad), shown(named))  # fmt: skip


def shown(names: list[str]) -> str:
    """What a warning shows of a list of rows or files: the first SHOWN, then `…`."""
    return first_few(names, SHOWN, "; ")
