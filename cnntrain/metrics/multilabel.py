"""Several labels per image: average precision, F1, exact match and Hamming loss at per-label
thresholds, the thresholds tuned on a split, and each image's loss.

`logits` are (N, L) floats, `targets` (N, L) 0/1 multi-hot (a row of zeros: an image with no
label), probabilities their sigmoid, and `thresholds` (L,) float64 probabilities: a label is
predicted when its probability is at least its threshold. torchmetrics is imported inside the
functions: it is slow to import, and a single-label run never needs it.
"""

import math

import torch
import torch.nn.functional as F

DEFAULT_THRESHOLD = 0.5  # a label's threshold before tuning, and one without positives to tune on


def label_probabilities(logits: torch.Tensor) -> torch.Tensor:
    """(N, L) float64 sigmoid of the logits: float64 so that the comparison with float64
    thresholds is exact."""
    return torch.sigmoid(logits.double())


def average_precisions(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """(L,) float64: each label's average precision, scikit-learn's `average_precision_score`
    (Σ over the distinct scores, high to low, of the recall gained × the precision there); NaN
    for a label without a positive image, where it is undefined — macro mAP is the mean over the
    labels with positives.

    All labels at once in torch: torchmetrics' multilabel_average_precision loops over the labels
    in Python (measured 1.8-3.3 s against this one's 0.4 s at 10,000 images × 80 labels, on a
    2-core EPYC) and refuses a single label."""
    scores, order = logits.double().sort(dim=0, descending=True, stable=True)  # (N, L) each
    hit = targets.double().gather(0, order)  # (N, L): 1 where the image at that rank is positive
    count = scores.shape[0]
    rank = torch.arange(1, count + 1, dtype=torch.float64).unsqueeze(1)  # (N, 1)
    precision = hit.cumsum(0) / rank  # (N, L) among the top `rank`
    # Tied scores are one threshold: each rank takes the precision at its tie group's last rank.
    last = torch.ones_like(hit, dtype=torch.bool)
    last[:-1] = scores[:-1] != scores[1:]
    index = torch.arange(count).unsqueeze(1).expand_as(hit)
    group_end = torch.where(last, index, count).flip(0).cummin(0).values.flip(0)  # (N, L)
    positives = hit.sum(0)  # (L,)
    ap = (hit * precision.gather(0, group_end)).sum(0) / positives
    return ap.masked_fill(positives == 0, float("nan"))


def mean_average_precision(logits: torch.Tensor, targets: torch.Tensor) -> float:
    """Macro mAP: the mean AP over the labels with at least one positive image; 0.0 when no label
    has one (nothing to find counts as nothing found, never NaN in a monitor or results.json)."""
    return mean_of(average_precisions(logits, targets))


def mean_of(ap: torch.Tensor) -> float:
    """The mean of the (L,) APs that are not NaN; 0.0 when all are."""
    return ap.nanmean().item() if not ap.isnan().all() else 0.0


def binarized(logits: torch.Tensor, thresholds: torch.Tensor) -> torch.Tensor:
    """(N, L) int64 0/1 predictions: probability ≥ the label's threshold."""
    return at_thresholds(label_probabilities(logits), thresholds).long()


def at_thresholds(probabilities: torch.Tensor, thresholds: torch.Tensor) -> torch.Tensor:
    """(N, L) bool: each label's probability (float64, label_probabilities) ≥ its threshold."""
    return probabilities >= thresholds.double()


def threshold_scores(logits: torch.Tensor, targets: torch.Tensor, thresholds: torch.Tensor):
    """The (N, L) predictions at `thresholds`, each label's F1 (L,) and the micro F1 and Hamming
    loss. The predictions are already 0/1, so torchmetrics' own 0.5 threshold leaves them as they
    are and the per-label thresholds hold. A label with no positive and no predicted image has
    F1 0 and counts in the macro mean, as scikit-learn's f1_score(zero_division=0)."""
    from torchmetrics.functional.classification import (
        multilabel_f1_score,
        multilabel_hamming_distance,
    )

    num_labels, truth = targets.shape[1], targets.long()
    predicted = binarized(logits, thresholds)
    per_label = multilabel_f1_score(predicted, truth, num_labels, average="none", zero_division=0)
    micro = multilabel_f1_score(predicted, truth, num_labels, average="micro", zero_division=0)
    # The fraction of wrong (image, label) entries: micro-averaged, as scikit-learn's hamming_loss.
    hamming = multilabel_hamming_distance(predicted, truth, num_labels, average="micro")
    return predicted, per_label, micro.item(), hamming.item()


def epoch_metrics(logits: torch.Tensor, targets: torch.Tensor, split: str) -> dict:
    """The per-epoch scalars at threshold 0.5 for every label: `{split}/mAP`, `/f1_micro`,
    `/f1_macro` and `/hamming_loss` (the epoch loop adds its loss and accuracy itself)."""
    thresholds = torch.full((targets.shape[1],), DEFAULT_THRESHOLD, dtype=torch.float64)
    _, per_label, micro, hamming = threshold_scores(logits, targets, thresholds)
    return {
        f"{split}/mAP": mean_average_precision(logits, targets),
        f"{split}/f1_micro": micro,
        f"{split}/f1_macro": per_label.mean().item(),
        f"{split}/hamming_loss": hamming,
    }


def multilabel_metrics(logits: torch.Tensor, targets: torch.Tensor, thresholds: torch.Tensor,
                       labels: list[str], split: str) -> dict:  # fmt: skip
    """An evaluation's results at per-label `thresholds`, plain Python numbers for JSON:
    `{split}/mAP`, `/f1_micro`, `/f1_macro`, `/acc` (exact match: every label of the image
    right), `/hamming_loss`, `/per_label_ap` (None for a label without positives),
    `/per_label_f1`, `/per_label_support` (positive images) and `/count`."""
    from torchmetrics.functional.classification import multilabel_exact_match

    predicted, per_label, micro, hamming = threshold_scores(logits, targets, thresholds)
    exact = multilabel_exact_match(predicted, targets.long(), len(labels))
    ap = average_precisions(logits, targets)
    support = targets.sum(0).long()  # (L,) positive images per label
    return {
        f"{split}/mAP": mean_of(ap),
        f"{split}/f1_micro": micro,
        f"{split}/f1_macro": per_label.mean().item(),
        f"{split}/acc": exact.item(),
        f"{split}/hamming_loss": hamming,
        f"{split}/per_label_ap": {
            name: None if math.isnan(value) else value  # JSON has no NaN
            for name, value in zip(labels, ap.tolist(), strict=True)
        },
        f"{split}/per_label_f1": dict(zip(labels, per_label.tolist(), strict=True)),
        f"{split}/per_label_support": dict(zip(labels, support.tolist(), strict=True)),
        f"{split}/count": targets.shape[0],
    }


def f1_thresholds(probabilities: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """(L,) float64: per label, the threshold of best F1 on these images.

    The candidates are the midpoints of consecutive distinct probabilities and, below the lowest,
    the midpoint of it and 0 (every image predicted); predicting no image (F1 0) never beats
    predicting every one, so the upper end is left out. Among equal F1, the threshold closest to
    0.5 (equally close: the higher). A label without a positive image keeps 0.5.
    """
    p, t = probabilities.double(), targets.double()
    count, num_labels = p.shape
    default = torch.full((num_labels,), DEFAULT_THRESHOLD, dtype=torch.float64)
    if not count:
        return default
    ranked, order = p.sort(dim=0, descending=True, stable=True)  # (N, L) each column high → low
    true_positives = t.gather(0, order).cumsum(0)  # (N, L): among each column's top k + 1
    positives = t.sum(0)  # (L,)
    predicted = torch.arange(1, count + 1, dtype=torch.float64).unsqueeze(1)  # (N, 1) = k + 1
    f1 = 2 * true_positives / (predicted + positives)  # (N, L) F1 of predicting the top k + 1
    below = torch.cat([ranked[1:], torch.zeros(1, num_labels, dtype=torch.float64)])
    midpoint = (ranked + below) / 2
    # Between two adjacent floats the midpoint rounds onto the lower one: take the upper instead.
    threshold = torch.where(midpoint > below, midpoint, ranked)  # (N, L)
    cut = ranked > below  # the top k + 1 are separable from the rest: a candidate
    cut[-1] = True  # the lowest value's midpoint with 0 predicts every image
    f1 = f1.masked_fill(~cut, -1.0)
    best = f1 == f1.max(0, keepdim=True).values  # (N, L) ties of the best F1
    distance = (threshold - DEFAULT_THRESHOLD).abs().masked_fill(~best, float("inf"))
    # argmin takes the first of equal distances: the higher threshold (columns run high → low).
    chosen = threshold.gather(0, distance.argmin(0, keepdim=True)).squeeze(0)
    return torch.where(positives > 0, chosen, default)


def tune_thresholds(probabilities: torch.Tensor, targets: torch.Tensor, rule) -> torch.Tensor:
    """(L,) float64 per-label thresholds by `rule`: "f1" tunes each label for its best F1 on
    these images (f1_thresholds); a float in (0, 1) is that threshold for every label."""
    if rule == "f1":
        return f1_thresholds(probabilities, targets)
    if isinstance(rule, float) and 0 < rule < 1:
        return torch.full((targets.shape[1],), rule, dtype=torch.float64)
    raise ValueError(f"threshold rule {rule!r}: expected 'f1' or a probability in (0, 1)")


def multilabel_losses(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """(N,) float32: each image's binary cross-entropy, the mean over its labels (what
    test_predictions.csv ranks images by)."""
    per_entry = F.binary_cross_entropy_with_logits(
        logits.float(), targets.float(), reduction="none"
    )  # (N, L)
    return per_entry.mean(1)
