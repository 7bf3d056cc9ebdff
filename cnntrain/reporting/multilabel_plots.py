"""A multi-label run's figures (PNG): per-label AP, precision-recall curves, label co-occurrence
and the images with the largest errors.

Every function takes a test's outputs on the CPU in evaluation order: logits (N, L) float,
targets (N, L) float 0/1 (a row may be all zero), thresholds (L,) float64 (a label is predicted
when its sigmoid probability is >= its threshold) and the L label names in logit order.
"""

import math
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from cnntrain.metrics.multilabel import (
    average_precisions,
    binarized,
    label_probabilities,
    multilabel_losses,
)
from cnntrain.reporting.plots import (
    MAX_CELL_NUMBERS,
    label_classes,
    new_figure,
    plain,
    plot_image_grid,
    plot_message,
    save_png,
    write_counts,
)
from cnntrain.reporting.predictions import short_name

MULTILABEL_PLOTS = ("per_label_ap", "pr_curves", "label_cooccurrence", "largest_errors")
CURVES_PER_GROUP = 3  # pr_curves: this many most frequent labels, and this many worst by AP
ERRORS_SHOWN = 12
MAX_BAR_NAMES = 100  # per_label_ap with more labels: names beside the bars, ranks on the axis
LABELS_WIDTH = 34  # characters of a "true: …" / "predicted: …" caption line


# ---- per-label average precision ----


def ap_note(score: float, positives: int) -> str:
    """What a per_label_ap bar says beside it: its AP and positives, or why it has no AP."""
    return "no positives" if math.isnan(score) else f"{score:.3f} ({positives:,} pos.)"


def plot_per_label_ap(ap: torch.Tensor, support: torch.Tensor, labels: list[str],
                      path: Path) -> None:  # fmt: skip
    """Horizontal bars of each label's AP, best on top, each with its positives; the mAP (mean
    over labels with positives) as a dashed line; labels without positives at the bottom."""
    scores, positives = ap.tolist(), support.tolist()
    order = sorted(
        range(len(labels)), key=lambda j: math.inf if math.isnan(scores[j]) else -scores[j]
    )
    values = [0.0 if math.isnan(scores[j]) else scores[j] for j in order]
    count = len(labels)
    fig = new_figure(9, min(max(3.0, 1.5 + 0.25 * count), 24.0))
    ax = fig.add_subplot()
    rows = range(count)
    ax.barh(rows, values, color="tab:blue")
    small = 8 if count <= 40 else 6
    named = count <= MAX_BAR_NAMES
    for row, j in enumerate(order):
        note = ap_note(scores[j], positives[j])
        note = note if named else f"{plain(labels[j])}: {note}"
        ax.text(values[row] + 0.01, row, note, va="center", fontsize=small)
    if named:
        ax.set_yticks(rows, [plain(labels[j]) for j in order], fontsize=small)
    else:
        ax.set_ylabel("label, by rank")
    # room right of the bars for their notes; no ticks past AP 1
    ax.set(xlim=(0, 1.3), ylim=(count - 0.5, -0.5), xlabel="average precision (AP)")
    ax.set_xticks(np.linspace(0, 1, 6))
    scored = ap[~ap.isnan()]
    title = "test average precision per label"
    if len(scored):
        mean = float(scored.mean())
        ax.axvline(mean, color="tab:red", linestyle="--", label=f"mAP {mean:.3f}")
        ax.legend(loc="lower right", fontsize=8)
        title += f"\ndashed: their mean over the {len(scored)} labels with positives"
    ax.set_title(title)
    ax.grid(axis="x", alpha=0.3)
    save_png(fig, path)


# ---- precision-recall curves ----


