"""Each image read once: readable or why not, mode, upright size, pixel digest and pHash.

The scan is kept in the audit folder (scan.npz) with each file's size and mtime, so a re-run
(another --near-bits, --folds) reads only the files that changed.
"""

import hashlib
import logging
import os
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cnntrain.audit.pool import Pool
from cnntrain.core.files import atomic_write
from cnntrain.data.decode import DECODE_ERRORS, upright
from cnntrain.data.limits import TooLarge, open_image

log = logging.getLogger(__name__)
SCAN_FILE = "scan.npz"
SCAN_FORMAT = 1  # bump when what a scan records changes meaning
CHUNK = 512  # files per task of the process pool


@dataclass
class Scan:
    """Per Pool image, in its order: what reading it found."""

    error: np.ndarray  # (N,) str: why it could not be read; "" when it could
    mode: np.ndarray  # (N,) str: Pillow's mode as stored (RGB, L, RGBA, CMYK, P…)
    height: np.ndarray  # (N,) int64 px, upright (after its EXIF orientation)
    width: np.ndarray  # (N,) int64 px
    digest: np.ndarray  # (N,) str: blake2b of mode, size and pixel bytes (equal pixels ⇔ equal)
    phash: np.ndarray  # (N,) uint64: imagehash.phash's 64 bits (8 × 8 low DCT frequencies)

    @property
    def readable(self) -> np.ndarray:
        return self.error == ""


def read_file(path: str, max_pixels: int | None) -> tuple:
    """(error, mode, height, width, digest, phash) of one image file."""
    import imagehash  # optional (the `audit` extra), and slow to import

    try:
        with open_image(path, max_pixels) as img:
            img.load()
            shown = upright(img)
            pixels = shown.tobytes()
            digest = hashlib.blake2b(f"{shown.mode}\0{shown.size}\0".encode(), digest_size=16)
            digest.update(pixels)
            digest.update(bytes(shown.getpalette() or []))  # "P": the indices' colours
            bits = imagehash.phash(shown).hash.flatten()
            phash = int.from_bytes(np.packbits(bits).tobytes(), "big")
            return "", img.mode, shown.height, shown.width, digest.hexdigest(), phash
    except TooLarge as e:
        return f"too large: {e}", "", 0, 0, "", 0
    except DECODE_ERRORS as e:
        return f"{type(e).__name__}: {e}"[:200] or "unreadable", "", 0, 0, "", 0


def read_chunk(job: tuple[list[str], int | None]) -> list[tuple]:
    files, max_pixels = job
    return [read_file(f, max_pixels) for f in files]


def file_stamps(pool: Pool) -> np.ndarray:
    """(N, 2) int64: each file's size (bytes) and mtime (ns); -1 for one that cannot be stat-ed."""
    stamps = np.full((len(pool.files), 2), -1, dtype=np.int64)
    for i, file in enumerate(pool.files):
        try:
            st = os.stat(file)
        except OSError:
            continue
        stamps[i] = st.st_size, st.st_mtime_ns
    return stamps


def scan_pool(pool: Pool, folder: Path, workers: int, max_pixels: int | None) -> Scan:
    """The Pool's scan: the rows folder/scan.npz already holds for unchanged files, the others
    read now (`workers` processes), and the whole kept again in folder/scan.npz."""
    stamps = file_stamps(pool)
    key = f"{SCAN_FORMAT}\0{pool.root}\0{max_pixels}"
    rows: list[tuple | None] = list(cached_rows(folder / SCAN_FILE, key, pool.names, stamps))
    todo = [i for i, row in enumerate(rows) if row is None]
    if todo:
        log.info("reading %d of %d images (%d kept from %s)", len(todo), len(rows),
                 len(rows) - len(todo), SCAN_FILE)  # fmt: skip
    for i, row in zip(todo, read_files([str(pool.files[i]) for i in todo], workers, max_pixels),
                      strict=True):  # fmt: skip
        rows[i] = row
    columns = list(zip(*rows, strict=True)) if rows else [[]] * 6
    scan = Scan(
        error=np.array(columns[0], dtype=str),
        mode=np.array(columns[1], dtype=str),
        height=np.array(columns[2], dtype=np.int64),
        width=np.array(columns[3], dtype=np.int64),
        digest=np.array(columns[4], dtype=str),
        phash=np.array(columns[5], dtype=np.uint64),
    )
    save_scan(folder / SCAN_FILE, key, pool.names, stamps, scan)
    return scan


def read_files(files: list[str], workers: int, max_pixels: int | None) -> list[tuple]:
    jobs = [(files[i : i + CHUNK], max_pixels) for i in range(0, len(files), CHUNK)]
    if workers <= 1 or len(jobs) <= 1:
        return [row for job in jobs for row in read_chunk(job)]
    with ProcessPoolExecutor(workers) as executor:
        return [row for part in executor.map(read_chunk, jobs) for row in part]


def cached_rows(path: Path, key: str, names: list[str], stamps: np.ndarray):
    """Per image, its row from an earlier scan of the same file (same name, size and mtime,
    same root and pixel cap), else None. The file is received data (a run folder's): read
    without pickle, and ignored whole when it does not hold what a scan writes."""
    found = load_scan(path, key)
    if found is None:
        return [None] * len(names)
    index = {name: i for i, name in enumerate(found["names"].tolist())}
    fields = ("error", "mode", "height", "width", "digest", "phash")
    rows = []
    for name, stamp in zip(names, stamps, strict=True):
        i = index.get(name)
        fresh = i is None or stamp[0] < 0 or not np.array_equal(found["stamps"][i], stamp)
        rows.append(None if fresh else tuple(found[f][i].item() for f in fields))
    return rows


def load_scan(path: Path, key: str) -> dict | None:
    if not path.is_file() or path.is_symlink():
        return None
    try:
        with np.load(path, allow_pickle=False) as saved:
            found = {name: saved[name] for name in saved.files}
        n = len(found["names"])
        same = str(found["key"]) == key and all(len(v) == n for k, v in found.items() if k != "key")
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return found if same else None


def save_scan(path: Path, key: str, names: list[str], stamps: np.ndarray, scan: Scan) -> None:
    def write(tmp: Path) -> None:
        with open(tmp, "wb") as f:
            np.savez(f, key=np.array(key), names=np.array(names, dtype=str), stamps=stamps,
                     **vars(scan))  # fmt: skip

    atomic_write(path, write)
