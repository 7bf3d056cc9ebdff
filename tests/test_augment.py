"""data.augment: the PIL and batch forms draw from the same distributions, option by option."""

import itertools
import math

import pytest
import torch
from omegaconf import OmegaConf
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as F

from cnntrain.core.errors import UserError
from cnntrain.data.augment.batch import batch_augment
from cnntrain.data.augment.draws import Draws
from cnntrain.data.augment.kernels import (
    JITTER_OPS,
    affine_sources,
    apply_in_order,
    clamp_to_image,
    draw_jitter,
    factor_range,
    gather_pixels,
)
from cnntrain.data.augment.options import JITTER, read_options
from cnntrain.data.augment.pil import AtImageSize, pil_augment

OFF = {
    "hflip": False,
    "crop_padding": 0,
    "crop_padding_mode": "constant",
    "rotation": 0,
    "translate": 0,
    "color_jitter": {"brightness": 0, "contrast": 0, "saturation": 0, "hue": 0},
    "cutout": 0,
    "policy": "none",
    "num_ops": 2,
    "magnitude": 9,
    "num_magnitude_bins": 31,
    "autoaugment_policy": "imagenet",
    "augmix": {"severity": 3, "mixture_width": 3, "chain_depth": -1, "alpha": 1.0},
    "random_erasing": 0,
    "mixup": 0,
    "cutmix": 0,
}
ARTICLE = {
    "hflip": True,
    "crop_padding": 4,
    "rotation": 15.0,
    "color_jitter": {"brightness": 0.2, "contrast": 0.2, "saturation": 0.2, "hue": 0.1},
}
KS = 1.95  # Kolmogorov–Smirnov: P(D > 1.95·√(1/n_eff)) ≈ 0.001 when both laws are the same
Z = 4.5  # a count this many standard deviations off has probability < 1e-5


def augment_cfg(**options) -> dict:
    """`data.augment` with every option off but `options` (color_jitter: only the keys given)."""
    jitter = {**OFF["color_jitter"], **options.pop("color_jitter", {})}
    return {**OFF, **options, "color_jitter": jitter}


def pil_form(cfg, images: torch.Tensor, seed: int = 0) -> torch.Tensor:
    """The DataLoader path, image by image: (N, C, H, W) uint8 → (N, C, H, W) float in [0, 1]."""
    transform = v2.Compose(pil_augment(read_options(cfg)))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        out = [transform(F.to_pil_image(img)) for img in images]
    return torch.stack(out).float() / 255


def batch_form(cfg, images: torch.Tensor, seed: int = 0) -> torch.Tensor:
    """The tensor path, the whole batch at once: same input and output as `pil_form`."""
    generator = torch.Generator().manual_seed(seed)
    return batch_augment(read_options(cfg))(images.float() / 255, generator)


FORMS = {"pil": pil_form, "batch": batch_form}


def coordinate_image(h: int, w: int) -> torch.Tensor:
    """(3, H, W) uint8 naming its pixels: red 7·(row + 1), green 7·(col + 1), blue 255; no zeros."""
    rows = torch.arange(h).view(h, 1).expand(h, w)
    cols = torch.arange(w).view(1, w).expand(h, w)
    return torch.stack([7 * (rows + 1), 7 * (cols + 1), torch.full((h, w), 255)]).to(torch.uint8)


def source_pixels(out: torch.Tensor):
    """Of augmented coordinate images (N, 3, H, W): the source row and col of each output pixel,
    (N, H, W) int64, and where it is an image pixel at all (not fill), (N, H, W) bool."""
    codes = (out * 255).round().long()
    return codes[:, 0] // 7 - 1, codes[:, 1] // 7 - 1, codes[:, 2] > 0


def repeat(image: torch.Tensor, n: int) -> torch.Tensor:
    return image.expand(n, *image.shape)


def chi2(counts: torch.Tensor, expected: torch.Tensor) -> float:
    return float(((counts - expected) ** 2 / expected).sum())


def chi2_uniform(counts: torch.Tensor) -> float:
    """Pearson's statistic of counts against equal expected counts."""
    return chi2(counts, torch.full(counts.shape, counts.sum() / len(counts), dtype=torch.float64))


def chi2_bound(dof: int) -> float:
    """Pearson's statistic stays below this but with probability < 1e-3 for dof ≥ 8."""
    return dof + 5 * math.sqrt(2 * dof)


