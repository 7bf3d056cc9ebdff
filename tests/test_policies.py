"""data.augment.policy and random_erasing: the tensor path's per-image draws follow the laws
torchvision's RandAugment, TrivialAugmentWide, AutoAugment, AugMix and RandomErasing draw from,
each op on a batch is torchvision's op on each image, and both paths give the same statistics."""

import math

import pytest
import torch
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as F

from cnntrain.core.errors import UserError
from cnntrain.data.augment.draws import Draws
from cnntrain.data.augment.options import read_options
from cnntrain.data.augment.pil import pil_augment
from cnntrain.data.augment.policies import (
    OPS,
    AugMix,
    AutoAugment,
    RandAugment,
    Space,
    TrivialAugment,
    run_op,
)
from tests.test_augment import (
    KS,
    Z,
    augment_cfg,
    batch_form,
    chi2,
    chi2_bound,
    chi2_uniform,
    coordinate_image,
    ks_two,
    ks_uniform,
    pil_form,
    repeat,
    smooth_images,
)

CPU = torch.device("cpu")
NEAREST = v2.InterpolationMode.NEAREST


@pytest.fixture
def one_thread():
    """As in a DataLoader worker: torchvision's per-image tensor ops (AugMix's) on one thread,
    not a pool's start-up per tiny op."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def draws(n: int, seed: int = 0) -> Draws:
    return Draws(n, torch.Generator().manual_seed(seed), CPU)


def textured_images(n: int) -> torch.Tensor:
    """(N, 3, 32, 32) uint8: smooth images with a noisy corner (Sharpness and Equalize have
    edges and a wide histogram to work on)."""
    images = smooth_images(n).clone()
    g = torch.Generator().manual_seed(3)
    images[:, :, :6, :6] = torch.randint(0, 256, (n, 3, 6, 6), generator=g).to(torch.uint8)
    return images


# --- each op: the batch kernel against torchvision's op as its policies apply it ---------------

TRIVIAL = Space.of(v2.TrivialAugmentWide._AUGMENTATION_SPACE, 31, 32, 32, CPU)
# Largest difference from torchvision on PIL images, in uint8 levels. Pillow rounds where the
# float kernels do not: blends truncate (Brightness, Color, Contrast, Sharpness), Color and
# Contrast take an integer luma, AutoContrast truncates its scaled levels.
LEVELS_OFF = {"Brightness": 1, "AutoContrast": 1, "Color": 1.5, "Contrast": 1.5, "Sharpness": 1.5}
# The float kernels torchvision runs on tensors, which the batch kernels equal to float rounding.
TENSOR_KERNELS = {
    "Brightness": lambda x, m: F.adjust_brightness(x, 1 + m),
    "Color": lambda x, m: F.adjust_saturation(x, 1 + m),
    "Contrast": lambda x, m: F.adjust_contrast(x, 1 + m),
    "Sharpness": lambda x, m: F.adjust_sharpness(x, 1 + m),
    "AutoContrast": lambda x, m: F.autocontrast(x),
}


def torchvision_op(image: torch.Tensor, name: str, magnitude: float) -> torch.Tensor:
    """What the DataLoader path's policy does to one uint8 image: its own op dispatch on PIL."""
    policy = v2.TrivialAugmentWide()
    out = policy._apply_image_or_video_transform(
        F.to_pil_image(image), name, magnitude, interpolation=NEAREST, fill={}
    )
    return F.pil_to_tensor(out)


