"""load_data: from `cfg.data` to train / val / test loaders on the training device.

Steps: find the dataset (sources), decide channels and size, and how images are fitted to it
(geometry: short side resized, centre crop; a larger centre region for the training split with a
random resized crop), carve the validation split from train and cap sample counts (seeded, over the
files as listed), decode or check only the chosen files and drop unreadable ones, take
normalization statistics from the training split only, and build the tensor path or the DataLoader
path (`data.loader`).
"""

import functools
import logging
from dataclasses import dataclass, field, replace

import numpy as np
import torch

from cnntrain.core.errors import UserError
from cnntrain.core.spec import InputSpec
from cnntrain.data.augment.batch import batch_augment
from cnntrain.data.augment.flip import alternating_flip
from cnntrain.data.augment.options import Options, check_cutout_fits
from cnntrain.data.augment.pil import pil_pipeline
from cnntrain.data.geometry import Fit, photo_fit, spec_fit, storage_fit
from cnntrain.data.known import open_evaluation_data, open_splits
from cnntrain.data.loaders import BatchPrep, FileLoader, SampleDataset, TensorLoader
from cnntrain.data.normalization import normalization
from cnntrain.data.selection import Choice, Part, cap, image_counts, partition, readable_parts
from cnntrain.data.shape import choose_loader, input_shape
from cnntrain.data.sources import Records
from cnntrain.data.splits import balanced_weights
from cnntrain.distributed import SINGLE, World

log = logging.getLogger(__name__)


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
    records: Records = field(default_factory=Records)  # for the run folder: splits.csv…
    test_files: list[str] | None = None  # the test loader's image files in evaluation order
    multi_label: bool = False  # several labels per image: targets (N, L) 0/1, `classes` the labels


def load_data(cfg, device: torch.device, augment: Options, wanted: dict, *,
              channels_last: bool = False, world: World = SINGLE) -> DataBundle:  # fmt: skip
    """The run's data on `device`, augmented for training as `augment` (data.augment, read once)
    says, on whichever path trains; `wanted`: what the model needs of its data where `data.*`
    leaves it open (models.data_defaults: pretrained weights' size, RGB and statistics). With
    several processes each loader yields this rank's part of every batch (`world`)."""
    d = cfg.data
    found = open_splits(d, cfg.paths.data_dir, cfg.paths.cache_dir)
    channels, size = input_shape(d, found, wanted)
    if augment.cutout:  # known only now; refuse before any worker hits it mid-epoch
        check_cutout_fits(augment.cutout, *size)
    view = photo_fit(d, size, wanted)  # evaluation's, and training's without a resized crop
    stored = storage_fit(view) if augment.resized_crop else view
    kind = choose_loader(d, found, channels, stored.crop)  # errs large: eval splits are `view`
    chosen, val_name, test_name = partition(found, d)
    fits = [stored, view, view]
    train, val, test = readable_parts(found, chosen, d, cfg.paths, channels, fits, kind)
    mean, std = normalization(d, train, found, cfg.paths, channels, stored, wanted)
    spec = InputSpec(channels, *size, len(found.classes), view.resize, view.interpolation)
    seed = cfg.trainer.seed
    prep = BatchPrep(mean, std, device, channels_last, size=size)
    weights = sampling_weights(d.sampler, train.source.targets)
    flip = alternating_flip(augment, seed, len(train.source))
    if kind == "tensor":  # augmentation on whole batches, on the device
        train_prep = BatchPrep(mean, std, device, channels_last, batch_augment(augment, size), size)
        train_loader = tensor_loader(train, d, True, seed, train_prep, weights, flip, world)
        make_eval = functools.partial(tensor_loader, d=d, train=False, seed=seed, prep=prep,
                                      world=world)  # fmt: skip
    else:  # augmentation per PIL image, in the DataLoader's workers
        train_loader = file_loader(train, d, True, seed, prep, weights, spec, stored, augment, flip,
                                   world)  # fmt: skip
        make_eval = functools.partial(file_loader, d=d, train=False, seed=seed, prep=prep,
                                      spec=spec, fit=view, world=world)  # fmt: skip
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
        records=found.records,
        test_files=test.source.files,
        multi_label=found.multi_label,
    )


def sampling_weights(sampler: str, targets: np.ndarray) -> torch.Tensor | None:
    """data.sampler's per-image draw weights (None: a permutation per epoch)."""
    if sampler != "balanced":
        return None
    if targets.ndim == 2:
        raise UserError(
            "data.sampler=balanced draws every class equally often, which several labels per "
            "image do not allow; use data.sampler=random with loss.class_weights=auto"
        )
    return balanced_weights(torch.as_tensor(targets))


