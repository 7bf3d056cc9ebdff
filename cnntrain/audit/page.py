"""audit/report.html: the summary, duplicate pairs side by side, file problems and likely label
errors, one self-contained page (thumbnails inline as PNG data URIs, every name escaped)."""

import base64
import io
from pathlib import Path

from cnntrain.audit.duplicates import Duplicates, Pairs
from cnntrain.audit.files import FILE_COLUMNS
from cnntrain.audit.pool import Pool
from cnntrain.core.files import write_text
from cnntrain.data.decode import DECODE_ERRORS, upright
from cnntrain.data.limits import TooLarge, open_image
from cnntrain.reporting.report import esc, key_value_table, page, section, table

REPORT_FILE = "report.html"
THUMB = 96  # px: a thumbnail's longer side at most
SHOWN_PAIRS = 100  # of each kind
SHOWN_PROBLEMS = 500
SHOWN_ISSUES = 50
EXACT_NOTE = "Images with equal decoded pixels (mode, size and every value)."
NO_PROBLEMS = "None: every file is readable, every class in every split, no size or mode far off."
# Small images (CIFAR's 32 px) are shown twice their size, pixels kept sharp.
THUMB_STYLE = "<style>img.thumb { min-height: 64px; image-rendering: pixelated; }</style>\n"


def thumbnail_uri(file: Path, max_pixels: int | None) -> str | None:
    """The image, upright, at most THUMB px on its longer side, as a PNG data URI; None when it
    cannot be read."""
    try:
        with open_image(file, max_pixels) as img:
            small = upright(img).convert("RGB")
            small.thumbnail((THUMB, THUMB))
    except (TooLarge, *DECODE_ERRORS):
        return None
    buffer = io.BytesIO()
    small.save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def image_cell(pool: Pool, i: int, max_pixels: int | None) -> str:
    """A cell with image i's thumbnail above its name (relative to the data's root)."""
    uri = thumbnail_uri(pool.files[i], max_pixels)
    picture = f'<img class="thumb" src="{uri}" alt="">' if uri else "(unreadable)"
    return f'<td class="text">{picture}<br>{esc(pool.names[i])}</td>'


def html_rows_table(header: list[str], rows: list[list[str]]) -> str:
    """A table of cells already made (`<td>…</td>`, their text escaped); `header`: plain text."""
    head = "".join(f'<th class="text">{esc(h)}</th>' for h in header)
    body = "".join(f"<tr>{''.join(cells)}</tr>" for cells in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>\n"


def text_cell(value) -> str:
    return f'<td class="text">{esc(value)}</td>'


def pairs_section(title: str, pool: Pool, pairs: Pairs, note: str, max_pixels) -> str:
    if pairs.total == 0:
        return section(title, f"<p>{esc(note)} None found.</p>\n")
    shown = min(SHOWN_PAIRS, len(pairs.a))
    rows = [[text_cell(f"{pool.splits[a]} – {pool.splits[b]}"), text_cell(int(d)),
             image_cell(pool, a, max_pixels), image_cell(pool, b, max_pixels)]
            for a, b, d in zip(pairs.a[:shown], pairs.b[:shown], pairs.distance[:shown],
                               strict=True)]  # fmt: skip
    counts = ", ".join(f"{k} {n:,}" for k, n in pairs.by_splits.items())
    intro = (f"<p>{esc(note)} {pairs.total:,} pair(s) ({esc(counts)}); the first {shown} "
             "below, train–test leaks first; duplicates.csv lists them all.</p>\n")  # fmt: skip
    return section(title, intro + html_rows_table(["splits", "bits", "image", "image"], rows))


def problems_section(rows: list[tuple]) -> str:
    if not rows:
        return section("File problems", f"<p>{esc(NO_PROBLEMS)}</p>\n")
    shown = rows[:SHOWN_PROBLEMS]
    note = f"{len(rows):,} problem(s)"
    if len(rows) > len(shown):
        note += f" (the first {len(shown)} below; files.csv lists them all)"
    listed = table(list(FILE_COLUMNS), [list(r) for r in shown], text_columns=(0, 1, 2, 3))
    return section("File problems", f"<p>{esc(note)}.</p>\n{listed}")


def issues_section(pool: Pool, issues: list[dict], max_pixels) -> str:
    index = {name: i for i, name in enumerate(pool.names)}
    rows = [[text_cell(row["rank"]), image_cell(pool, index[row["path"]], max_pixels),
             text_cell(row["split"]), text_cell(f"{row['given']} → {row['suggested']}"),
             text_cell(f"{row['given_probability']:.3f} / {row['suggested_probability']:.3f}")]
            for row in issues[:SHOWN_ISSUES]]  # fmt: skip
    intro = (f"<p>{len(issues):,} image(s) cleanlab flags (find_label_issues over out-of-fold "
             "probabilities), least confident in their given label first; the first "
             f"{len(rows)} below, label_issues.csv lists them all.</p>\n")  # fmt: skip
    header = ["rank", "image", "split", "given → suggested", "probability given / suggested"]
    return section("Likely label errors", intro + html_rows_table(header, rows))


def write_audit_page(folder: Path, pool: Pool, summary: dict, duplicates: Duplicates,
                     problems: list[tuple], issues: list[dict] | None,
                     max_pixels: int | None) -> Path:  # fmt: skip
    """folder/report.html (atomically)."""
    bits = duplicates.near_bits
    body = [
        "<h1>Data audit</h1>\n",
        f'<p class="subtitle">{esc(pool.root)}</p>\n',
        section("Summary", key_value_table([(k, summary_value(v)) for k, v in summary.items()])),
        pairs_section("Exact duplicates", pool, duplicates.exact, EXACT_NOTE, max_pixels),
        pairs_section("Near duplicates", pool, duplicates.near, near_note(bits), max_pixels),
        problems_section(problems),
    ]
    if issues is not None:
        body.append(issues_section(pool, issues, max_pixels))
    path = folder / REPORT_FILE
    write_text(path, page("Data audit", THUMB_STYLE + "".join(body)))
    return path


def near_note(bits: int) -> str:
    return (
        f"Images whose 64-bit perceptual hashes (pHash) differ in at most {bits} bits, their "
        "pixels not equal."
    )


def summary_value(value) -> str:
    """A summary.json value as text: counts with thousands separators, dicts on one line."""
    if isinstance(value, dict):
        return ", ".join(f"{k} {summary_value(v)}" for k, v in value.items()) or "—"
    return "—" if value is None else f"{value:,}" if isinstance(value, int) else str(value)
