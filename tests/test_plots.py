"""The run's figures: each is a real, non-blank PNG; the feature-map hooks and the mistake picks."""

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from cnntrain.reporting import plots
from cnntrain.reporting.plots import (
    PLOT_NAMES,
    confusion_counts,
    conv_activations,
    filter_mosaic,
    first_middle_last,
    most_confident_mistakes,
    plot_class_distribution,
    plot_confusion_matrix,
    plot_curves,
    plot_feature_maps,
    plot_filters,
    plot_misclassified,
    plot_per_class_accuracy,
    plot_sweep_param,
    write_run_plots,
)

ODD_NAMES = ["<cat> & dog", "$5 $10", "plain"]  # HTML and mathtext specials in class names


def assert_png(path, min_side=200, max_side=4000):
    """A PNG that PIL reads, of a sensible size, under 1 MB, with visible content."""
    assert path.is_file(), path
    assert path.stat().st_size < 1_000_000
    with Image.open(path) as image:
        assert image.format == "PNG"
        assert min_side <= min(image.size) and max(image.size) <= max_side, image.size
        pixels = np.asarray(image.convert("L"), dtype=np.float64)
    assert pixels.std() > 8, f"{path.name} looks blank"


class FourConvs(nn.Module):
    """Registered early, late, middle, widen; run early, middle, widen, late: the feature maps
    must follow the forward pass (registration order would pick early, middle, widen)."""

    def __init__(self, in_channels=3, num_classes=10):
        super().__init__()
        self.early = nn.Conv2d(in_channels, 8, 3, padding=1)
        self.late = nn.Conv2d(16, 16, 3, padding=1)
        self.middle = nn.Conv2d(8, 12, 3, padding=1)
        self.bn = nn.BatchNorm2d(12)
        self.widen = nn.Conv2d(12, 16, 1)
        self.head = nn.Linear(16, num_classes)

    def forward(self, x):  # x: (N, C, H, W)
        x = torch.relu(self.early(x))  # (N, 8, H, W)
        x = nn.functional.max_pool2d(torch.relu(self.bn(self.middle(x))), 2)  # (N, 12, H/2, W/2)
        x = torch.relu(self.late(self.widen(x)))  # (N, 16, H/2, W/2)
        return self.head(x.mean((2, 3)))


class Broken(FourConvs):
    def forward(self, x):
        self.early(x)
        raise RuntimeError("boom")


def fake_rows(epochs=6):
    return [
        {
            "epoch": e,
            "train/loss": 2.0 / e,
            "train/acc": 1 - 0.7 / e,
            "val/loss": 2.2 / e,
            "val/acc": 0.9 - 0.6 / e,
            "lr": 0.1 * 0.5**e,
            "epoch_time_s": 1.5,
            "elapsed_s": 1.5 * e,
            "train/images_per_s": 3650.0,
        }
        for e in range(1, epochs + 1)
    ]


def noisy_logits(n, k, seed=0):
    """(n, k) logits that are right about 70% of the time, and (n,) int64 targets."""
    g = torch.Generator().manual_seed(seed)
    targets = torch.randint(0, k, (n,), generator=g)
    logits = torch.randn(n, k, generator=g) + 2.5 * nn.functional.one_hot(targets, k)
    return logits, targets


def uint8_images(n, channels, side=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, channels, side, side), dtype=torch.uint8, generator=g)


def no_hooks(model):
    return all(not m._forward_hooks for m in model.modules())


def test_curves(tmp_path):
    plot_curves(fake_rows(), tmp_path / "curves.png")
    assert_png(tmp_path / "curves.png")


@pytest.mark.parametrize("split", ["val", "test"])
def test_curves_name_the_split_each_epoch_was_evaluated_on(tmp_path, monkeypatch, split):
    figures = []
    monkeypatch.setattr(plots, "save_png", lambda fig, path: figures.append(fig))
    plot_curves([{**r, "val/split": split} for r in fake_rows()], tmp_path / "curves.png")
    loss_ax, acc_ax, _ = figures[0].axes
    for ax in (loss_ax, acc_ax):
        assert [t.get_text() for t in ax.get_legend().get_texts()] == ["train", split]


def test_curves_of_a_run_without_epochs_still_draw(tmp_path):
    plot_curves([], tmp_path / "curves.png")
    assert_png(tmp_path / "curves.png", min_side=150)


