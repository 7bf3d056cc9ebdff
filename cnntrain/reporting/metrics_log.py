"""Per-epoch metrics: `metrics.jsonl` (one object per epoch) and `metrics.csv`, same rows.

Both files are rewritten atomically from the rows so far after every epoch, so after a crash
they hold exactly the epochs of the last checkpoint once the run is resumed.
"""

import csv
import io
import json
from pathlib import Path

from cnntrain.core.files import write_text
from cnntrain.core.safe_text import csv_cell

TIME_FIELDS = ("epoch_time_s", "elapsed_s", "train/images_per_s")  # wall-clock, run to run


class MetricsLog:
    def __init__(self, run_dir: Path, rows: list[dict] | None = None):
        self.jsonl, self.csv = run_dir / "metrics.jsonl", run_dir / "metrics.csv"
        self.rows = list(rows or [])

    def append(self, row: dict) -> None:
        self.rows.append(row)
        self.write()

    def write(self) -> None:
        write_text(self.jsonl, "".join(json.dumps(r) + "\n" for r in self.rows))
        write_text(self.csv, to_csv(self.rows))


def to_csv(rows: list[dict]) -> str:
    columns = list(dict.fromkeys(k for r in rows for k in r))  # union, in first-seen order
    out = io.StringIO()
    writer = csv.DictWriter(out, columns, lineterminator="\n")
    writer.writeheader()
    writer.writerows({k: csv_cell(v) for k, v in row.items()} for row in rows)
    return out.getvalue()


def read_rows(path: Path) -> list[dict]:
    """Rows of a metrics.jsonl; a torn last line (a crash mid-write of an old file) is skipped."""
    rows = []
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            break
    return rows
