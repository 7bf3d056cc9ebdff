"""Training-set augmentation (`data.augment`): per PIL image (DataLoader path) or per batch;
and MixUp / CutMix on device batches, after either path (BatchMix)."""

import functools
import math
from dataclasses import dataclass

import torch
from torchvision.transforms import v2

from cnntrain.core import checks
from cnntrain.core.checks import integer, number
from cnntrain.core.errors import UserError
from cnntrain.core.seeds import derived_seed

PADDING_MODES = ("constant", "reflect", "edge")  # torchvision's padding_mode names
JITTER = ("brightness", "contrast", "saturation", "hue")  # ColorJitter's arguments, in its order
GRAY = (0.2989, 0.587, 0.114)  # ITU-R 601 luma weights, as torchvision's rgb_to_grayscale
PIXELS = "a whole number of px ≥ 0 (0 = off)"
POLICIES = ("none", "randaugment", "trivialaugment", "autoaugment", "augmix")
AUTOAUGMENT_POLICIES = tuple(p.value for p in v2.AutoAugmentPolicy)  # imagenet, cifar10, svhn
# RandomErasing's defaults: the erased area as a fraction of the image, its aspect ratio (h / w).
ERASING_SCALE, ERASING_RATIO = (0.02, 0.33), (0.3, 3.3)
ERASING_TRIES = 10  # RandomErasing draws up to 10 rectangles and erases the first that fits
GAMMA_TRIES = 8  # candidates per Gamma draw (Draws.gamma)
MIX_STREAM = 1  # salts BatchMix's seeds apart from the tensor path's per-batch augmentation seeds
FLIP_STREAM = 2  # salts AlternatingFlip's draw apart from the others


class AugmentError(UserError, ValueError):
    """A bad `data.augment` value: a UserError for the CLI, a ValueError for any other caller."""


@dataclass(frozen=True)
class Options:
    """`data.augment`, checked: geometry in px and degrees, jitter strengths as ColorJitter's."""

    hflip: bool | str  # True: mirror with p=0.5; "alternate": AlternatingFlip (the loaders')
    crop_padding: int  # px on each side; 0 = off
    crop_padding_mode: str
    rotation: float  # degrees; angle ~ U(-rotation, rotation)
    translate: float  # fraction of the side; shift ~ U(-translate, translate) × side
    jitter: dict  # {"brightness": strength, ...}: the ColorJitter options that are on (> 0)
    cutout: int  # side of the zeroed square in px; 0 = off
    policy: str  # one of POLICIES
    num_ops: int  # randaugment: ops per image
    magnitude: int  # randaugment: the magnitude bin of every op
    num_magnitude_bins: int  # randaugment, trivialaugment
    autoaugment_policy: str  # autoaugment: one of AUTOAUGMENT_POLICIES
    augmix: dict  # augmix: AugMix's severity, mixture_width, chain_depth, alpha
    random_erasing: float  # probability per image; 0 = off
    mixup: float  # Beta(α, α) of MixUp on training batches; 0 = off
    cutmix: float  # Beta(α, α) of CutMix; 0 = off

    @property
    def affine(self) -> bool:
        return bool(self.rotation or self.translate)

    @property
    def random_flip(self) -> bool:
        return self.hflip is True

    @property
    def moves_pixels(self) -> bool:
        return bool(self.crop_padding or self.random_flip or self.affine)

    @property
    def on(self) -> bool:
        """Does any per-image option change the images? (MixUp / CutMix act on batches later.)"""
        extra = self.policy != "none" or self.random_erasing
        return bool(self.moves_pixels or self.jitter or self.cutout or extra)

    @property
    def mixes(self) -> bool:
        return bool(self.mixup or self.cutmix)


