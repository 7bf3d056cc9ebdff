"""load_data: from `cfg.data` to train / val / test loaders on the training device.

Steps: find the dataset (sources), decide channels and size, carve the validation split from train
and cap sample counts (seeded, over the files as listed), decode or check only the chosen files and
drop unreadable ones, take normalization statistics from the training split only, and build the
tensor path or the DataLoader path (`data.loader`).
"""

import functools
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from cnntrain.core.errors import UserError
from cnntrain.core.spec import InputSpec
from cnntrain.data import decode
from cnntrain.data.augment import (
    Options,
    alternating_flip,
    batch_augment,
    check_cutout_fits,
    pil_pipeline,
    read_options,
)
from cnntrain.data.cache import build_once, load_json, save_json
from cnntrain.data.loaders import BatchPrep, FileLoader, SampleDataset, TensorLoader
from cnntrain.data.sources import ImageSource, Splits, open_evaluation_data, open_splits
from cnntrain.data.splits import balanced_weights, seeded_subset, stratified_split
from cnntrain.distributed import SINGLE, World
from cnntrain.models import data_defaults

log = logging.getLogger(__name__)
STATS_SAMPLE = 20_000  # images decoded to estimate normalization stats on the DataLoader path


@dataclass
class DataBundle:
    spec: InputSpec
    classes: list[str]
    train: TensorLoader | FileLoader
    val: TensorLoader | FileLoader  # per-epoch evaluation (the test loader itself if val_split=0)
    test: TensorLoader | FileLoader  # final evaluation (the val loader when there is no test/)
    val_name: str  # "val" or "test": which split `val` really is
    test_name: str  # "test" or "val"
    mean: list[float]
    std: list[float]
    loader: str  # "tensor" or "dataloader"
    origin: str


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


def load_data(cfg, device: torch.device, channels_last: bool = False,
              world: World = SINGLE) -> DataBundle:  # fmt: skip
    """The run's data on `device`; with several processes each loader yields this rank's part
    of every batch (`world`)."""
    d = cfg.data
    augment = read_options(d.augment)  # parsed once, for whichever path trains
    found = open_splits(d, cfg.paths.data_dir, cfg.paths.cache_dir)
    wanted = data_defaults(cfg.model) or {}  # e.g. pretrained weights' size, RGB and statistics
    channels, size = input_shape(d, found, wanted)
    if augment.cutout:  # known only now; refuse before any worker hits it mid-epoch
        check_cutout_fits(augment.cutout, *size)
    kind = choose_loader(d, found, channels, size)
    chosen, val_name, test_name = partition(found, d)
    train, val, test = readable_parts(found, chosen, d, cfg.paths, channels, size, kind)
    mean, std = normalization(d, train, found, cfg.paths, channels, size, wanted)
    spec = InputSpec(channels, size[0], size[1], len(found.classes))
    seed = cfg.trainer.seed
    prep = BatchPrep(mean, std, device, channels_last)
    weights = (
        balanced_weights(torch.as_tensor(train.source.targets)) if d.sampler == "balanced" else None
    )
    flip = alternating_flip(augment, seed, len(train.source))
    if kind == "tensor":  # augmentation on whole batches, on the device
        train_prep = BatchPrep(mean, std, device, channels_last, batch_augment(augment))
        train_loader = tensor_loader(train, d, True, seed, train_prep, weights, flip, world)
        make_eval = functools.partial(tensor_loader, d=d, train=False, seed=seed, prep=prep,
                                      world=world)  # fmt: skip
    else:  # augmentation per PIL image, in the DataLoader's workers
        train_loader = file_loader(train, d, True, seed, prep, weights, spec, augment, flip, world)
        make_eval = functools.partial(file_loader, d=d, train=False, seed=seed, prep=prep,
                                      spec=spec, world=world)  # fmt: skip
    val_loader = make_eval(val)
    return DataBundle(
        spec=spec,
        classes=found.classes,
        train=train_loader,
        val=val_loader,
        test=val_loader if test is val else make_eval(test),
        val_name=val_name,
        test_name=test_name,
        mean=mean,
        std=std,
        loader=kind,
        origin=found.origin,
    )


@dataclass
class EvaluationSplit:
    """load_evaluation_split's answer: the split's loader and what it is."""

    loader: TensorLoader | FileLoader
    name: str  # "test", or "val" when the data has no test split (as in training's results)
    origin: str  # where the data was found
    counts: dict[str, int]  # images per class name of the model (0 for those not in the data)