def test_confusion_counts_rows_are_true_columns_predicted():
    logits = torch.tensor([[9.0, 0, 0], [0, 9, 0], [9, 0, 0], [0, 0, 9]])  # predicts 0, 1, 0, 2
    targets = torch.tensor([0, 0, 2, 2])
    expected = torch.tensor([[1, 1, 0], [0, 0, 0], [1, 0, 1]])
    assert torch.equal(confusion_counts(logits, targets, 3), expected)


@pytest.mark.parametrize("k", [10, 100])
def test_confusion_matrix(tmp_path, k):
    logits, targets = noisy_logits(2000, k)
    classes = [f"class {i}" for i in range(k - len(ODD_NAMES))] + ODD_NAMES
    plot_confusion_matrix(logits, targets, classes, tmp_path / "cm.png")
    assert_png(tmp_path / "cm.png", min_side=600)


def test_per_class_accuracy_with_a_class_missing_from_the_test_split(tmp_path):
    per_class = {"a": 0.91, "b": 0.42, "<cat> & dog": None, "$5 $10": 0.7}
    plot_per_class_accuracy(per_class, tmp_path / "acc.png")
    assert_png(tmp_path / "acc.png")


def test_class_distribution(tmp_path):
    counts = {f"class {i}": 500 - 40 * i for i in range(10)}
    plot_class_distribution(counts, tmp_path / "dist.png")
    assert_png(tmp_path / "dist.png")


def test_feature_maps_follow_the_forward_pass_and_pick_first_middle_last():
    model = FourConvs().eval()
    image = torch.randn(3, 16, 16)
    layers = conv_activations(model, image, channels=8)
    assert [name for name, *_ in layers] == ["early", "middle", "widen", "late"]
    assert [shape for _, shape, _ in layers] == [(8, 16, 16), (12, 16, 16), (16, 8, 8), (16, 8, 8)]
    assert [maps.shape[0] for *_, maps in layers] == [8, 8, 8, 8]
    assert [name for name, *_ in first_middle_last(layers)] == ["early", "widen", "late"]
    assert first_middle_last(["only"]) == ["only"]
    assert first_middle_last(["a", "b"]) == ["a", "b"]


@pytest.mark.parametrize("training", [False, True])
def test_feature_maps_remove_hooks_and_keep_the_mode(tmp_path, training):
    model = FourConvs().train(training)
    model.early.train(not training)  # a mixed state must come back exactly, module by module
    modes = [m.training for m in model.modules()]
    running_mean = model.bn.running_mean.clone()
    image, shown = torch.randn(3, 16, 16), uint8_images(1, 3)[0]
    plot_feature_maps(model, image, shown, tmp_path / "maps.png")
    assert_png(tmp_path / "maps.png")
    assert no_hooks(model)
    assert [m.training for m in model.modules()] == modes
    assert torch.equal(model.bn.running_mean, running_mean)  # no batch-norm update from the pass


def test_feature_maps_remove_hooks_when_the_forward_pass_fails(tmp_path):
    model = Broken().train()
    with pytest.raises(RuntimeError, match="boom"):
        plot_feature_maps(model, torch.randn(3, 8, 8), uint8_images(1, 3)[0], tmp_path / "x.png")
    assert no_hooks(model)
    assert model.training
    assert not (tmp_path / "x.png").exists()


def test_feature_maps_of_a_grayscale_channels_last_model(tmp_path):
    model = FourConvs(in_channels=1).eval().to(memory_format=torch.channels_last)
    image = torch.randn(1, 1, 16, 16).contiguous(memory_format=torch.channels_last)[0]
    plot_feature_maps(model, image, uint8_images(1, 1)[0], tmp_path / "maps.png", channels=4)
    assert_png(tmp_path / "maps.png")


@pytest.mark.parametrize("in_channels", [1, 2, 3])
def test_filters(tmp_path, in_channels):
    plot_filters(FourConvs(in_channels=in_channels), tmp_path / "filters.png")
    assert_png(tmp_path / "filters.png")


