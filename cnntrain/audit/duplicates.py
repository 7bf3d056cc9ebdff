"""Exact duplicates (equal decoded pixels) and near duplicates (pHash within a few bits), within
and across splits; test images with one in train are the leak.

Every pair of readable images is compared: their 64-bit pHashes XOR-ed and the bits counted,
a tile of rows against later columns at a time (numpy), so 60,000 images (1.8·10⁹ pairs) take
seconds. Equal pixels give equal pHashes, so the exact pairs are the pairs at distance 0 whose
pixel digests agree, found in the same pass.
"""

from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cnntrain.audit.pool import Pool
from cnntrain.audit.scan import Scan
from cnntrain.data.sources import SPLIT_NAMES
from cnntrain.data.split_table import write_csv

DUPLICATES_FILE = "duplicates.csv"
DUPLICATE_COLUMNS = ("kind", "distance", "split_a", "path_a", "split_b", "path_b")
# Near duplicates: at most this many of pHash's 64 bits differ. Measured on CIFAR-10
# (docs/benchmarks.md): at 4 bits the pairs found are the same photo re-encoded, recoloured
# or slightly shifted; past 6 unrelated images of plain backgrounds join them.
DEFAULT_NEAR_BITS = 4
MAX_LISTED = 1_000_000  # pairs kept per kind for duplicates.csv (all are counted)
TILE = (64, 4096)  # pairs compared at a time: 2 MiB of uint64, near the CPU's caches
# Order of split pairs in duplicates.csv and the report: the leak (train–test) first.
PAIR_ORDER = ("train-test", "val-test", "train-val", "train-train", "val-val", "test-test")


def pair_name(a: int, b: int) -> str:
    """`train-test` for split codes (indices into SPLIT_NAMES) 0 and 2."""
    return f"{SPLIT_NAMES[a]}-{SPLIT_NAMES[b]}"


# [split a, split b] → index into PAIR_ORDER (a ≤ b)
PAIR_RANK = np.array([[PAIR_ORDER.index(pair_name(a, b)) if a <= b else 0 for b in range(3)]
                      for a in range(3)], dtype=np.int64)  # fmt: skip


@dataclass
class Pairs:
    """Pairs of Pool indices of one kind, `a` in the earlier split (train, val, test)."""

    a: np.ndarray  # (P,) int64
    b: np.ndarray  # (P,) int64
    distance: np.ndarray  # (P,) int64: pHash bits that differ
    total: int  # pairs found; more than P when over MAX_LISTED
    by_splits: dict[str, int]  # "train-test": pairs found, in PAIR_ORDER


@dataclass
class Duplicates:
    exact: Pairs
    near: Pairs  # near but not exact
    near_bits: int
    test_with_train: int  # test images with an exact or near duplicate in train
    test_with_train_exact: int  # … with an exact one in train
    test_with_train_or_val: int  # … with an exact or near one in train or val (all training reads)


# Set bits of each byte value: popcount's lookup table where numpy (< 2) has no bitwise_count.
BYTE_BITS = np.array([bin(i).count("1") for i in range(256)], dtype=np.uint8)


def popcount(words: np.ndarray, out: np.ndarray) -> np.ndarray:
    """Set bits of each uint64 into `out` (uint8; numpy ≥ 2: one instruction, before: a byte
    lookup table)."""
    if hasattr(np, "bitwise_count"):
        return np.bitwise_count(words, out=out)
    out[...] = BYTE_BITS[words.view(np.uint8)].reshape(*words.shape, 8).sum(-1, dtype=np.uint8)
    return out