def load_evaluation_split(cfg, device: torch.device, spec: InputSpec, mean, std,
                          classes: list[str]) -> EvaluationSplit:  # fmt: skip
    """The split a run of `cfg.data` is finally tested on (load_data's `test`), alone: the
    training split is not decoded. Its images are made into a trained model's input (`spec`'s
    channels and size, its `mean`/`std`), never the data's own statistics, and labelled with
    the model's class indices, matched by name to `classes` (a subset of them is fine, a class
    the model does not know is a UserError). Data without a train/ split
    (sources.open_evaluation_data) is tested on whole."""
    d = cfg.data
    found = open_evaluation_data(d, cfg.paths.data_dir, cfg.paths.cache_dir)
    to_model = model_class_indices(found.classes, classes)
    size = (spec.height, spec.width)
    kind = choose_loader(d, found, spec.channels, size)
    if "train" in found.splits:
        (_, _, choice), _, name = partition(found, d)
    else:
        whole = Choice("test", np.arange(len(found.splits["test"])))
        choice, name = cap(whole, d.max_eval_samples, d.split_seed + 2), "test"
    [part] = readable_parts(found, [choice], d, cfg.paths, spec.channels, size, kind)
    source = part.source
    part = Part(ImageSource(to_model[source.targets], source.arrays, source.files), part.images)
    prep = BatchPrep(mean, std, device, cfg.trainer.channels_last)
    seed = cfg.trainer.seed
    if kind == "tensor":
        loader = tensor_loader(part, d, train=False, seed=seed, prep=prep)
    else:
        loader = file_loader(part, d, train=False, seed=seed, prep=prep, spec=spec)
    counts = np.bincount(part.source.targets, minlength=len(classes)).tolist()
    return EvaluationSplit(loader, name, found.origin, dict(zip(classes, counts, strict=True)))


def model_class_indices(data_classes: list[str], classes: list[str]) -> np.ndarray:
    """(K_data,) int64: the model's index of each of the data's classes, matched by name."""
    unknown = [c for c in data_classes if c not in classes]
    if unknown:
        raise UserError(
            f"the data has class {unknown[0]!r}, which the model does not know (its classes: "
            f"{', '.join(classes)}); remove that class folder or evaluate a model trained on it"
        )
    return np.array([classes.index(c) for c in data_classes], dtype=np.int64)


def input_spec(cfg) -> tuple[InputSpec, list[str]]:
    """The model's input spec and class names, from the data's metadata alone (no decoding)."""
    found = open_splits(cfg.data, cfg.paths.data_dir, cfg.paths.cache_dir)
    channels, size = input_shape(cfg.data, found, data_defaults(cfg.model) or {})
    return InputSpec(channels, size[0], size[1], len(found.classes)), found.classes


