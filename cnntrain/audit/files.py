"""File problems: unreadable images, classes too small to split, images far from the others in
size or in mode (channels) → files.csv."""

import math
from collections import Counter
from pathlib import Path

import numpy as np

from cnntrain.audit.pool import Pool
from cnntrain.audit.scan import Scan
from cnntrain.data.sources import SPLIT_NAMES
from cnntrain.data.split_table import write_csv

FILES_FILE = "files.csv"
FILE_COLUMNS = ("path", "split", "problem", "detail")
# An image is far from the others in size when its area (upright H × W px) is more than
# SIZE_FACTOR times larger or smaller than the median area AND its log-area is more than
# MAD_LIMIT robust standard deviations (1.4826 × the median absolute deviation) from the
# median's: a folder of varied photos flags only the extremes, one of equal sizes any ×4.
SIZE_FACTOR = 4
MAD_LIMIT = 3
MAD_TO_SIGMA = 1.4826  # the MAD of normal data times this is its standard deviation


def file_problems(pool: Pool, scan: Scan) -> list[tuple]:
    """files.csv's rows (FILE_COLUMNS): unreadable files, small classes, odd sizes, odd modes."""
    return [
        *unreadable_rows(pool, scan),
        *small_class_rows(pool),
        *size_rows(pool, scan),
        *mode_rows(pool, scan),
    ]


def unreadable_rows(pool: Pool, scan: Scan) -> list[tuple]:
    return [(pool.names[i], pool.splits[i], "unreadable", str(scan.error[i]))
            for i in np.flatnonzero(~scan.readable)]  # fmt: skip


def small_class_rows(pool: Pool) -> list[tuple]:
    """A class without an image in one of the splits the data has (the tool keeps a class's
    first image for train, then gives val one before test: data/splits.carved_counts); one of
    fewer than --folds K images is refused before the scan (folds.check_fold_count)."""
    present = [s for s in SPLIT_NAMES if s in set(pool.splits)]
    counts = Counter(zip(pool.labels, pool.splits, strict=True))
    rows = []
    for c, name in enumerate(pool.classes):
        total = sum(counts[c, s] for s in present)
        lacking = [s for s in present if counts[c, s] == 0]
        if lacking:
            detail = f"class {name!r}: {total} image(s), none in {' or '.join(lacking)}"
            rows.append(("", "", "small class", detail))
    return rows


def size_rows(pool: Pool, scan: Scan) -> list[tuple]:
    """Images whose area is far from the others' (the rule above SIZE_FACTOR)."""
    ok = np.flatnonzero(scan.readable)
    if len(ok) == 0:
        return []
    log_area = np.log(scan.height[ok] * scan.width[ok])
    centre = np.median(log_area)
    spread = MAD_TO_SIGMA * np.median(np.abs(log_area - centre))
    limit = max(math.log(SIZE_FACTOR), MAD_LIMIT * spread)
    typical = f"{np.median(scan.width[ok]):.0f}×{np.median(scan.height[ok]):.0f}"
    rows = []
    for k in np.flatnonzero(np.abs(log_area - centre) > limit):
        i, ratio = ok[k], math.exp(log_area[k] - centre)
        times = f"{ratio:.1f}× larger" if ratio > 1 else f"{1 / ratio:.1f}× smaller"
        rows.append((pool.names[i], pool.splits[i], "odd size",
                     f"{scan.width[i]}×{scan.height[i]} px: {times} in area than the median "
                     f"image (about {typical} px)"))  # fmt: skip
    return rows


def mode_rows(pool: Pool, scan: Scan) -> list[tuple]:
    """Images stored in another mode than most (L among RGB, RGBA, CMYK, P…)."""
    modes = Counter(scan.mode[scan.readable].tolist())
    if len(modes) < 2:
        return []
    (usual, n), total = modes.most_common(1)[0], sum(modes.values())
    return [(pool.names[i], pool.splits[i], "odd channels",
             f"mode {scan.mode[i]}; {n} of {total} readable images are {usual}")
            for i in np.flatnonzero(scan.readable & (scan.mode != usual))]  # fmt: skip


def write_file_problems(rows: list[tuple], folder: Path) -> Path:
    path = folder / FILES_FILE
    write_csv(path, FILE_COLUMNS, rows)
    return path
