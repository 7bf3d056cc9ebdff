"""Batch kernels of augmentation on (N, C, H, W) float images in [0, 1], one parameter per image:
geometry as index maps and one gather (nearest neighbour, Pillow's pixel convention), colour as
torchvision's float kernels, and the erased boxes of cutout and random erasing."""

import math

import torch

from cnntrain.data.augment.draws import Draws
from cnntrain.data.augment.options import (
    ERASING_RATIO,
    ERASING_SCALE,
    ERASING_TRIES,
    check_cutout_fits,
)

GRAY = (0.2989, 0.587, 0.114)  # ITU-R 601 luma weights, as torchvision's rgb_to_grayscale


def is_channels_last(x: torch.Tensor) -> bool:
    return x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()


# Geometry: index maps from output pixels to input pixels, then one gather.


def affine_sources(h: int, w: int, angle: torch.Tensor, tx: torch.Tensor, ty: torch.Tensor):
    """Source (rows, cols) of each output pixel, two (N, H, W) int64 possibly outside the image,
    under torchvision's affine(angle (N,) degrees clockwise, translate (tx, ty) (N,) px) about the
    image centre (W/2, H/2).

    RandomRotation turns counter-clockwise instead; its angle ~ U(-deg, deg) has the same law."""
    return matrix_sources(h, w, rotation_matrix(angle, tx, ty, center=(w / 2, h / 2)))


def rotation_matrix(
    angle: torch.Tensor, tx: torch.Tensor, ty: torch.Tensor, center
) -> torch.Tensor:
    """(N, 2, 3): torchvision's inverse affine matrix (_get_inverse_affine_matrix, scale 1, no
    shear) from output to input points, for a clockwise turn by angle (N,) degrees about
    center (x, y) px, then a shift by (tx, ty) (N,) px."""
    rad = torch.deg2rad(angle)
    cos, sin = rad.cos(), rad.sin()
    cx, cy = center
    x0, y0 = -cx - tx, -cy - ty  # the shift and the centre undone first
    rows = [cos, sin, cos * x0 + sin * y0 + cx, -sin, cos, cos * y0 - sin * x0 + cy]
    return torch.stack(rows, 1).view(-1, 2, 3)


def matrix_sources(h: int, w: int, matrix: torch.Tensor):
    """Source (rows, cols), two (N, H, W) int64 possibly outside the image, of each output pixel
    under the inverse affine `matrix` (N, 2, 3) in Pillow's convention: pixel (i, j) is the unit
    square at [j, j+1) × [i, i+1), the map is taken at its centre and floored to the pixel whose
    square holds the point, as Pillow's nearest filter does."""
    n = matrix.shape[0]
    a, b, c, d, e, f = matrix.reshape(n, 6, 1, 1).unbind(1)  # each (N, 1, 1)
    x = torch.arange(w, device=matrix.device).view(1, 1, w) + 0.5
    y = torch.arange(h, device=matrix.device).view(1, h, 1) + 0.5
    cols = (a * x + b * y + c).floor_().long()
    rows = (d * x + e * y + f).floor_().long()
    return rows, cols


def warp(x: torch.Tensor, matrix: torch.Tensor) -> torch.Tensor:
    """x (N, C, H, W) under the inverse affine `matrix` (N, 2, 3), nearest neighbour, fill 0."""
    _, _, h, w = x.shape
    return gather_pixels(x, *clamp_to_image(*matrix_sources(h, w, matrix), h, w))


def clamp_to_image(rows: torch.Tensor, cols: torch.Tensor, h: int, w: int):
    """(rows, cols) clamped into the image, and a bool mask of where they were inside already."""
    r, c = rows.clamp(0, h - 1), cols.clamp(0, w - 1)
    return r, c, (r == rows) & (c == cols)


def padded_source(i: torch.Tensor, size: int, mode: str) -> torch.Tensor:
    """Index into a side of `size` px of an index i into the padded side (shifted by the padding,
    so it may be < 0 or ≥ size), as torchvision's pad. constant: i as is, for the caller to mask."""
    if mode == "edge":
        return i.clamp(0, size - 1)
    if mode == "reflect":  # mirror about the edge pixels without repeating them: -1 → 1
        period = max(2 * (size - 1), 1)
        return (size - 1) - ((size - 1) - i.abs() % period).abs()
    return i