def read_options(cfg) -> Options:
    """`cfg` (a DictConfig or dict shaped like conf/config.yaml's data.augment), validated."""
    jitter = cfg["color_jitter"]
    check(
        "hflip",
        cfg["hflip"],
        lambda v: isinstance(v, bool) or v == "alternate",
        "true, false or alternate",
    )
    check("crop_padding", cfg["crop_padding"], integer(0), PIXELS)
    modes = "one of " + ", ".join(PADDING_MODES)
    check("crop_padding_mode", cfg["crop_padding_mode"], PADDING_MODES.__contains__, modes)
    check("rotation", cfg["rotation"], number(0, 180), "degrees in [0, 180] (0 = off)")
    check("translate", cfg["translate"], number(0, 1), "a fraction of the side in [0, 1] (0 = off)")
    for name in ("brightness", "contrast", "saturation"):
        check(f"color_jitter.{name}", jitter[name], number(0), "a number ≥ 0 (0 = off)")
    # ColorJitter's bound: a hue turn of ±0.5 already reaches every hue.
    check("color_jitter.hue", jitter["hue"], number(0, 0.5), "a number in [0, 0.5] (0 = off)")
    check("cutout", cfg["cutout"], integer(0), PIXELS)
    read_policy_options(cfg)
    check(
        "random_erasing", cfg["random_erasing"], number(0, 1), "a probability in [0, 1] (0 = off)"
    )
    for key in ("mixup", "cutmix"):
        check(key, cfg[key], number(0), "a Beta concentration α ≥ 0 (0 = off)")
    augmix = cfg["augmix"]
    return Options(
        hflip=cfg["hflip"],
        crop_padding=cfg["crop_padding"],
        crop_padding_mode=cfg["crop_padding_mode"],
        rotation=float(cfg["rotation"]),
        translate=float(cfg["translate"]),
        jitter={name: float(jitter[name]) for name in JITTER if jitter[name] > 0},
        cutout=cfg["cutout"],
        policy=cfg["policy"],
        num_ops=cfg["num_ops"],
        magnitude=cfg["magnitude"],
        num_magnitude_bins=cfg["num_magnitude_bins"],
        autoaugment_policy=cfg["autoaugment_policy"],
        augmix={key: augmix[key] for key in ("severity", "mixture_width", "chain_depth")}
        | {"alpha": float(augmix["alpha"])},
        random_erasing=float(cfg["random_erasing"]),
        mixup=float(cfg["mixup"]),
        cutmix=float(cfg["cutmix"]),
    )


def read_policy_options(cfg) -> None:
    """Refuse bad `data.augment.policy` options: those torchvision's policies would refuse, and
    a magnitude bin outside the table."""
    check("policy", cfg["policy"], POLICIES.__contains__, "one of " + ", ".join(POLICIES))
    check("num_ops", cfg["num_ops"], integer(0), "a whole number of ops ≥ 0")
    bins = cfg["num_magnitude_bins"]
    check("num_magnitude_bins", bins, integer(2), "a whole number of bins ≥ 2")
    check("magnitude", cfg["magnitude"], integer(0, bins - 1),
          f"a bin in 0..{bins - 1} (num_magnitude_bins - 1)")  # fmt: skip
    names = "one of " + ", ".join(AUTOAUGMENT_POLICIES)
    check("autoaugment_policy", cfg["autoaugment_policy"], AUTOAUGMENT_POLICIES.__contains__, names)
    augmix = cfg["augmix"]
    depth = lambda v: v == -1 or integer(1)(v)  # noqa: E731
    for key, valid, allowed in [
        ("severity", integer(1, 10), "a whole number in 1..10"),
        ("mixture_width", integer(1), "a whole number of chains ≥ 1"),
        ("chain_depth", depth, "-1 (1 to 3 ops per chain, drawn) or a whole number ≥ 1"),
        ("alpha", number(0, lo_open=True), "a concentration > 0"),
    ]:
        check(f"augmix.{key}", augmix[key], valid, allowed)


def check(key: str, value, valid, allowed: str) -> None:
    """`data.augment.KEY` refused as an AugmentError unless `valid(value)`."""
    checks.check(f"data.augment.{key}", value, valid, allowed, AugmentError)


def check_cutout_fits(side: int, height: int, width: int) -> None:
    """RandomErasing only places a square strictly smaller than the image (else it silently
    erases nothing), so both paths refuse the others."""
    if side >= min(height, width):
        raise AugmentError(
            f"data.augment.cutout={side} is not valid for {height}×{width} images; "
            f"use a side smaller than {min(height, width)} px (0 = off)"
        )


# --- Alternating flip: both paths, per image and epoch, before the other options ---------------


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


def policy_transform(o: Options) -> v2.Transform | None:
    """torchvision's own transform for `data.augment.policy`, or None.

    AugMix's geometry is nearest-neighbour here (torchvision's default for it is bilinear; the
    other policies' default is nearest), so that both data paths run the same kernels."""
    if o.policy == "randaugment":
        return v2.RandAugment(num_ops=o.num_ops, magnitude=o.magnitude,
                              num_magnitude_bins=o.num_magnitude_bins)  # fmt: skip
    if o.policy == "trivialaugment":
        return v2.TrivialAugmentWide(num_magnitude_bins=o.num_magnitude_bins)
    if o.policy == "autoaugment":
        return v2.AutoAugment(v2.AutoAugmentPolicy(o.autoaugment_policy))
    if o.policy == "augmix":
        return v2.AugMix(**o.augmix, interpolation=v2.InterpolationMode.NEAREST)
    return None


