"""Several labels per image: the metrics equal scikit-learn's, tuned thresholds equal a brute-force
search, and the training losses equal torch's and timm's."""

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf
from sklearn.metrics import (
    accuracy_score,
    average_precision_score,
    f1_score,
    hamming_loss,
)

from cnntrain.core.errors import UserError
from cnntrain.metrics import (
    average_precisions,
    class_weights,
    epoch_metrics,
    mean_average_precision,
    multilabel_losses,
    multilabel_metrics,
    tune_thresholds,
)
from cnntrain.training.losses import MAX_POS_WEIGHT, build_loss

LABELS = ["cat", "dog", "car", "tree", "sky", "none"]
EMPTY = 5  # LABELS' label without a positive image


def sample(count: int = 300, seed: int = 0):
    """Seeded (logits, targets) with ties (logits rounded), an all-zero row and a label without
    positives; the logits lean towards the targets so the metrics are not those of chance."""
    g = torch.Generator().manual_seed(seed)
    targets = (torch.rand(count, len(LABELS), generator=g) < 0.3).float()
    targets[:, EMPTY] = 0
    targets[0] = 0  # an image with no label
    logits = (torch.randn(count, len(LABELS), generator=g) + 1.5 * targets - 0.7).round(decimals=1)
    return logits, targets


def sk_predictions(logits, thresholds) -> np.ndarray:
    return (torch.sigmoid(logits.double()).numpy() >= thresholds.numpy()).astype(int)


def test_average_precision_is_sklearns_over_labels_with_positives():
    logits, targets = sample()
    ap = average_precisions(logits, targets)
    expected = average_precision_score(targets.numpy()[:, :EMPTY], logits.numpy()[:, :EMPTY],
                                       average=None)  # fmt: skip
    assert ap.dtype == torch.float64 and ap.shape == (len(LABELS),)
    np.testing.assert_allclose(ap[:EMPTY].numpy(), expected, atol=1e-6)
    assert ap[EMPTY].isnan()
    assert mean_average_precision(logits, targets) == pytest.approx(expected.mean(), abs=1e-6)


def test_mean_average_precision_without_any_positive_is_zero():
    logits, targets = sample()
    assert mean_average_precision(logits, torch.zeros_like(targets)) == 0.0


def test_metrics_at_per_label_thresholds_are_sklearns():
    logits, targets = sample()
    # The last label gets no positive and, at threshold 1, no prediction: macro F1 counts it as 0.
    thresholds = torch.tensor([0.3, 0.4, 0.5, 0.6, 0.7, 1.0], dtype=torch.float64)
    got = multilabel_metrics(logits, targets, thresholds, LABELS, "test")
    y, predicted = targets.numpy().astype(int), sk_predictions(logits, thresholds)
    assert predicted[:, EMPTY].sum() == 0 and predicted.sum() > 0
    per_label_f1 = f1_score(y, predicted, average=None, zero_division=0)
    expected = {
        "test/f1_micro": f1_score(y, predicted, average="micro", zero_division=0),
        "test/f1_macro": f1_score(y, predicted, average="macro", zero_division=0),
        "test/acc": accuracy_score(y, predicted),
        "test/hamming_loss": hamming_loss(y, predicted),
        "test/mAP": np.mean(
            average_precision_score(y[:, :EMPTY], logits.numpy()[:, :EMPTY], average=None)
        ),
    }
    for key, value in expected.items():
        assert got[key] == pytest.approx(value, abs=1e-6), key
    assert list(got["test/per_label_f1"]) == LABELS
    np.testing.assert_allclose(list(got["test/per_label_f1"].values()), per_label_f1, atol=1e-6)
    assert got["test/per_label_ap"]["none"] is None
    assert got["test/per_label_support"] == dict(zip(LABELS, y.sum(0).tolist(), strict=True))
    assert got["test/count"] == len(y)
    json.dumps(got, allow_nan=False)  # plain Python numbers, no NaN


def test_epoch_metrics_are_sklearns_at_one_half():
    logits, targets = sample()
    got = epoch_metrics(logits, targets, "val")
    y = targets.numpy().astype(int)
    predicted = sk_predictions(logits, torch.full((len(LABELS),), 0.5, dtype=torch.float64))
    assert set(got) == {"val/mAP", "val/f1_micro", "val/f1_macro", "val/hamming_loss"}
    assert got["val/f1_micro"] == pytest.approx(f1_score(y, predicted, average="micro"), abs=1e-6)
    assert got["val/f1_macro"] == pytest.approx(
        f1_score(y, predicted, average="macro", zero_division=0), abs=1e-6
    )
    assert got["val/hamming_loss"] == pytest.approx(hamming_loss(y, predicted), abs=1e-6)
    ap = average_precision_score(y[:, :EMPTY], logits.numpy()[:, :EMPTY], average=None)
    assert got["val/mAP"] == pytest.approx(ap.mean(), abs=1e-6)  # over labels with positives


def brute_force_threshold(p: np.ndarray, y: np.ndarray) -> float:
    """One label's best-F1 threshold by trying every candidate with scikit-learn: midpoints of
    [0, distinct values, 1]; ties → closest to 0.5, then the higher."""
    values = np.concatenate([[0.0], np.unique(p), [1.0]])
    candidates = (values[1:] + values[:-1]) / 2
    scored = [(f1_score(y, p >= c, zero_division=0), -abs(c - 0.5), c) for c in candidates]
    return max(scored)[2]