@pytest.mark.parametrize("name", [*TRIVIAL.names, "Invert"])
def test_each_op_on_a_batch_is_torchvisions_op_on_each_image(name):
    """Every bin of TrivialAugmentWide's table (its widest), both signs, one per image."""
    images = textured_images(31)
    k = TRIVIAL.names.index(name) if name in TRIVIAL.names else None
    magnitudes = TRIVIAL.magnitudes[k] if k is not None else torch.zeros(31)
    if k is not None and TRIVIAL.signed[k]:
        magnitudes = magnitudes * torch.where(torch.arange(31) % 2 == 0, 1.0, -1.0)
    out = OPS[name](images.float() / 255, magnitudes.view(-1, 1, 1, 1))
    expected = torch.stack(
        [torchvision_op(i, name, float(m)) for i, m in zip(images, magnitudes, strict=True)]
    )
    levels_off = (out * 255 - expected.float()).abs().amax(1)  # (N, H, W)
    if name == "Rotate":
        # Pillow turns in fixed point: a point within ~1e-4 px of a pixel edge may land across it.
        assert (levels_off > 0.01).double().mean() < 2e-3
    else:
        assert levels_off.max() <= LEVELS_OFF.get(name, 0) + 1e-3  # exact for the others
    if name in TENSOR_KERNELS:
        x = images.float() / 255
        tensor = [TENSOR_KERNELS[name](x[i], float(m)) for i, m in enumerate(magnitudes)]
        torch.testing.assert_close(out, torch.stack(tensor), atol=1e-5, rtol=0)


def test_posterize_keeps_the_high_bits_down_to_zero_bits():
    """AugMix's table reaches 0 bits (all black), which only torchvision's tensor kernel takes."""
    images = textured_images(9)
    bits = torch.arange(9)
    out = OPS["Posterize"](images.float() / 255, bits.view(-1, 1, 1, 1))
    expected = torch.stack(
        [F.posterize(img, bits=int(b)) for img, b in zip(images, bits, strict=True)]
    )
    assert torch.equal((out * 255).round().to(torch.uint8), expected)


@pytest.mark.parametrize("name", ["Identity", "Rotate", "Contrast", "Equalize", "AutoContrast"])
def test_whole_batch_and_per_op_subsets_give_the_same_images(name):
    """The GPU form (every op on every image, each keeping its own) equals the CPU form."""
    x = textured_images(16).float() / 255
    space = TRIVIAL
    op = torch.arange(16) % len(space.names)
    op[::2] = space.names.index(name)
    magnitude = space.magnitudes[op, torch.arange(16) % 31]
    subsets = run_op(x, space, op, magnitude, whole_batch=False)
    whole = run_op(x, space, op, magnitude, whole_batch=True)
    torch.testing.assert_close(subsets, whole, atol=1e-6, rtol=0)


# --- the draws: per image, with torchvision's laws ----------------------------------------------


def signs_are_fair(op, magnitude, space: Space, n: int) -> None:
    signed = space.signed[op] & (magnitude != 0)  # bin 0 of some ops is 0: no sign to see
    negative = (magnitude < 0) & signed
    assert not ((magnitude < 0) & ~space.signed[op]).any()
    count = signed.sum()
    assert abs(negative.sum() / count - 0.5) < Z * math.sqrt(0.25 / count)


def test_randaugment_draws_each_op_uniformly_per_image_at_its_fixed_magnitude():
    n = 4200
    policy = RandAugment(num_ops=2, magnitude=9, num_magnitude_bins=31)
    space = policy.space(32, 32, CPU)
    slots = policy.draw_ops(draws(n), space)
    assert len(slots) == 2
    for op, magnitude in slots:
        assert chi2_uniform(torch.bincount(op, minlength=14)) < chi2_bound(13)
        assert torch.equal(magnitude.abs(), space.magnitudes[op, 9].abs())
        signs_are_fair(op, magnitude, space, n)
    first, second = (op for op, _ in slots)
    assert (first != second).any()  # two independent draws per image
    assert len(first[:64].unique()) > 5  # one batch: many ops, not one draw for all


def test_randaugment_magnitudes_are_torchvisions_table():
    space = RandAugment(2, 9, 31).space(32, 32, CPU)
    i = space.names.index
    assert space.magnitudes[i("Rotate"), 9] == pytest.approx(9.0)  # 30° × 9/30
    assert space.magnitudes[i("TranslateX"), 9] == pytest.approx(150 / 331 * 32 * 0.3)
    assert space.magnitudes[i("Posterize"), 30] == 4 and space.magnitudes[i("Solarize"), 0] == 1


