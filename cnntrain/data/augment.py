"""Training-set augmentation (`data.augment`): per PIL image (DataLoader path) or per batch."""

import functools
import math
from dataclasses import dataclass

import torch
from torchvision.transforms import v2

from cnntrain.data.splits import mix
from cnntrain.errors import UserError

PADDING_MODES = ("constant", "reflect", "edge")  # torchvision's padding_mode names
JITTER = ("brightness", "contrast", "saturation", "hue")  # ColorJitter's arguments, in its order
GRAY = (0.2989, 0.587, 0.114)  # ITU-R 601 luma weights, as torchvision's rgb_to_grayscale
PIXELS = "a whole number of px ≥ 0 (0 = off)"


class AugmentError(UserError, ValueError):
    """A bad `data.augment` value: a UserError for the CLI, a ValueError for any other caller."""


@dataclass(frozen=True)
class Options:
    """`data.augment`, checked: geometry in px and degrees, jitter strengths as ColorJitter's."""

    hflip: bool
    crop_padding: int  # px on each side; 0 = off
    crop_padding_mode: str
    rotation: float  # degrees; angle ~ U(-rotation, rotation)
    translate: float  # fraction of the side; shift ~ U(-translate, translate) × side
    jitter: dict  # {"brightness": strength, ...}: the ColorJitter options that are on (> 0)
    cutout: int  # side of the zeroed square in px; 0 = off

    @property
    def affine(self) -> bool:
        return bool(self.rotation or self.translate)

    @property
    def moves_pixels(self) -> bool:
        return bool(self.crop_padding or self.hflip or self.affine)

    @property
    def on(self) -> bool:
        return bool(self.moves_pixels or self.jitter or self.cutout)


def read_options(cfg) -> Options:
    """`cfg` (a DictConfig or dict shaped like conf/config.yaml's data.augment), validated."""
    jitter = cfg["color_jitter"]
    check("hflip", cfg["hflip"], lambda v: isinstance(v, bool), "true or false")
    check("crop_padding", cfg["crop_padding"], is_count, PIXELS)
    modes = "one of " + ", ".join(PADDING_MODES)
    check("crop_padding_mode", cfg["crop_padding_mode"], PADDING_MODES.__contains__, modes)
    check("rotation", cfg["rotation"], in_range(0, 180), "degrees in [0, 180] (0 = off)")
    check(
        "translate", cfg["translate"], in_range(0, 1), "a fraction of the side in [0, 1] (0 = off)"
    )
    for name in ("brightness", "contrast", "saturation"):
        check(f"color_jitter.{name}", jitter[name], in_range(0, math.inf), "a number ≥ 0 (0 = off)")
    # ColorJitter's bound: a hue turn of ±0.5 already reaches every hue.
    check("color_jitter.hue", jitter["hue"], in_range(0, 0.5), "a number in [0, 0.5] (0 = off)")
    check("cutout", cfg["cutout"], is_count, PIXELS)
    return Options(
        hflip=cfg["hflip"],
        crop_padding=cfg["crop_padding"],
        crop_padding_mode=cfg["crop_padding_mode"],
        rotation=float(cfg["rotation"]),
        translate=float(cfg["translate"]),
        jitter={name: float(jitter[name]) for name in JITTER if jitter[name] > 0},
        cutout=cfg["cutout"],
    )


def check(key: str, value, valid, allowed: str) -> None:
    if not valid(value):
        raise AugmentError(f"data.augment.{key}={value!r} is not valid; use {allowed}")