def gather_pixels(x: torch.Tensor, rows, cols, inside) -> torch.Tensor:
    """out[n, :, i, j] = x[n, :, rows[n, i, j], cols[n, i, j]], 0 where not `inside`."""
    n, c, h, w = x.shape
    index = (rows * w + cols).expand(n, h, w).reshape(n, 1, h * w).expand(n, c, h * w)
    out = x.reshape(n, c, h * w).gather(2, index).view(n, c, h, w)
    return out if inside is None else out.masked_fill_(~inside.unsqueeze(1), 0)


# Colour: torchvision's float kernels on a batch (N, C, H, W) in [0, 1] with one factor per image,
# (N, 1, 1, 1), each clamped to [0, 1] as theirs are.


def grayscale(x: torch.Tensor) -> torch.Tensor:
    """(N, 1, H, W) luma; a 1-channel batch is its own."""
    if x.shape[1] == 1:
        return x
    r, g, b = x.unbind(1)
    return (GRAY[0] * r + GRAY[1] * g + GRAY[2] * b).unsqueeze(1)


def blend(x: torch.Tensor, other: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    return (x * factor + other * (1 - factor)).clamp_(0, 1)


def adjust_brightness(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    return (x * factor).clamp_(0, 1)


def adjust_contrast(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    return blend(x, grayscale(x).mean(dim=(1, 2, 3), keepdim=True), factor)


def adjust_saturation(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    return x if x.shape[1] == 1 else blend(x, grayscale(x), factor)


def adjust_hue(x: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """Turn the hue by `shift` turns keeping HSV's S and V: torchvision's adjust_hue without
    building HSV (max and chroma stay, the channels are read back off the hue hexagon)."""
    if x.shape[1] == 1:
        return x
    r, g, b = x.unbind(1)
    v, m = x.amax(1), x.amin(1)  # (N, H, W)
    chroma = v - m
    # Hue in sixths of a turn; the max channel picks the sector (r, then g, then b on ties).
    is_r, is_g = v == r, v == g
    diff = torch.where(is_r, g - b, torch.where(is_g, b - r, r - g))
    sector = torch.where(is_r, 0.0, torch.where(is_g, 2.0, 4.0))
    hue = (diff / chroma).nan_to_num_(0.0) + sector + 6 * shift.view(-1, 1, 1)  # grey: 0/0 → 0
    # Channel k of the turned pixel: V - chroma·clamp(2 - |t - 2|, 0, 1), t = (hue + 5, 3, 1 for
    # r, g, b) mod 6; the (N, 3, H, W) steps run in place.
    offsets = torch.tensor([5.0, 3.0, 1.0], dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    weight = (hue.unsqueeze(1) + offsets).remainder_(6).sub_(2).abs_().neg_().add_(2).clamp_(0, 1)
    return torch.addcmul(v.unsqueeze(1), chroma.unsqueeze(1), weight, value=-1)


JITTER_OPS = {
    "brightness": adjust_brightness,
    "contrast": adjust_contrast,
    "saturation": adjust_saturation,
    "hue": adjust_hue,
}


def factor_range(name: str, strength: float) -> tuple[float, float]:
    """ColorJitter's range: hue ±strength turns, the others 1 ± strength floored at 0."""
    return (-strength, strength) if name == "hue" else (max(0.0, 1 - strength), 1 + strength)


def jitter_colors(x: torch.Tensor, jitter: list, draw: Draws) -> torch.Tensor:
    """ColorJitter per image, for `jitter` [(op, lo, hi)]: the options that are on."""
    factors, order = draw_jitter(jitter, draw)
    ops = [op for op, _, _ in jitter]
    return apply_in_order(x, ops, factors, order, whole_batch=x.is_cuda)


def draw_jitter(jitter: list, draw: Draws) -> tuple[torch.Tensor, torch.Tensor]:
    """ColorJitter's draws, per image: (k, N) factors ~ U(lo, hi) of each of the k ops in `jitter`,
    and (N, k) the order the ops run in, a uniformly random permutation."""
    factors = torch.stack([draw.uniform(lo, hi) for _, lo, hi in jitter])
    order = draw.uniform(0, 1, len(jitter)).argsort(dim=1)
    return factors, order


def apply_in_order(x, ops: list, factors, order, whole_batch: bool) -> torch.Tensor:
    """At step s image i runs ops[order[i, s]] with its factor factors[order[i, s], i].

    whole_batch: every op on every image, each keeping its own (no host sync: for GPUs); else
    each op on its own images only (a k-th of the work: for CPUs, where compute time counts)."""
    factors = factors.to(x.dtype).view(len(ops), -1, 1, 1, 1)
    step = select_step if whole_batch else subset_step
    for chosen in order.unbind(1):  # (N,): the op index of each image at this step
        x = step(x, ops, factors, chosen)
    return x


def select_step(x, ops, factors, chosen) -> torch.Tensor:
    out = x
    for j, op in enumerate(ops):
        out = torch.where((chosen == j).view(-1, 1, 1, 1), op(x, factors[j]), out)
    return out


def subset_step(x, ops, factors, chosen) -> torch.Tensor:
    out = torch.empty_like(x)  # every image runs exactly one op: all of it is written
    for j, op in enumerate(ops):
        mine = chosen == j
        out[mine] = op(x[mine], factors[j][mine])
    return out


def cut_out(x: torch.Tensor, side: int, draw: Draws) -> torch.Tensor:
    """Zero a side × side square placed uniformly fully inside each image (RandomErasing's draw)."""
    _, _, h, w = x.shape
    check_cutout_fits(side, h, w)
    top, left = draw.integers(h - side + 1), draw.integers(w - side + 1)
    return x.masked_fill(box_mask(h, w, top, left, side, side).unsqueeze(1), 0)


def box_mask(h: int, w: int, top, left, height, width) -> torch.Tensor:
    """(N, H, W) bool: True inside each image's box of `height` × `width` px at (`top`, `left`),
    each (N,) int64 or an int."""
    n = top.shape[0]
    rows = torch.arange(h, device=top.device).view(1, h, 1) - top.view(n, 1, 1)  # (N, H, 1)
    cols = torch.arange(w, device=top.device).view(1, 1, w) - left.view(n, 1, 1)  # (N, 1, W)
    height, width = (torch.as_tensor(s, device=top.device).view(-1, 1, 1) for s in (height, width))
    return (rows >= 0) & (rows < height) & (cols >= 0) & (cols < width)


def erase_rectangles(x: torch.Tensor, p: float, draw: Draws) -> torch.Tensor:
    """torchvision's RandomErasing(p, scale=ERASING_SCALE, ratio=ERASING_RATIO, value=0) per image:
    with probability p, up to ERASING_TRIES rectangles of area ~ U(scale)·H·W and log aspect
    ~ U(log ratio), rounded to px; the first that fits strictly inside is zeroed at a uniform
    place, and none when none fits."""
    n, _, h, w = x.shape
    area = draw.uniform(*ERASING_SCALE, ERASING_TRIES) * (h * w)  # (N, tries) px²
    aspect = draw.uniform(*(math.log(r) for r in ERASING_RATIO), ERASING_TRIES).exp()
    heights, widths = (area * aspect).sqrt().round().long(), (area / aspect).sqrt().round().long()
    fits = (heights < h) & (widths < w)
    first = fits.int().argmax(1, keepdim=True)  # (N, 1): the first try that fits
    height, width = heights.gather(1, first).view(n), widths.gather(1, first).view(n)
    erased = draw.chance(p) & fits.any(1)
    top, left = draw.below(h - height + 1), draw.below(w - width + 1)
    box = box_mask(h, w, top, left, height, width) & erased.view(n, 1, 1)
    return x.masked_fill(box.unsqueeze(1), 0)
