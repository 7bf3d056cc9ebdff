"""Per-channel normalization: the config's, the model's (pretrained weights'), the dataset's known
statistics, else computed on the training split only (cached)."""

import logging
from pathlib import Path

import numpy as np
import torch

from cnntrain.core.errors import UserError
from cnntrain.data import decode
from cnntrain.data.cache import build_once, load_json, save_json
from cnntrain.data.geometry import Fit
from cnntrain.data.selection import Part
from cnntrain.data.sources import ImageSource, Splits
from cnntrain.data.splits import seeded_subset

log = logging.getLogger(__name__)


STATS_SAMPLE = 20_000  # images decoded to estimate normalization stats on the DataLoader path


def normalization(d, train: Part, found: Splits, paths, channels, fit: Fit, wanted: dict):
    """(mean, std) per channel, the first given of: `data.mean`/`data.std`; what the model wants
    (pretrained weights' statistics, in `wanted`); the dataset's known `data.stats`; else computed
    on the training split only, its images as stored (`fit`: for RandomResizedCrop the larger
    centre region the crops are drawn from), cached."""
    if d.mean is not None and d.std is not None:
        return fitting(d.mean, d.std, channels, "data.mean")
    if wanted.get("mean") is not None:
        return list(wanted["mean"]), list(wanted["std"])
    if d.get("stats"):
        return fitting(d.stats.mean, d.stats.std, channels, "data.stats.mean")
    # The training split is fixed by the data and these settings, so they key the cache.
    split = f"stats:{d.val_split}:{d.split_seed}:{d.max_train_samples}"
    key = decode.cache_key(found.origin, found.fingerprint, split, channels, fit)
    path = Path(paths.cache_dir).expanduser() / "stats" / f"{key}.json"
    stats = build_once(
        path,
        load=load_json,
        build=lambda: training_stats(train, channels, fit, d),
        save=save_json,
    )
    return stats["mean"], stats["std"]


def training_stats(train: Part, channels, fit: Fit, d) -> dict[str, list[float]]:
    images = (
        train.images if train.images is not None else sample_pixels(train.source, channels, fit, d)
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


def sample_pixels(source: ImageSource, channels, fit: Fit, d) -> torch.Tensor:
    """Up to STATS_SAMPLE training images, decoded: enough for stats to ~3 decimals."""
    chosen = seeded_subset(np.arange(len(source)), STATS_SAMPLE, d.split_seed)
    images, _ = decode.decode_source(source.subset(chosen), channels, fit, max(1, d.num_workers))
    return torch.from_numpy(images)
