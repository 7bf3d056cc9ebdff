"""The DataLoader path's augmentation: torchvision's transforms on one PIL image, in the order of
torchvision's classification reference."""

import functools

from torchvision.transforms import v2

from cnntrain.data.augment.options import ERASING_RATIO, ERASING_SCALE, Options, check_cutout_fits


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


def resized_crop(height: int, width: int, o: Options) -> v2.RandomResizedCrop:
    """RandomResizedCrop to height × width px: bilinear, antialiased, as the tensor path's."""
    crop = o.resized_crop
    bilinear = v2.InterpolationMode.BILINEAR
    return v2.RandomResizedCrop((height, width), crop.scale, crop.ratio, bilinear, antialias=True)


def pil_augment(o: Options, size: tuple[int, int] | None = None) -> list:
    """The transforms from a PIL image to an augmented (C, H, W) uint8 tensor, to compose;
    they draw from torch's global RNG. `size`: the (H, W) the random resized crop outputs (None:
    the image's own). Order: resized crop → crop → flip → rotation/translation → colour jitter
    → policy → to tensor → cutout → random erasing (torchvision's classification reference:
    crop/flip, policy, to tensor, erasing)."""
    steps = []
    if o.resized_crop:
        make = functools.partial(resized_crop, o=o)
        steps.append(make(*size) if size else AtImageSize(make))
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


def pil_pipeline(options: Options, size: tuple[int, int] | None = None) -> v2.Compose:
    """`pil_augment` composed: PIL image → augmented (C, H, W) uint8 tensor."""
    return v2.Compose(pil_augment(options, size))
