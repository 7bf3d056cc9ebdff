"""MixUp / CutMix (`data.augment.mixup`, `cutmix`) on a training batch, after either data path:
torchvision's own transforms, seeded per (seed, epoch, batch)."""

import torch
from torchvision.transforms import v2

from cnntrain.core.seeds import derived_seed
from cnntrain.data.augment.kernels import is_channels_last
from cnntrain.data.augment.options import Options

MIX_STREAM = 1  # salts BatchMix's seeds apart from the tensor path's per-batch augmentation seeds


def batch_mix(options: Options, num_classes: int, seed: int) -> "BatchMix | None":
    """The MixUp / CutMix of `options`, or None when both are off."""
    return BatchMix(options, num_classes, seed) if options.mixes else None


class BatchMix:
    """MixUp and CutMix (`data.augment.mixup`, `cutmix`: Beta(α, α)) on a training batch:
    torchvision's v2.MixUp and v2.CutMix themselves; with both on, one of them per batch with
    p 0.5 (v2.RandomChoice, as torchvision's classification reference). Each image is mixed with
    its neighbour in the (shuffled) batch; the targets become class probabilities (N, classes).

    Their draws come from torch's CPU generator seeded per (seed, epoch, batch), inside a forked RNG
    state: a resumed run mixes every batch as an uninterrupted one, and nothing else's draws move.
    """

    def __init__(self, options: Options, num_classes: int, seed: int):
        mixes = []
        if options.mixup:
            mixes.append(v2.MixUp(alpha=options.mixup, num_classes=num_classes))
        if options.cutmix:
            mixes.append(v2.CutMix(alpha=options.cutmix, num_classes=num_classes))
        self.transform = mixes[0] if len(mixes) == 1 else v2.RandomChoice(mixes)
        self.seed = seed

    def __call__(self, x: torch.Tensor, y: torch.Tensor, epoch: int, batch: int):
        """(mixed images (N, C, H, W), soft targets (N, classes) float32) of batch `batch`."""
        layout = torch.channels_last if is_channels_last(x) else torch.contiguous_format
        with torch.random.fork_rng(devices=[]):  # the CPU generator only (MixUp/CutMix draw there)
            torch.default_generator.manual_seed(derived_seed(self.seed, epoch, batch, MIX_STREAM))
            x, soft = self.transform(x, y)
        return x.contiguous(memory_format=layout), soft
