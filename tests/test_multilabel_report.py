"""A multi-label run's figures and report.html: the four plots hold the test's numbers, the page
shows mAP, the per-label table and the figures, and a single-label page keeps its own."""

import json

import numpy as np
import pytest
import torch
from PIL import Image
from sklearn.metrics import precision_recall_curve as sklearn_curve

from cnntrain.metrics.multilabel import average_precisions, multilabel_losses
from cnntrain.reporting import multilabel_plots, plots
from cnntrain.reporting.multilabel_plots import (
    MULTILABEL_PLOTS,
    cooccurrence_counts,
    curve_labels,
    error_titles,
    precision_recall_curve,
    write_multilabel_plots,
)
from cnntrain.reporting.report import write_eval_report, write_run_report

LABELS = ["sky", "<tree> & bush", "$5 road", "water", "never"]  # "never": no positive image


def fake_test(n=120, seed=0):
    """(n, 5) logits that rank positives higher, (n, 5) 0/1 targets ("never" has no positive,
    image 0 has no label at all) and (n, 3, 32, 32) uint8 images."""
    g = torch.Generator().manual_seed(seed)
    rates = torch.tensor([0.6, 0.3, 0.15, 0.4, 0.0])
    targets = (torch.rand(n, 5, generator=g) < rates).float()
    targets[0] = 0
    logits = torch.randn(n, 5, generator=g) + 2.0 * targets - 1.0
    images = torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=g)
    return logits, targets, images


def assert_png(path):
    with Image.open(path) as image:
        assert image.format == "PNG" and min(image.size) >= 150
        assert np.asarray(image.convert("L"), dtype=np.float64).std() > 8, f"{path} is blank"


@pytest.fixture
def figures(monkeypatch):
    """The figures drawn (still written as PNGs), to check what their axes hold."""
    drawn, save = [], plots.save_png

    def keep(fig, path):
        drawn.append(fig)
        save(fig, path)

    monkeypatch.setattr(multilabel_plots, "save_png", keep)
    monkeypatch.setattr(plots, "save_png", keep)  # the image grid's
    return drawn


def write_plots(folder, logits, targets, images, thresholds=None):
    """write_multilabel_plots on the fake test; also returns every index list images_at got."""
    asked = []

    def images_at(indices):
        asked.append(list(indices))
        return images[list(indices)]

    thresholds = torch.full((5,), 0.5, dtype=torch.float64) if thresholds is None else thresholds
    names = [f"photos/{i}.jpg" if i % 2 else "" for i in range(len(targets))]
    paths = write_multilabel_plots(folder, logits, targets, thresholds, LABELS, images_at, names)
    return paths, asked


def test_write_multilabel_plots_writes_the_four_figures(tmp_path, figures):
    logits, targets, images = fake_test()
    paths, asked = write_plots(tmp_path / "plots", logits, targets, images)
    assert [p.name for p in paths] == [f"{name}.png" for name in MULTILABEL_PLOTS]
    for path in paths:
        assert_png(path)
    ap_fig, curves_fig, matrix_fig, errors_fig = figures

    ap = average_precisions(logits, targets)
    bars = [patch.get_width() for patch in ap_fig.axes[0].patches]
    assert bars == pytest.approx([*sorted(ap[:4].tolist(), reverse=True), 0.0])  # best on top
    notes = [text.get_text() for text in ap_fig.axes[0].texts]
    assert notes[-1] == "no positives"
    mean_line = ap_fig.axes[0].get_lines()[0]
    assert mean_line.get_xdata()[0] == pytest.approx(ap.nanmean().item())

    legend = [text.get_text() for text in curves_fig.axes[0].get_legend().get_texts()]
    assert len(legend) == 4 and not any("never" in entry for entry in legend)  # 4 with positives
    assert legend[0].startswith(f"sky: AP {ap[0]:.3f}")

    shown = matrix_fig.axes[0].get_images()[0].get_array()
    assert np.array_equal(shown, (targets.T @ targets).numpy())

    worst = multilabel_losses(logits, targets).argsort(descending=True)[:12].tolist()
    assert asked == [worst]  # the 12 largest losses, worst first, fetched once
    pictures = [ax.get_images()[0].get_array() for ax in errors_fig.axes if ax.get_images()]
    assert len(pictures) == 12
    assert np.array_equal(pictures[0], images[worst[0]].permute(1, 2, 0).numpy())


