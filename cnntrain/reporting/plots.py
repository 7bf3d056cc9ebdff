"""A run's figures (PNG): curves, confusion matrix, class bars, feature maps, filters, mistakes."""

import math
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from torch import nn
from torchvision.utils import make_grid

from cnntrain.core.files import atomic_write
from cnntrain.metrics import confusion_counts, per_class_accuracy
from cnntrain.reporting.predictions import short_name

DPI = 120  # ~1000-2000 px wide figures: sharp in a browser, well under 1 MB as PNG
MAX_CELL_NUMBERS = 20  # confusion matrices with more classes show colours only
MAX_CLASS_LABELS = 50  # more classes than this: axes are labelled by class index
MISTAKES_SHOWN = 16
MAX_FILTERS = 64  # a wider first convolution shows its first 64 filters
PLOT_NAMES = (  # run_dir/plots/<name>.png, in the order a report shows them
    "curves",
    "confusion_matrix",
    "per_class_accuracy",
    "class_distribution",
    "feature_maps",
    "filters",
    "misclassified",
)


def save_png(fig: Figure, path: Path) -> None:
    """The one way a figure reaches the disk: a crash-safe PNG write."""
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=DPI))


def new_figure(width: float, height: float) -> Figure:
    # A bare Figure (no pyplot): nothing global, nothing to close, no display needed.
    return Figure(figsize=(width, height), layout="constrained")


def plain(text: str) -> str:
    """Text drawn literally: a class name like `$5 $10` must not turn into mathtext."""
    return str(text).replace("$", r"\$")


def plot_message(title: str, message: str, path: Path) -> None:
    """A figure that only says why there is nothing to draw (the report still shows it)."""
    fig = new_figure(6, 2.5)
    ax = fig.add_subplot()
    ax.text(0.5, 0.5, plain(message), ha="center", va="center", fontsize=12, wrap=True)
    ax.set_title(plain(title))
    ax.set_axis_off()
    save_png(fig, path)


# ---- learning curves ----


def plot_curves(rows: list[dict], path: Path) -> None:
    """Loss, accuracy (%) and learning rate per epoch, one panel each, sharing the epoch axis; a
    multi-label run's accuracy panel (exact match) also holds its validation mAP (%)."""
    if not rows:
        plot_message("training curves", "no completed epochs yet", path)
        return
    fig = new_figure(13, 4)
    loss_ax, acc_ax, lr_ax = fig.subplots(1, 3, sharex=True)
    evaluated = rows[-1].get("val/split", "val")  # val/* is the test split when val_split=0
    for key, label in (("train", "train"), ("val", evaluated)):
        draw_series(loss_ax, rows, f"{key}/loss", label)
        draw_series(acc_ax, rows, f"{key}/acc", label, scale=100)
    draw_series(lr_ax, rows, "lr", "learning rate", color="tab:green")
    loss_ax.set(title="loss", ylabel="cross-entropy loss")
    acc_ax.set(title="accuracy", ylabel="accuracy (%)")
    if any("val/mAP" in r for r in rows):  # a multi-label run: its monitor beside exact match
        draw_series(acc_ax, rows, "val/mAP", f"{evaluated} mAP", scale=100)
        acc_ax.set(title="exact-match accuracy and mAP", ylabel="accuracy, mAP (%)")
    lr_ax.set(title="learning rate", ylabel="learning rate (at epoch end)")
    lrs = [r["lr"] for r in rows if isinstance(r.get("lr"), (int, float))]
    if lrs and min(lrs) > 0 and max(lrs) / min(lrs) >= 100:  # decays over decades: log scale
        lr_ax.set_yscale("log")
    for ax in (loss_ax, acc_ax, lr_ax):
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
        if ax.has_data() and ax is not lr_ax:
            ax.legend()
    save_png(fig, path)


def draw_series(ax: Axes, rows: list[dict], key: str, label: str, scale=1, color=None) -> None:
    """One metric against epoch; epochs without the metric (or non-numeric) are left out."""
    points = [
        (r["epoch"], scale * r[key])
        for r in rows
        if isinstance(r.get(key), (int, float)) and "epoch" in r
    ]
    if points:
        epochs, values = zip(*points, strict=True)
        marker = "o" if len(points) <= 30 else None  # a single epoch still shows as a point
        ax.plot(epochs, values, marker=marker, markersize=3, label=label, color=color)


