"""A sweep's jobs as rows ranked best first: `summary.csv` and a rich table."""

import csv
import io
import json
import math
from pathlib import Path

import yaml
from rich.table import Table

from cnntrain.core.files import write_text
from cnntrain.core.safe_text import csv_cell

COLUMNS = (
    "rank",
    "job",
    "overrides",
    "val/acc",
    "test/acc",
    "best_epoch",
    "train_time_s",
    "status",
)


# Overrides a sweeper adds to wire a job to its trial (cnntrain/pruning.py): not settings.
WIRING = "++callbacks.optuna_pruning."
FINISHED = ("completed", "pruned")  # statuses of jobs that ran to their end


def job_row(job_dir: Path) -> dict:
    """One job's overrides and results: status `completed`, `pruned` (an Optuna sweep stopped
    it early), or `failed: …`/`incomplete` when it has no results."""
    overrides_file = job_dir / ".hydra" / "overrides.yaml"
    overrides = yaml.safe_load(overrides_file.read_text()) if overrides_file.exists() else []
    settings = [o for o in overrides if not o.startswith(WIRING)]
    row = {"job": job_dir.name, "overrides": " ".join(settings), "status": "incomplete"}
    results_file = job_dir / "results.json"
    if results_file.exists():
        r = json.loads(results_file.read_bytes())
        row.update({k: r.get(k) for k in ("test/acc", "best_epoch", "train_time_s")})
        row["val/acc"] = r.get("best_val/acc")
        row["status"] = "pruned" if r.get("stopped_by") == "pruned" else "completed"
    elif (job_dir / "error.txt").exists():
        row["status"] = "failed: " + (job_dir / "error.txt").read_text().strip()
    return row


def best_first(row: dict) -> float:
    """Sort key: highest validation accuracy first; jobs without one last."""
    acc = row.get("val/acc")
    return -acc if isinstance(acc, float) and not math.isnan(acc) else math.inf


def sweep_rows(sweep_dir: Path) -> list[dict]:
    """Every job folder's row, ranked by validation accuracy (test accuracy is not for choosing)."""
    jobs = sorted(
        (p for p in sweep_dir.iterdir() if p.is_dir() and p.name.isdigit()),
        key=lambda p: int(p.name),
    )
    rows = sorted((job_row(j) for j in jobs), key=best_first)
    for rank, row in enumerate(rows, 1):
        row["rank"] = rank
    return rows


def write_sweep_summary(sweep_dir: Path) -> list[dict]:
    rows = sweep_rows(sweep_dir)
    out = io.StringIO()
    writer = csv.DictWriter(out, COLUMNS, lineterminator="\n", extrasaction="ignore")
    writer.writeheader()
    writer.writerows({k: csv_cell(v) for k, v in row.items()} for row in rows)
    write_text(sweep_dir / "summary.csv", out.getvalue())
    return rows


def sweep_table(rows: list[dict]) -> Table:
    table = Table(title="sweep, best first (by validation accuracy)")
    for column in COLUMNS:
        table.add_column(
            column, justify="right" if column not in ("overrides", "status") else "left"
        )
    for row in rows:
        table.add_row(*(cell(row.get(c)) for c in COLUMNS))
    return table


def cell(value) -> str:
    if isinstance(value, float):
        return f"{value:.4f}"
    return "" if value is None else str(value)