def precision_recall_curve(scores: torch.Tensor, positives: torch.Tensor) -> tuple:
    """(recall, precision), each (m + 1,) float64 numpy, of predicting a label for every image
    scoring >= each of the m distinct `scores` (N,), highest first, from (0, 1); `positives`
    (N,) bool. sum(diff(recall) * precision[1:]) is the label's average precision."""
    order = scores.argsort(descending=True, stable=True)
    ranked = scores[order]
    hits = positives[order].double().cumsum(0)  # (N,) true positives down the ranking
    last = torch.ones_like(ranked, dtype=torch.bool)
    last[:-1] = ranked[1:] != ranked[:-1]  # tied scores are one threshold: its last rank counts
    predicted = torch.arange(1, len(scores) + 1, dtype=torch.float64)[last]
    hits = hits[last]
    recall = torch.cat([torch.zeros(1, dtype=torch.float64), hits / max(1.0, float(hits[-1]))])
    precision = torch.cat([torch.ones(1, dtype=torch.float64), hits / predicted])
    return recall.numpy(), precision.numpy()


def operating_point(predicted: torch.Tensor, positives: torch.Tensor) -> tuple | None:
    """(recall, precision) of the (N,) bool predictions; None when nothing is predicted."""
    chosen = int(predicted.sum())
    if chosen == 0:
        return None
    hits = int((predicted & positives).sum())
    return hits / max(1, int(positives.sum())), hits / chosen


def curve_labels(ap: torch.Tensor, support: torch.Tensor) -> list[tuple[int, str]]:
    """(label index, "frequent" or "worst") of the most frequent labels and the worst by AP
    (labels with positives only; a label in both groups is drawn once, as frequent)."""
    scores, counts = ap.tolist(), support.tolist()
    present = [j for j, score in enumerate(scores) if not math.isnan(score)]
    frequent = sorted(present, key=lambda j: -counts[j])[:CURVES_PER_GROUP]
    worst = [j for j in sorted(present, key=lambda j: scores[j]) if j not in frequent]
    return [(j, "frequent") for j in frequent] + [(j, "worst") for j in worst[:CURVES_PER_GROUP]]


def plot_pr_curves(probabilities: torch.Tensor, positives: torch.Tensor, predicted: torch.Tensor,
                   ap: torch.Tensor, labels: list[str], path: Path) -> None:  # fmt: skip
    """Precision against recall of the most frequent labels (solid) and the worst by AP
    (dashed), each with its AP and a dot where its threshold puts it."""
    support = positives.sum(0)
    chosen = curve_labels(ap, support)
    if not chosen:
        plot_message("precision-recall curves", "no label has a positive test image", path)
        return
    fig = new_figure(8, 6)
    ax = fig.add_subplot()
    for j, group in chosen:
        recall, precision = precision_recall_curve(probabilities[:, j], positives[:, j])
        name = f"{plain(labels[j])}: AP {ap[j]:.3f}, {int(support[j]):,} pos. ({group})"
        style = "-" if group == "frequent" else "--"
        # steps-pre: each recall step at the precision it reaches, so the area under it is the AP
        (line,) = ax.plot(recall, precision, style, drawstyle="steps-pre", label=name)
        point = operating_point(predicted[:, j], positives[:, j])
        if point is not None:
            ax.plot(*point, "o", color=line.get_color(), markersize=7)
    ax.set(xlim=(0, 1.01), ylim=(0, 1.03), xlabel="recall", ylabel="precision")
    ax.set_title(
        f"precision-recall, test split: the {CURVES_PER_GROUP} most frequent labels (solid) and "
        f"the {CURVES_PER_GROUP} worst by AP (dashed)\ndots: each label's threshold",
        fontsize=10,
    )
    ax.grid(alpha=0.3)
    ax.legend(loc="lower left", fontsize=8)
    save_png(fig, path)


# ---- label co-occurrence ----


def cooccurrence_counts(positives: torch.Tensor) -> torch.Tensor:
    """(L, L) int64: images carrying both labels; the diagonal is each label's support."""
    ones = positives.double()  # (N, L): exact integer counts up to 2**53
    return (ones.T @ ones).round().long()


