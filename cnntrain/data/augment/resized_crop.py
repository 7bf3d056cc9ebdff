"""RandomResizedCrop on the tensor path: torchvision's law per image, one batched roi_align resize.

Each image's box is drawn from its stored region (geometry.storage_fit) and resized to the input
size by one torchvision.ops.roi_align call for the whole batch.

Why roi_align (aligned=True, adaptive sampling): one kernel crops and resizes a box per image on
any device, with the half-pixel convention of Pillow and torchvision (a box of exactly the output
size comes out unchanged), and it averages ceil(box side / output side) bilinear samples per
output pixel and axis, so a box shrunk by a factor s is filtered over ~s px, close to the
antialiasing of the DataLoader path's PIL resize (a triangle filter of radius s: PIL's is a
little smoother; enlarging, both are plain bilinear). F.grid_sample would alias when shrinking.
"""

import math

import torch
from torchvision.ops import roi_align

from cnntrain.data.augment.draws import Draws
from cnntrain.data.augment.options import RESIZED_CROP_TRIES, ResizedCrop


def fallback_box(height: int, width: int, ratio: tuple[float, float]) -> tuple[int, int]:
    """(h, w) px of torchvision's centred fallback when no drawn box fits: the whole image, cut
    to the nearest aspect ratio of the range."""
    if width / height < min(ratio):
        return round(width / min(ratio)), width
    if width / height > max(ratio):
        return height, round(height * max(ratio))
    return height, width


def draw_boxes(height: int, width: int, crop: ResizedCrop, draw: Draws):
    """(top, left, h, w), each (N,) int64: torchvision's RandomResizedCrop.get_params per image
    on a height × width image. Up to RESIZED_CROP_TRIES boxes of area ~ U(scale)·H·W and log
    aspect (w / h) ~ U(log ratio), sides rounded to px; the first that fits is placed uniformly,
    and an image whose every try fails takes the centred fallback_box."""
    n = draw.n
    area = draw.uniform(*crop.scale, RESIZED_CROP_TRIES) * (height * width)  # (N, tries) px²
    aspect = draw.uniform(*(math.log(r) for r in crop.ratio), RESIZED_CROP_TRIES).exp()
    widths = (area * aspect).sqrt().round().long()
    heights = (area / aspect).sqrt().round().long()
    fits = (widths > 0) & (widths <= width) & (heights > 0) & (heights <= height)
    first = fits.int().argmax(1, keepdim=True)  # (N, 1): the first try that fits
    found = fits.any(1)
    spare_h, spare_w = fallback_box(height, width, crop.ratio)
    h = torch.where(found, heights.gather(1, first).view(n), spare_h)
    w = torch.where(found, widths.gather(1, first).view(n), spare_w)
    top = torch.where(found, draw.below(height - h + 1), (height - h) // 2)
    left = torch.where(found, draw.below(width - w + 1), (width - w) // 2)
    return top, left, h, w


def resized_crop(x: torch.Tensor, size: tuple[int, int], crop: ResizedCrop, draw: Draws):
    """x (N, C, H', W') float → (N, C, H, W) `size`: each image's drawn box, resized bilinearly
    (roi_align; see the module's docstring)."""
    n, _, height, width = x.shape
    top, left, h, w = draw_boxes(height, width, crop, draw)
    # roi_align's boxes: (image index, x1, y1, x2, y2) in px, the box's outer edges.
    index = torch.arange(n, device=x.device)
    boxes = torch.stack([index, left, top, left + w, top + h], 1).to(x.dtype)
    return roi_align(x.contiguous(), boxes, size, spatial_scale=1.0, sampling_ratio=-1,
                     aligned=True)  # fmt: skip