def test_trivialaugment_draws_op_and_bin_uniformly_per_image():
    n = 6200
    policy = TrivialAugment(num_magnitude_bins=31)
    space = policy.space(32, 32, CPU)
    ((op, magnitude),) = policy.draw_ops(draws(n), space)
    assert chi2_uniform(torch.bincount(op, minlength=14)) < chi2_bound(13)
    signs_are_fair(op, magnitude, space, n)
    rotate = op == space.names.index("Rotate")  # 0°, 4.5°, …, 135°: the bin is the angle / 4.5
    bins = (magnitude[rotate].abs() / 4.5).round().long()
    assert torch.equal(magnitude[rotate].abs(), space.magnitudes[space.names.index("Rotate"), bins])
    assert chi2_uniform(torch.bincount(bins, minlength=31)) < chi2_bound(30)


@pytest.mark.parametrize("policy", ["cifar10", "imagenet", "svhn"])
def test_autoaugment_runs_each_sub_policys_ops_with_their_probabilities(policy):
    n = 10_000
    auto = AutoAugment(policy)
    space = auto.space(32, 32, CPU)
    slots = auto.draw_ops(draws(n), space)
    sub_policies = v2.AutoAugment(v2.AutoAugmentPolicy(policy))._policies
    for s, (op, magnitude) in enumerate(slots):
        # P(op) = mean over the 25 sub-policies of p·[its op] (Identity: the skipped ones).
        expected = torch.zeros(len(space.names), dtype=torch.float64)
        for sub in sub_policies:
            name, p, _ = sub[s]
            expected[space.names.index(name)] += p / len(sub_policies)
            expected[space.identity] += (1 - p) / len(sub_policies)
        seen = expected > 0
        counts = torch.bincount(op, minlength=len(space.names)).double()
        assert (counts[~seen] == 0).all()
        assert chi2(counts[seen], n * expected[seen]) < chi2_bound(int(seen.sum()) - 1)
        ran = op != space.identity
        signs_are_fair(op[ran], magnitude[ran], space, int(ran.sum()))


def gamma_cdf(alpha: float, x: torch.Tensor) -> torch.Tensor:
    return torch.special.gammainc(torch.tensor(alpha, dtype=torch.float64), x.double())


@pytest.mark.parametrize("alpha", [0.3, 1.0, 4.0])
def test_gamma_draws_follow_the_gamma_law(alpha):
    n = 5000
    g = draws(n).gamma(alpha)
    assert g.shape == (n,) and (g > 0).all()
    assert ks_uniform(gamma_cdf(alpha, g), 0, 1) < KS / math.sqrt(n)  # CDF(sample) ~ U(0, 1)


def test_augmix_mixes_with_beta_and_dirichlet_weights_over_uniform_chains():
    n = 6000
    augmix = AugMix(severity=3, mixture_width=3, chain_depth=-1, alpha=1.0)
    space = Space.of(AugMix.table, 10, 32, 32, CPU)
    own, weights, chains = augmix.draw_chains(draws(n), space)
    assert torch.allclose(own + weights.sum(1), torch.ones(n))
    assert ks_uniform(own, 0, 1) < KS / math.sqrt(n)  # Beta(1, 1)
    # Each chain's share of the augmented part is a Dirichlet(1, 1, 1) marginal: Beta(1, 2),
    # whose CDF is 1 - (1 - x)².
    share = weights[:, 0] / (1 - own)
    assert ks_uniform(1 - (1 - share) ** 2, 0, 1) < KS / math.sqrt(n)
    for slots in chains:
        assert len(slots) == 3
        real = [op != space.identity for op, _ in slots]
        depth = sum(r.long() for r in real)
        assert torch.equal(real[0], torch.ones(n, dtype=torch.bool))  # depth ≥ 1, ops first
        assert chi2_uniform(torch.bincount(depth - 1, minlength=3)) < chi2_bound(2) + 10
        op, magnitude = slots[0]
        assert chi2_uniform(torch.bincount(op, minlength=13)) < chi2_bound(12)
        bins = (magnitude.abs() / space.magnitudes[op, 1].clamp(min=1e-9)).round()
        rotate = op == space.names.index("Rotate")
        assert set(bins[rotate].tolist()) == {0.0, 1.0, 2.0}  # bins below severity 3


