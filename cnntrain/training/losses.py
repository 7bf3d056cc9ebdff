"""The loss a run trains with, from the `loss` config node: cross-entropy for one label per image;
binary cross-entropy or the asymmetric loss (ASL) for several.

Every loss keeps its tensors (class weights, `pos_weight`) as buffers on the CPU: the caller
moves the module with `.to(device)`. The multi-label losses take soft targets too (MixUp and
CutMix mix the label vectors: values in [0, 1]).
"""

import torch
import torch.nn.functional as F
from torch import nn

from cnntrain.core.errors import UserError
from cnntrain.metrics import class_weights

# A label's positives weigh at most this many negatives: one with a handful of positives among
# thousands of images would otherwise weigh thousands, and its few images' gradients swamp the
# rest (and the first steps' loss with it).
MAX_POS_WEIGHT = 100.0
ASL_KEYS = ("gamma_neg", "gamma_pos", "clip", "eps")  # the `loss=asl` node's own keys


def smoothed(targets: torch.Tensor, smoothing: float) -> torch.Tensor:
    """(N, L) float32 targets moved towards 0.5: t·(1 − ε) + ε/2 (timm's multi-label smoothing:
    each label is its own binary problem)."""
    return targets.float() * (1 - smoothing) + smoothing / 2


def positive_weights(targets: torch.Tensor) -> torch.Tensor:
    """(L,) float32 `pos_weight`: each label's negatives / positives in the (N, L) training
    targets, so both weigh alike; 1 for a label without positives, at most MAX_POS_WEIGHT."""
    positives = targets.double().sum(0)
    negatives = len(targets) - positives
    ratio = torch.where(positives > 0, negatives / positives.clamp_min(1), 1.0)
    return ratio.clamp(max=MAX_POS_WEIGHT).float()


class BinaryCrossEntropy(nn.Module):
    """BCE with logits, the mean over every (image, label), on smoothed targets and with an
    optional per-label `pos_weight` (L,)."""

    def __init__(self, smoothing: float = 0.0, pos_weight: torch.Tensor | None = None):
        super().__init__()
        self.smoothing = smoothing
        self.register_buffer("pos_weight", pos_weight)

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return F.binary_cross_entropy_with_logits(
            logits.float(), smoothed(targets, self.smoothing), pos_weight=self.pos_weight
        )


class AsymmetricLoss(nn.Module):
    """The asymmetric loss (Ridnik et al., ICCV 2021), as timm's AsymmetricLossMultiLabel: the
    negatives' probability is shifted down by `clip`, and each term is focused by
    (1 − p_t)^γ, γ = `gamma_pos` for positives and `gamma_neg` for negatives.

    Summed over labels and divided by the batch size (timm's "batchmean"; the original ASL sums
    over the batch too, which scales the loss, and so the learning rate that suits it, with the
    batch size). Targets are smoothed as BinaryCrossEntropy's.
    """

    def __init__(self, gamma_neg: float = 4, gamma_pos: float = 1, clip: float = 0.05,
                 eps: float = 1e-8, smoothing: float = 0.0):  # fmt: skip
        super().__init__()
        self.gamma_neg, self.gamma_pos = gamma_neg, gamma_pos
        self.clip, self.eps, self.smoothing = clip, eps, smoothing

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        # float32: in fp16 the small probabilities underflow the eps clamp and give NaN.
        y = smoothed(targets, self.smoothing)  # (N, L)
        p = torch.sigmoid(logits.float())  # (N, L) each label's probability
        q = (1 - p + self.clip).clamp(max=1) if self.clip else 1 - p  # the shifted negative's
        loss = y * torch.log(p.clamp(min=self.eps)) + (1 - y) * torch.log(q.clamp(min=self.eps))
        if self.gamma_neg > 0 or self.gamma_pos > 0:
            p_t = p * y + q * (1 - y)  # the probability of the target's side
            loss = loss * torch.pow(1 - p_t, self.gamma_pos * y + self.gamma_neg * (1 - y))
        return -loss.sum() / len(logits)


def single_label_loss(loss_cfg, train_targets: torch.Tensor, num_classes: int) -> nn.Module:
    """Cross-entropy over softmax outputs, on class indices or (MixUp / CutMix) class
    probabilities (N, classes); label smoothing mixes each target with the uniform distribution."""
    if loss_cfg.name == "asl":
        raise UserError(
            "loss=asl is for several labels per image (a multi-label label file, data.task=multi); "
            "use loss=default"
        )
    weights = None
    if loss_cfg.class_weights == "auto":
        weights = class_weights(train_targets.cpu(), num_classes)
    return nn.CrossEntropyLoss(weight=weights, label_smoothing=loss_cfg.label_smoothing)


def multi_label_loss(loss_cfg, train_targets: torch.Tensor) -> nn.Module:
    """BinaryCrossEntropy (`loss=default`) or AsymmetricLoss (`loss=asl`) over sigmoid outputs."""
    auto = loss_cfg.class_weights == "auto"
    if loss_cfg.name == "asl":
        if auto:
            raise UserError(
                "loss.class_weights=auto is not supported with loss=asl (its focusing already "
                "weighs the rare positives up); use loss=default, or loss.class_weights=null"
            )
        options = {key: loss_cfg[key] for key in ASL_KEYS if key in loss_cfg}
        return AsymmetricLoss(**options, smoothing=loss_cfg.label_smoothing)
    pos_weight = positive_weights(train_targets.cpu()) if auto else None
    return BinaryCrossEntropy(loss_cfg.label_smoothing, pos_weight)


def build_loss(loss_cfg, multi_label: bool, train_targets: torch.Tensor,
               num_classes: int) -> nn.Module:  # fmt: skip
    """The training loss of `loss_cfg` (its `name`, `label_smoothing`, `class_weights` and ASL's
    keys), with its weights on the CPU. `train_targets`: (N,) int64 class indices, or (N, L)
    float 0/1 with several labels per image."""
    if multi_label:
        return multi_label_loss(loss_cfg, train_targets)
    return single_label_loss(loss_cfg, train_targets, num_classes)
