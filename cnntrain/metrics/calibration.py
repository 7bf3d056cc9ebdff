"""How far an evaluation's confidences can be trusted: expected calibration error (binned as
torchmetrics bins it), negative log-likelihood, temperature scaling and accuracy against coverage.

Temperature scaling (Guo et al., 2017) divides every logit by one number T fitted on held-out
images: T > 1 softens an over-confident network's probabilities, T < 1 sharpens them; the
predicted class never changes, so accuracy does not either."""

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

ECE_BINS = 15  # equal-width confidence bins of `test/ece` (torchmetrics' default n_bins)
TEMPERATURE_RANGE = (0.05, 20.0)  # a fitted temperature lies in it (a sane softening/sharpening)
SEARCH_STEPS = 40  # golden-section steps over log T: 0.618^40 of log(400) ≈ 1e-7 left


@dataclass
class Bins:
    """A reliability diagram's bins, each (bins + 1,) float32: bin k holds the confidences in
    [k/bins, (k+1)/bins), the last one those exactly 1 (a saturated float32 softmax)."""

    count: torch.Tensor  # images
    confidence: torch.Tensor  # their mean top-class probability (0 for an empty bin)
    accuracy: torch.Tensor  # the share of them predicted right (0 for an empty bin)

    def error(self) -> float:
        """The count-weighted mean |accuracy - confidence|: the expected calibration error."""
        share = self.count / self.count.sum()
        return float(((self.accuracy - self.confidence).abs() * share).sum())


def top_confidence(
    logits: torch.Tensor, targets: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """(N,) float32 top softmax probability of each row of (N, K) logits, and (N,) bool whether
    that class is the target (ties go to the first class, as torch.max and torchmetrics)."""
    confidence, predicted = logits.float().softmax(1).max(1)
    return confidence, predicted == targets.to(predicted.device)


def binned(confidence: torch.Tensor, correct: torch.Tensor, bins: int = ECE_BINS) -> Bins:
    """The reliability bins of top-class `confidence` (N,) and `correct` (N,) bool: torchmetrics'
    `_binning_bucketize` (torch.bucketize, right=True, over linspace(0, 1, bins + 1) in the
    confidences' dtype), so the error is multiclass_calibration_error's with norm="l1"."""
    edges = torch.linspace(0, 1, bins + 1, dtype=confidence.dtype, device=confidence.device)
    index = torch.bucketize(confidence, edges, right=True) - 1  # 0 … bins

    def summed(values: torch.Tensor) -> torch.Tensor:
        return torch.zeros_like(edges).scatter_add_(0, index, values.to(edges.dtype))

    count = summed(torch.ones_like(confidence))
    mean_confidence = (summed(confidence) / count).nan_to_num()
    accuracy = (summed(correct) / count).nan_to_num()
    return Bins(count.cpu(), mean_confidence.cpu(), accuracy.cpu())


def reliability_bins(logits: torch.Tensor, targets: torch.Tensor, bins: int = ECE_BINS) -> Bins:
    """The reliability bins of (N, K) logits' top-class softmax probabilities."""
    return binned(*top_confidence(logits, targets), bins)


def expected_calibration_error(logits: torch.Tensor, targets: torch.Tensor,
                               bins: int = ECE_BINS) -> float:  # fmt: skip
    """ECE: over equal-width confidence bins, |accuracy - mean confidence| weighted by the bin's
    share of images (0: confidences mean what they say)."""
    return reliability_bins(logits, targets, bins).error()


def negative_log_likelihood(logits: torch.Tensor, targets: torch.Tensor,
                            temperature: float = 1.0) -> float:  # fmt: skip
    """Mean -log p(target) in nats of softmax(logits / temperature), in float64."""
    return float(F.cross_entropy(logits.double() / temperature, targets.long()))


def fit_temperature(logits: torch.Tensor, targets: torch.Tensor) -> float:
    """The T in TEMPERATURE_RANGE that minimizes the NLL of softmax(logits / T), float64.

    NLL is convex in 1/T, so it has one minimum along log T: a golden-section search over log T
    finds it deterministically (no step size, no random start); the range's end when beyond."""
    x, y = logits.double(), targets.long()

    def nll(log_t: float) -> float:
        return float(F.cross_entropy(x / math.exp(log_t), y))

    ratio = (math.sqrt(5) - 1) / 2
    low, high = (math.log(t) for t in TEMPERATURE_RANGE)
    left, right = high - ratio * (high - low), low + ratio * (high - low)
    left_nll, right_nll = nll(left), nll(right)
    for _ in range(SEARCH_STEPS):
        if left_nll <= right_nll:  # the minimum lies in [low, right]
            high, right, right_nll = right, left, left_nll
            left = high - ratio * (high - low)
            left_nll = nll(left)
        else:  # in [left, high]
            low, left, left_nll = left, right, right_nll
            right = low + ratio * (high - low)
            right_nll = nll(right)
    return math.exp((low + high) / 2)


def coverage_curve(
    logits: torch.Tensor, targets: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """(coverage, accuracy), each (N,) float64: answering only the n most confident images
    (n = 1 … N, ties in evaluation order), the share of images answered and the share of those
    answered right. Selective prediction: accuracy should rise as coverage falls."""
    confidence, correct = top_confidence(logits, targets)
    order = confidence.argsort(descending=True, stable=True)
    answered = torch.arange(1, len(order) + 1, dtype=torch.float64)
    right = correct[order].double().cumsum(0)
    return answered / max(1, len(order)), right / answered


def answered_at(logits: torch.Tensor, targets: torch.Tensor,
                threshold: float) -> tuple[float, float | None]:  # fmt: skip
    """(coverage, accuracy) answering only the images whose top probability is ≥ `threshold`
    (what cnntrain-predict --abstain does); accuracy None when none is answered."""
    confidence, correct = top_confidence(logits, targets)
    answered = confidence >= threshold
    accuracy = float(correct[answered].double().mean()) if answered.any() else None
    return float(answered.double().mean()), accuracy


def calibration_metrics(logits: torch.Tensor, targets: torch.Tensor, temperature: float | None,
                        split: str) -> dict:  # fmt: skip
    """results.json's calibration fields of a split's (N, K) logits: `<split>/ece` and `/nll`
    as they are, `/ece_calibrated` and `/nll_calibrated` after dividing by `temperature` (by 1,
    the same values, when none was fitted: None), the `temperature` and where it was fitted."""
    t = 1.0 if temperature is None else temperature
    return {
        f"{split}/ece": expected_calibration_error(logits, targets),
        f"{split}/nll": negative_log_likelihood(logits, targets),
        f"{split}/ece_calibrated": expected_calibration_error(logits.float() / t, targets),
        f"{split}/nll_calibrated": negative_log_likelihood(logits, targets, t),
        "temperature": temperature,
        "temperature_fitted_on": None if temperature is None else "val",
    }
