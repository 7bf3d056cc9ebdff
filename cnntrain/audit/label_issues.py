"""Likely label errors: cleanlab's confident learning over out-of-fold probabilities, ranked
most likely first, as audit/label_issues.csv."""

from pathlib import Path

import numpy as np

from cnntrain.audit.pool import Pool
from cnntrain.core.errors import UserError
from cnntrain.core.extras import require
from cnntrain.data.split_table import write_csv

LABEL_ISSUES_FILE = "label_issues.csv"
LABEL_ISSUE_COLUMNS = (
    "rank",
    "path",
    "split",
    "given",
    "suggested",
    "given_probability",
    "suggested_probability",
)
DIGITS = 6  # probabilities in the CSV


def rank_label_issues(pool: Pool, probabilities, readable) -> list[dict]:
    """The images cleanlab's find_label_issues flags, most likely error first (lowest
    probability of the given label: "self_confidence"), each a row of LABEL_ISSUE_COLUMNS; the
    suggested class is the most probable one. `probabilities`: (N, classes) out-of-sample;
    `readable`: (N,) bool, the images they hold evidence on (the others are left out)."""
    require("cleanlab", "audit", "cnntrain-audit --folds")
    from cleanlab.filter import find_label_issues  # a heavy import: only when asked for

    labels = np.asarray(pool.labels, dtype=np.int64)
    probs = np.asarray(probabilities, dtype=np.float64)
    if probs.shape != (len(labels), len(pool.classes)):
        raise UserError(
            f"label issues need one probability per image and class, "
            f"{(len(labels), len(pool.classes))}; got {probs.shape}"
        )
    kept = np.flatnonzero(readable)
    ranked = find_label_issues(
        labels[kept], probs[kept], return_indices_ranked_by="self_confidence", n_jobs=1
    )  # n_jobs=1: no process pool (cleanlab's tip; fast enough for 10⁵ images)
    return [issue_row(pool, probs, labels, int(kept[i]), rank) for rank, i in enumerate(ranked, 1)]


def issue_row(pool: Pool, probs: np.ndarray, labels: np.ndarray, i: int, rank: int) -> dict:
    """Image i's row: where it is, its given and most probable class, and their probabilities."""
    given, suggested = int(labels[i]), int(probs[i].argmax())
    return {
        "rank": rank,
        "path": pool.names[i],
        "split": pool.splits[i],
        "given": pool.classes[given],
        "suggested": pool.classes[suggested],
        "given_probability": round(float(probs[i, given]), DIGITS),
        "suggested_probability": round(float(probs[i, suggested]), DIGITS),
    }


def write_label_issues(rows: list[dict], folder: Path) -> Path:
    """folder/label_issues.csv (atomically, every cell safe to open in a spreadsheet)."""
    path = Path(folder) / LABEL_ISSUES_FILE
    write_csv(path, LABEL_ISSUE_COLUMNS, [[row[c] for c in LABEL_ISSUE_COLUMNS] for row in rows])
    return path
