"""Pure tensor functions of an evaluation's outputs: classification (accuracy, per class, class
weights), calibration (ECE, NLL, temperature scaling, accuracy against coverage) and several labels
per image (mAP, F1, Hamming loss, tuned thresholds)."""

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
    hits,
    per_class_accuracy,
    split_metrics,
    top_k_accuracy,
)
from cnntrain.metrics.multilabel import (
    average_precisions,
    binarized,
    epoch_metrics,
    label_probabilities,
    mean_average_precision,
    multilabel_losses,
    multilabel_metrics,
    tune_thresholds,
)

__all__ = [
    "ECE_BINS",
    "TOP_K",
    "answered_at",
    "average_precisions",
    "balanced_accuracy",
    "binarized",
    "calibration_metrics",
    "class_counts",
    "class_weights",
    "confusion_counts",
    "coverage_curve",
    "epoch_metrics",
    "expected_calibration_error",
    "fit_temperature",
    "hits",
    "label_probabilities",
    "mean_average_precision",
    "multilabel_losses",
    "multilabel_metrics",
    "negative_log_likelihood",
    "per_class_accuracy",
    "reliability_bins",
    "split_metrics",
    "top_k_accuracy",
    "tune_thresholds",
]
