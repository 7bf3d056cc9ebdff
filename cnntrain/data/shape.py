"""The shape a run's images take: channels and size (the config's, the model's wish, else the
data's own), and whether the decoded splits fit in memory (the tensor path) or not."""

import logging

from PIL import Image

from cnntrain.core.errors import UserError
from cnntrain.core.spec import InputSpec
from cnntrain.data import decode
from cnntrain.data.sources import Splits, open_splits

log = logging.getLogger(__name__)


def input_spec(cfg, wanted: dict) -> tuple[InputSpec, list[str]]:
    """The model's input spec and class names, from the data's metadata alone (no decoding);
    `wanted` as for load_data."""
    found = open_splits(cfg.data, cfg.paths.data_dir, cfg.paths.cache_dir)
    channels, size = input_shape(cfg.data, found, wanted)
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