def ks_uniform(sample: torch.Tensor, lo: float, hi: float) -> float:
    """Kolmogorov–Smirnov distance of a sample from U(lo, hi)."""
    s = sample.double().sort().values
    n = len(s)
    cdf = ((s - lo) / (hi - lo)).clamp(0, 1)
    i = torch.arange(1, n + 1, dtype=torch.float64)
    return float(torch.maximum(i / n - cdf, cdf - (i - 1) / n).max())


def ks_two(a: torch.Tensor, b: torch.Tensor) -> float:
    """Kolmogorov–Smirnov distance between two samples' empirical distributions."""
    a, b = a.double().sort().values, b.double().sort().values
    at = torch.cat([a, b])
    cdf_a = torch.searchsorted(a, at, right=True) / len(a)
    cdf_b = torch.searchsorted(b, at, right=True) / len(b)
    return float((cdf_a - cdf_b).abs().max())


# --- each option alone: both forms against the law torchvision draws from ------------------------


@pytest.mark.parametrize("form", FORMS)
def test_hflip_mirrors_half_of_the_images(form):
    n = 2000
    x = coordinate_image(6, 10)
    out = FORMS[form](augment_cfg(hflip=True), repeat(x, n))
    x = x.float() / 255
    flipped = (out == x.flip(-1)).flatten(1).all(1)
    assert (flipped | (out == x).flatten(1).all(1)).all()  # nothing else happens
    assert abs(flipped.double().mean() - 0.5) < Z * math.sqrt(0.25 / n)


