"""Evaluation: the mean loss, accuracy and balanced accuracy of a network on a split, in eval mode,
without gradients, over test-time views (`trainer.tta`), sharded over ranks."""

import torch
from torch import nn

from cnntrain import distributed
from cnntrain.metrics import balanced_accuracy, hits, multilabel_losses
from cnntrain.models.fold import folded
from cnntrain.reporting.progress import progress_bar
from cnntrain.training.precision import Arithmetic


def model_logits(model: nn.Module, x: torch.Tensor, tta: bool | str = False) -> torch.Tensor:
    """(B, classes) float32 logits of a batch (B, C, H, W), averaged over test-time views.

    tta=True: the mean of those of each image and of its left-right mirror. "flip_translate"
    (airbench's level 2): that pair's mean weighted 1/2, and 1/4 each the pair's mean of the
    image moved 1 px diagonally either way (down-right and up-left, reflect-padded): six views."""
    if tta == "flip_translate":
        h, w = x.shape[-2:]
        padded = nn.functional.pad(x, (1, 1, 1, 1), mode="reflect")  # (B, C, H+2, W+2)
        moved = [padded[..., :h, :w], padded[..., 2:, 2:]]
        shifted = sum(model_logits(model, m, True) for m in moved) / 2
        return (model_logits(model, x, True) + shifted) / 2
    logits = model(x).float()
    if tta:  # a mirrored image is as likely as the image itself
        logits = (logits + model(x.flip(-1)).float()) / 2
    return logits


@torch.no_grad()
def evaluate(
    model: nn.Module,
    loader,
    arithmetic: Arithmetic,
    show_bars=False,
    desc="eval",
    keep_outputs=False,
) -> dict:
    """Mean cross-entropy, accuracy and balanced accuracy (the mean of the per-class recalls) of
    `model` on `loader`, in eval mode, without gradients. With several labels per image (targets
    (N, L) 0/1): the mean binary cross-entropy over labels, accuracy counting an image right when
    every label is (at probability 0.5), no balanced accuracy, and the outputs always kept (the
    epoch's mAP and F1 need them).

    With several processes each evaluates its shard and the sums are added over ranks: every
    image counts once (a shard's padding has target distributed.IGNORED, which the losses leave
    out and no prediction matches). With keep_outputs, also returns `logits` (N, classes)
    and `targets` (N,) or (N, L) on the CPU, in the split's order: on rank 0 only (None on the
    others).
    """
    was_training = model.training
    model.eval()  # BatchNorm uses its running statistics, Dropout is off
    net = folded(model)  # each BatchNorm folded into its convolution (a copy): ~7% faster
    sums = torch.zeros(3, dtype=torch.float64, device=arithmetic.device)  # loss, correct, images
    per_class = None  # (2, classes): each class's images predicted right, and its images
    outputs, targets = [], []
    multi_label = False
    with progress_bar(len(loader), desc, show_bars) as bar:
        for x, y in loader.batches():
            with arithmetic.autocast():
                logits = model_logits(net, x, arithmetic.tta)
            real = distributed.real_rows(y)
            right = hits(logits, y) & real
            sums += torch.stack([summed_loss(logits, y, real), right.sum().double(),
                                 real.sum().double()])  # fmt: skip
            multi_label = y.ndim == 2
            if per_class is None:
                per_class = sums.new_zeros(2, logits.shape[1])
            if not multi_label:
                count_by_class(per_class, y, right, real)
            if keep_outputs or multi_label:
                outputs.append(logits)
                targets.append(y)
            bar.update()
    model.train(was_training)
    per_class = sums.new_zeros(2, 0) if per_class is None else per_class
    summed = distributed.sum_over_ranks(torch.cat([sums, per_class.flatten()]))  # one host sync
    loss, correct, count = summed[:3].tolist()
    right_by_class, images = summed[3:].view(2, -1).tolist()
    recalls = [h / n if n else None for h, n in zip(right_by_class, images, strict=True)]
    result = {"loss": loss / max(1, count), "acc": correct / max(1, count), "count": int(count)}
    if not multi_label:
        result["balanced_acc"] = balanced_accuracy(recalls)
    if keep_outputs or multi_label:
        result["logits"], result["targets"] = gathered_outputs(outputs, targets)
    return result


def summed_loss(logits: torch.Tensor, y: torch.Tensor, real: torch.Tensor) -> torch.Tensor:
    """A batch's summed loss, float64, padding (not `real`) left out: cross-entropy, or with
    several labels per image ((B, L) 0/1) each image's binary cross-entropy, mean over labels."""
    if y.ndim == 1:
        return nn.functional.cross_entropy(logits, y, reduction="sum").double()  # ignores padding
    return (multilabel_losses(logits, y.clamp_min(0)) * real).sum().double()


def count_by_class(per_class: torch.Tensor, y: torch.Tensor, right: torch.Tensor,
                   real: torch.Tensor) -> None:  # fmt: skip
    """Add a batch's right predictions and images to each class's (padding left out), without a
    host sync (bincount would read the largest target)."""
    classes = y.clamp_min(0)  # the padding's target, counted with weight 0
    per_class[0].index_add_(0, classes, (right & real).double())
    per_class[1].index_add_(0, classes, real.double())


def gathered_outputs(outputs: list, targets: list) -> tuple:
    """Every rank's per-batch logits and targets, on rank 0 in the split's order, padding
    dropped, on the CPU; (None, None) on the other ranks."""
    logits, targets = distributed.gather_in_order(outputs), distributed.gather_in_order(targets)
    if logits is None:
        return None, None
    real = distributed.real_rows(targets)
    return logits[real].cpu(), targets[real].cpu()
