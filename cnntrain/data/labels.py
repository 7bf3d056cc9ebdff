"""data=csv: images listed in a label file (CSV, TSV or Parquet) with their class and maybe split.

The file has a header row naming its columns (data.path_column, data.label_column and, when
set, data.split_column). Relative paths are resolved against data.root (null: the label file's
folder). A row whose path or label is empty, whose file is missing, whose split names none, or
that lists a file again is a bad row: left out, named in one warning line and in the run
folder's bad_rows.csv, never the end of the run.
"""

import csv
import os
from pathlib import Path

from cnntrain.core.errors import UserError
from cnntrain.core.extras import require
from cnntrain.core.safe_text import printable
from cnntrain.data.listing import Listing
from cnntrain.data.split_table import split_name, unknown_split_reason

DELIMITERS = {".csv": ",", ".tsv": "\t"}
SNIFFED = (".txt",)  # a delimiter told by csv.Sniffer from the file's start
PARQUET = (".parquet", ".pq")
SNIFF_BYTES = 64 * 1024  # of a .txt file, enough for csv.Sniffer to see many rows


TRUE, FALSE = ("1", "1.0", "true", "yes"), ("0", "0.0", "false", "no", "")  # a 0/1 cell's text


def label_listing(d) -> Listing:
    """The images the label file `d.labels` lists (a `data` config of data=csv). With
    data.label_separator or data.label_columns each row may give several labels, or none."""
    path = Path(d.labels).expanduser()
    root = Path(d.root).expanduser() if d.root else path.parent
    columns = {"path_column": d.path_column}
    label_columns = list(d.get("label_columns") or [])
    for i, column in enumerate(label_columns or [d.label_column]):
        columns[f"label_columns[{i}]" if label_columns else "label_column"] = column
    if d.split_column:
        columns["split_column"] = d.split_column
    rows, values = read_columns(path, columns)
    several = bool(label_columns) or d.get("label_separator") is not None
    label_cells = list(zip(*(values[c] for c in label_columns or [d.label_column]), strict=True))
    splits = values[d.split_column] if d.split_column else [None] * len(rows)
    listing = Listing(root, [], [], [] if d.split_column else None)
    listing.label_sets = [] if several else None
    listing.classes = label_columns or None  # 0/1 columns: their order is the labels'
    first: dict[str, int] = {}  # a file's path → its first row
    for row, path_cell, cells, split_cell in zip(
        rows, values[d.path_column], label_cells, splits, strict=True
    ):
        named = text(path_cell)
        labels, reason = row_labels(cells, d, label_columns)
        file = os.path.normpath(root / named) if named else ""
        split = split_name(split_cell) if d.split_column else "train"
        reason = reason or bad_row_reason(named, labels, several, split, split_cell,
                                          first.get(file), file)  # fmt: skip
        if reason:
            listing.bad_rows.append((str(path), row, named, reason))
            continue
        first[file] = row
        listing.files.append(file)
        listing.labels.append("" if several else labels[0])
        if several:
            listing.label_sets.append(labels)
        if d.split_column:
            listing.given.append(split)
    return listing


def row_labels(cells: tuple, d, label_columns: list[str]) -> tuple[tuple[str, ...], str]:
    """(a row's labels, why it is a bad row or ""): the label cell as one class, split at
    data.label_separator (sorted, each once), or the 0/1 columns holding 1."""
    if label_columns:
        flags = [text(cell).lower() for cell in cells]
        wrong = [(c, f) for c, f in zip(label_columns, flags, strict=True) if f not in TRUE + FALSE]
        if wrong:
            return (), f"column {printable(wrong[0][0])!r} holds {wrong[0][1]!r}, not 0 or 1"
        return tuple(c for c, f in zip(label_columns, flags, strict=True) if f in TRUE), ""
    label = text(cells[0])
    separator = d.get("label_separator")
    if separator is None:
        return (label,), ""
    return tuple(sorted({part.strip() for part in label.split(separator)} - {""})), ""