def input_shape(d, found: Splits, wanted: dict) -> tuple[int, tuple[int, int]]:
    """(channels, (H, W)): `data.channels` / `data.image_size`, else what the model wants
    (`wanted`, e.g. pretrained weights' crop size and RGB), else the data's own."""
    train = found.splits["train"]
    if train.arrays is not None:
        shape = train.arrays.shape  # (N, H, W) or (N, H, W, C)
        data_channels, data_size = (1 if len(shape) == 3 else shape[3]), shape[1:3]
    else:
        data_channels, data_size = sniff_files(train.files[:: max(1, len(train) // 16)])
    channels = d.channels or wanted.get("channels") or data_channels
    size = d.image_size or wanted.get("image_size") or data_size
    size = (size, size) if isinstance(size, int) else tuple(size)
    if channels not in (1, 3):
        raise UserError(f"data.channels={channels} is not supported; use 1 (grayscale) or 3 (RGB)")
    return channels, (int(size[0]), int(size[1]))


def sniff_files(files: list[str]) -> tuple[int, tuple[int, int]]:
    """(channels, (H, W)) of sampled files: 1 if all are grayscale; the first readable's size."""
    modes, size = set(), None
    for path in files:
        try:
            with Image.open(path) as img:
                modes.add(img.mode)
                size = size or img.size[::-1]
        except decode.DECODE_ERRORS:
            continue  # reported when the split is decoded
    if size is None:
        raise UserError(f"none of {len(files)} sampled images could be read (first: {files[0]})")
    return (1 if modes <= {"1", "L", "LA", "I", "I;16", "F"} else 3), size


def choose_loader(d, found: Splits, channels, size) -> str:
    """`data.loader`, with `auto` → tensor when all decoded splits fit `data.memory_budget_gb`."""
    if d.loader != "auto":
        return d.loader
    n = sum(len(s) for s in found.splits.values())
    gib = n * channels * size[0] * size[1] / 2**30
    kind = "tensor" if gib <= d.memory_budget_gb else "dataloader"
    if kind == "dataloader":
        log.info("decoded data would take %.1f GiB > data.memory_budget_gb: DataLoader path", gib)
    return kind


def readable_parts(found: Splits, chosen, d, paths, channels, size, kind) -> list[Part]:
    """A Part per Choice; each split's chosen files are decoded or checked once, together."""
    readable = {}
    for split in dict.fromkeys(c.split for c in chosen):
        indices = np.unique(np.concatenate([c.indices for c in chosen if c.split == split]))
        readable[split] = readable_part(found, split, indices, d, paths, channels, size, kind)
    parts = {id(c): narrow(*readable[c.split], c.indices) for c in chosen}
    return [parts[id(c)] for c in chosen]  # a Choice serving two roles gives one Part


def readable_part(found: Splits, split, indices, d, paths, channels, size, kind):
    """(Part, kept): files `indices` of `split` minus unreadable ones (per `data.on_bad_image`),
    decoded on the tensor path, and the indices of the files kept.

    The cache entry is the whole split's when every file is chosen, else keyed by the choice.
    """
    source = found.splits[split]
    chosen = None if len(indices) == len(source) else indices
    source = source if chosen is None else source.subset(indices)
    key = decode.cache_key(found.origin, found.fingerprint, split, channels, size, chosen)
    cache = Path(paths.cache_dir).expanduser()
    workers = max(1, d.num_workers)
    if kind == "tensor":
        images, bad = decode.decoded_split(source, key, cache, channels, size, workers)
    else:
        images, bad = None, decode.unreadable_files(source, key, cache, channels, size, workers)
    if bad:
        report_unreadable(source, bad, split, d.on_bad_image)
        keep = np.setdiff1d(np.arange(len(source)), bad)
        source, indices = source.subset(keep), indices[keep]
    return Part(source, images), indices


def narrow(part: Part, kept: np.ndarray, indices: np.ndarray) -> Part:
    """The rows of `part`, whose files are `kept`, that are among `indices` (in data order)."""
    rows = np.flatnonzero(np.isin(kept, indices))
    return part if len(rows) == len(kept) else select(part, rows)


def report_unreadable(source: ImageSource, bad: list[int], split: str, policy: str) -> None:
    names = ", ".join(source.files[i] for i in bad[:3]) + (", …" if len(bad) > 3 else "")
    if policy == "error":
        raise UserError(
            f"{len(bad)} unreadable image file(s) in {split}/: {names}; fix or remove them, "
            "or set data.on_bad_image=skip"
        )
    log.warning("skipped %d unreadable image file(s) in %s/: %s", len(bad), split, names)


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
        train_idx, val_idx = stratified_split(found.splits["train"].targets, d.val_split, seed)
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


def normalization(d, train: Part, found: Splits, paths, channels, size, wanted: dict):
    """(mean, std) per channel, the first given of: `data.mean`/`data.std`; what the model wants
    (pretrained weights' statistics, in `wanted`); the dataset's known `data.stats`; else computed
    on the training split only (cached)."""
    if d.mean is not None and d.std is not None:
        return fitting(d.mean, d.std, channels, "data.mean")
    if wanted.get("mean") is not None:
        return list(wanted["mean"]), list(wanted["std"])
    if d.get("stats"):
        return fitting(d.stats.mean, d.stats.std, channels, "data.stats.mean")
    # The training split is fixed by the data and these settings, so they key the cache.
    split = f"stats:{d.val_split}:{d.split_seed}:{d.max_train_samples}"
    key = decode.cache_key(found.origin, found.fingerprint, split, channels, size)
    path = Path(paths.cache_dir).expanduser() / "stats" / f"{key}.json"
    stats = build_once(
        path,
        load=load_json,
        build=lambda: training_stats(train, channels, size, d),
        save=save_json,
    )
    return stats["mean"], stats["std"]


def training_stats(train: Part, channels, size, d) -> dict[str, list[float]]:
    images = (
        train.images if train.images is not None else sample_pixels(train.source, channels, size, d)
    )
    mean, std = decode.channel_stats(images)
    log.info("normalization from the training split: mean %s, std %s", fmt(mean), fmt(std))
    return {"mean": mean, "std": std}


def fitting(mean, std, channels: int, key: str) -> tuple[list[float], list[float]]:
    """`mean`, `std` as lists, refused unless one value per channel."""
    if len(mean) != channels or len(std) != channels:
        raise UserError(
            f"{key} has {len(mean)} values but the images have {channels} channel(s); "
            "for your own images use data=imagefolder (statistics from its training split) "
            "or data.mean=null data.std=null data.stats=null"
        )
    return list(mean), list(std)


def fmt(values) -> str:
    return "[" + ", ".join(f"{v:.4f}" for v in values) + "]"


def sample_pixels(source: ImageSource, channels, size, d) -> torch.Tensor:
    """Up to STATS_SAMPLE training images, decoded: enough for stats to ~3 decimals."""
    chosen = seeded_subset(np.arange(len(source)), STATS_SAMPLE, d.split_seed)
    images, _ = decode.decode_source(source.subset(chosen), channels, size, max(1, d.num_workers))
    return torch.from_numpy(images)


def tensor_loader(part: Part, d, train, seed, prep, weights=None, flip=None,
                  world=SINGLE) -> TensorLoader:  # fmt: skip
    batch = d.batch_size if train else d.eval_batch_size
    targets = torch.as_tensor(part.source.targets)
    return TensorLoader(part.images, targets, batch, train, seed, prep, weights, flip, world)


def file_loader(part: Part, d, train, seed, prep, weights=None, spec=None,
                augment: Options | None = None, flip=None, world=SINGLE) -> FileLoader:  # fmt: skip
    transform = pil_pipeline(augment) if augment is not None and augment.on else None
    size = (spec.height, spec.width)
    dataset = SampleDataset(part.source, spec.channels, size, seed, transform, flip)
    batch = d.batch_size if train else d.eval_batch_size
    return FileLoader(dataset, batch, train, seed, prep, d.num_workers, weights, world)
