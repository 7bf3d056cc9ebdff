"""`data.augment`, read and checked once into Options: every choice of both data paths, with the
laws both follow (random erasing's area and aspect)."""

from dataclasses import dataclass

from omegaconf import ListConfig
from torchvision.transforms import v2

from cnntrain.core import checks
from cnntrain.core.checks import boolean, integer, number
from cnntrain.core.errors import UserError

PADDING_MODES = ("constant", "reflect", "edge")  # torchvision's padding_mode names
JITTER = ("brightness", "contrast", "saturation", "hue")  # ColorJitter's arguments, in its order
PIXELS = "a whole number of px ≥ 0 (0 = off)"
POLICIES = ("none", "randaugment", "trivialaugment", "autoaugment", "augmix")
AUTOAUGMENT_POLICIES = tuple(p.value for p in v2.AutoAugmentPolicy)  # imagenet, cifar10, svhn
# RandomErasing's defaults: the erased area as a fraction of the image, its aspect ratio (h / w).
ERASING_SCALE, ERASING_RATIO = (0.02, 0.33), (0.3, 3.3)
ERASING_TRIES = 10  # RandomErasing draws up to 10 rectangles and erases the first that fits
RESIZED_CROP_TRIES = 10  # RandomResizedCrop's: boxes drawn before its centred fallback


@dataclass(frozen=True)
class ResizedCrop:
    """`data.augment.random_resized_crop`, on: RandomResizedCrop's law over the stored region."""

    scale: tuple[float, float]  # the crop's area as a fraction of the region's ~ U(scale)
    ratio: tuple[float, float]  # its aspect ratio (width / height): log ~ U(log ratio)


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
    resized_crop: ResizedCrop | None = None  # first of all; None = off

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
        extra = self.policy != "none" or self.random_erasing or self.resized_crop
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
        resized_crop=read_resized_crop(cfg.get("random_resized_crop")),
    )


def read_resized_crop(cfg) -> ResizedCrop | None:
    """`data.augment.random_resized_crop` (absent, as in older configs: off), checked."""
    if cfg is None:
        return None
    key = "random_resized_crop"
    check(f"{key}.enabled", cfg["enabled"], boolean, "true or false")
    scale, ratio = cfg["scale"], cfg["ratio"]
    check(f"{key}.scale", scale, ordered_pair(number(0, 1, lo_open=True)),
          "[lo, hi], fractions of the area with 0 < lo ≤ hi ≤ 1")  # fmt: skip
    check(f"{key}.ratio", ratio, ordered_pair(number(0, lo_open=True)),
          "[lo, hi], aspect ratios (width / height) with 0 < lo ≤ hi")  # fmt: skip
    if not cfg["enabled"]:
        return None
    return ResizedCrop((float(scale[0]), float(scale[1])), (float(ratio[0]), float(ratio[1])))


def ordered_pair(valid):
    """Two values, each `valid`, the first not above the second."""

    def pair(v) -> bool:
        return (
            isinstance(v, list | tuple | ListConfig)
            and len(v) == 2
            and all(map(valid, v))
            and v[0] <= v[1]
        )

    return pair


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
