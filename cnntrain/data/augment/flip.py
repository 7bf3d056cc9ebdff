"""`data.augment.hflip=alternate`: airbench's derandomized flip, the same on both data paths."""

import torch

from cnntrain.core.seeds import derived_seed
from cnntrain.data.augment.options import Options

FLIP_STREAM = 2  # salts AlternatingFlip's draw apart from the others


def alternating_flip(options: Options, seed: int, count: int) -> "AlternatingFlip | None":
    """The AlternatingFlip of a training split of `count` images, or None (hflip not alternate)."""
    return AlternatingFlip(seed, count) if options.hflip == "alternate" else None


class AlternatingFlip:
    """`data.augment.hflip=alternate`, airbench's derandomized flip: a random half of the images
    is mirrored in epoch 1, and every image's mirroring toggles from each epoch to the next, so
    each image is seen both ways in any two epochs in a row (a random flip repeats itself half the
    time). Whether image `index` of the split is mirrored in `epoch` (from 1) is a function of
    (seed, index, epoch) only: the same on both data paths, in any batch, after any restart."""

    def __init__(self, seed: int, count: int):
        generator = torch.Generator().manual_seed(derived_seed(seed, FLIP_STREAM))
        self.first = torch.rand(count, generator=generator) < 0.5  # (count,) mirrored in epoch 1

    def mirrored(self, index, epoch: int) -> torch.Tensor:
        """Bool of index's shape: for the split's image `index` (an int) or images (an int64
        tensor, on any device)."""
        if isinstance(index, torch.Tensor) and index.device != self.first.device:
            self.first = self.first.to(index.device)  # moved once: the loaders' batches stay there
        return self.first[index] ^ (epoch % 2 == 0)

    def __call__(self, x: torch.Tensor, index: torch.Tensor, epoch: int) -> torch.Tensor:
        """The images `index` (n,) of the split, x (n, C, H, W), as seen in `epoch`."""
        return torch.where(self.mirrored(index, epoch).view(-1, 1, 1, 1), x.flip(-1), x)