@dataclass
class EvaluationSplit:
    """load_evaluation_split's answer: the split's loader and what it is."""

    loader: TensorLoader | FileLoader
    name: str  # "test", or "val" when the data has no test split (as in training's results)
    origin: str  # where the data was found
    counts: dict[str, int]  # images per class name of the model (0 for those not in the data)
    files: list[str] | None  # the loader's image files in evaluation order (None: arrays)


def load_evaluation_split(cfg, device: torch.device, spec: InputSpec, mean, std,
                          classes: list[str],
                          multi_label: bool = False) -> EvaluationSplit:  # fmt: skip
    """The split a run of `cfg.data` is finally tested on (load_data's `test`), alone: the
    training split is not decoded. Its images are made into a trained model's input (`spec`'s
    channels and size, its `mean`/`std`), never the data's own statistics, and labelled with
    the model's class indices, matched by name to `classes` (a subset of them is fine, a class
    the model does not know is a UserError); for a model with several labels per image
    (`multi_label`) as (N, L) 0/1 rows over `classes`. Data without a train/ split
    (known.open_evaluation_data) is tested on whole."""
    d = cfg.data
    found = open_evaluation_data(d, cfg.paths.data_dir, cfg.paths.cache_dir)
    to_model = model_class_indices(found.classes, classes)
    if found.multi_label and not multi_label:
        raise UserError(
            f"{found.origin} gives images several labels, but the model predicts one class per "
            "image; evaluate a model trained with several labels, or data.task=single data"
        )
    fit = spec_fit(spec)  # as the model was evaluated in training
    kind = choose_loader(d, found, spec.channels, fit.crop)
    if "train" in found.splits:
        (_, _, choice), _, name = partition(found, d)
    else:
        whole = Choice("test", np.arange(len(found.splits["test"])))
        choice, name = cap(whole, d.max_eval_samples, d.split_seed + 2), "test"
    [part] = readable_parts(found, [choice], d, cfg.paths, spec.channels, [fit], kind)
    targets = model_targets(part.source.targets, to_model, len(classes), multi_label)
    part = Part(replace(part.source, targets=targets), part.images)
    prep = BatchPrep(mean, std, device, cfg.trainer.channels_last, size=fit.crop)
    seed = cfg.trainer.seed
    if kind == "tensor":
        loader = tensor_loader(part, d, train=False, seed=seed, prep=prep)
    else:
        loader = file_loader(part, d, train=False, seed=seed, prep=prep, spec=spec, fit=fit)
    counts = dict(zip(classes, image_counts(targets, len(classes)).tolist(), strict=True))
    return EvaluationSplit(loader, name, found.origin, counts, part.source.files)


def model_targets(targets: np.ndarray, to_model: np.ndarray, count: int,
                  multi_label: bool) -> np.ndarray:  # fmt: skip
    """The data's targets ((N,) class indices, or (N, L_data) 0/1) in the model's terms: its
    class indices, or for a model with several labels (N, `count`) float32 0/1 rows."""
    if not multi_label:
        return to_model[targets]
    rows = np.zeros((len(targets), count), dtype=np.float32)
    if targets.ndim == 2:
        rows[:, to_model] = targets
    else:
        rows[np.arange(len(targets)), to_model[targets]] = 1
    return rows


def model_class_indices(data_classes: list[str], classes: list[str]) -> np.ndarray:
    """(K_data,) int64: the model's index of each of the data's classes, matched by name."""
    unknown = [c for c in data_classes if c not in classes]
    if unknown:
        raise UserError(
            f"the data has class {unknown[0]!r}, which the model does not know (its classes: "
            f"{', '.join(classes)}); remove that class folder or evaluate a model trained on it"
        )
    return np.array([classes.index(c) for c in data_classes], dtype=np.int64)


def tensor_loader(part: Part, d, train, seed, prep, weights=None, flip=None,
                  world=SINGLE) -> TensorLoader:  # fmt: skip
    batch = d.batch_size if train else d.eval_batch_size
    targets = torch.as_tensor(part.source.targets)
    return TensorLoader(part.images, targets, batch, train, seed, prep, weights, flip, world)


def file_loader(part: Part, d, train, seed, prep, weights=None, spec=None, fit: Fit | None = None,
                augment: Options | None = None, flip=None, world=SINGLE) -> FileLoader:  # fmt: skip
    """`fit`: how the split's images are stored (spec's size, or a larger region to crop from)."""
    size = (spec.height, spec.width)
    transform = pil_pipeline(augment, size) if augment is not None and augment.on else None
    dataset = SampleDataset(part.source, spec.channels, fit, seed, transform, flip)
    batch = d.batch_size if train else d.eval_batch_size
    return FileLoader(dataset, batch, train, seed, prep, d.num_workers, weights, world)