def test_filter_mosaic_scales_each_filter_and_keeps_colour_only_for_rgb():
    ramp = torch.arange(4.0).view(1, 1, 2, 2)  # one 2×2 kernel: 0, 1, 2, 3
    gray = filter_mosaic(torch.cat([ramp, 10 * ramp + 5]))  # (2, 1, 2, 2): same after scaling
    tile, zoom = 24, 12  # 2×2 kernels zoomed ×12, tiles 2 px apart, 2 columns
    assert gray.shape == (3, 2 + tile + 2, 2 + 2 * (tile + 2))
    first = gray[:, 2 : 2 + tile, 2 : 2 + tile]
    second = gray[:, 2 : 2 + tile, 4 + tile : 4 + 2 * tile]
    assert torch.allclose(first, second)
    assert torch.allclose(first[0, ::zoom, ::zoom], torch.tensor([[0.0, 1 / 3], [2 / 3, 1.0]]))
    assert torch.equal(first[0], first[1]) and torch.equal(first[0], first[2])  # gray

    spike = torch.tensor([0.0, 0, 0, 6]).view(1, 1, 2, 2)
    two_inputs = filter_mosaic(torch.cat([ramp, spike], 1))  # (1, 2, 2, 2): mean 0, .5, 1, 4.5
    expected = torch.tensor([[0.0, 1 / 9], [2 / 9, 1.0]])
    assert torch.allclose(two_inputs[0, ::zoom, ::zoom], expected)

    rgb = filter_mosaic(torch.randn(8, 3, 3, 3))
    assert rgb.min() == 0 and rgb.max() == 1
    assert not torch.equal(rgb[0], rgb[1])  # colour kept
    assert filter_mosaic(torch.randn(100, 3, 3, 3)).shape == (3, 2 + 8 * 26, 2 + 8 * 26)  # 64 shown


def test_most_confident_mistakes_exactly():
    logits = torch.tensor(
        [
            [0.0, 5.0, 0.0],  # 0: wrong (true 0), very confident
            [3.0, 0.0, 0.0],  # 1: right
            [0.0, 0.0, 1.0],  # 2: wrong (true 1), unsure
            [0.0, 0.0, 5.0],  # 3: wrong (true 0), as confident as 0: evaluation order breaks ties
            [0.0, 2.0, 0.0],  # 4: wrong (true 2), fairly confident
            [0.0, 9.0, 0.0],  # 5: right, the most confident of all
        ]
    )
    targets = torch.tensor([0, 0, 1, 0, 2, 1])
    assert most_confident_mistakes(logits, targets, 16) == [0, 3, 4, 2]
    assert most_confident_mistakes(logits, targets, 2) == [0, 3]
    assert most_confident_mistakes(logits, logits.argmax(1), 16) == []


def test_misclassified_grayscale(tmp_path):
    images = uint8_images(5, 1)
    true, predicted = ["<cat> & dog"] * 5, ["$5 $10"] * 5
    names = ["a/b.jpg"] * 5
    plot_misclassified(
        images, true, predicted, [0.97, 0.9, 0.8, 0.7, 0.6], names, tmp_path / "m.png"
    )
    assert_png(tmp_path / "m.png")


def test_misclassified_when_nothing_is_wrong(tmp_path):
    empty = torch.empty(0, 3, 16, 16, dtype=torch.uint8)
    plot_misclassified(empty, [], [], [], [], tmp_path / "m.png")
    assert_png(tmp_path / "m.png", min_side=150)


@pytest.mark.parametrize(
    "values",
    [["0.1", "0.01", "0.001", "0.1"], ["simplecnn", "resnet", "lenet5", "(unset)"]],
    ids=["numeric", "categorical"],
)
def test_sweep_param_plot(tmp_path, values):
    plot_sweep_param("optimizer.lr", values, [0.8, 0.6, None, 0.7], [0.79, 0.58, None, None],
                     tmp_path / "s.png")  # fmt: skip
    assert_png(tmp_path / "s.png")


def run_plots(tmp_path, logits, targets, in_channels=3):
    """write_run_plots on a small test split; also returns every index list images_at got."""
    k = logits.shape[1]
    images = uint8_images(len(targets), in_channels)
    asked = []

    def images_at(indices):
        asked.append(list(indices))
        return images[list(indices)]

    model = FourConvs(in_channels, k).eval()
    paths = write_run_plots(
        tmp_path,
        fake_rows(),
        [f"class {i}" for i in range(k)],
        logits,
        targets,
        images_at,
        lambda batch: batch.float() / 255 - 0.5,
        model,
        {f"class {i}": 100 + i for i in range(k)},
        [f"dir/{i}.png" if i % 2 else "" for i in range(len(targets))],
    )
    assert no_hooks(model) and not model.training
    return paths, asked