def test_f1_thresholds_equal_a_brute_force_search_and_beat_one_half():
    logits, targets = sample(count=200, seed=1)
    probabilities = torch.sigmoid(logits.double())
    thresholds = tune_thresholds(probabilities, targets, "f1")
    assert thresholds.dtype == torch.float64 and thresholds.shape == (len(LABELS),)
    p, y = probabilities.numpy(), targets.numpy().astype(int)
    for label in range(EMPTY):
        column = p[:, label], y[:, label]
        assert thresholds[label].item() == pytest.approx(brute_force_threshold(*column), abs=1e-12)
        tuned = f1_score(column[1], column[0] >= thresholds[label].item())
        assert tuned >= f1_score(column[1], column[0] >= 0.5, zero_division=0)
    assert thresholds[EMPTY].item() == 0.5  # no positive image to tune on


def test_f1_thresholds_break_ties_towards_one_half():
    # Predicting the top 1 or the top 3 both give F1 2/3; the cut at 0.45 is closer to 0.5.
    probabilities = torch.tensor([[0.9], [0.6], [0.5], [0.4], [0.1]], dtype=torch.float64)
    targets = torch.tensor([[1.0], [0.0], [1.0], [0.0], [0.0]])
    assert f1_score(targets.numpy(), probabilities.numpy() >= 0.75) == pytest.approx(2 / 3)
    assert tune_thresholds(probabilities, targets, "f1").item() == pytest.approx(0.45)


def test_fixed_threshold_rule_and_bad_rules():
    probabilities, targets = torch.rand(10, 3, dtype=torch.float64), torch.ones(10, 3)
    assert tune_thresholds(probabilities, targets, 0.3).tolist() == [0.3, 0.3, 0.3]
    for rule in ("f2", 0.0, 1.0, 1, True, None):
        with pytest.raises(ValueError, match="threshold rule"):
            tune_thresholds(probabilities, targets, rule)


def test_multilabel_losses_are_each_images_mean_bce():
    logits, targets = sample()
    p, y = torch.sigmoid(logits.double()).numpy(), targets.numpy()
    expected = -(y * np.log(p) + (1 - y) * np.log(1 - p)).mean(1)
    np.testing.assert_allclose(multilabel_losses(logits, targets).numpy(), expected, atol=1e-6)


def loss_cfg(name="default", smoothing=0.0, weights=None, **extra):
    return OmegaConf.create({"name": name, "label_smoothing": smoothing,
                             "class_weights": weights, **extra})  # fmt: skip


@pytest.mark.parametrize("weights", [None, "auto"])
def test_single_label_loss_is_torchs_cross_entropy(weights):
    g = torch.Generator().manual_seed(2)
    logits, targets = torch.randn(40, 4, generator=g), torch.randint(0, 4, (40,), generator=g)
    loss = build_loss(loss_cfg(smoothing=0.1, weights=weights), False, targets, 4)
    expected_weight = class_weights(targets, 4) if weights else None
    expected = torch.nn.CrossEntropyLoss(weight=expected_weight, label_smoothing=0.1)
    assert isinstance(loss, torch.nn.CrossEntropyLoss)
    assert torch.equal(loss(logits, targets), expected(logits, targets))


def test_asl_with_one_label_per_image_says_use_default():
    with pytest.raises(UserError, match=r"loss=asl is for several labels .* use loss=default"):
        build_loss(loss_cfg("asl"), False, torch.zeros(4, dtype=torch.long), 2)


def test_bce_smooths_targets_and_weighs_positives_by_frequency():
    logits, targets = sample()
    targets[:, 4] = 0
    targets[1, 4] = 1  # one positive in 300 images: negatives / positives = 299, clamped
    loss = build_loss(loss_cfg(smoothing=0.2, weights="auto"), True, targets, len(LABELS))
    positives = targets.numpy().sum(0)
    ratio = [(len(targets) - n) / n if n else 1.0 for n in positives]
    pos_weight = torch.tensor(np.minimum(ratio, MAX_POS_WEIGHT), dtype=torch.float32)
    assert pos_weight[4] == MAX_POS_WEIGHT and pos_weight[EMPTY] == 1.0
    assert torch.equal(dict(loss.named_buffers())["pos_weight"], pos_weight)  # moves with .to()
    soft = targets * 0.7 + 0.3 * targets.roll(1, 0)  # MixUp's label vectors
    for y in (targets, soft):
        expected = F.binary_cross_entropy_with_logits(logits, y * 0.8 + 0.1, pos_weight=pos_weight)
        assert loss(logits, y).item() == pytest.approx(expected.item(), rel=1e-6)


def test_bce_without_class_weights_has_no_pos_weight():
    logits, targets = sample()
    loss = build_loss(loss_cfg(), True, targets, len(LABELS))
    expected = F.binary_cross_entropy_with_logits(logits, targets)
    assert loss.pos_weight is None and torch.equal(loss(logits, targets), expected)


@pytest.mark.parametrize("options", [{}, {"gamma_neg": 2, "gamma_pos": 0, "clip": 0.0}])
def test_asl_is_timms_per_image(options):
    timm_loss = pytest.importorskip("timm.loss")
    logits, targets = sample()
    soft = targets * 0.6 + 0.4 * targets.roll(1, 0)
    loss = build_loss(loss_cfg("asl", smoothing=0.1, **options), True, targets, len(LABELS))
    reference = timm_loss.AsymmetricLossMultiLabel(**options, smoothing=0.1, reduction="sum")
    for y in (targets, soft):
        expected = reference(logits, y) / len(logits)  # timm's "sum": the original ASL's
        assert loss(logits, y).item() == pytest.approx(expected.item(), rel=1e-6)


def test_asl_with_class_weights_is_refused():
    with pytest.raises(UserError, match=r"loss.class_weights=auto .* loss=asl"):
        build_loss(loss_cfg("asl", weights="auto"), True, torch.ones(3, 2), 2)
