"""test_predictions.csv: every test image's file, true and predicted class, confidence and loss,
worst first, so a mislabelled or confusing image can be found and fixed. With several labels per
image: its true and predicted label sets (LABEL_JOIN between labels) and each label's
probability."""

import csv
import io
from pathlib import Path

import torch
import torch.nn.functional as F

from cnntrain.core.files import write_text
from cnntrain.core.safe_text import csv_row
from cnntrain.data.listing import label_set_text
from cnntrain.metrics import label_probabilities, multilabel_losses
from cnntrain.metrics.multilabel import at_thresholds

PREDICTIONS_FILE = "test_predictions.csv"
COLUMNS = ("index", "path", "true", "predicted", "confidence", "loss")


def multilabel_columns(labels: list[str]) -> tuple[str, ...]:
    """The columns with several labels per image: a `p_<label>` probability column per label."""
    return ("index", "path", "true", "predicted", "loss", *(f"p_{label}" for label in labels))


def image_names(files: list[str] | None, root: str | None, count: int) -> list[str]:
    """What identifies each of `count` evaluated images: its file's path relative to the data's
    `root` (POSIX separators; the path as given where it is not under `root`), or "" for images
    of a built-in dataset (arrays: the `index` column identifies them)."""
    if files is None:
        return [""] * count
    base = Path(root) if root else None
    return [relative(Path(f), base) for f in files]


def relative(path: Path, base: Path | None) -> str:
    if base is not None and path.is_relative_to(base):
        return path.relative_to(base).as_posix()
    return path.as_posix()


def prediction_rows(logits: torch.Tensor, targets: torch.Tensor, classes: list[str],
                    names: list[str]) -> list[tuple]:  # fmt: skip
    """One row per image (COLUMNS), sorted by loss, largest first (ties: evaluation order).

    logits (N, K) float and targets (N,) int64 on the CPU, in evaluation order; `names` (N,)."""
    logits = logits.float()
    losses = F.cross_entropy(logits, targets, reduction="none")  # (N,) nats
    confidence, predicted = F.softmax(logits, dim=1).max(1)  # (N,) each
    order = losses.argsort(descending=True, stable=True).tolist()
    # Python lists once: tensors indexed row by row cost ~9 µs a row (0.45 s per 50k rows).
    true, guess, sure, loss = (t.tolist() for t in (targets, predicted, confidence, losses))
    return [
        (i, names[i], classes[true[i]], classes[guess[i]], round(sure[i], 6), round(loss[i], 6))
        for i in order
    ]


def multilabel_prediction_rows(logits: torch.Tensor, targets: torch.Tensor, labels: list[str],
                               names: list[str],
                               thresholds: torch.Tensor) -> list[tuple]:  # fmt: skip
    """One row per image (multilabel_columns), sorted by loss, largest first (ties: evaluation
    order): logits (N, L) and targets (N, L) 0/1 on the CPU, `thresholds` (L,) probabilities."""
    probabilities = label_probabilities(logits)  # (N, L) float64, as the metrics
    losses = multilabel_losses(logits, targets)  # (N,)
    predicted = at_thresholds(probabilities, thresholds)  # (N, L)
    order = losses.argsort(descending=True, stable=True).tolist()
    true, guess = (t.bool().tolist() for t in (targets, predicted))
    p, loss = probabilities.tolist(), losses.tolist()

    return [(i, names[i], label_set_text(labels, true[i]), label_set_text(labels, guess[i]),
             round(loss[i], 6),
             *(round(v, 6) for v in p[i])) for i in order]  # fmt: skip


def write_predictions(folder: Path, rows: list[tuple], columns: tuple[str, ...] = COLUMNS) -> Path:
    """`folder`/test_predictions.csv (atomic; cells safe to open in a spreadsheet)."""
    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow(columns)
    writer.writerows(csv_row(row) for row in rows)
    path = Path(folder) / PREDICTIONS_FILE
    write_text(path, text.getvalue())
    return path


def short_name(name: str, width: int = 32) -> str:
    """`name` cut from the left to fit `width` characters (the file name matters most)."""
    return name if len(name) <= width else "…" + name[-(width - 1) :]