def is_count(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= 0


def in_range(lo: float, hi: float):
    def valid(v) -> bool:
        return isinstance(v, int | float) and not isinstance(v, bool) and lo <= v <= hi

    return valid


def check_cutout_fits(side: int, height: int, width: int) -> None:
    """RandomErasing only places a square strictly smaller than the image (else it silently
    erases nothing), so both paths refuse the others."""
    if side >= min(height, width):
        raise AugmentError(
            f"data.augment.cutout={side} is not valid for {height}×{width} images; "
            f"use a side smaller than {min(height, width)} px (0 = off)"
        )


# --- DataLoader path: torchvision transforms on one PIL image -----------------------------------


class AtImageSize:
    """A transform that needs the image size: built by `make(H, W)` at the first image of each
    size, as the pipeline exists before any image is seen. Picklable for DataLoader workers."""

    def __init__(self, make):
        self.make = make
        self.built = {}

    def __call__(self, img):
        size = tuple(v2.functional.get_size(img))  # (H, W)
        if size not in self.built:
            self.built[size] = self.make(*size)
        return self.built[size](img)


def random_crop(height: int, width: int, padding: int, padding_mode: str) -> v2.RandomCrop:
    return v2.RandomCrop((height, width), padding=padding, padding_mode=padding_mode)


def random_erasing(height: int, width: int, side: int) -> v2.RandomErasing:
    """Cutout as RandomErasing: a square (ratio 1) of area side², as a fraction of H·W."""
    check_cutout_fits(side, height, width)
    area = side * side / (height * width)
    return v2.RandomErasing(p=1.0, scale=(area, area), ratio=(1.0, 1.0), value=0)


def pil_augment(o: Options) -> list:
    """The transforms from a PIL image to an augmented (C, H, W) uint8 tensor, to compose;
    they draw from torch's global RNG."""
    steps = []
    if o.crop_padding:
        crop = functools.partial(
            random_crop, padding=o.crop_padding, padding_mode=o.crop_padding_mode
        )
        steps.append(AtImageSize(crop))
    if o.hflip:
        steps.append(v2.RandomHorizontalFlip(p=0.5))
    if o.translate:
        steps.append(v2.RandomAffine(degrees=o.rotation, translate=(o.translate, o.translate)))
    elif o.rotation:
        steps.append(v2.RandomRotation(o.rotation))
    if o.jitter:
        steps.append(v2.ColorJitter(**o.jitter))
    steps.append(v2.PILToTensor())
    if o.cutout:
        steps.append(AtImageSize(functools.partial(random_erasing, side=o.cutout)))
    return steps


def pil_pipeline(options: Options) -> v2.Compose:
    """`pil_augment` composed: PIL image → augmented (C, H, W) uint8 tensor."""
    return v2.Compose(pil_augment(options))


# --- Tensor path: the same distributions, drawn per image, on a whole batch ---------------------


def batch_augment(options: Options) -> "BatchAugment | None":
    """The batch form of `options`, or None when every option is off."""
    return BatchAugment(options) if options.on else None


class BatchAugment:
    """Augments a float batch (N, C, H, W) in [0, 1] on any device, every parameter drawn per image
    from `generator` (on the batch's device) only: same generator state, same output.

    Order as the PIL pipeline: crop → hflip → rotation/translation → colour jitter → cutout.
    """

    def __init__(self, options: Options):
        self.o = options
        self.jitter = [
            (JITTER_OPS[name], *factor_range(name, s)) for name, s in options.jitter.items()
        ]

    def __call__(self, x: torch.Tensor, generator: "torch.Generator | EpochDraws") -> torch.Tensor:
        n, _, h, w = x.shape
        draw = generator if isinstance(generator, EpochDraws) else Draws(n, generator, x.device)
        layout = torch.channels_last if is_channels_last(x) else torch.contiguous_format
        if self.o.moves_pixels:
            x = gather_pixels(x, *self.pixel_sources(h, w, draw))
        if self.jitter:
            x = jitter_colors(x, self.jitter, draw)
        if self.o.cutout:
            x = cut_out(x, self.o.cutout, draw)
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
        if o.hflip:
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


class Draws:
    """Per-image random numbers from one generator, on the batch's device."""

    def __init__(self, n: int, generator: torch.Generator, device: torch.device):
        self.n, self.generator, self.device = n, generator, device

    def uniform(self, lo: float, hi: float, *trailing: int) -> torch.Tensor:
        """(N, *trailing) float32 in [lo, hi)."""
        u = torch.rand((self.n, *trailing), generator=self.generator, device=self.device)
        return u * (hi - lo) + lo

    def integers(self, high: int) -> torch.Tensor:
        """(N,) int64 in [0, high)."""
        return torch.randint(high, (self.n,), generator=self.generator, device=self.device)

    def chance(self, p: float) -> torch.Tensor:
        """(N,) bool, each True with probability p."""
        return self.uniform(0, 1) < p


class EpochDraws:
    """Draws for one batch of an epoch, each a row of a table drawn once for all `count` images
    of the epoch: the k-th call of every batch reads table k, which Draws' method drew for all
    images from a generator seeded by (seed, epoch, k), at the rows of the batch's image indices
    `index` (n,). So an image's draws depend on (seed, epoch, its index) only — not on its batch,
    its place in it, the number of processes sharing the batch, or where a restarted epoch
    resumed. Any Draws method serves; every batch makes the same calls, the per-image choices
    living in the values drawn (BatchAugment's do)."""

    def __init__(self, tables: dict, count: int, seed: int, epoch: int, index: torch.Tensor):
        self.tables = tables  # k → (method name, (count, …) table): shared by the epoch's batches
        self.count, self.seed, self.epoch, self.index = count, seed, epoch, index
        self.n, self.device = len(index), index.device
        self.calls = 0

    def __getattr__(self, name: str):
        method = getattr(Draws, name)

        def draw(*args):
            k, self.calls = self.calls, self.calls + 1
            if k not in self.tables:
                generator = torch.Generator(self.device).manual_seed(mix(self.seed, self.epoch, k))
                self.tables[k] = name, method(Draws(self.count, generator, self.device), *args)
            drawn_by, table = self.tables[k]
            if drawn_by != name:
                raise RuntimeError(f"draw {k} of a batch is {name}, of an earlier one {drawn_by}")
            return table[self.index]

        return draw


def is_channels_last(x: torch.Tensor) -> bool:
    return x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()


# Geometry: index maps from output pixels to input pixels, then one gather.


def affine_sources(h: int, w: int, angle: torch.Tensor, tx: torch.Tensor, ty: torch.Tensor):
    """Source (rows, cols) of each output pixel, two (N, H, W) int64 possibly outside the image,
    under torchvision's affine(angle (N,) degrees clockwise, translate (tx, ty) (N,) px) about the
    image centre (W/2, H/2): its inverse matrix (_get_inverse_affine_matrix) at pixel centres, and
    floor to the pixel whose square holds the point, as Pillow's nearest filter does.

    RandomRotation turns counter-clockwise instead; its angle ~ U(-deg, deg) has the same law."""
    n = angle.shape[0]
    rad = torch.deg2rad(angle).view(n, 1, 1)
    cos, sin = rad.cos(), rad.sin()
    # Pixel centres relative to the centre, less the shift: (1, 1, W) - (N, 1, 1) → (N, 1, W).
    x = torch.arange(w, device=angle.device).view(1, 1, w) + (0.5 - w / 2) - tx.view(n, 1, 1)
    y = torch.arange(h, device=angle.device).view(1, h, 1) + (0.5 - h / 2) - ty.view(n, 1, 1)
    cols = (cos * x + sin * y).add_(w / 2).floor_().long()
    rows = (cos * y - sin * x).add_(h / 2).floor_().long()
    return rows, cols


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
    n, _, h, w = x.shape
    check_cutout_fits(side, h, w)
    top = draw.integers(h - side + 1).view(n, 1, 1)
    left = draw.integers(w - side + 1).view(n, 1, 1)
    rows = torch.arange(h, device=x.device).view(1, h, 1) - top  # (N, H, 1)
    cols = torch.arange(w, device=x.device).view(1, 1, w) - left  # (N, 1, W)
    square = (rows >= 0) & (rows < side) & (cols >= 0) & (cols < side)  # (N, H, W)
    return x.masked_fill(square.unsqueeze(1), 0)
