"""results.json's test fields of an evaluation's outputs, one label per image or several (the
same for a run's final test and for cnntrain-eval)."""

import torch

from cnntrain.metrics.calibration import calibration_metrics
from cnntrain.metrics.classification import split_metrics
from cnntrain.metrics.multilabel import multilabel_metrics


def test_results(out: dict, classes: list[str], temperature: float | None = None,
                 thresholds: torch.Tensor | None = None) -> dict:  # fmt: skip
    """The `test/*` fields of `out` (evaluate(..., keep_outputs=True)): accuracy, per class and
    calibration with `temperature` (None: not fitted); or, given `thresholds` (L,) (several
    labels per image), `task` multi, mAP, F1, exact match, Hamming loss and per-label figures at
    those thresholds, and the loss."""
    logits, targets = out["logits"], out["targets"]
    if thresholds is None:
        return {
            **split_metrics(out, classes, "test"),
            **calibration_metrics(logits, targets, temperature, "test"),
        }
    return {
        "task": "multi",
        **multilabel_metrics(logits, targets, thresholds, classes, "test"),
        "test/loss": out["loss"],
    }
