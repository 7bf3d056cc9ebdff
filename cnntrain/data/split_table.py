"""A run's split table (splits.csv: path,class,split) and left-out rows (bad_rows.csv)."""

import csv
from dataclasses import dataclass
from pathlib import Path

from cnntrain.core.errors import UserError
from cnntrain.core.files import atomic_write
from cnntrain.core.safe_text import csv_row, csv_value, printable
from cnntrain.data.limits import MIB, Limits, default_limits
from cnntrain.data.sources import Records

SPLITS_FILE, BAD_ROWS_FILE = "splits.csv", "bad_rows.csv"  # in a run folder
TABLE_COLUMNS = ("path", "class", "split")
BAD_ROW_COLUMNS = ("file", "row", "path", "reason")
# What a split column may say (case and surrounding spaces aside), and the split it names.
SPLIT_ALIASES = {"train": "train", "training": "train", "val": "val", "validation": "val",
                 "valid": "val", "dev": "val", "test": "test", "testing": "test"}  # fmt: skip


@dataclass
class TableRow:
    """One row of a split table: where it is in the file, and what it says."""

    line: int  # the file's line (its header is line 1)
    path: str  # relative to the data's root, POSIX separators
    label: str  # class name
    split: str | None  # train, val or test; None when the cell names none of them


def split_name(value) -> str | None:
    """train, val or test for a split cell (`Validation`, `dev`, ` TEST `…), else None."""
    return SPLIT_ALIASES.get(str(value).strip().lower()) if value is not None else None


def unknown_split_reason(value) -> str:
    return (
        f"split {printable(value)!r} is not train, val or test (nor training, validation, valid, "
        "dev, testing)"
    )


def run_split_table(run_dir: Path) -> str | None:
    """The split a run trained on (its splits.csv, a regular file), for its resume and its
    evaluation; None when the run had the data's own splits."""
    table = Path(run_dir) / SPLITS_FILE
    return str(table) if table.is_file() else None


def read_split_table(
    path: Path, limits: Limits | None = None
) -> tuple[list[TableRow], list[tuple[str, int, str, str]]]:
    """(rows, bad rows) of the splits.csv at `path` (data.splits): a row whose split cell names no
    split is a bad row; a missing column or a file that is not UTF-8 CSV is a UserError. A file
    over data.max_file_mb (`limits`; None: conf/config.yaml's) is refused unread."""
    rows, bad = [], []
    limits = limits or default_limits()
    try:
        size = Path(path).stat().st_size
        if size > limits.max_file_bytes:  # a received run's table is read whole
            raise UserError(
                f"data.splits={str(path)!r} is {size / MIB:,.1f} MiB, over data.max_file_mb="
                f"{limits.max_file_mb}; give a splits.csv a run wrote, or raise data.max_file_mb"
            )
        with open(path, encoding="utf-8-sig", newline="") as f:
            reader = csv.DictReader(f)
            missing = [c for c in TABLE_COLUMNS if c not in (reader.fieldnames or [])]
            if missing:
                found = ", ".join(map(printable, reader.fieldnames or [])) or "none"
                raise UserError(
                    f"data.splits={str(path)!r} has no {missing[0]!r} column (its columns: "
                    f"{found}); a split table has the columns {','.join(TABLE_COLUMNS)}"
                )
            for row in reader:
                cells = [csv_value(row.get(c) or "") for c in TABLE_COLUMNS]
                split = split_name(cells[2])
                rows.append(TableRow(reader.line_num, cells[0], cells[1], split))
                if split is None:
                    bad.append(
                        (str(path), reader.line_num, cells[0], unknown_split_reason(cells[2]))
                    )
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise UserError(
            f"data.splits={str(path)!r} could not be read ({e}); give a splits.csv a run wrote"
        ) from e
    return [r for r in rows if r.split is not None], bad


def write_records(records: Records, run_dir: Path) -> None:
    """splits.csv and bad_rows.csv in `run_dir`, each only when there is something to keep."""
    if records.table:
        write_csv(run_dir / SPLITS_FILE, TABLE_COLUMNS, records.table)
    if records.bad_rows:
        write_csv(run_dir / BAD_ROWS_FILE, BAD_ROW_COLUMNS, records.bad_rows)


def write_csv(path: Path, header, rows) -> None:
    """A UTF-8 CSV, atomically; every cell safe to open in a spreadsheet (core/safe_text.py)."""

    def write(tmp: Path) -> None:
        with open(tmp, "w", encoding="utf-8", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(header)
            writer.writerows(csv_row(list(row)) for row in rows)

    atomic_write(path, write)
