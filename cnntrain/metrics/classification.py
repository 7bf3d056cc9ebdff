"""What an evaluation's outputs say: accuracy, top-5, per-class and balanced accuracy; class counts
and the inverse-frequency class weights of the loss."""

import torch

TOP_K = 5  # test/top5_acc is reported when there are more classes than this


def hits(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """(B,) bool: the images predicted right. Targets (B,) class indices: the top class is the
    target; (B, L) labels (0/1, or mixed in [0, 1]): every label right at probability 0.5 (logit
    ≥ 0, as metrics.multilabel's binarized) against the target rounded — scikit-learn's
    accuracy_score on several labels."""
    if targets.ndim == 1:
        return logits.argmax(1) == targets
    return ((logits >= 0) == (targets > 0.5)).all(1)


def confusion_counts(logits: torch.Tensor, targets: torch.Tensor, k: int) -> torch.Tensor:
    """(k, k) int64 counts: row = true class, column = predicted class."""
    predicted = logits.argmax(1).cpu()
    pairs = targets.cpu().long() * k + predicted  # one bin per (true, predicted) pair
    return torch.bincount(pairs, minlength=k * k).view(k, k)


def per_class_accuracy(logits: torch.Tensor, targets: torch.Tensor, classes: list[str]) -> dict:
    """Each class's fraction of images predicted right (the confusion matrix's diagonal over its
    row sums); None for a class without images."""
    counts = confusion_counts(logits, targets, len(classes))
    right, total = counts.diagonal().tolist(), counts.sum(1).tolist()
    return {c: right[i] / total[i] if total[i] else None for i, c in enumerate(classes)}


def balanced_accuracy(recalls) -> float:
    """The mean of the per-class recalls (None for a class without images: left out)."""
    present = [r for r in recalls if r is not None]
    return sum(present) / max(1, len(present))


def top_k_accuracy(logits: torch.Tensor, targets: torch.Tensor, k: int) -> float:
    """Fraction of images whose true class is among the k highest logits."""
    top = logits.topk(k, dim=1).indices  # (N, k)
    return (top == targets.view(-1, 1)).any(1).float().mean().item()


def split_metrics(out: dict, classes: list[str], split: str) -> dict:
    """`<split>/acc`, `/loss`, `/top5_acc` (more than 5 classes), `/balanced_acc`,
    `/per_class_acc` and `/count` of an evaluation's outputs (evaluate(..., keep_outputs=True))."""
    per_class = per_class_accuracy(out["logits"], out["targets"], classes)
    metrics = {f"{split}/acc": out["acc"], f"{split}/loss": out["loss"]}
    if len(classes) > TOP_K:
        metrics[f"{split}/top5_acc"] = top_k_accuracy(out["logits"], out["targets"], TOP_K)
    metrics[f"{split}/balanced_acc"] = balanced_accuracy(per_class.values())
    metrics[f"{split}/per_class_acc"] = per_class
    metrics[f"{split}/count"] = out["count"]
    return metrics


def class_counts(targets: torch.Tensor, classes: list[str]) -> dict[str, int]:
    """Images per class name (targets (N,) indices), or per label ((N, L) 0/1)."""
    targets = targets.cpu()
    if targets.ndim == 2:
        counts = targets.sum(0).long()
    else:
        counts = torch.bincount(targets, minlength=len(classes))
    return dict(zip(classes, counts.tolist(), strict=True))


def class_weights(targets: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Inverse class frequency, scaled so the average weight over images is 1."""
    counts = torch.bincount(targets, minlength=num_classes).double().clamp_min(1)
    return (len(targets) / (num_classes * counts)).float()
