"""A sweep's jobs as rows ranked best first: `summary.csv` and a rich table."""

import csv
import io
import json
import math
from pathlib import Path

import yaml
from rich.table import Table

from cnntrain.core.files import write_text
from cnntrain.core.overrides import override_key, override_value
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
# Jobs with several labels per image: their best validation mAP (which ranks them) and test mAP,
# after test/acc (then the exact match)
MULTI_LABEL_COLUMNS = ("val/mAP", "test/mAP")


# Overrides a sweeper adds to wire a job to its trial (cnntrain/pruning.py): not settings.
WIRING = "++callbacks.optuna_pruning."
FINISHED = ("completed", "pruned")  # statuses of jobs that ran to their end


def job_row(job_dir: Path) -> dict:
    """One job's overrides and results: status `completed`, `pruned` (an Optuna sweep stopped
    it early), or `failed: …`/`incomplete` when it has no results."""
    overrides_file = job_dir / ".hydra" / "overrides.yaml"
    overrides = yaml.safe_load(overrides_file.read_text()) if overrides_file.exists() else []
    settings = [o for o in overrides if not o.startswith(WIRING)]
    row = {"job": job_dir.name, "overrides": " ".join(settings), "status": "incomplete",
           "settings": {override_key(o): override_value(o) for o in settings}}  # fmt: skip
    results_file = job_dir / "results.json"
    if results_file.exists():
        r = json.loads(results_file.read_bytes())
        row.update({k: r.get(k) for k in ("test/acc", "best_epoch", "train_time_s")})
        row["val/acc"] = r.get("best_val/acc")
        if r.get("task") == "multi":
            row["val/mAP"], row["test/mAP"] = r.get("best_val/mAP"), r.get("test/mAP")
        row["status"] = "pruned" if r.get("stopped_by") == "pruned" else "completed"
    elif (job_dir / "error.txt").exists():
        row["status"] = "failed: " + (job_dir / "error.txt").read_text().strip()
    return row


def best_first(row: dict) -> float:
    """Sort key: highest validation accuracy (mAP with several labels per image) first; jobs
    without one last."""
    acc = row.get("val/mAP", row.get("val/acc"))
    return -acc if isinstance(acc, float) and not math.isnan(acc) else math.inf


def result_columns(rows: list[dict]) -> tuple[str, ...]:
    """COLUMNS after `job`, with MULTI_LABEL_COLUMNS when a job has several labels per image."""
    extra = MULTI_LABEL_COLUMNS if any("val/mAP" in r for r in rows) else ()
    at = COLUMNS.index("test/acc") + 1
    return (*COLUMNS[2:at], *extra, *COLUMNS[at:])


def sweep_rows(sweep_dir: Path) -> list[dict]:
    """Every job folder's row, ranked by validation accuracy or mAP (test figures are not for
    choosing)."""
    jobs = sorted(
        (p for p in sweep_dir.iterdir() if p.is_dir() and p.name.isdigit()),
        key=lambda p: int(p.name),
    )
    rows = sorted((job_row(j) for j in jobs), key=best_first)
    for rank, row in enumerate(rows, 1):
        row["rank"] = rank
    return rows


def swept_keys(rows: list[dict]) -> list[str]:
    """Keys whose value differs between jobs (a job without the key counts as a value)."""
    keys = list(dict.fromkeys(k for r in rows for k in r["settings"]))
    return [k for k in keys if len({r["settings"].get(k) for r in rows}) > 1]


def constant_settings(rows: list[dict]) -> str:
    """`key=value`s every job has alike: said once, not on every row."""
    swept = set(swept_keys(rows))
    first = rows[0]["settings"] if rows else {}
    return " ".join(f"{k}={v}" for k, v in first.items() if k not in swept)


def with_swept(rows: list[dict]) -> tuple[list[str], list[dict]]:
    """The swept keys, and each row with one field per swept key (its value, or empty)."""
    keys = swept_keys(rows)
    return keys, [{**r, **{k: r["settings"].get(k, "") for k in keys}} for r in rows]


def write_sweep_summary(sweep_dir: Path) -> list[dict]:
    """summary.csv: COLUMNS with a column per swept key after `job` (`overrides` keeps each
    job's whole command line, for scripts)."""
    rows = sweep_rows(sweep_dir)
    keys, wide = with_swept(rows)
    out = io.StringIO()
    columns = [*COLUMNS[:2], *keys, *result_columns(rows)]
    writer = csv.DictWriter(out, columns, lineterminator="\n", extrasaction="ignore")
    writer.writeheader()
    writer.writerows({k: csv_cell(v) for k, v in row.items()} for row in wide)
    write_text(sweep_dir / "summary.csv", out.getvalue())
    return rows


def sweep_table(rows: list[dict]) -> Table:
    """The console's table: a column per swept key; what every job shares, once, below."""
    keys, wide = with_swept(rows)
    shared = constant_settings(rows)
    by = "mAP" if any("val/mAP" in r for r in rows) else "accuracy"
    table = Table(title=f"sweep, best first (by validation {by})",
                  caption=f"every job: {shared}" if shared else None)  # fmt: skip
    columns = [*COLUMNS[:2], *keys, *(c for c in result_columns(rows) if c != "overrides")]
    for column in columns:
        table.add_column(column, justify="left" if column in (*keys, "status") else "right")
    for row in wide:
        table.add_row(*(cell(row.get(c)) for c in columns))
    return table


def cell(value) -> str:
    if isinstance(value, float):
        return f"{value:.4f}"
    return "" if value is None else str(value)
