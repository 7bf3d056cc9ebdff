"""Which files of each split a run uses: the validation split carved from train, the sample caps
(seeded draws over the files as listed, before any is decoded), and the unreadable ones dropped."""

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from cnntrain.core.errors import UserError
from cnntrain.core.safe_text import first_few, printable
from cnntrain.data import decode
from cnntrain.data.geometry import Fit
from cnntrain.data.limits import oversize_reason
from cnntrain.data.sources import ImageSource, Splits
from cnntrain.data.splits import seeded_subset, stratified_split
from cnntrain.data.stratify import multilabel_split

log = logging.getLogger(__name__)


@dataclass
class Part:
    """A split ready for a loader: its source, and its decoded pixels on the tensor path."""

    source: ImageSource
    images: torch.Tensor | None = None  # (N, C, H, W) uint8


@dataclass
class Choice:
    """The files of one split that a loader uses, before any is decoded."""

    split: str  # "train", "val" or "test"
    indices: np.ndarray  # (n,) sorted indices into found.splits[split]


def readable_parts(found: Splits, chosen, d, paths, channels, fits, kind) -> list[Part]:
    """A Part per Choice, its images stored as its Fit of `fits` (one per Choice) says; the
    chosen files of each split stored alike are decoded or checked once, together."""
    ways = [(c.split, fit) for c, fit in zip(chosen, fits, strict=True)]  # (split, Fit) each
    readable = {}
    for split, fit in dict.fromkeys(ways):
        picked = [c.indices for c, way in zip(chosen, ways, strict=True) if way == (split, fit)]
        indices = np.unique(np.concatenate(picked))
        readable[split, fit] = readable_part(found, split, indices, d, paths, channels, fit, kind)
    parts = {id(c): narrow(*readable[way], c.indices) for c, way in zip(chosen, ways, strict=True)}
    return [parts[id(c)] for c in chosen]  # a Choice serving two roles gives one Part


def readable_part(found: Splits, split, indices, d, paths, channels, fit: Fit, kind):
    """(Part, kept): files `indices` of `split` minus unreadable ones (per `data.on_bad_image`),
    decoded on the tensor path, and the indices of the files kept.

    The cache entry is the whole split's when every file is chosen, else keyed by the choice.
    """
    source = found.splits[split]
    chosen = None if len(indices) == len(source) else indices
    source = source if chosen is None else source.subset(indices)
    key = decode.cache_key(found.origin, found.fingerprint, split, channels, fit, chosen)
    cache = Path(paths.cache_dir).expanduser()
    workers = max(1, d.num_workers)
    if kind == "tensor":
        images, bad = decode.decoded_split(source, key, cache, channels, fit, workers)
    else:
        images, bad = None, decode.unreadable_files(source, key, cache, channels, fit, workers)
    if bad:
        report_unreadable(source, bad, split, d.on_bad_image)
        keep = np.setdiff1d(np.arange(len(source)), bad)
        check_no_class_lost(source, keep, found, split)
        source, indices = source.subset(keep), indices[keep]
    return Part(source, images), indices


def check_no_class_lost(source: ImageSource, keep: np.ndarray, found: Splits, split: str) -> None:
    """Refuse, as an empty class folder is, a class whose every chosen file is unreadable."""
    before = image_counts(source.targets, len(found.classes))
    after = image_counts(source.targets[keep], len(found.classes))
    lost = [printable(found.classes[c]) for c in np.flatnonzero((before > 0) & (after == 0))]
    if lost:
        raise UserError(
            f"{Path(found.origin) / split}: class folder(s) with no readable images: "
            f"{', '.join(lost)}; add readable images or remove the folder"
        )


def image_counts(targets: np.ndarray, classes: int) -> np.ndarray:
    """(classes,) images of each class, or of each label with several per image ((N, L) 0/1)."""
    if targets.ndim == 2:
        return targets.sum(0).astype(np.int64)
    return np.bincount(targets, minlength=classes)


def narrow(part: Part, kept: np.ndarray, indices: np.ndarray) -> Part:
    """The rows of `part`, whose files are `kept`, that are among `indices` (in data order)."""
    rows = np.flatnonzero(np.isin(kept, indices))
    return part if len(rows) == len(kept) else select(part, rows)


def report_unreadable(source: ImageSource, bad: list[int], split: str, policy: str) -> None:
    """Refuse the files `bad` (data.on_bad_image=error) or warn that they are skipped: one line
    for those over data.max_image_pixels (each with its size), one for the others."""
    reasons = {i: oversize_reason(source.files[i], source.max_pixels) for i in bad}
    large = [f"{printable(source.files[i])} ({reasons[i]})" for i in bad if reasons[i]]
    unreadable = [printable(source.files[i]) for i in bad if not reasons[i]]
    for kind, names in (("oversized", large), ("unreadable", unreadable)):
        if not names:
            continue
        shown = first_few(names)
        if policy == "error":
            raise UserError(
                f"{len(names)} {kind} image file(s) in {split}/: {shown}; fix or remove them, "
                "or set data.on_bad_image=skip"
            )
        log.warning("skipped %d %s image file(s) in %s/: %s", len(names), kind, split, shown)


def select(part: Part, indices: np.ndarray) -> Part:
    images = None if part.images is None else part.images[torch.as_tensor(indices)]
    return Part(part.source.subset(indices), images)


def partition(found: Splits, d) -> tuple[tuple[Choice, Choice, Choice], str, str]:
    """((train, val, test), val_name, test_name): val carved from train unless the data has one.

    The validation split and the sample caps are seeded draws over the files as listed, made
    before any file is decoded, so a capped run decodes only its own images. Their readability
    is checked afterwards: a chosen file that cannot be read is dropped (`data.on_bad_image=skip`,
    with the warning) or refused (`error`), and its split is that many images short of its cap
    (no replacement is drawn: finding one would mean reading files the run does not use).
    """
    train, seed = Choice("train", np.arange(len(found.splits["train"]))), d.split_seed
    if "val" in found.splits:
        val = Choice("val", np.arange(len(found.splits["val"])))
    elif d.val_split > 0:
        targets = found.splits["train"].targets
        carve = multilabel_split if found.multi_label else stratified_split
        train_idx, val_idx = carve(targets, d.val_split, seed)
        train, val = Choice("train", train_idx), Choice("train", val_idx)
    else:
        val = None
    test = Choice("test", np.arange(len(found.splits["test"]))) if "test" in found.splits else None
    if val is None and test is None:
        raise UserError("data.val_split=0 but the data has no val/ or test/ split to evaluate on")
    val_name, test_name = "val", "test"
    if val is None:
        log.warning(
            "data.val_split=0: evaluating every epoch on the test split (it is no longer held out)"
        )
        val, val_name = test, "test"
    if test is None:
        log.warning("the data has no test split: the final evaluation uses the validation split")
        test, test_name = val, "val"
    train = cap(train, d.max_train_samples, seed)
    shared = val is test  # one split serves both: one cap, one loader
    val = cap(val, d.max_eval_samples, seed + 1)
    test = val if shared else cap(test, d.max_eval_samples, seed + 2)
    return (train, val, test), val_name, test_name


def cap(choice: Choice, limit: int | None, seed: int) -> Choice:
    chosen = seeded_subset(np.arange(len(choice.indices)), limit, seed)
    if len(chosen) == len(choice.indices):
        return choice
    return Choice(choice.split, choice.indices[chosen])