def test_write_run_plots(tmp_path, monkeypatch):
    drawn = {}

    def spy(images, true, predicted, confidence, names, path):
        drawn.update(images=images, true=true, predicted=predicted, confidence=confidence,
                     names=names)  # fmt: skip
        plot_misclassified(images, true, predicted, confidence, names, path)  # the real one

    monkeypatch.setattr(plots, "plot_misclassified", spy)
    logits, targets = noisy_logits(300, 10)
    paths, asked = run_plots(tmp_path, logits, targets)
    assert [p.name for p in paths] == [f"{name}.png" for name in PLOT_NAMES]
    assert all(p.parent == tmp_path / "plots" for p in paths)
    for path in paths:
        assert_png(path)
    wrong = most_confident_mistakes(logits, targets, 16)
    assert asked == [[0], wrong] and len(wrong) == 16
    probabilities = logits.softmax(1)
    assert drawn["true"] == [f"class {targets[i]}" for i in wrong]
    assert drawn["predicted"] == [f"class {probabilities[i].argmax()}" for i in wrong]
    assert drawn["confidence"] == pytest.approx([probabilities[i].max().item() for i in wrong])
    assert drawn["images"].shape == (16, 3, 16, 16)
    # captions name the file (odd indices here) or the index in the test split (built-in data)
    assert drawn["names"] == [f"dir/{i}.png" if i % 2 else f"#{i}" for i in wrong]


def test_write_run_plots_grayscale_without_mistakes(tmp_path):
    targets = torch.arange(40) % 4
    logits = 5.0 * nn.functional.one_hot(targets, 4)
    paths, asked = run_plots(tmp_path, logits, targets, in_channels=1)
    assert asked == [[0]]  # no mistakes: no images to fetch, yet the figure says so
    for path in paths:
        assert_png(path, min_side=150)


@pytest.fixture
def figures(monkeypatch):
    """The figures the plot functions draw (still written as PNGs): to check what their axes
    hold, which a blank-pixel check cannot (an empty axes frame is not blank)."""
    drawn = []
    save = plots.save_png

    def keep(fig, path):
        drawn.append(fig)
        save(fig, path)

    monkeypatch.setattr(plots, "save_png", keep)
    return drawn


def line_data(ax) -> list[list[float]]:
    return [list(line.get_ydata()) for line in ax.get_lines()]


def bar_heights(ax) -> list[float]:
    return [patch.get_height() for patch in ax.patches]


def test_curves_hold_every_epochs_values(tmp_path, figures):
    rows = fake_rows()
    plot_curves(rows, tmp_path / "curves.png")
    loss_ax, acc_ax, lr_ax = figures[0].axes[:3]
    assert line_data(loss_ax) == [
        pytest.approx([r[k] for r in rows]) for k in ("train/loss", "val/loss")
    ]
    assert line_data(acc_ax) == [
        pytest.approx([100 * r[k] for r in rows]) for k in ("train/acc", "val/acc")
    ]
    assert line_data(lr_ax) == [pytest.approx([r["lr"] for r in rows])]
    assert list(loss_ax.get_lines()[0].get_xdata()) == [r["epoch"] for r in rows]


def test_confusion_matrix_shows_the_counts(tmp_path, figures):
    logits, targets = noisy_logits(300, 4)
    plot_confusion_matrix(logits, targets, list("abcd"), tmp_path / "cm.png")
    shown = figures[0].axes[0].get_images()[0].get_array()
    assert np.array_equal(shown, confusion_counts(logits, targets, 4).numpy())


def test_class_bars_hold_the_values(tmp_path, figures):
    plot_per_class_accuracy({"a": 0.91, "b": 0.42, "c": None}, tmp_path / "acc.png")
    plot_class_distribution({"a": 30, "b": 10, "c": 5}, tmp_path / "dist.png")
    assert bar_heights(figures[0].axes[0]) == pytest.approx([91.0, 42.0, 0.0])
    assert bar_heights(figures[1].axes[0]) == [30, 10, 5]


def test_image_figures_show_the_images(tmp_path, figures):
    model = FourConvs().eval()
    plot_filters(model, tmp_path / "filters.png")
    shown = figures[0].axes[0].get_images()[0].get_array()  # (H, W, 3) mosaic in [0, 1]
    assert np.array_equal(shown, filter_mosaic(model.early.weight).permute(1, 2, 0).numpy())
    images = uint8_images(3, 3)
    plot_misclassified(images, ["a"] * 3, ["b"] * 3, [0.9, 0.8, 0.7], ["x"] * 3, tmp_path / "m.png")
    pictures = [ax.get_images()[0].get_array() for ax in figures[1].axes if ax.get_images()]
    assert len(pictures) == 3 and all(np.ptp(p) > 0 for p in pictures)
    plot_feature_maps(model, torch.randn(3, 8, 8), images[0], tmp_path / "maps.png")
    maps = [ax.get_images()[0].get_array() for ax in figures[2].axes if ax.get_images()]
    assert len(maps) > 3 and all(np.ptp(m) > 0 for m in maps)  # input + maps of three convs
