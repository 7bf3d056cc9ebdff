"""Calibration figures of a test's outputs: the reliability diagram before and after temperature
scaling, and accuracy against coverage (the share of images answered)."""

from pathlib import Path

import numpy as np
import torch
from matplotlib.axes import Axes

from cnntrain.metrics import ECE_BINS, answered_at, coverage_curve, reliability_bins
from cnntrain.metrics.calibration import Bins
from cnntrain.reporting.plots import new_figure, save_png

CALIBRATION_PLOTS = ("reliability", "coverage")  # plots/<name>.png, in a report's order
THRESHOLDS = (0.5, 0.8, 0.9, 0.95)  # confidences marked on the coverage curve (as --abstain P)


def shown_bins(bins: Bins) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(count, mean confidence, accuracy), each (ECE_BINS,): the bin of confidences exactly 1
    merged into the top bin [14/15, 1], which it belongs to on the diagram's axis."""
    count, confidence, accuracy = (t.double().numpy().copy() for t in (bins.count, bins.confidence,
                                                                       bins.accuracy))  # fmt: skip
    top, ones = ECE_BINS - 1, ECE_BINS
    both = count[top] + count[ones]
    if both:
        for values in (confidence, accuracy):  # count-weighted means of the two
            values[top] = (values[top] * count[top] + values[ones] * count[ones]) / both
    count[top] = both
    return count[:ECE_BINS], confidence[:ECE_BINS], accuracy[:ECE_BINS]


def draw_reliability(bars_ax: Axes, count_ax: Axes, bins: Bins, title: str) -> None:
    """Each bin's accuracy (bars) against the diagonal a calibrated model follows, its mean
    confidence (dots), and below, how many images each bin holds."""
    count, confidence, accuracy = shown_bins(bins)
    width = 1 / ECE_BINS
    centres = (np.arange(ECE_BINS) + 0.5) * width
    filled = count > 0
    bars_ax.bar(centres[filled], 100 * accuracy[filled], width=width, color="tab:blue",
                edgecolor="white", label="accuracy of the bin's images")  # fmt: skip
    bars_ax.plot(centres[filled], 100 * confidence[filled], "o", color="tab:red", markersize=4,
                 label="their mean confidence")  # fmt: skip
    bars_ax.plot([0, 1], [0, 100], "--", color="gray", label="calibrated: accuracy = confidence")
    bars_ax.set(title=title, xlim=(0, 1), ylim=(0, 100), ylabel="accuracy (%)")
    bars_ax.grid(alpha=0.3)
    bars_ax.legend(loc="upper left", fontsize=8)
    count_ax.bar(centres, count, width=width, color="tab:gray", edgecolor="white")
    count_ax.set(xlim=(0, 1), xlabel="top-class probability (confidence)", ylabel="images")


def plot_reliability(logits: torch.Tensor, targets: torch.Tensor, temperature: float | None,
                     path: Path) -> None:  # fmt: skip
    """Reliability diagrams of the test outputs as trained and, when a temperature was fitted,
    after dividing the logits by it, side by side, each titled with its ECE."""
    panels = [("as trained", reliability_bins(logits, targets))]
    if temperature is not None:
        scaled = reliability_bins(logits.float() / temperature, targets)
        panels.append((f"after temperature scaling (T = {temperature:.3g})", scaled))
    fig = new_figure(6.5 * len(panels), 6)
    grid = fig.add_gridspec(2, len(panels), height_ratios=[3, 1])
    for column, (name, bins) in enumerate(panels):
        title = f"{name}: ECE {bins.error():.4f}"
        draw_reliability(fig.add_subplot(grid[0, column]), fig.add_subplot(grid[1, column]),
                         bins, title)  # fmt: skip
    note = "" if temperature is not None else " (no temperature was fitted)"
    fig.suptitle(f"reliability diagram, test split, {ECE_BINS} equal-width bins{note}")
    save_png(fig, path)


def plot_coverage(logits: torch.Tensor, targets: torch.Tensor, temperature: float | None,
                  path: Path) -> None:  # fmt: skip
    """Accuracy (%) against coverage (%) answering only the most confident test images (by
    calibrated confidence), with the coverage at a few confidence thresholds marked."""
    scaled = logits.float() / (1.0 if temperature is None else temperature)
    coverage, accuracy = coverage_curve(scaled, targets)
    fig = new_figure(7.5, 5)
    ax = fig.add_subplot()
    ax.plot(100 * coverage.numpy(), 100 * accuracy.numpy(), color="tab:blue", label="answered")
    markers = iter("os^D")
    for threshold in THRESHOLDS:
        share, right = answered_at(scaled, targets, threshold)
        if right is not None:
            label = f"p ≥ {threshold:g}: {share:.0%} answered, {right:.1%} right"
            ax.plot(100 * share, 100 * right, next(markers), markersize=7, label=label)
    lowest = float(100 * accuracy.min()) if len(accuracy) else 0.0
    which = "calibrated" if temperature is not None else "uncalibrated: no temperature"
    ax.set(xlim=(0, 100), ylim=(max(0.0, lowest - 5), 101), ylabel="accuracy of those (%)",
           xlabel=f"coverage: test images answered, most confident first ({which}) (%)",
           title="accuracy against coverage")  # fmt: skip
    ax.grid(alpha=0.3)
    ax.legend(loc="lower left", fontsize=8)
    save_png(fig, path)


def write_calibration_plots(folder: Path, logits: torch.Tensor, targets: torch.Tensor,
                            temperature: float | None) -> list[Path]:  # fmt: skip
    """plots/reliability.png and plots/coverage.png of a test's (N, K) logits and (N,) targets
    into `folder`; the paths written. `temperature`: the fitted one, None when there is none."""
    paths = [Path(folder) / f"{name}.png" for name in CALIBRATION_PLOTS]
    plot_reliability(logits, targets, temperature, paths[0])
    plot_coverage(logits, targets, temperature, paths[1])
    return paths