# ---- per-class figures ----


def label_classes(ax: Axes, axis: str, classes: list[str]) -> str:
    """Class names as ticks on `axis` ("x" or "y"), or indices when there are too many; the
    axis label that goes with them."""
    k = len(classes)
    if k <= MAX_CLASS_LABELS:
        ticks, labels, title = range(k), [plain(c) for c in classes], "class"
    else:
        ticks = range(0, k, math.ceil(k / 20))
        labels, title = [str(i) for i in ticks], "class index"
    if axis == "x":
        rotation = 0 if k <= 6 else 45 if k <= 12 else 90
        ax.set_xticks(ticks, labels, rotation=rotation, ha="right" if rotation == 45 else "center")
    else:
        ax.set_yticks(ticks, labels)
    return title


def plot_confusion_matrix(
    logits: torch.Tensor, targets: torch.Tensor, classes: list[str], path: Path
) -> None:
    """Test-split counts, rows = true class, columns = predicted; cell numbers for few classes."""
    k = len(classes)
    counts = confusion_counts(logits, targets, k).numpy()
    side = min(max(6.0, 2.5 + 0.45 * k), 14.0)
    fig = new_figure(side + 1.2, side)
    ax = fig.add_subplot()
    image = ax.imshow(counts, cmap="Blues", interpolation="nearest")
    fig.colorbar(image, ax=ax, shrink=0.8, label="test images")
    ax.set_xlabel(f"predicted {label_classes(ax, 'x', classes)}")
    ax.set_ylabel(f"true {label_classes(ax, 'y', classes)}")
    accuracy = np.trace(counts) / max(1, counts.sum())
    ax.set_title(f"confusion matrix, test split ({counts.sum():,} images, {accuracy:.2%} correct)")
    if k <= MAX_CELL_NUMBERS:
        write_counts(ax, counts)
    save_png(fig, path)


def write_counts(ax, counts: np.ndarray) -> None:
    """Each cell's count on a (k, k) matrix drawn by imshow; white on the dark cells."""
    dark = counts > counts.max() / 2
    for (i, j), n in np.ndenumerate(counts):
        ax.text(j, i, str(n), ha="center", va="center", fontsize=8,
                color="white" if dark[i, j] else "black")  # fmt: skip


def class_bar_chart(
    values: list[float], classes: list[str], title: str, ylabel: str, color: str
) -> tuple[Figure, Axes]:
    """Vertical bars, one per class in the given order; the caller adds its own marks."""
    fig = new_figure(min(max(6.0, 2.0 + 0.3 * len(classes)), 18.0), 4.5)
    ax = fig.add_subplot()
    ax.bar(range(len(values)), values, color=color)
    ax.set_xlabel(label_classes(ax, "x", classes))
    ax.set(title=title, ylabel=ylabel, xlim=(-0.6, len(values) - 0.4))
    ax.grid(axis="y", alpha=0.3)
    return fig, ax


def plot_per_class_accuracy(per_class: dict[str, float | None], path: Path) -> None:
    """Test accuracy of each class (%); a class without test images is marked n/a."""
    classes = list(per_class)
    present = [a for a in per_class.values() if a is not None]
    values = [100 * a if a is not None else 0.0 for a in per_class.values()]
    # The mean of per-class accuracies is the balanced accuracy: a dashed line across the bars.
    mean = 100 * sum(present) / len(present) if present else None
    title = "test accuracy per class"
    if mean is not None:
        title += f"\ndashed: their mean, the balanced accuracy ({mean:.2f}%)"
    fig, ax = class_bar_chart(values, classes, title, "accuracy (%)", "tab:blue")
    ax.set_ylim(0, 105)
    if mean is not None:
        ax.axhline(mean, color="tab:red", linestyle="--")
    for i, a in enumerate(per_class.values()):
        if a is None:
            ax.text(i, 2, "n/a", ha="center", va="bottom", fontsize=8, rotation=90)
    save_png(fig, path)


def plot_class_distribution(counts: dict[str, int], path: Path) -> None:
    """Training images per class, titled with the largest/smallest class ratio."""
    values = list(counts.values())
    ratio = max(values) / max(1, min(values)) if values else 1.0
    title = f"training images per class ({sum(values):,} in all, largest/smallest {ratio:.1f}×)"
    fig, _ = class_bar_chart(values, list(counts), title, "training images", "tab:orange")
    save_png(fig, path)