def pil_augment(o: Options) -> list:
    """The transforms from a PIL image to an augmented (C, H, W) uint8 tensor, to compose;
    they draw from torch's global RNG. Order: crop → flip → rotation/translation → colour jitter
    → policy → to tensor → cutout → random erasing (torchvision's classification reference:
    crop/flip, policy, to tensor, erasing)."""
    steps = []
    if o.crop_padding:
        crop = functools.partial(
            random_crop, padding=o.crop_padding, padding_mode=o.crop_padding_mode
        )
        steps.append(AtImageSize(crop))
    if o.random_flip:
        steps.append(v2.RandomHorizontalFlip(p=0.5))
    if o.translate:
        steps.append(v2.RandomAffine(degrees=o.rotation, translate=(o.translate, o.translate)))
    elif o.rotation:
        steps.append(v2.RandomRotation(o.rotation))
    if o.jitter:
        steps.append(v2.ColorJitter(**o.jitter))
    policy = policy_transform(o)
    if policy is not None:
        steps.append(policy)
    steps.append(v2.PILToTensor())
    if o.cutout:
        steps.append(AtImageSize(functools.partial(random_erasing, side=o.cutout)))
    if o.random_erasing:
        steps.append(v2.RandomErasing(p=o.random_erasing, scale=ERASING_SCALE, ratio=ERASING_RATIO,
                                      value=0))  # fmt: skip
    return steps


def pil_pipeline(options: Options) -> v2.Compose:
    """`pil_augment` composed: PIL image → augmented (C, H, W) uint8 tensor."""
    return v2.Compose(pil_augment(options))


# --- Tensor path: the same distributions, drawn per image, on a whole batch ---------------------


def batch_augment(options: Options) -> "BatchAugment | None":
    """The batch form of `options`, or None when every option is off."""
    if not options.on:
        return None
    from cnntrain.data.policies import batch_policy  # policies.py builds on this module's kernels

    return BatchAugment(options, batch_policy(options))


class BatchAugment:
    """Augments a float batch (N, C, H, W) in [0, 1] on any device, every parameter drawn per image
    from `generator` (on the batch's device) only: same generator state, same output.

    Order as the PIL pipeline: crop → hflip → rotation/translation → colour jitter → policy →
    cutout → random erasing.
    """

    def __init__(self, options: Options, policy=None):
        self.o = options
        self.jitter = [
            (JITTER_OPS[name], *factor_range(name, s)) for name, s in options.jitter.items()
        ]
        self.policy = policy  # policy(x, draw) → x (policies.py), or None

    def __call__(self, x: torch.Tensor, generator: "torch.Generator | EpochDraws") -> torch.Tensor:
        n, _, h, w = x.shape
        draw = generator if isinstance(generator, EpochDraws) else Draws(n, generator, x.device)
        layout = torch.channels_last if is_channels_last(x) else torch.contiguous_format
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

    def below(self, high: torch.Tensor) -> torch.Tensor:
        """(N,) int64, image i's uniform in [0, high[i]): a bound per image."""
        return (self.uniform(0, 1) * high).floor_().long().clamp_(max=high - 1)

    def gamma(self, alpha: float, *trailing: int) -> torch.Tensor:
        """(N, *trailing) float32 ~ Gamma(alpha, 1), from uniforms only: Marsaglia and Tsang's
        method with GAMMA_TRIES candidates per number, the first accepted kept (each is accepted
        with probability > 0.95, so all are rejected with probability < 1e-10); alpha < 1 as
        Gamma(alpha + 1)·U^(1/alpha)."""
        a = alpha + 1 if alpha < 1 else alpha
        d = a - 1 / 3
        c = 1 / math.sqrt(9 * d)
        u1, u2, u3 = (self.uniform(0, 1, *trailing, GAMMA_TRIES) for _ in range(3))
        z = (-2 * torch.log1p(-u1)).sqrt() * torch.cos(2 * math.pi * u2)  # Box–Muller: N(0, 1)
        v = (1 + c * z) ** 3
        accept = (v > 0) & (
            torch.log1p(-u3) < 0.5 * z * z + d - d * v + d * v.clamp(min=1e-30).log()
        )
        first = accept.int().argmax(-1, keepdim=True)  # the first accepted candidate (0 if none)
        g = (d * v).gather(-1, first).squeeze(-1).clamp_(min=1e-30)
        if alpha < 1:
            g = g * (1 - self.uniform(0, 1, *trailing)).pow(1 / alpha)
        return g

    def dirichlet(self, alpha: float, k: int) -> torch.Tensor:
        """(N, k) float32, each row ~ Dirichlet(alpha, …, alpha): normalized Gamma draws."""
        g = self.gamma(alpha, k)
        return g / g.sum(1, keepdim=True)


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

    # A bound per image (n,) is the batch's, not the table's: Draws' own method, reading a table
    # of uniforms through this class.
    below = Draws.below

    def __getattr__(self, name: str):
        method = getattr(Draws, name)

        def draw(*args):
            k, self.calls = self.calls, self.calls + 1
            if k not in self.tables:
                generator = torch.Generator(self.device).manual_seed(
                    derived_seed(self.seed, self.epoch, k)
                )
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


# --- MixUp / CutMix: on device batches, after either data path ----------------------------------


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
