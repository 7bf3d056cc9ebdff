"""Automatic augmentation policies on whole batches, every choice drawn per image (tensor path):
torchvision's RandAugment, TrivialAugmentWide, AutoAugment and AugMix (`data.augment.policy`).

A v2 policy applied to a batch tensor draws once for all of it; here each image draws its own
ops, magnitude bins, signs and probabilities (through `Draws`), from the spaces torchvision's
policies draw from: their own `_AUGMENTATION_SPACE` tables, read from their classes, so both data
paths use the same ops, in the same order, with the same magnitudes. The ops run on float
batches in [0, 1] holding uint8 levels (v/255), as torchvision runs them on PIL images:
geometry is nearest neighbour with fill 0 (Pillow's pixel convention), Posterize and Equalize
work on the 256 levels.
"""

from dataclasses import dataclass

import torch
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as F

from cnntrain.data.augment.draws import Draws
from cnntrain.data.augment.kernels import (
    adjust_brightness,
    adjust_contrast,
    adjust_saturation,
    apply_in_order,
    blend,
    rotation_matrix,
    warp,
)
from cnntrain.data.augment.options import Options

AUTOAUGMENT_BINS = 10  # AutoAugment's and AugMix's magnitude tables have 10 bins
MAX_AUGMIX_DEPTH = 3  # chain_depth=-1: 1 to 3 ops per chain, as torchvision's AugMix
SHARPEN = (1.0, 5.0)  # Pillow's SMOOTH kernel: 1s around a 5, over 13 (torchvision's sharpness)


# --- the ops: x (n, C, H, W) in [0, 1], magnitude m (n, 1, 1, 1) as torchvision's policies pass it


def shear_matrix(m: torch.Tensor, axis: int) -> torch.Tensor:
    """(n, 2, 3): x_in = x + m·y (axis 0) or y_in = y + m·x (axis 1), about the top-left corner:
    torchvision's shear of atan(m) with center [0, 0] (tan(atan(m)) = m)."""
    n = m.shape[0]
    matrix = torch.eye(2, 3, device=m.device).repeat(n, 1, 1)
    matrix[:, axis, 1 - axis] = m.view(n)
    return matrix


def shift_matrix(dx: torch.Tensor, dy: torch.Tensor) -> torch.Tensor:
    """(n, 2, 3): a shift by (dx, dy) px."""
    zero = torch.zeros_like(dx)
    return rotation_matrix(zero, dx, dy, center=(0.0, 0.0))


def translate(x: torch.Tensor, m: torch.Tensor, axis: int) -> torch.Tensor:
    shift = m.view(-1).trunc()  # torchvision passes int(magnitude) px
    zero = torch.zeros_like(shift)
    return warp(x, shift_matrix(shift, zero) if axis == 0 else shift_matrix(zero, shift))


