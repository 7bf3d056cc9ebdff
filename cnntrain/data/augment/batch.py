"""The tensor path's augmentation: `data.augment` on a whole float batch, every parameter drawn
per image, with the laws of the PIL path's transforms."""

import torch

from cnntrain.data.augment.draws import Draws, EpochDraws
from cnntrain.data.augment.kernels import (
    JITTER_OPS,
    affine_sources,
    clamp_to_image,
    cut_out,
    erase_rectangles,
    factor_range,
    gather_pixels,
    is_channels_last,
    jitter_colors,
    padded_source,
)
from cnntrain.data.augment.options import Options
from cnntrain.data.augment.policies import batch_policy
from cnntrain.data.augment.resized_crop import resized_crop


def batch_augment(options: Options, size: tuple[int, int] | None = None) -> "BatchAugment | None":
    """The batch form of `options`, or None when every option is off; `size`: the (H, W) the
    random resized crop outputs (None: the batch's own)."""
    if not options.on:
        return None
    return BatchAugment(options, batch_policy(options), size)


class BatchAugment:
    """Augments a float batch (N, C, H, W) in [0, 1] on any device, every parameter drawn per image
    from `generator` (on the batch's device) only: same generator state, same output.

    Order as the PIL pipeline: resized crop (from the stored size to `size`) → crop → hflip →
    rotation/translation → colour jitter → policy → cutout → random erasing.
    """

    def __init__(self, options: Options, policy=None, size: tuple[int, int] | None = None):
        self.o = options
        self.size = size
        self.jitter = [
            (JITTER_OPS[name], *factor_range(name, s)) for name, s in options.jitter.items()
        ]
        self.policy = policy  # policy(x, draw) → x (policies.py), or None

    def __call__(self, x: torch.Tensor, generator: "torch.Generator | EpochDraws") -> torch.Tensor:
        n = x.shape[0]
        draw = generator if isinstance(generator, EpochDraws) else Draws(n, generator, x.device)
        layout = torch.channels_last if is_channels_last(x) else torch.contiguous_format
        if self.o.resized_crop:
            x = resized_crop(x, self.size or tuple(x.shape[-2:]), self.o.resized_crop, draw)
        h, w = x.shape[-2:]
        if self.o.moves_pixels:
            x = gather_pixels(x, *self.pixel_sources(h, w, draw))
        if self.jitter:
            x = jitter_colors(x, self.jitter, draw)
        if self.policy is not None:
            x = self.policy(x, draw)
        if self.o.cutout:
            x = cut_out(x, self.o.cutout, draw)
        if self.o.random_erasing:
            x = erase_rectangles(x, self.o.random_erasing, draw)
        return x.contiguous(memory_format=layout)

    def pixel_sources(self, h: int, w: int, draw: "Draws"):
        """Crop, flip and affine as one map: the input pixel each output pixel shows (nearest
        neighbour, as the PIL path), found by walking the ops backwards from the output.

        Returns rows and cols, int64 broadcasting to (N, H, W), and `inside`, bool broadcasting to
        (N, H, W) or None: False where the output is fill (0)."""
        o, n = self.o, draw.n
        rows = torch.arange(h, device=draw.device).view(1, h, 1)
        cols = torch.arange(w, device=draw.device).view(1, 1, w)
        inside = None
        if o.affine:
            t = o.translate
            angle = draw.uniform(-o.rotation, o.rotation)
            tx = draw.uniform(-t * w, t * w).round()  # whole px, as RandomAffine
            ty = draw.uniform(-t * h, t * h).round()
            rows, cols, inside = clamp_to_image(*affine_sources(h, w, angle, tx, ty), h, w)
        if o.random_flip:
            cols = torch.where(draw.chance(0.5).view(n, 1, 1), w - 1 - cols, cols)
        if o.crop_padding:
            # The crop's top-left corner in the padded image is in [0, 2p]: a shift of ±p px.
            p, mode = o.crop_padding, o.crop_padding_mode
            rows = padded_source(rows + draw.integers(2 * p + 1).view(n, 1, 1) - p, h, mode)
            cols = padded_source(cols + draw.integers(2 * p + 1).view(n, 1, 1) - p, w, mode)
            if mode == "constant":
                rows, cols, image = clamp_to_image(rows, cols, h, w)
                inside = image if inside is None else inside & image
        return rows, cols, inside
