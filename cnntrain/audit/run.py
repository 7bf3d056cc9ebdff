"""cnntrain-audit's work: a Pool's images read once, duplicates, file problems, with --folds the
likely label errors, then report.html and summary.json in the audit folder."""

import logging
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cnntrain.audit.duplicates import Duplicates, find_duplicates, write_duplicates
from cnntrain.audit.files import file_problems, write_file_problems
from cnntrain.audit.folds import check_fold_count, out_of_fold_probabilities
from cnntrain.audit.label_issues import LABEL_ISSUES_FILE, rank_label_issues, write_label_issues
from cnntrain.audit.page import write_audit_page
from cnntrain.audit.pool import Pool
from cnntrain.audit.scan import scan_pool
from cnntrain.core.extras import require
from cnntrain.core.files import write_json

log = logging.getLogger("cnntrain")
SUMMARY_FILE = "summary.json"
METHOD = "pHash (imagehash.phash: 64 bits of the 8 × 8 lowest DCT frequencies), Hamming distance"


@dataclass(frozen=True)
class AuditOptions:
    """How the audit looks: cnntrain-audit's options and the data config's caps."""

    near_bits: int  # --near-bits
    folds: int | None  # --folds K; None: no label issues
    extra: list[str]  # the command's overrides, for the fold jobs
    seed: int  # the folds' draw (data.split_seed)
    workers: int  # processes reading images (data.num_workers, at least 1)
    max_pixels: int | None  # data.max_image_pixels


def require_extras(folds: int | None) -> None:
    """Refuse, before any data is read, an audit whose libraries are missing (extra `audit`)."""
    require("imagehash", "audit", "cnntrain-audit")
    if folds:
        require("cleanlab", "audit", "cnntrain-audit --folds")


def audit(pool: Pool, folder: Path, options: AuditOptions) -> dict:
    """Audit `pool` into `folder` (made if needed; each file replaced atomically); the summary.
    The command has checked the extras (require_extras)."""
    if options.folds:  # before the scan: a count the pool alone tells
        check_fold_count(np.asarray(pool.labels), pool.classes, options.folds)
    started = time.perf_counter()
    scan = scan_pool(pool, folder, options.workers, options.max_pixels)
    duplicates = find_duplicates(pool, scan, options.near_bits)
    write_duplicates(pool, duplicates, folder)
    problems = file_problems(pool, scan)
    write_file_problems(problems, folder)
    issues, fold_accuracy = label_issues(pool, folder, options) if options.folds else (None, None)
    if not options.folds and (folder / LABEL_ISSUES_FILE).is_file():
        log.info("%s of an earlier --folds audit is kept as it was (not in this report); "
                 "give --folds K to rank again", folder / LABEL_ISSUES_FILE)  # fmt: skip
    summary = audit_summary(pool, duplicates, problems, issues, fold_accuracy, options)
    summary["time_s"] = round(time.perf_counter() - started, 1)
    write_json(folder / SUMMARY_FILE, summary)
    write_audit_page(folder, pool, summary, duplicates, problems, issues, options.max_pixels)
    return summary


def label_issues(pool: Pool, folder: Path, options: AuditOptions) -> tuple[list[dict], float]:
    """Out-of-fold probabilities from --folds models (folder/folds/), ranked by cleanlab, kept
    in folder/label_issues.csv; also the fold models' accuracy on the images they did not see
    (the ranking is only as good as they are: near chance, it flags noise). Both leave out the
    images the fold models could not read (files.csv lists them)."""
    work = folder / "folds"
    probabilities, readable = out_of_fold_probabilities(pool, options.folds, work, options.extra,
                                                        options.seed)  # fmt: skip
    rows = rank_label_issues(pool, probabilities, readable)
    write_label_issues(rows, folder)
    right = probabilities.argmax(1) == np.asarray(pool.labels)
    accuracy = float(right[readable].mean())
    return rows, round(accuracy, 4)


def percent(part: int, whole: int) -> float | None:
    return round(100 * part / whole, 2) if whole else None


def audit_summary(pool: Pool, duplicates: Duplicates, problems: list[tuple],
                  issues: list[dict] | None, fold_accuracy: float | None,
                  options: AuditOptions) -> dict:  # fmt: skip
    """summary.json's counts (all, not only the pairs listed)."""
    by_split = {s: pool.splits.count(s) for s in ("train", "val", "test") if s in pool.splits}
    tests = by_split.get("test", 0)
    leaked = duplicates.test_with_train
    kinds = [row[2] for row in problems]
    return {
        "data": str(pool.root),
        "images": len(pool.files),
        "images_by_split": by_split,
        "classes": len(pool.classes),
        "exact_pairs": duplicates.exact.total,
        "near_pairs": duplicates.near.total,
        "exact_pairs_by_splits": duplicates.exact.by_splits,
        "near_pairs_by_splits": duplicates.near.by_splits,
        "test_images": tests,
        "test_with_train_near_duplicate": leaked,
        "test_with_train_near_duplicate_percent": percent(leaked, tests),
        "test_with_train_exact_duplicate": duplicates.test_with_train_exact,
        "test_with_train_or_val_near_duplicate": duplicates.test_with_train_or_val,
        "test_with_train_or_val_near_duplicate_percent": percent(
            duplicates.test_with_train_or_val, tests
        ),
        "near_method": METHOD,
        "near_bits": duplicates.near_bits,
        "unreadable": kinds.count("unreadable"),
        "small_classes": kinds.count("small class"),
        "odd_size": kinds.count("odd size"),
        "odd_channels": kinds.count("odd channels"),
        "folds": options.folds,
        "label_issues": None if issues is None else len(issues),
        "fold_accuracy": fold_accuracy,
        "workers": options.workers,
    }
