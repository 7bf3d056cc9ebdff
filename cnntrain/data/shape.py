"""The shape a run's images take: channels and size (the config's, the model's wish, else the
data's own), and whether the decoded splits fit in memory (the tensor path) or not."""

import logging
from collections import Counter

import numpy as np

from cnntrain.core.errors import UserError
from cnntrain.core.safe_text import printable
from cnntrain.core.spec import MAX_SIDE, InputSpec
from cnntrain.data import decode
from cnntrain.data.known import open_splits
from cnntrain.data.limits import open_image
from cnntrain.data.sources import ImageSource, Splits
from cnntrain.data.splits import seeded_subset

log = logging.getLogger(__name__)
# Training files whose headers decide a folder's image size and channels: a few hundred header
# reads take well under a second, and their most common size is not one outlier's.
SIZE_SAMPLE = 256
# The longest short side (px) data.image_size unset gives: images of one size keep their aspect
# ratio, scaled down to it; photos of mixed sizes get a square of their median short side, at
# most this. The README's own-data line (cifar10cnn, batch 128) on 5,200 photos (evaluation
# batches of 512) peaks at 3.7 GB resident in float32 on a CPU at 96 px, 2.6 GB in bf16; at
# 128 px float32 takes 5.9 GB even on 600 photos (bench/own_photos.py). training/fits.py refuses
# a size that would not fit.
PHOTO_SIDE = 96
GRAYSCALE_MODES = {"1", "L", "LA", "I", "I;16", "F"}


def input_spec(cfg, wanted: dict) -> tuple[InputSpec, list[str]]:
    """The model's input spec and class names, from the data's metadata alone (no decoding);
    `wanted` as for load_data."""
    found = open_splits(cfg.data, cfg.paths.data_dir, cfg.paths.cache_dir)
    channels, size = input_shape(cfg.data, found, wanted)
    return InputSpec(channels, size[0], size[1], len(found.classes)), found.classes


def input_shape(d, found: Splits, wanted: dict) -> tuple[int, tuple[int, int]]:
    """(channels, (H, W)): `data.channels` / `data.image_size`, else what the model wants
    (`wanted`, e.g. pretrained weights' crop size and RGB), else the data's own."""
    channels = d.channels or wanted.get("channels")
    size = d.image_size or wanted.get("image_size")
    if not (channels and size):
        data_channels, data_size = data_shape(found.splits["train"], d.split_seed, not size)
        channels, size = channels or data_channels, size or data_size
    size = (size, size) if isinstance(size, int) else tuple(size)
    if channels not in (1, 3):
        raise UserError(f"data.channels={channels} is not supported; use 1 (grayscale) or 3 (RGB)")
    return channels, (int(size[0]), int(size[1]))


def data_shape(train: ImageSource, seed: int, say_size: bool) -> tuple[int, tuple[int, int]]:
    """(channels, (H, W)) of the training split as stored; for files, read from the headers of a
    seeded sample of them (chosen_size; logged with `say_size`, when it becomes the run's)."""
    if train.arrays is not None:
        shape = train.arrays.shape  # (N, H, W) or (N, H, W, C)
        return (1 if len(shape) == 3 else shape[3]), shape[1:3]
    sample = seeded_subset(np.arange(len(train)), SIZE_SAMPLE, seed)
    channels, sizes = sniff_files([train.files[i] for i in sample], train.max_pixels)
    size, why = chosen_size(sizes)
    if say_size:
        log.info("image size %d×%d (H×W, data.image_size unset): %s", *size, why)
    return channels, size


def chosen_size(sizes: Counter) -> tuple[tuple[int, int], str]:
    """(H, W) for images of `sizes` ((H, W) → count of a sample), and why. Their most common
    size when it is at least half of them (CIFAR-10's 32×32, 64×200 strips, a few odd files
    among them), scaled down in its aspect ratio to a short side of PHOTO_SIDE when longer (one
    camera's 480×640 → 96×128); else, for photos of mixed sizes, a square of their median short
    side, at most PHOTO_SIDE."""
    (height, width), count = sizes.most_common(1)[0]
    n, short = sizes.total(), min(height, width)
    if 2 * count >= n:
        why = f"the most common of {n} training image(s) sampled"
        if short <= PHOTO_SIDE and max(height, width) > MAX_SIDE:  # a strip: its long side capped
            long = max(height, width)
            return (max(1, height * MAX_SIDE // long), max(1, width * MAX_SIDE // long)), (
                f"{why}, {height}×{width}, scaled to a long side of {MAX_SIDE} px, the most a "
                "side may have (data.image_size=[H,W] sets another)"
            )
        if short <= PHOTO_SIDE:
            return (height, width), why
        # the long side truncated, as Fit's resize truncates it: the crop stays covered
        return (height * PHOTO_SIDE // short, width * PHOTO_SIDE // short), (
            f"{why}, {height}×{width}, scaled to a short side of {PHOTO_SIDE} px "
            "(data.image_size=N sets another)"
        )
    shorts = sorted(min(size) for size, k in sizes.items() for _ in range(k))
    median = shorts[n // 2]
    side = min(median, PHOTO_SIDE)
    return (side, side), (
        f"{n} training image(s) sampled have {len(sizes)} size(s) (short sides {shorts[0]}-"
        f"{shorts[-1]} px, median {median}); photos get a square of the median short side, at "
        f"most {PHOTO_SIDE} px (data.image_size=N sets another)"
    )


def sniff_files(files: list[str], max_pixels=None) -> tuple[int, Counter]:
    """(channels, Counter of (H, W) sizes) from the headers of `files` (no pixels are
    decoded): 1 channel if all are grayscale; unreadable files and those over `max_pixels` are
    passed over (reported when the split is decoded)."""
    modes, sizes = set(), Counter()
    for path in files:
        try:
            with open_image(path, max_pixels) as img:
                modes.add(img.mode)
                sizes[decode.upright_size(img)] += 1  # as decoding turns it (EXIF orientation)
        except decode.DECODE_ERRORS:
            continue
    if not sizes:
        raise UserError(
            f"none of {len(files)} sampled images could be read (first: {printable(files[0])})"
        )
    return (1 if modes <= GRAYSCALE_MODES else 3), sizes


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