# --- whole policies: the two data paths side by side --------------------------------------------

POLICY_CONFIGS = {
    "randaugment": {"policy": "randaugment"},
    "trivialaugment": {"policy": "trivialaugment"},
    "autoaugment": {"policy": "autoaugment", "autoaugment_policy": "cifar10"},
    "augmix": {"policy": "augmix"},
}


@pytest.mark.parametrize("policy", POLICY_CONFIGS)
def test_policies_have_the_same_statistics_on_both_paths(policy, one_thread):
    n = 800
    images = textured_images(n)
    cfg = augment_cfg(**POLICY_CONFIGS[policy])
    pil, batch = pil_form(cfg, images), batch_form(cfg, images)
    assert not torch.equal(batch, images.float() / 255)
    for stat in (
        lambda y: y.mean((1, 2, 3)),
        lambda y: y.std((1, 2, 3)),
        # Fill and black: the PIL path's AugMix truncates its mix to uint8, so below 1 level.
        lambda y: (y < 0.999 / 255).double().mean((1, 2, 3)),
        lambda y: (y - images.float() / 255).abs().mean((1, 2, 3)),  # how much changed
    ):
        assert ks_two(stat(pil), stat(batch)) < KS * math.sqrt(2 / n)


def test_one_batch_of_one_image_gets_many_different_augmentations(one_thread):
    images = repeat(textured_images(1)[0], 32)
    for cfg in POLICY_CONFIGS.values():
        out = batch_form(augment_cfg(**cfg), images)
        distinct = torch.unique(out.flatten(1), dim=0)
        assert len(distinct) > 12, cfg


# --- random erasing ------------------------------------------------------------------------------


def erased_boxes(out: torch.Tensor):
    """Of erased coordinate images (no zero pixels before): (erased (N,) bool, box height and
    width (N,) px, and whether the zeros form exactly that box)."""
    zero = (out == 0).all(1)  # (N, H, W)
    rows, cols = zero.any(2), zero.any(1)
    height, width = rows.sum(1), cols.sum(1)
    box = rows.unsqueeze(2) & cols.unsqueeze(1)
    return zero.any((1, 2)), height, width, (box == zero).all((1, 2))


@pytest.mark.parametrize("form", [pil_form, batch_form], ids=["pil", "batch"])
def test_random_erasing_zeroes_one_box_with_its_probability(form):
    n, p = 2000, 0.6
    out = form(augment_cfg(random_erasing=p), repeat(coordinate_image(24, 32), n))
    erased, _, _, is_box = erased_boxes(out)
    assert is_box.all()
    assert abs(erased.double().mean() - p) < Z * math.sqrt(p * (1 - p) / n)


def test_random_erasing_boxes_have_the_same_law_on_both_paths():
    n = 2000
    images = repeat(coordinate_image(24, 32), n)
    cfg = augment_cfg(random_erasing=1.0)
    pil, batch = erased_boxes(pil_form(cfg, images)), erased_boxes(batch_form(cfg, images))
    for a, b in zip(pil[1:3], batch[1:3], strict=True):
        assert ks_two(a[pil[0]], b[batch[0]]) < KS * math.sqrt(2 / n)
    area = (batch[1] * batch[2]).double() / (24 * 32)
    assert area[batch[0]].min() >= 0.01 and area.max() <= 0.4  # 2-33 % up to rounding to px


