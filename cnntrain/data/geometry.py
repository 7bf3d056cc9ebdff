"""Images of any size to the stored size without squashing: short side resized, then a centre crop.

That is torchvision's `weights.transforms()` geometry, its rounding included; a training split
with RandomResizedCrop is stored at a larger centre region, which the crops are drawn from.

What the stored training tensor holds with `data.augment.random_resized_crop`: each image's short
side resized to R = data.resize, the centre R × R region kept (for an [H, W] crop, the crop scaled
to short side R): (R / crop)² the memory of storing the crop itself (256 for 224: × 1.31), and a
crop is drawn from that region only. torchvision's reference draws from the whole image instead;
the border of the long side outside the centre region — (L − S) / L of it for an image of long
side L, short side S: a quarter of a 4:3 photo — is never seen in training.
"""

import math
from dataclasses import dataclass, replace

import torch
from PIL import Image

from cnntrain.core.errors import UserError
from cnntrain.core.spec import InputSpec

# data.interpolation's names → Pillow's filters (torchvision's InterpolationMode values).
INTERPOLATIONS = {
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "nearest": Image.Resampling.NEAREST,
}


@dataclass(frozen=True)
class Fit:
    """How images are stored: resized (keeping their aspect), then centre-cropped to `crop`."""

    crop: tuple[int, int]  # (H, W) px of every stored image
    resize: int | None = None  # px of the short side before the crop; None: just covering it
    interpolation: str = "bilinear"  # a name of INTERPOLATIONS
    squash: bool = False  # stretched to `crop`, aspect not kept, EXIF not applied (InputSpec's)

    def __post_init__(self):
        """Refuse what a received checkpoint's spec could hold that no run writes."""
        sides = (*self.crop, 1 if self.resize is None else self.resize)
        if not all(isinstance(s, int) and s >= 1 for s in sides):
            raise UserError(f"image size {self.crop}, resize {self.resize}: not whole px ≥ 1")
        if self.interpolation not in INTERPOLATIONS:
            raise UserError(
                f"interpolation {self.interpolation!r} is not one of {', '.join(INTERPOLATIONS)}"
            )

    def resized_size(self, height: int, width: int) -> tuple[int, int]:
        """(H, W) an image of height × width px is resized to before the crop: its short side to
        `resize` px and the long side in proportion, truncated (torchvision's Resize); with resize
        None, or where that would not cover the crop, just large enough to cover it (the crop is
        never zero-padded). For a square crop, None is Resize(crop side). Squashed: the crop."""
        ch, cw = self.crop
        if self.squash:
            return self.crop
        if self.resize is not None:
            long = int(self.resize * max(height, width) / min(height, width))
            size = (self.resize, long) if height <= width else (long, self.resize)
            if size[0] >= ch and size[1] >= cw:
                return size
        if ch / height >= cw / width:  # the height binds: it becomes the crop's
            return ch, max(cw, int(ch * width / height))
        return max(ch, int(cw * height / width)), cw

    def key(self) -> list:
        """What a cache key must hold of this Fit."""
        key = [list(self.crop), self.resize, self.interpolation]
        return [*key, "squash"] if self.squash else key  # the keys of caches made before stand


def as_fit(size) -> Fit:
    """A Fit, or an (H, W) size as the Fit that covers it (bilinear)."""
    return size if isinstance(size, Fit) else Fit((int(size[0]), int(size[1])))


def spec_fit(spec: InputSpec) -> Fit:
    """How a trained model's input is made: its size, and the resize and interpolation it was
    evaluated with (what evaluation, predict and export use)."""
    return Fit((spec.height, spec.width), spec.resize, spec.interpolation, spec.squash)


def centre_offsets(height: int, width: int, crop: tuple[int, int]) -> tuple[int, int]:
    """(top, left) px of a centred `crop` (H, W) of height × width px, as torchvision's
    center_crop rounds them (half to even)."""
    return round((height - crop[0]) / 2.0), round((width - crop[1]) / 2.0)


# Past both, the resized whole image is not made: its crop alone is (`fit_image`). A 1 × 20,000 px
# strip with its short side resized to 256 px would be 1.3 gigapixels (3.9 GB) first.
MAX_RESIZED_PIXELS = 2**24  # 16.8 Mpx (50 MB in RGB)
MAX_RESIZED_GROWTH = 16  # × the crop's pixels


def fit_image(img: Image.Image, fit: Fit) -> Image.Image:
    """`img` resized (Pillow's filter, antialiased) and centre-cropped to `fit.crop`; the same
    image when it is that size already.

    Where the resized image would be over MAX_RESIZED_PIXELS and MAX_RESIZED_GROWTH crops (a
    strip, a received spec's huge resize), only its crop is resized, from the source box it
    comes from: the same filter at the same scale, values within ±1 of the whole resize's
    (bilinear; ±2 bicubic, measured on strips)."""
    size = fit.resized_size(img.height, img.width)
    ch, cw = fit.crop
    top, left = centre_offsets(*size, fit.crop)
    if size[0] * size[1] > max(MAX_RESIZED_PIXELS, MAX_RESIZED_GROWTH * ch * cw):
        sy, sx = img.height / size[0], img.width / size[1]  # source px per resized px
        # (x0, y0, x1, y1) source px; the far edges may round one ulp past the image
        right, bottom = min((left + cw) * sx, img.width), min((top + ch) * sy, img.height)
        box = (left * sx, top * sy, right, bottom)
        return img.resize((cw, ch), INTERPOLATIONS[fit.interpolation], box=box)
    if size != (img.height, img.width):
        img = img.resize(size[::-1], INTERPOLATIONS[fit.interpolation])  # PIL sizes are (W, H)
    if size == fit.crop:
        return img
    return img.crop((left, top, left + cw, top + ch))


def centre_crop(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """The centred (…, H, W) `size` region of images x (…, H', W'), H' ≥ H, W' ≥ W."""
    top, left = centre_offsets(*x.shape[-2:], size)
    return x[..., top : top + size[0], left : left + size[1]]


def photo_fit(d, size: tuple[int, int], wanted: dict) -> Fit:
    """The Fit of a run's input `size` (evaluation's, and training's without RandomResizedCrop):
    `data.resize`, else the pretrained weights' (`wanted`; in their own ratio to the crop when
    data.image_size is not theirs), else None (short side = the crop's for a square crop);
    `data.interpolation`, else the weights', else bilinear."""
    resize = d.get("resize")
    if resize is not None and resize < min(size):
        raise UserError(
            f"data.resize={resize} is smaller than the short side of data.image_size "
            f"{size[0]}×{size[1]}; use data.resize ≥ {min(size)} px, or null"
        )
    if resize is None and wanted.get("resize"):
        own = min(wanted["image_size"])  # the crop the weights' resize goes with
        resize = max(min(size), math.floor(min(size) * wanted["resize"] / own))
    interpolation = d.get("interpolation") or wanted.get("interpolation") or "bilinear"
    return Fit((int(size[0]), int(size[1])), resize, interpolation)


def storage_fit(view: Fit) -> Fit:
    """The Fit a training split is stored at for RandomResizedCrop: the centre region of short
    side `view.resize` (the crop's own short side when None) in the crop's aspect, which every
    crop is drawn from (see the module's docstring for its cost)."""
    ch, cw = view.crop
    short = view.resize or min(ch, cw)
    return replace(view, crop=(round(ch * short / min(ch, cw)), round(cw * short / min(ch, cw))))