def rotate(x: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
    """Counter-clockwise by m degrees about the centre (F.rotate): affine's clockwise -m."""
    _, _, h, w = x.shape
    angle = -m.view(-1)
    zero = torch.zeros_like(angle)
    return warp(x, rotation_matrix(angle, zero, zero, center=(w / 2, h / 2)))


def adjust_sharpness(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """torchvision's adjust_sharpness per image: blend with the 3×3 smoothed image, whose border
    pixels are the image's own."""
    c = x.shape[1]
    if x.shape[-1] <= 2 or x.shape[-2] <= 2:
        return x
    edge, centre = SHARPEN
    kernel = torch.full((3, 3), edge, dtype=x.dtype, device=x.device)
    kernel[1, 1] = centre
    kernel = (kernel / kernel.sum()).expand(c, 1, 3, 3)
    smooth = x.clone()
    smooth[..., 1:-1, 1:-1] = torch.nn.functional.conv2d(x, kernel, groups=c)
    return blend(x, smooth, factor)


def levels(x: torch.Tensor) -> torch.Tensor:
    """The uint8 level (0..255, int64) of each value."""
    return (x * 255).round_().long().clamp_(0, 255)


def posterize(x: torch.Tensor, bits: torch.Tensor) -> torch.Tensor:
    """Keep the `bits` (n, 1, 1, 1) high bits of each uint8 level, as Pillow and torchvision's
    uint8 kernel (v & ~(2^(8-bits) - 1))."""
    drop = 8 - bits.long()
    return ((levels(x) >> drop) << drop).to(x.dtype) / 255


def solarize(x: torch.Tensor, threshold: torch.Tensor) -> torch.Tensor:
    """Invert the values at or above `threshold` (n, 1, 1, 1), a fraction of the maximum as the
    policies give it; decided on the uint8 level against 255·threshold in float64, as Pillow."""
    return torch.where(levels(x).double() >= threshold.double() * 255, 1 - x, x)


OPS = {
    "Identity": lambda x, m: x,
    "ShearX": lambda x, m: warp(x, shear_matrix(m, 0)),
    "ShearY": lambda x, m: warp(x, shear_matrix(m, 1)),
    "TranslateX": lambda x, m: translate(x, m, 0),
    "TranslateY": lambda x, m: translate(x, m, 1),
    "Rotate": rotate,
    "Brightness": lambda x, m: adjust_brightness(x, 1 + m),
    "Color": lambda x, m: adjust_saturation(x, 1 + m),
    "Contrast": lambda x, m: adjust_contrast(x, 1 + m),
    "Sharpness": lambda x, m: adjust_sharpness(x, 1 + m),
    "Posterize": posterize,
    "Solarize": solarize,
    "AutoContrast": lambda x, m: F.autocontrast(x),  # per image and channel: min → 0, max → 1
    "Equalize": lambda x, m: F.equalize(x),  # per image and channel histograms, 256 levels
    "Invert": lambda x, m: 1 - x,
}


# --- the spaces: torchvision's ops and magnitude tables ------------------------------------------


@dataclass(frozen=True)
class Space:
    """A policy's ops (torchvision's order, then Identity if it has none: what a skipped op
    runs), each op's magnitude per bin, and whether a magnitude takes a random sign."""

    names: tuple[str, ...]
    magnitudes: torch.Tensor  # (ops, bins) float32; 0 for ops without a magnitude
    signed: torch.Tensor  # (ops,) bool

    @classmethod
    def of(cls, table: dict, bins: int, h: int, w: int, device) -> "Space":
        """`table`: a torchvision `_AUGMENTATION_SPACE`, name → (magnitudes(bins, h, w), signed)."""
        table = {**table, "Identity": table.get("Identity", (lambda *size: None, False))}
        rows = []
        for magnitudes, _ in table.values():
            values = magnitudes(bins, h, w)
            rows.append(torch.zeros(bins) if values is None else values.float())
        signed = torch.tensor([s for _, s in table.values()], device=device)
        return cls(tuple(table), torch.stack(rows).to(device), signed)

    @property
    def identity(self) -> int:
        return self.names.index("Identity")

    @property
    def ops(self) -> list:
        return [OPS[name] for name in self.names]

    def magnitude(self, op: torch.Tensor, bin: torch.Tensor, draw: Draws) -> torch.Tensor:
        """(N,) the magnitude of each image's op at its bin, negated with p 0.5 when signed."""
        negate = self.signed[op] & draw.chance(0.5)
        m = self.magnitudes[op, bin]
        return torch.where(negate, -m, m)


def run_op(x: torch.Tensor, space: Space, op, magnitude, whole_batch: bool | None = None):
    """Image i runs op[i] of `space` with magnitude[i]: each op on its own images (CPU), or every
    op on every image keeping each image's own (`whole_batch`, the default on GPUs: no host
    sync)."""
    factors = magnitude.to(x.dtype).expand(len(space.names), -1)  # (ops, N): one per image
    whole_batch = x.is_cuda if whole_batch is None else whole_batch
    return apply_in_order(x, space.ops, factors, op.view(-1, 1), whole_batch)


# --- the policies: (x, draw) → x ----------------------------------------------------------------


class RandAugment:
    """`num_ops` ops per image, each uniform over the space, all at bin `magnitude`."""

    table = v2.RandAugment._AUGMENTATION_SPACE

    def __init__(self, num_ops: int, magnitude: int, num_magnitude_bins: int):
        self.num_ops, self.bin, self.bins = num_ops, magnitude, num_magnitude_bins

    def draw_ops(self, draw: Draws, space: Space) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Per op slot: (op index (N,), magnitude (N,)) of each image."""
        slots = []
        for _ in range(self.num_ops):
            op = draw.integers(len(space.names))
            slots.append((op, space.magnitude(op, torch.full_like(op, self.bin), draw)))
        return slots

    def space(self, h: int, w: int, device) -> Space:
        return Space.of(self.table, self.bins, h, w, device)

    def __call__(self, x: torch.Tensor, draw: Draws) -> torch.Tensor:
        space = self.space(*x.shape[-2:], x.device)
        for op, magnitude in self.draw_ops(draw, space):
            x = run_op(x, space, op, magnitude)
        return x


class TrivialAugment(RandAugment):
    """TrivialAugmentWide: one op per image, uniform over the space, at a uniform bin."""

    table = v2.TrivialAugmentWide._AUGMENTATION_SPACE

    def __init__(self, num_magnitude_bins: int):
        super().__init__(1, 0, num_magnitude_bins)

    def draw_ops(self, draw: Draws, space: Space) -> list[tuple[torch.Tensor, torch.Tensor]]:
        op = draw.integers(len(space.names))
        return [(op, space.magnitude(op, draw.integers(self.bins), draw))]


class AutoAugment(RandAugment):
    """A uniform one of the policy's 25 sub-policies per image; each of its two ops runs with its
    probability, at its bin of 10."""

    table = v2.AutoAugment._AUGMENTATION_SPACE

    def __init__(self, policy: str):
        super().__init__(2, 0, AUTOAUGMENT_BINS)
        sub_policies = v2.AutoAugment(v2.AutoAugmentPolicy(policy))._policies
        names = list(self.table)
        # (25, 2) each: the op index, its probability and its magnitude bin (0 when it has none).
        self.op = torch.tensor([[names.index(name) for name, _, _ in sp] for sp in sub_policies])
        self.p = torch.tensor([[p for _, p, _ in sp] for sp in sub_policies])
        self.bin = torch.tensor([[b or 0 for _, _, b in sp] for sp in sub_policies])

    def draw_ops(self, draw: Draws, space: Space) -> list[tuple[torch.Tensor, torch.Tensor]]:
        chosen = draw.integers(len(self.op))
        tables = [t.to(draw.device) for t in (self.op, self.p, self.bin)]
        slots = []
        for s in range(2):
            op, p, bin = (t[chosen, s] for t in tables)
            runs = draw.uniform(0, 1) < p  # torchvision: runs when rand() ≤ p
            magnitude = space.magnitude(op, bin, draw)
            slots.append((torch.where(runs, op, space.identity), magnitude))
        return slots


class AugMix:
    """Per image: `mixture_width` chains of 1–3 (or `chain_depth`) uniform ops at uniform bins
    below `severity` (of 10), mixed with Dirichlet(alpha) weights, and that mix blended with the
    image by Beta(alpha, alpha) weights (torchvision's Dirichlet of two)."""

    table = v2.AugMix._AUGMENTATION_SPACE  # all_ops=True, torchvision's default

    def __init__(self, severity: int, mixture_width: int, chain_depth: int, alpha: float):
        self.severity, self.width, self.depth, self.alpha = (
            severity,
            mixture_width,
            chain_depth,
            alpha,
        )

    def draw_chains(self, draw: Draws, space: Space):
        """(image weight (N,), chain weights (N, width), per chain a list of (op, magnitude) (N,)
        slots, Identity past each image's depth)."""
        blend = draw.dirichlet(self.alpha, 2)  # (N, 2): the image's weight, the chains' weight
        weights = draw.dirichlet(self.alpha, self.width) * blend[:, 1:]
        real_ops = len(space.names) - 1  # Identity is last: not one of AugMix's ops
        chains = []
        for _ in range(self.width):
            depth = draw.integers(MAX_AUGMIX_DEPTH) + 1 if self.depth <= 0 else None
            slots = []
            for step in range(MAX_AUGMIX_DEPTH if depth is not None else self.depth):
                op = draw.integers(real_ops)
                magnitude = space.magnitude(op, draw.integers(self.severity), draw)
                if depth is not None:
                    op = torch.where(step < depth, op, space.identity)
                slots.append((op, magnitude))
            chains.append(slots)
        return blend[:, 0], weights, chains

    def __call__(self, x: torch.Tensor, draw: Draws) -> torch.Tensor:
        n = x.shape[0]
        space = Space.of(self.table, AUTOAUGMENT_BINS, *x.shape[-2:], x.device)
        own, weights, chains = self.draw_chains(draw, space)
        mixed = own.to(x.dtype).view(n, 1, 1, 1) * x
        for i, slots in enumerate(chains):
            chain = x
            for op, magnitude in slots:
                chain = run_op(chain, space, op, magnitude)
            mixed = mixed + weights[:, i].to(x.dtype).view(n, 1, 1, 1) * chain
        return mixed.clamp_(0, 1)


def batch_policy(o: Options):
    """The per-image batch form of `o.policy`, or None."""
    if o.policy == "randaugment":
        return RandAugment(o.num_ops, o.magnitude, o.num_magnitude_bins)
    if o.policy == "trivialaugment":
        return TrivialAugment(o.num_magnitude_bins)
    if o.policy == "autoaugment":
        return AutoAugment(o.autoaugment_policy)
    if o.policy == "augmix":
        return AugMix(**o.augmix)
    return None