@pytest.mark.parametrize("mode", ["constant", "reflect", "edge"])
@pytest.mark.parametrize("form", FORMS)
def test_crop_is_torchvisions_pad_and_crop_at_uniform_offsets(form, mode):
    n, p, (h, w) = 2000, 3, (12, 16)
    x = coordinate_image(h, w)
    out = FORMS[form](augment_cfg(crop_padding=p, crop_padding_mode=mode), repeat(x, n))
    rows, cols, _ = source_pixels(out)
    # The centre pixel always shows the image: it gives the crop's corner in the padded image.
    top, left = rows[:, h // 2, w // 2] - h // 2 + p, cols[:, h // 2, w // 2] - w // 2 + p
    assert top.min() >= 0 and left.min() >= 0 and top.max() <= 2 * p and left.max() <= 2 * p
    padded = F.pad(x, [p], padding_mode=mode)
    crops = [F.crop(padded, i, j, h, w) for i, j in zip(top.tolist(), left.tolist(), strict=True)]
    assert torch.equal((out * 255).round().to(torch.uint8), torch.stack(crops))
    positions = torch.bincount(top * (2 * p + 1) + left, minlength=(2 * p + 1) ** 2)
    assert chi2_uniform(positions) < chi2_bound((2 * p + 1) ** 2 - 1)


def rotation_angles(out: torch.Tensor) -> torch.Tensor:
    """(N,) degrees: per augmented coordinate image, the rotation about the centre that best maps
    its pixel centres onto their source pixel centres (least squares; > 0: counter-clockwise)."""
    rows, cols, inside = source_pixels(out)
    _, h, w = rows.shape
    y = torch.arange(h).view(1, h, 1) + 0.5 - h / 2
    x = torch.arange(w).view(1, 1, w) + 0.5 - w / 2
    ys, xs = rows + 0.5 - h / 2, cols + 0.5 - w / 2
    cross = ((x * ys - y * xs) * inside).sum((1, 2))
    dot = ((x * xs + y * ys) * inside).sum((1, 2))
    return torch.rad2deg(torch.atan2(cross, dot))


def test_rotation_angles_have_the_same_law_in_both_forms():
    n, degrees = 1500, 15.0
    images = repeat(coordinate_image(32, 32), n)
    cfg = augment_cfg(rotation=degrees)
    angles = {form: rotation_angles(augment(cfg, images)) for form, augment in FORMS.items()}
    assert ks_two(angles["pil"], angles["batch"]) < KS * math.sqrt(2 / n)
    for a in angles.values():
        # Nearest-neighbour turns of a 32×32 image under ~2° move (almost) no pixel, so the fit
        # shrinks small angles; from 5° on it is good to ~0.3°.
        assert degrees - 0.5 < a.abs().max() < degrees + 0.5
        assert abs((a.abs() > degrees / 2).double().mean() - 0.5) < Z * math.sqrt(0.25 / n)


def test_affine_map_is_torchvisions_affine_on_pil_images():
    h, w = 24, 32
    x = coordinate_image(h, w)
    angles = torch.linspace(-45, 45, 31)
    tx, ty = torch.arange(31) % 11 - 5, torch.arange(31) % 7 - 3  # px
    rows, cols, inside = clamp_to_image(*affine_sources(h, w, angles, tx, ty), h, w)
    out = gather_pixels(repeat(x, 31), rows, cols, inside)
    pil = F.to_pil_image(x)
    expected = [
        F.pil_to_tensor(F.affine(pil, angle=a, translate=[i, j], scale=1.0, shear=[0.0, 0.0]))
        for a, i, j in zip(angles.tolist(), tx.tolist(), ty.tolist(), strict=True)
    ]
    # Pillow runs NEAREST affines in 16.16 fixed point: a point within ~1e-4 px of a pixel edge
    # may land on the other side there, a handful of pixels in these 24k.
    differ = (out != torch.stack(expected)).any(1)
    assert differ.double().mean() < 1e-3


@pytest.mark.parametrize("form", FORMS)
def test_translation_moves_whole_images_by_rounded_uniform_shifts(form):
    n, size, fraction = 1500, 32, 0.125  # shifts round(U(-4, 4)) px
    out = FORMS[form](augment_cfg(translate=fraction), repeat(coordinate_image(size, size), n))
    rows, cols, inside = source_pixels(out)
    c = size // 2
    ty, tx = c - rows[:, c, c], c - cols[:, c, c]
    i = torch.arange(size)
    want_rows, want_cols = (
        i.view(1, -1, 1) - ty.view(-1, 1, 1),
        i.view(1, 1, -1) - tx.view(-1, 1, 1),
    )
    want_inside = (want_rows >= 0) & (want_rows < size) & (want_cols >= 0) & (want_cols < size)
    assert torch.equal(inside, want_inside)
    assert torch.equal(rows[inside], want_rows.expand_as(rows)[inside])
    assert torch.equal(cols[inside], want_cols.expand_as(cols)[inside])
    expected = n * torch.tensor([1, 2, 2, 2, 2, 2, 2, 2, 1], dtype=torch.float64) / 16  # −4 … 4
    for shift in (tx, ty):
        assert shift.abs().max() <= 4
        assert chi2(torch.bincount(shift + 4, minlength=9), expected) < chi2_bound(8)


def jitter_inputs(n: int) -> torch.Tensor:
    """(N, 3, 16, 16) uint8 pixels of strong colour (one channel 50, one 200, one between) that no
    article-strength jitter clips: every factor stays measurable."""
    g = torch.Generator().manual_seed(1)
    levels = torch.stack(
        [
            torch.full((n, 16, 16), 50),
            torch.full((n, 16, 16), 200),
            torch.randint(50, 201, (n, 16, 16), generator=g),
        ],
        1,
    )
    order = torch.rand(n, 3, 16, 16, generator=g).argsort(1)  # the channels, shuffled per pixel
    return levels.gather(1, order).to(torch.uint8)


def hue(x: torch.Tensor) -> torch.Tensor:
    """(N, H, W) HSV hue in turns of (N, 3, H, W) pixels of nonzero chroma."""
    r, g, b = x.unbind(1)
    v, chroma = x.amax(1), x.amax(1) - x.amin(1)
    sixths = torch.where(
        v == r, (g - b) / chroma, torch.where(v == g, 2 + (b - r) / chroma, 4 + (r - g) / chroma)
    )
    return sixths / 6


def colour_deviation(x: torch.Tensor) -> torch.Tensor:
    """(N, 3, H, W) distance of each pixel from its luma grey: what saturation scales."""
    luma = 0.2989 * x[:, 0] + 0.587 * x[:, 1] + 0.114 * x[:, 2]
    return x - luma.unsqueeze(1)


# What each op multiplies (or turns), measured per image from input x and output y.
JITTER_MEASURES = {
    "brightness": lambda x, y: y.mean((1, 2, 3)) / x.mean((1, 2, 3)),
    "contrast": lambda x, y: y.std((1, 2, 3)) / x.std((1, 2, 3)),
    "saturation": lambda x, y: (
        colour_deviation(y).flatten(1).norm(dim=1) / colour_deviation(x).flatten(1).norm(dim=1)
    ),
    "hue": lambda x, y: ((hue(y) - hue(x) + 0.5) % 1 - 0.5).mean((1, 2)),
}


@pytest.mark.parametrize("name", JITTER)
@pytest.mark.parametrize("form", FORMS)
def test_jitter_factors_are_uniform_over_colorjitters_range(form, name):
    n, strength = 1000, ARTICLE["color_jitter"][name]
    lo, hi = (-strength, strength) if name == "hue" else (1 - strength, 1 + strength)
    images = jitter_inputs(n)
    out = FORMS[form](augment_cfg(color_jitter={name: strength}), images)
    factors = JITTER_MEASURES[name](images.float() / 255, out)
    # The PIL path rounds to uint8 after each op and turns hue by whole 1/256 turns, never more
    # than 255/256 of the strength: off by up to ~0.5 % of the range.
    slack = 0.01 * (hi - lo)
    assert lo - slack < factors.min() and factors.max() < hi + slack
    assert ks_uniform(factors, lo, hi) < KS / math.sqrt(n)


def test_factor_ranges_are_colorjitters():
    assert factor_range("brightness", 0.2) == pytest.approx((0.8, 1.2))
    assert factor_range("contrast", 1.5) == (0.0, 2.5)  # floored at 0, as ColorJitter
    assert factor_range("hue", 0.1) == (-0.1, 0.1)


def test_jitter_draws_uniform_factors_and_every_order_equally_often():
    n = 4800
    strengths = ARTICLE["color_jitter"]
    jitter = [(JITTER_OPS[name], *factor_range(name, strengths[name])) for name in JITTER]
    draw = Draws(n, torch.Generator().manual_seed(0), torch.device("cpu"))
    factors, order = draw_jitter(jitter, draw)
    for (_, lo, hi), f in zip(jitter, factors, strict=True):
        assert ks_uniform(f, lo, hi) < KS / math.sqrt(n)
    is_order = (order.unsqueeze(1) == torch.tensor(list(itertools.permutations(range(4))))).all(2)
    assert (is_order.sum(1) == 1).all()  # (N, 24): each image runs the 4 ops, once each
    assert chi2_uniform(is_order.sum(0)) < chi2_bound(23)


@pytest.mark.parametrize("whole_batch", [False, True], ids=["subsets", "whole-batch"])
def test_jitter_ops_run_in_each_images_own_order_as_torchvision(whole_batch):
    orders = torch.tensor(list(itertools.permutations(range(4))))  # (24, 4): every order once
    x = torch.rand(24, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    factors = torch.stack([torch.linspace(0.4, 1.6, 24)] * 3 + [torch.linspace(-0.5, 0.5, 24)])
    out = apply_in_order(x, [JITTER_OPS[n] for n in JITTER], factors, orders, whole_batch)
    kernels = [F.adjust_brightness, F.adjust_contrast, F.adjust_saturation, F.adjust_hue]
    for i, order in enumerate(orders.tolist()):
        y = x[i]
        for j in order:
            y = kernels[j](y, float(factors[j, i]))  # clamped to [0, 1] after each
        torch.testing.assert_close(out[i], y, atol=1e-5, rtol=0)


@pytest.mark.parametrize("form", FORMS)
def test_cutout_zeroes_one_square_placed_uniformly_inside(form):
    n, (h, w), side = 2000, (12, 14), 5
    x = coordinate_image(h, w)  # no zero pixels
    out = FORMS[form](augment_cfg(cutout=side), repeat(x, n))
    zero = (out == 0).all(1)  # (N, H, W)
    assert torch.equal(zero, (out == 0).any(1))
    top, left = zero.any(2).int().argmax(1), zero.any(1).int().argmax(1)  # first zero row, col
    i = torch.arange(h).view(1, h, 1) - top.view(-1, 1, 1)
    j = torch.arange(w).view(1, 1, w) - left.view(-1, 1, 1)
    square = (i >= 0) & (i < side) & (j >= 0) & (j < side)  # (N, H, W)
    assert torch.equal(zero, square)
    keep = ~square.unsqueeze(1)
    assert torch.equal(out * keep, x.float() / 255 * keep)  # nothing else changes
    positions = torch.bincount(
        top * (w - side + 1) + left, minlength=(h - side + 1) * (w - side + 1)
    )
    assert chi2_uniform(positions) < chi2_bound((h - side + 1) * (w - side + 1) - 1)


def test_pil_form_is_torchvisions_pipeline_in_the_order_crop_flip_affine_jitter_cutout():
    steps = pil_augment(read_options(augment_cfg(**ARTICLE, cutout=8)))
    kinds = [
        AtImageSize,
        v2.RandomHorizontalFlip,
        v2.RandomRotation,
        v2.ColorJitter,
        v2.PILToTensor,
    ]
    assert [type(step) for step in steps] == [*kinds, AtImageSize]
    assert steps[2].degrees == [-15.0, 15.0]  # literally RandomRotation(15)
    jitter = steps[3]
    assert (jitter.brightness, jitter.hue) == ((0.8, 1.2), (-0.1, 0.1))
    affine = pil_augment(read_options(augment_cfg(rotation=15, translate=0.1)))[
        0
    ]  # one affine for both
    assert type(affine) is v2.RandomAffine
    assert (affine.degrees, affine.translate) == ([-15.0, 15.0], (0.1, 0.1))


# --- the article's pipeline: the two forms side by side ------------------------------------------


def smooth_images(n: int) -> torch.Tensor:
    """(N, 3, 32, 32) uint8 photo-like images: bilinear blow-ups of 4×4 noise in [60, 200]."""
    noise = torch.randint(60, 201, (n, 3, 4, 4), generator=torch.Generator().manual_seed(2))
    return F.resize(noise.float(), [32, 32], antialias=False).round().to(torch.uint8)


def test_article_pipeline_has_the_same_statistics_in_both_forms():
    n = 1500
    images = smooth_images(n)
    cfg = augment_cfg(**ARTICLE)
    pil, batch = pil_form(cfg, images), batch_form(cfg, images)
    for stat in (lambda y: y.mean((1, 2, 3)), lambda y: y.std((1, 2, 3))):
        assert ks_two(stat(pil), stat(batch)) < KS * math.sqrt(2 / n)
    # Fill (exact zeros: the jitter keeps these images above 0) from padding and rotation,
    # pixel by pixel: where and how often both forms show it.
    fill_pil, fill_batch = (pil == 0).all(1).double().mean(0), (batch == 0).all(1).double().mean(0)
    assert fill_pil[8:24, 8:24].sum() == 0 and fill_batch[8:24, 8:24].sum() == 0
    rate = (fill_pil + fill_batch) / 2
    assert ((fill_pil - fill_batch).abs() <= Z * (2 * rate * (1 - rate) / n).sqrt() + 1 / n).all()
    assert rate.max() > 0.3  # corners: the comparison has something to compare


# --- the batch form's contract -------------------------------------------------------------------


def test_same_seed_gives_the_same_batch_and_another_seed_another():
    aug = batch_augment(read_options(augment_cfg(**ARTICLE, translate=0.1, cutout=6)))
    x = torch.rand(64, 3, 32, 32)
    a, b = aug(x, torch.Generator().manual_seed(1)), aug(x, torch.Generator().manual_seed(1))
    c = aug(x, torch.Generator().manual_seed(2))
    assert torch.equal(a, b)
    assert not torch.equal(a[0], c[0])


def test_the_global_rng_is_not_used():
    aug = batch_augment(read_options(augment_cfg(**ARTICLE, translate=0.1, cutout=6)))
    x = torch.rand(8, 3, 32, 32)
    state = torch.random.get_rng_state()
    aug(x, torch.Generator().manual_seed(0))
    assert torch.equal(torch.random.get_rng_state(), state)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_shape_dtype_and_range_are_kept(dtype):
    aug = batch_augment(read_options(augment_cfg(**ARTICLE, translate=0.1, cutout=6)))
    x = torch.rand(8, 3, 20, 24, dtype=dtype)
    out = aug(x, torch.Generator().manual_seed(0))
    assert (out.shape, out.dtype, out.device) == (x.shape, dtype, x.device)
    assert out.min() >= 0 and out.max() <= 1


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU")
def test_cuda_batches_stay_on_the_gpu_and_repeat_with_the_seed():
    aug = batch_augment(read_options(augment_cfg(**ARTICLE, translate=0.1, cutout=6)))
    x = torch.rand(64, 3, 32, 32, device="cuda")
    a, b = (aug(x, torch.Generator("cuda").manual_seed(0)) for _ in range(2))
    assert (a.shape, a.dtype, a.device) == (x.shape, x.dtype, x.device)
    assert torch.equal(a, b)


def test_channels_last_batches_give_the_same_pixels_in_their_layout():
    aug = batch_augment(read_options(augment_cfg(**ARTICLE, cutout=6)))
    x = torch.rand(16, 3, 32, 32)
    out = aug(x, torch.Generator().manual_seed(0))
    out_cl = aug(x.contiguous(memory_format=torch.channels_last), torch.Generator().manual_seed(0))
    assert out_cl.is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(out, out_cl)


@pytest.mark.parametrize("form", FORMS)
def test_grayscale_images_ignore_saturation_and_hue(form):
    images = torch.randint(0, 256, (32, 1, 16, 16), dtype=torch.uint8)
    out = FORMS[form](augment_cfg(color_jitter={"saturation": 0.5, "hue": 0.5}), images)
    assert torch.equal(out, images.float() / 255)
    out = FORMS[form](augment_cfg(**ARTICLE, cutout=4), images)
    assert out.shape == images.shape and not torch.equal(out, images.float() / 255)


# --- options: validation, on and off -------------------------------------------------------------


PIXELS = "a whole number of px ≥ 0 (0 = off)"
DEGREES = "degrees in [0, 180] (0 = off)"
FRACTION = "a fraction of the side in [0, 1] (0 = off)"
STRENGTH = "a number ≥ 0 (0 = off)"
HUE = "a number in [0, 0.5] (0 = off)"


@pytest.mark.parametrize(
    "key, value, allowed",
    [
        ("hflip", "yes", "true, false or alternate"),
        ("crop_padding", -1, PIXELS),
        ("crop_padding", 2.5, PIXELS),
        ("crop_padding_mode", "wrap", "one of constant, reflect, edge"),
        ("rotation", -5, DEGREES),
        ("rotation", 200.0, DEGREES),
        ("translate", -0.1, FRACTION),
        ("translate", 1.5, FRACTION),
        ("color_jitter.brightness", -0.2, STRENGTH),
        ("color_jitter.contrast", -1, STRENGTH),
        ("color_jitter.saturation", -0.5, STRENGTH),
        ("color_jitter.hue", 0.6, HUE),
        ("color_jitter.hue", -0.1, HUE),
        ("cutout", -3, PIXELS),
    ],
)
def test_invalid_values_are_refused_naming_the_key(key, value, allowed):
    group, _, name = key.rpartition(".")
    cfg = augment_cfg(**({group: {name: value}} if group else {name: value}))
    with pytest.raises(ValueError) as raised:
        read_options(cfg)  # the one parse, before either data path builds anything
    assert str(raised.value) == f"data.augment.{key}={value!r} is not valid; use {allowed}"
    assert isinstance(raised.value, UserError)  # the CLI prints it as one line


@pytest.mark.parametrize("form", FORMS)
def test_cutout_must_fit_inside_the_image(form):
    images = torch.ones(2, 3, 12, 16, dtype=torch.uint8)
    with pytest.raises(ValueError) as raised:
        FORMS[form](augment_cfg(cutout=12), images)
    assert str(raised.value) == (
        "data.augment.cutout=12 is not valid for 12×16 images; "
        "use a side smaller than 12 px (0 = off)"
    )


@pytest.mark.parametrize(
    "options",
    [
        {"hflip": True},
        {"crop_padding": 2},
        {"rotation": 5},
        {"translate": 0.1},
        *({"color_jitter": {name: 0.1}} for name in JITTER),
        {"cutout": 4},
    ],
)
def test_any_option_makes_the_pipeline_random(options):
    options = read_options(OmegaConf.create(augment_cfg(**options)))
    assert options.on
    assert batch_augment(options) is not None


def test_all_options_off_is_no_augmentation():
    options = read_options(OmegaConf.create(augment_cfg(crop_padding_mode="reflect")))
    assert not options.on  # a padding mode alone is not a crop
    assert batch_augment(options) is None