def test_erased_box_positions_are_uniform():
    n, h, w = 3000, 12, 12
    out = batch_form(augment_cfg(random_erasing=1.0), repeat(coordinate_image(h, w), n))
    zero = (out == 0).all(1)
    erased, height, width, _ = erased_boxes(out)
    top, left = zero.any(2).int().argmax(1), zero.any(1).int().argmax(1)
    jitter = torch.rand(2, n, generator=torch.Generator().manual_seed(0))
    # A place uniform in 0..k-1, plus an independent U(0, 1), over k: exactly U(0, 1).
    for place, side, size, u in ((top, height, h, jitter[0]), (left, width, w, jitter[1])):
        spread = ((place + u) / (size - side + 1))[erased]
        assert ks_uniform(spread, 0, 1) < KS / math.sqrt(int(erased.sum()))


# --- options -------------------------------------------------------------------------------------


def test_pil_form_puts_the_policy_after_the_jitter_and_erasing_last():
    cfg = augment_cfg(hflip=True, color_jitter={"brightness": 0.2}, cutout=4, policy="augmix",
                      random_erasing=0.25)  # fmt: skip
    steps = pil_augment(read_options(cfg))
    kinds = [v2.RandomHorizontalFlip, v2.ColorJitter, v2.AugMix, v2.PILToTensor]
    assert [type(s) for s in steps[:4]] == kinds
    assert steps[2].interpolation == NEAREST  # both paths: nearest-neighbour geometry
    assert type(steps[-1]) is v2.RandomErasing
    erasing = steps[-1]
    assert (erasing.p, erasing.scale, erasing.ratio, erasing.value) == (
        0.25, (0.02, 0.33), (0.3, 3.3), [0.0]
    )  # fmt: skip
    for name, kind in [("randaugment", v2.RandAugment), ("trivialaugment", v2.TrivialAugmentWide),
                       ("autoaugment", v2.AutoAugment)]:  # fmt: skip
        (policy, _) = pil_augment(read_options(augment_cfg(policy=name, num_ops=3, magnitude=5)))
        assert type(policy) is kind
    (rand, _) = pil_augment(read_options(augment_cfg(policy="randaugment", num_ops=3, magnitude=5)))
    assert (rand.num_ops, rand.magnitude, rand.num_magnitude_bins) == (3, 5, 31)


@pytest.mark.parametrize(
    "key, value, allowed",
    [
        ("policy", "cutmix", "one of none, randaugment, trivialaugment, autoaugment, augmix"),
        ("num_ops", -1, "a whole number of ops ≥ 0"),
        ("magnitude", 31, "a bin in 0..30 (num_magnitude_bins - 1)"),
        ("num_magnitude_bins", 1, "a whole number of bins ≥ 2"),
        ("autoaugment_policy", "mnist", "one of imagenet, cifar10, svhn"),
        ("augmix.severity", 11, "a whole number in 1..10"),
        ("augmix.mixture_width", 0, "a whole number of chains ≥ 1"),
        ("augmix.chain_depth", 0, "-1 (1 to 3 ops per chain, drawn) or a whole number ≥ 1"),
        ("augmix.alpha", 0, "a concentration > 0"),
        ("random_erasing", 1.5, "a probability in [0, 1] (0 = off)"),
        ("mixup", -0.2, "a Beta concentration α ≥ 0 (0 = off)"),
        ("cutmix", "yes", "a Beta concentration α ≥ 0 (0 = off)"),
    ],
)
def test_invalid_policy_values_are_refused_naming_the_key(key, value, allowed):
    group, _, name = key.rpartition(".")
    base = augment_cfg()
    cfg = {**base, group: {**base[group], name: value}} if group else {**base, name: value}
    with pytest.raises(UserError) as raised:
        read_options(cfg)
    assert str(raised.value) == f"data.augment.{key}={value!r} is not valid; use {allowed}"


def test_policy_and_erasing_turn_augmentation_on_and_mixing_does_not():
    assert read_options(augment_cfg(policy="trivialaugment")).on
    assert read_options(augment_cfg(random_erasing=0.1)).on
    mixing = read_options(augment_cfg(mixup=0.2, cutmix=1.0))
    assert mixing.mixes and not mixing.on  # batches are mixed later, in the training step