def bad_row_reason(named: str, labels: tuple, several: bool, split, split_cell, first_row,
                   file: str) -> str:  # fmt: skip
    """Why a row is left out, or "" when it is not (an image may have no label only where a row
    may give several)."""
    if not named:
        return "empty path"
    if not several and not labels[0]:
        return "empty label"
    if split is None:
        return unknown_split_reason(split_cell)
    if first_row is not None:
        return f"lists the file of row {first_row} again"
    if not os.path.isfile(file):
        return "not a regular file" if os.path.exists(file) else "no such file"
    return ""


def text(cell) -> str:
    """A cell as text without surrounding spaces ("" for an empty or null one)."""
    return "" if cell is None else str(cell).strip()


def read_columns(path: Path, columns: dict[str, str]) -> tuple[list[int], dict[str, list]]:
    """(row numbers, {column: its cells}) of the label file `path`, for `columns` ({data key:
    column name}): a CSV/TSV file's rows are numbered by their line (the header is line 1), a
    Parquet file's from 0."""
    suffix = path.suffix.lower()
    if suffix in PARQUET:
        return read_parquet(path, columns)
    if suffix not in (*DELIMITERS, *SNIFFED):
        raise UserError(
            f"data.labels={str(path)!r}: a label file ends in .csv, .tsv, .txt (delimiter "
            f"sniffed) or {', '.join(PARQUET)}"
        )
    try:
        with open(path, encoding="utf-8-sig", newline="") as f:
            delimiter = DELIMITERS.get(suffix) or sniffed_delimiter(path, f.read(SNIFF_BYTES))
            f.seek(0)
            return read_text_rows(path, csv.reader(f, delimiter=delimiter), columns)
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise UserError(
            f"data.labels={str(path)!r} could not be read ({e}); give a UTF-8 CSV or TSV file"
        ) from e


def sniffed_delimiter(path: Path, sample: str) -> str:
    try:
        return csv.Sniffer().sniff(sample, delimiters=",\t;| ").delimiter
    except csv.Error as e:
        raise UserError(
            f"data.labels={str(path)!r}: could not tell its delimiter; name it .csv "
            "(commas) or .tsv (tabs)"
        ) from e


def read_text_rows(path: Path, reader, columns: dict[str, str]):
    header = [cell.strip() for cell in next(reader, [])]
    check_columns(path, header, columns)
    names = list(dict.fromkeys(columns.values()))
    where = [header.index(c) for c in names]
    rows, values = [], {c: [] for c in names}
    for cells in reader:
        if not any(cell.strip() for cell in cells):
            continue  # a blank line
        rows.append(reader.line_num)
        for column, i in zip(names, where, strict=True):
            values[column].append(cells[i] if i < len(cells) else "")
    return rows, values


def read_parquet(path: Path, columns: dict[str, str]) -> tuple[list[int], dict[str, list]]:
    require("pyarrow", "parquet", f"data.labels={path.name} (a Parquet file)")
    import pyarrow.parquet as pq  # optional, and slow to import

    try:
        check_columns(path, pq.read_schema(path).names, columns)
        table = pq.read_table(path, columns=list(dict.fromkeys(columns.values())))
    except (OSError, ValueError) as e:  # pyarrow's ArrowIOError, ArrowInvalid
        raise UserError(f"data.labels={str(path)!r} could not be read as Parquet ({e})") from e
    return list(range(table.num_rows)), {c: table.column(c).to_pylist() for c in table.column_names}


def check_columns(path: Path, header: list[str], columns: dict[str, str]) -> None:
    """Refuse a label file lacking one of `columns` ({data key: column}), naming those it has."""
    for key, column in columns.items():
        if column not in header:
            found = ", ".join(printable(h) for h in header) or "none"
            raise UserError(
                f"data.labels={str(path)!r} has no column {printable(column)!r} (its columns: "
                f"{found}); set data.{key} to one of them"
            )