def test_a_tiny_grayscale_test_split(tmp_path):
    """Fewer images than ERRORS_SHOWN, one channel, and no positive at all: each figure still
    draws (the curves say why they are empty)."""
    logits, _, images = fake_test(n=5)
    targets = torch.zeros(5, 5)
    paths, asked = write_plots(tmp_path, logits, targets, images[:, :1])
    assert asked == [multilabel_losses(logits, targets).argsort(descending=True).tolist()]
    for path in paths:
        assert_png(path)


def test_precision_recall_curve_is_scikit_learns_and_sums_to_the_average_precision():
    """Against scikit-learn's curve (ties included) and M1's average precision (torchmetrics')."""
    g = torch.Generator().manual_seed(1)
    scores = (torch.rand(300, generator=g) * 20).round() / 20  # many ties
    positives = torch.rand(300, generator=g) < 0.3
    recall, precision = precision_recall_curve(scores.double(), positives)
    theirs_precision, theirs_recall, _ = sklearn_curve(positives.numpy(), scores.numpy())
    # scikit-learn lists thresholds from the lowest up, ending at (recall 0, precision 1)
    assert recall == pytest.approx(theirs_recall[::-1])
    assert precision == pytest.approx(theirs_precision[::-1])

    logits = torch.randn(300, 2, generator=g)  # two labels: torchmetrics wants more than one
    targets = torch.stack([positives, ~positives], 1).float()
    recall, precision = precision_recall_curve(torch.sigmoid(logits[:, 0].double()), positives)
    area = float(np.sum(np.diff(recall) * precision[1:]))
    assert area == pytest.approx(average_precisions(logits, targets)[0].item())


def test_curve_labels_are_the_most_frequent_and_the_worst_once_each():
    ap = torch.tensor([0.9, 0.2, float("nan"), 0.5, 0.1, 0.8, 0.3], dtype=torch.float64)
    support = torch.tensor([50, 40, 0, 30, 5, 4, 3])
    assert curve_labels(ap, support) == [
        (0, "frequent"),
        (1, "frequent"),
        (3, "frequent"),
        (4, "worst"),
        (6, "worst"),
        (5, "worst"),
    ]


def test_error_titles_name_true_and_predicted_labels():
    positives = torch.tensor([[0, 0, 0, 0, 0], [1, 1, 0, 0, 0]], dtype=torch.bool)
    predicted = torch.tensor([[0, 0, 1, 0, 0], [0, 0, 0, 0, 0]], dtype=torch.bool)
    losses = torch.tensor([0.25, 1.5])
    titles = error_titles([1, 0], losses, positives, predicted, LABELS, ["", "a/b.png"])
    assert titles == [
        "true: sky, <tree> & bush\npredicted: none\na/b.png (loss 1.5)",
        "true: none\npredicted: $5 road\n#0 (loss 0.25)",
    ]
    assert cooccurrence_counts(positives).tolist()[0][:2] == [1, 1]


# ---- report.html ----


def epoch_row(e):
    return {
        "epoch": e,
        "train/loss": 0.6 / e,
        "train/acc": 0.1 * e,
        "val/loss": 0.5 / e,
        "val/acc": 0.12 * e,
        "val/mAP": 0.4 + 0.1 * e,
        "val/f1_micro": 0.3 + 0.1 * e,
        "val/f1_macro": 0.2 + 0.1 * e,
        "val/hamming_loss": 0.2 / e,
        "lr": 0.01,
    }


def per_label(values: list) -> dict:
    return dict(zip(LABELS, values, strict=True))


def multilabel_results(logits, targets):
    ap = average_precisions(logits, targets).tolist()
    support = targets.sum(0).long().tolist()
    return {
        "task": "multi",
        "test/mAP": 0.7345,
        "test/f1_micro": 0.6512,
        "test/f1_macro": 0.5021,
        "test/acc": 0.2311,
        "test/hamming_loss": 0.1234,
        "test/loss": 0.3456,
        "test/per_label_ap": per_label([None if np.isnan(a) else a for a in ap]),
        "test/per_label_f1": per_label([0.81, 0.52, 0.33, 0.64, 0.0]),
        "test/per_label_support": per_label(support),
        "test/count": len(targets),
        "test/split": "test",
        "thresholds": per_label([0.41, 0.35, 0.2874, 0.5, 0.5]),
        "thresholds_rule": "f1",
        "thresholds_fitted_on": "val",
        "best_epoch": 2,
        "monitor": "val/mAP",
        "best_val/mAP": 0.6,
        "classes": LABELS,
        "model": "simplecnn",
        "dataset": "mosaic",
        "epochs": 3,
    }