# ---- what the network sees ----


@contextmanager
def evaluating(model: nn.Module):
    """Eval mode inside, then every module's own train/eval flag exactly as it was."""
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield model
    finally:
        for m, training in modes:
            m.training = training


def conv_activations(model: nn.Module, image: torch.Tensor, channels: int) -> list[tuple]:
    """(name, output shape (C, H, W), first `channels` maps (c, H, W) float CPU) of every Conv2d,
    in the order the forward pass runs them (a module called twice counts once)."""
    names = {m: name for name, m in model.named_modules() if isinstance(m, nn.Conv2d)}
    seen: dict[str, tuple] = {}

    def record(module, inputs, output):  # output: (1, C, H, W), any memory format or dtype
        name = names[module]
        if name not in seen:
            seen[name] = (name, tuple(output.shape[1:]), output[0, :channels].float().cpu())

    handles = [m.register_forward_hook(record) for m in names]
    try:
        with torch.no_grad(), evaluating(model):
            model(image.unsqueeze(0))
    finally:  # a failing forward pass must not leave hooks behind
        for handle in handles:
            handle.remove()
    return list(seen.values())


def first_middle_last(items: list) -> list:
    """The first, middle and last item, without repeats (fewer for short lists)."""
    picks = sorted({0, len(items) // 2, len(items) - 1}) if items else []
    return [items[i] for i in picks]


def picture(image: torch.Tensor) -> tuple[np.ndarray, str | None]:
    """A uint8 (C, H, W) image as imshow wants it: (H, W, 3) RGB, or (H, W) with a gray colormap."""
    if image.shape[0] == 3:
        return image.permute(1, 2, 0).numpy(), None
    return image[0].numpy(), "gray"


def draw_picture(ax: Axes, image: torch.Tensor, title: str) -> None:
    pixels, cmap = picture(image)
    ax.imshow(pixels, cmap=cmap, vmin=0, vmax=255, interpolation="nearest")
    ax.set_title(plain(title), fontsize=9)
    ax.set_axis_off()


def plot_feature_maps(
    model: nn.Module, image: torch.Tensor, shown: torch.Tensor, path: Path, channels: int = 8
) -> None:
    """Activation maps of an early, a middle and a late Conv2d for one image, one row per layer."""
    layers = first_middle_last(conv_activations(model, image, channels))
    if not layers:
        plot_message("feature maps", "the model has no Conv2d layer", path)
        return
    fig = new_figure(1.6 * (channels + 1.5), 1.7 * len(layers) + 0.6)
    grid = fig.add_gridspec(len(layers), channels + 1, width_ratios=[1.5] + [1] * channels)
    draw_picture(fig.add_subplot(grid[:, 0]), shown, "input image")
    for row, (name, shape, maps) in enumerate(layers):
        for c in range(channels):
            ax = fig.add_subplot(grid[row, c + 1])
            ax.set_xticks([])
            ax.set_yticks([])
            if c < len(maps):  # a layer may have fewer channels than asked for
                ax.imshow(maps[c].numpy(), cmap="viridis", interpolation="nearest")
                ax.set_title(f"channel {c}", fontsize=8)
            else:
                ax.set_axis_off()
            if c == 0:
                ax.set_ylabel(f"{plain(name)}\n{'×'.join(map(str, shape))}", fontsize=8)
    fig.suptitle("feature maps: first, middle and last convolution (each map scaled to its range)")
    save_png(fig, path)


def filter_mosaic(weight: torch.Tensor) -> torch.Tensor:
    """Conv kernels (out, in, kh, kw) as one (3, H, W) image in [0, 1], a tile per kernel: RGB
    when in == 3, else gray (the mean over input channels, the channel itself when in == 1)."""
    tiles = weight[:MAX_FILTERS].detach().float().cpu()
    if tiles.shape[1] != 3:
        tiles = tiles.mean(1, keepdim=True)  # (n, 1, kh, kw)
    zoom = max(1, 24 // max(tiles.shape[2:]))  # 3×3 kernels become 24×24 px tiles, kept sharp
    tiles = F.interpolate(tiles, scale_factor=zoom, mode="nearest")
    columns = math.ceil(math.sqrt(len(tiles)))
    # scale_each: every filter min-max scaled to [0, 1] on its own; gray repeats to 3 channels
    return make_grid(tiles, nrow=columns, padding=2, normalize=True, scale_each=True, pad_value=1)


def plot_filters(model: nn.Module, path: Path) -> None:
    """The first Conv2d's kernels (first registered: the stem, in torchvision's and our models)."""
    conv = next((m for m in model.modules() if isinstance(m, nn.Conv2d)), None)
    if conv is None:
        plot_message("filters", "the model has no Conv2d layer", path)
        return
    out_channels, in_channels, kh, kw = conv.weight.shape
    mosaic = filter_mosaic(conv.weight)  # (3, H, W)
    fig = new_figure(7, 7 * mosaic.shape[1] / mosaic.shape[2] + 0.7)
    ax = fig.add_subplot()
    ax.imshow(mosaic.permute(1, 2, 0).numpy(), interpolation="nearest")
    ax.set_axis_off()
    shown = min(out_channels, MAX_FILTERS)
    count = f"first {shown} of {out_channels}" if shown < out_channels else f"all {out_channels}"
    kind = "RGB" if in_channels == 3 else "gray" if in_channels == 1 else "mean over inputs"
    title = f"first convolution's filters ({plain(conv_name(model, conv))})"
    ax.set_title(f"{title}\n{count}, {kh}×{kw}, {kind}, each min-max scaled", fontsize=10)
    save_png(fig, path)


def conv_name(model: nn.Module, conv: nn.Module) -> str:
    return next(name for name, m in model.named_modules() if m is conv)


def most_confident_mistakes(logits: torch.Tensor, targets: torch.Tensor, k: int) -> list[int]:
    """Indices of the (at most) k wrong predictions with the highest softmax probability,
    most confident first; ties keep evaluation order."""
    confidence, predicted = F.softmax(logits.float(), dim=1).max(1)
    return most_confident(confidence, predicted != targets, k)


def most_confident(confidence: torch.Tensor, chosen: torch.Tensor, k: int) -> list[int]:
    """Indices of the (at most) k images `chosen` ((N,) bool) of highest `confidence` (N,),
    most confident first; ties keep evaluation order."""
    indices = chosen.nonzero().flatten()
    return indices[confidence[indices].argsort(descending=True, stable=True)[:k]].tolist()


def plot_misclassified(images: torch.Tensor, true: list[str], predicted: list[str],
                       confidence: list[float], names: list[str], path: Path) -> None:  # fmt: skip
    """The given wrongly classified images (k, C, H, W) uint8, titled "true → predicted (p=…)"
    over the image's name (its file, or `#index` in the test split): test_predictions.csv's."""
    if len(images) == 0:
        plot_message("misclassified test images", "no test image was misclassified", path)
        return
    titles = [f"{true[i]} → {predicted[i]} (p={confidence[i]:.2f})\n{short_name(names[i])}"
              for i in range(len(images))]  # fmt: skip
    plot_image_grid(images, titles, "most confidently misclassified test images (true → "
                    "predicted)", (2.8, 2.8), path)  # fmt: skip


def plot_image_grid(images: torch.Tensor, titles: list[str], heading: str,
                    cell: tuple[float, float], path: Path) -> None:  # fmt: skip
    """Images (k ≥ 1, C, H, W) uint8, each over its title, four to a row of `cell` (width,
    height) inches each, under `heading`."""
    columns = min(4, len(images))
    rows = math.ceil(len(images) / columns)
    fig = new_figure(cell[0] * columns, cell[1] * rows + 0.5)
    for i, axes in enumerate(fig.subplots(rows, columns, squeeze=False).flat):
        axes.set_axis_off()
        if i < len(images):
            draw_picture(axes, images[i], titles[i])
    fig.suptitle(heading)
    save_png(fig, path)


# ---- sweeps ----


def plot_sweep_param(
    key: str, values: list[str], val_acc: list, test_acc: list, path: Path
) -> None:
    """Validation and test accuracy (%) of each job against the value it gave `key`.

    values: one override value per job (as written on the command line); accuracies are
    fractions or None for jobs without results. Numbers get a numeric axis (log when the values
    span two decades), anything else one category per distinct value.
    """
    numbers = [as_number(v) for v in values]
    numeric = all(n is not None for n in numbers)
    if numeric:
        xs = numbers
    else:
        categories = list(dict.fromkeys(values))
        xs = [categories.index(v) for v in values]
    fig = new_figure(7, 4.5)
    ax = fig.add_subplot()
    series = ((val_acc, "validation", "o", -0.08), (test_acc, "test", "s", 0.08))
    for accs, label, marker, shift in series:
        points = sorted((x, 100 * a) for x, a in zip(xs, accs, strict=True) if a is not None)
        if points:
            px, py = zip(*points, strict=True)
            if not numeric:  # side by side within a category
                px = [x + shift for x in px]
            ax.plot(px, py, marker=marker, linestyle="-" if numeric else "none", label=label)
    if numeric and min(xs) > 0 and max(xs) / min(xs) >= 100:
        ax.set_xscale("log")
    if not numeric:
        ax.set_xlim(-0.5, len(categories) - 0.5)
        ax.set_xticks(
            range(len(categories)), [plain(c) for c in categories], rotation=30, ha="right"
        )
    ax.set(xlabel=plain(key), ylabel="accuracy (%)", title=plain(f"accuracy against {key}"))
    ax.grid(alpha=0.3)
    if ax.has_data():
        ax.legend()
    else:
        ax.text(
            0.5, 0.5, "no job has results yet", ha="center", va="center", transform=ax.transAxes
        )
    save_png(fig, path)


def as_number(text: str) -> float | None:
    try:
        value = float(text)
    except ValueError:
        return None
    return value if math.isfinite(value) else None


# ---- everything, after training ----


def write_run_plots(
    run_dir: Path,
    rows: list[dict],
    classes: list[str],
    logits: torch.Tensor,
    targets: torch.Tensor,
    images_at: Callable[[list[int]], torch.Tensor],
    prep: Callable[[torch.Tensor], torch.Tensor],
    model: nn.Module,
    class_counts: dict[str, int],
    names: list[str],
) -> list[Path]:
    """All figures of a finished run into run_dir/plots/; the paths written.

    logits (N, K) float and targets (N,) int64: test-split outputs on the CPU, evaluation order;
    images_at(indices) -> uint8 (n, C, H, W) test images; prep(uint8 batch) -> model input;
    names (N,): each test image's file relative to the data's root, "" for a built-in dataset's.
    """
    out = Path(run_dir) / "plots"
    paths = {name: out / f"{name}.png" for name in PLOT_NAMES}
    write_model_plots(out, rows, class_counts, images_at, prep, model)
    write_test_plots(out, logits, targets, classes)
    wrong = most_confident_mistakes(logits, targets, MISTAKES_SHOWN)
    confidence, predicted = F.softmax(logits[wrong].float(), dim=1).max(1)  # (k,) each
    plot_misclassified(
        images_at(wrong) if wrong else torch.empty(0, dtype=torch.uint8),
        [classes[t] for t in targets[wrong].tolist()],
        [classes[p] for p in predicted.tolist()],
        confidence.tolist(),
        [names[i] or f"#{i}" for i in wrong],
        paths["misclassified"],
    )
    return list(paths.values())


def write_model_plots(folder: Path, rows: list[dict], class_counts: dict[str, int],
                      images_at: Callable[[list[int]], torch.Tensor],
                      prep: Callable[[torch.Tensor], torch.Tensor],
                      model: nn.Module) -> None:  # fmt: skip
    """The figures of any run, one label per image or several, into `folder`: the training
    curves, the training images per class (or label), test image 0's feature maps and the first
    convolution's filters."""
    plot_curves(rows, folder / "curves.png")
    plot_class_distribution(class_counts, folder / "class_distribution.png")
    first = images_at([0])  # (1, C, H, W) uint8: test image 0
    plot_feature_maps(model, prep(first)[0], first[0], folder / "feature_maps.png")
    plot_filters(model, folder / "filters.png")


def write_test_plots(
    folder: Path, logits: torch.Tensor, targets: torch.Tensor, classes: list[str]
) -> list[Path]:
    """The figures of a test's outputs alone (a run's, or cnntrain-eval's) into `folder`: the
    confusion matrix and per-class accuracy; the paths written.

    logits (N, K) float and targets (N,) int64 on the CPU; `classes`: the K names."""
    paths = [Path(folder) / f"{name}.png" for name in ("confusion_matrix", "per_class_accuracy")]
    plot_confusion_matrix(logits, targets, classes, paths[0])
    plot_per_class_accuracy(per_class_accuracy(logits, targets, classes), paths[1])
    return paths
