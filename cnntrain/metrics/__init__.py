"""Pure tensor functions of an evaluation's outputs: classification (accuracy, per class, class
weights) and calibration (ECE, NLL, temperature scaling, accuracy against coverage)."""

from cnntrain.metrics.calibration import (
    ECE_BINS,
    answered_at,
    calibration_metrics,
    coverage_curve,
    expected_calibration_error,
    fit_temperature,
    negative_log_likelihood,
    reliability_bins,
)
from cnntrain.metrics.classification import (
    TOP_K,
    balanced_accuracy,
    class_counts,
    class_weights,
    confusion_counts,
    per_class_accuracy,
    split_metrics,
    top_k_accuracy,
)

__all__ = [
    "ECE_BINS",
    "TOP_K",
    "answered_at",
    "balanced_accuracy",
    "calibration_metrics",
    "class_counts",
    "class_weights",
    "confusion_counts",
    "coverage_curve",
    "expected_calibration_error",
    "fit_temperature",
    "negative_log_likelihood",
    "per_class_accuracy",
    "reliability_bins",
    "split_metrics",
    "top_k_accuracy",
]