def close_pairs(hashes: np.ndarray, bits: int):
    """(i, j, distance) arrays, i < j, of every pair of `hashes` ((M,) uint64) at most `bits`
    apart: tiles of TILE rows × columns at a time, into buffers made once (fresh arrays for
    each would cost more in page faults than the arithmetic)."""
    m = len(hashes)
    words = np.empty(TILE, np.uint64)
    counts = np.empty(TILE, np.uint8)
    close = np.empty(TILE, bool)
    for top in range(0, m, TILE[0]):
        rows = hashes[top : top + TILE[0], None]
        for left in range(top, m, TILE[1]):  # only columns right of the diagonal's tile
            cols = hashes[None, left : left + TILE[1]]
            shape = np.s_[: rows.shape[0], : cols.shape[1]]
            np.bitwise_xor(rows, cols, out=words[shape])
            popcount(words[shape], out=counts[shape])
            if not np.less_equal(counts[shape], bits, out=close[shape]).any():
                continue
            r, c = np.nonzero(close[shape])
            i, j = top + r, left + c
            later = j > i  # the diagonal tile's lower half: pairs met the other way round
            yield i[later], j[later], counts[shape][r[later], c[later]].astype(np.int64)


def find_duplicates(pool: Pool, scan: Scan, near_bits: int) -> Duplicates:
    """Every exact and near pair among the Pool's readable images (see the module docstring)."""
    readable = np.flatnonzero(scan.readable)
    split = np.array([SPLIT_NAMES.index(s) for s in pool.splits], dtype=np.int64)
    # test images with a duplicate: exact in train, any in train, any in train or val
    leaks = {key: np.zeros(len(pool.files), bool) for key in ("exact", "train", "seen")}
    found: dict[str, list] = {"exact": [], "near": []}
    counts = {"exact": Counter(), "near": Counter()}  # split pair code (3 · a + b) → pairs
    for r, c, distance in close_pairs(scan.phash[readable], near_bits):
        i, j = readable[r], readable[c]
        swap = (split[j] < split[i]) | ((split[j] == split[i]) & (j < i))
        a, b = np.where(swap, j, i), np.where(swap, i, j)
        exact = (distance == 0) & (scan.digest[a] == scan.digest[b])
        for kind, chosen in (("exact", exact), ("near", ~exact)):
            a_, b_ = a[chosen], b[chosen]
            codes, n = np.unique(split[a_] * 3 + split[b_], return_counts=True)
            counts[kind].update(dict(zip(codes.tolist(), n.tolist(), strict=True)))
            if sum(len(part[0]) for part in found[kind]) < MAX_LISTED:
                found[kind].append((a_, b_, distance[chosen]))
            in_test, from_train = split[b_] == 2, split[a_] == 0
            leaks["seen"][b_[in_test & (split[a_] < 2)]] = True
            leaks["train"][b_[in_test & from_train]] = True
            leaks["exact"][b_[in_test & from_train & (kind == "exact")]] = True
    exact, near = (listed(found[k], counts[k], split) for k in ("exact", "near"))
    counted = {key: int(flags.sum()) for key, flags in leaks.items()}
    return Duplicates(exact, near, near_bits, counted["train"], counted["exact"], counted["seen"])


def listed(found: list, counts: Counter, split: np.ndarray) -> Pairs:
    """The pairs found, leaks first (PAIR_ORDER), then closest first, at most MAX_LISTED."""
    a, b, distance = (np.concatenate([p[k] for p in found]) if found else np.zeros(0, np.int64)
                      for k in range(3))  # fmt: skip
    rank = PAIR_RANK[split[a], split[b]]
    order = np.lexsort((b, a, distance, rank))[:MAX_LISTED]
    by_splits = {pair_name(code // 3, code % 3): n for code, n in counts.items()}
    by_splits = {k: by_splits[k] for k in PAIR_ORDER if k in by_splits}
    return Pairs(a[order], b[order], distance[order], sum(counts.values()), by_splits)


def pair_rows(pool: Pool, duplicates: Duplicates) -> list[tuple]:
    """duplicates.csv's rows (DUPLICATE_COLUMNS): the exact pairs, then the near ones."""
    rows = []
    for kind, pairs in (("exact", duplicates.exact), ("near", duplicates.near)):
        for a, b, distance in zip(pairs.a, pairs.b, pairs.distance, strict=True):
            rows.append((kind, int(distance), pool.splits[a], pool.names[a], pool.splits[b],
                         pool.names[b]))  # fmt: skip
    return rows


def write_duplicates(pool: Pool, duplicates: Duplicates, folder: Path) -> Path:
    path = folder / DUPLICATES_FILE
    write_csv(path, DUPLICATE_COLUMNS, pair_rows(pool, duplicates))
    return path