def make_multilabel_run(folder, finished=True):
    logits, targets, images = fake_test()
    (folder / ".hydra").mkdir(parents=True)
    rows = [epoch_row(e) for e in (1, 2, 3)]
    (folder / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    if finished:
        write_plots(folder / "plots", logits, targets, images)
        (folder / "results.json").write_text(json.dumps(multilabel_results(logits, targets)))
    return folder, (logits, targets)


def figure_names(page):
    return [part.split('"', 1)[0] for part in page.split('alt="')[1:]]


def test_multilabel_run_report(tmp_path, monkeypatch):
    curves, save = [], plots.save_png  # the curves the report draws, kept in memory: not shown

    def keep(fig, path):
        if path.name == "curves.png":
            curves.append(fig)
        else:
            save(fig, path)

    monkeypatch.setattr(plots, "save_png", keep)
    run, (logits, targets) = make_multilabel_run(tmp_path / "run")
    page = write_run_report(run).read_text()

    assert '<p class="big">73.45%</p>' in page and "test mAP" in page
    for label, value in [
        ("micro F1", "65.12%"),
        ("exact-match accuracy", "23.11%"),
        ("Hamming loss", "0.1234"),
        ("thresholds", "per label, maximizing F1 on the val split"),
        ("best validation mAP", "60.00%"),
    ]:
        assert f'<th class="text">{label}</th><td>{value}</td>' in page
    assert "test accuracy" not in page and "balanced accuracy" not in page
    ap = average_precisions(logits, targets)
    support = targets.sum(0).long().tolist()
    assert (
        f'<tr><td class="text">sky</td><td>{100 * ap[0]:.2f}%</td><td>81.00%</td>'
        f"<td>{support[0]}</td><td>0.410</td></tr>" in page
    )
    assert "&lt;tree&gt; &amp; bush" in page and "<td>0.287</td>" in page
    assert '<tr><td class="text">never</td><td>no positives</td><td>0.00%</td><td>0</td>' in page
    header = "epoch train/loss train/acc val/loss val/acc val/mAP val/f1_micro val/f1_macro"
    assert "<tr><th>" + "</th><th>".join(header.split()) + "</th>" in page
    epoch_1 = [1, 0.6, "10.00%", 0.5, "12.00%", "50.00%", "40.00%", "30.00%", 0.2, 0.01]
    assert "<tr><td>" + "</td><td>".join(map(str, epoch_1)) + "</td></tr>" in page
    assert figure_names(page) == [f"{name}.png" for name in MULTILABEL_PLOTS]
    assert "Test average precision (AP) of each label" in page
    # no curves.png: drawn here from the rows, the mAP beside exact-match accuracy
    accuracy_lines = curves[0].axes[1].get_lines()
    assert [line.get_label() for line in accuracy_lines] == ["train", "val", "val mAP"]
    assert list(accuracy_lines[2].get_ydata()) == pytest.approx([50.0, 60.0, 70.0])


def test_multilabel_eval_report(tmp_path):
    folder = tmp_path / "run" / "eval" / "12-00-00"
    logits, targets, images = fake_test()
    write_plots(folder / "plots", logits, targets, images)
    results = {**multilabel_results(logits, targets), "thresholds_rule": 0.5}
    (folder / "results.json").write_text(json.dumps(results))
    page = write_eval_report(folder).read_text()
    assert '<p class="big">73.45%</p>' in page
    assert '<th class="text">thresholds</th><td>0.5 for every label</td>' in page
    assert '<td class="text">never</td><td>no positives</td>' in page
    assert figure_names(page) == [f"{name}.png" for name in MULTILABEL_PLOTS]
    assert "test accuracy" not in page


def test_unfinished_multilabel_run_names_its_best_map(tmp_path):
    run, _ = make_multilabel_run(tmp_path / "run", finished=False)
    page = write_run_report(run).read_text()
    assert "best validation mAP so far: 70.00% (epoch 3)" in page


def test_a_single_label_report_has_no_multilabel_parts(tmp_path):
    run = tmp_path / "run"
    (run / ".hydra").mkdir(parents=True)
    row = {"epoch": 1, "train/loss": 1.0, "val/acc": 0.5}
    (run / "metrics.jsonl").write_text(json.dumps(row) + "\n")
    results = {"test/acc": 0.5, "classes": ["a", "b"], "test/per_class_acc": {"a": 0.5, "b": 0.5}}
    (run / "results.json").write_text(json.dumps(results))
    page = write_run_report(run).read_text()
    assert "test accuracy" in page and "<h2>classes</h2>" in page
    assert "mAP" not in page and "<h2>labels</h2>" not in page
    assert "Loss, accuracy and learning rate per epoch." in page