def plot_label_cooccurrence(positives: torch.Tensor, labels: list[str], path: Path) -> None:
    """The true labels' co-occurrence counts as a matrix, with numbers for few labels."""
    counts = cooccurrence_counts(positives).numpy()
    count = len(labels)
    side = min(max(6.0, 2.5 + 0.45 * count), 14.0)
    fig = new_figure(side + 1.2, side)
    ax = fig.add_subplot()
    image = ax.imshow(counts, cmap="Blues", interpolation="nearest")
    fig.colorbar(image, ax=ax, shrink=0.8, label="test images with both labels")
    axis = label_classes(ax, "x", labels)
    label_classes(ax, "y", labels)
    ax.set(xlabel=axis.replace("class", "label"), ylabel=axis.replace("class", "label"))
    unlabelled = int((positives.sum(1) == 0).sum())
    per_image = positives.sum(1).double().mean().item() if len(positives) else 0.0
    ax.set_title(
        f"true labels together, test split ({len(positives):,} images, {per_image:.2f} labels "
        f"per image, {unlabelled:,} without any)\ndiagonal: images with the label"
    )
    if count <= MAX_CELL_NUMBERS:
        write_counts(ax, counts)
    save_png(fig, path)


# ---- the largest errors ----


def label_list(row: torch.Tensor, labels: list[str]) -> str:
    """The labels set in the (L,) bool `row`, comma-separated and cut to fit; "none" if empty."""
    text = ", ".join(labels[j] for j in row.nonzero().flatten().tolist()) or "none"
    return text if len(text) <= LABELS_WIDTH else text[: LABELS_WIDTH - 1] + "…"


def plot_largest_errors(images: torch.Tensor, titles: list[str], path: Path) -> None:
    """The given images (k, C, H, W) uint8, worst first, each over its caption."""
    if len(images) == 0:
        plot_message("largest errors", "the test split has no images", path)
        return
    plot_image_grid(images, titles, "test images with the largest loss (binary cross-entropy "
                    "over their labels)", (3.0, 3.2), path)  # fmt: skip


def error_titles(
    indices: list[int],
    losses: torch.Tensor,
    positives: torch.Tensor,
    predicted: torch.Tensor,
    labels: list[str],
    names: list[str],
) -> list[str]:
    """Each image's caption: its true and predicted labels, its file (or index) and its loss."""
    return [
        f"true: {label_list(positives[i], labels)}\n"
        f"predicted: {label_list(predicted[i], labels)}\n"
        f"{short_name(names[i] or f'#{i}')} (loss {losses[i]:.3g})"
        for i in indices
    ]


# ---- everything ----


def write_multilabel_plots(
    folder: Path,
    logits: torch.Tensor,
    targets: torch.Tensor,
    thresholds: torch.Tensor,
    labels: list[str],
    images_at: Callable[[list[int]], torch.Tensor],
    names: list[str],
) -> list[Path]:
    """The MULTILABEL_PLOTS of a test's outputs into `folder` (a run's plots/); the paths.

    images_at(indices) -> uint8 (n, C, H, W) of those test images; names (N,): each image's
    file ("" for an array dataset's: shown as `#index`)."""
    paths = {name: Path(folder) / f"{name}.png" for name in MULTILABEL_PLOTS}
    positives = targets > 0.5  # (N, L) bool
    probabilities = label_probabilities(logits)  # (N, L) float64
    predicted = binarized(logits, thresholds).bool()  # (N, L): probability >= threshold
    ap = average_precisions(logits, targets)  # (L,) float64, NaN: no positives
    plot_per_label_ap(ap, positives.sum(0), labels, paths["per_label_ap"])
    plot_pr_curves(probabilities, positives, predicted, ap, labels, paths["pr_curves"])
    plot_label_cooccurrence(positives, labels, paths["label_cooccurrence"])
    losses = multilabel_losses(logits, targets)  # (N,)
    worst = losses.argsort(descending=True, stable=True)[:ERRORS_SHOWN].tolist()
    titles = error_titles(worst, losses, positives, predicted, labels, names)
    shown = images_at(worst) if worst else torch.empty(0, dtype=torch.uint8)
    plot_largest_errors(shown, titles, paths["largest_errors"])
    return list(paths.values())
