"""Out-of-fold class probabilities: K models trained as one cnntrain sweep, each scoring the images
it did not train on (cnntrain-audit --folds K, for cleanlab's label issues).

The work folder holds fold<k>.csv (a splits.csv: fold k's images are `test`, ~10% of the rest
`val`, the others `train`) and runs/<attempt>/<job>/: one sweep folder per attempt, its
recipe.json naming the overrides its jobs trained with. A job is reused, never retrained, when it
finished (results.json), trained on that recipe, and its splits.csv holds fold k's rows: an
attempt launches only the folds no earlier attempt finished.
"""

import csv
import logging
import re
import subprocess
import sys
from pathlib import Path

import numpy as np

from cnntrain.audit.pool import Pool
from cnntrain.core.device import select_device
from cnntrain.core.errors import UserError
from cnntrain.core.files import atomic_write, write_json
from cnntrain.core.overrides import override_key, quoted
from cnntrain.core.safe_text import printable
from cnntrain.core.schema import data_defaults
from cnntrain.core.seeds import derived_seed
from cnntrain.data.split_table import TABLE_COLUMNS, read_split_table, run_split_table, write_csv
from cnntrain.data.splits import stratified_split
from cnntrain.reporting.report import read_json
from cnntrain.trained.load import load_trained
from cnntrain.trained.predict import ImageRef, batch_probabilities

log = logging.getLogger(__name__)
RUNS, RECIPE, LABELS = "runs", "recipe.json", "labels.csv"
VAL_FRACTION = 0.1  # of each class's images outside the fold: picks the best epoch
BATCH = 256  # images scored at once
# What every fold job is told: no plots, trackers or bars (K jobs, maybe side by side).
QUIET = ("trainer.plots=false", "logger=none", "trainer.progress=false")
# Keys the pool's data took and the folds set anew: dropped from the command's overrides.
DATA_KEYS = ("data.splits", "resume")
# Keys that would change what the fold sweep is (its folders, its sweeper): the audit's command
# line may not set them; a run's own overrides pass only the allow-list below (for_folds).
SWEEP_KEYS = ("hydra.sweep.dir", "hydra.sweep.subdir", "hydra/sweeper", "hparams_search")
# What a received run's overrides (RUN/.hydra/overrides.yaml: anyone could have written it) may
# tell the fold jobs: a group option by its plain name, or a value under one of KEY_ROOTS.
GROUPS = ("model", "optimizer", "scheduler", "experiment")
KEY_ROOTS = ("model", "optimizer", "scheduler", "loss", "trainer", "data")
NAME = re.compile(r"[\w.-]+")
KEY = re.compile(r"\w+(\.\w+)+")
# Keys Hydra's instantiate reads: they name code to run, and how to call it.
INSTANTIATE_KEYS = ("_target_", "_partial_", "_recursive_", "_args_")
SWEEP_FUNCTION = re.compile(r"\b(range|choice|interval|glob|sort|shuffle|tag)\s*\(")
# `data` keys that name the data source or its split: the fold jobs take the pool's (a label
# file) and each fold's; so do any `data.*` key outside conf/config.yaml's shared block.
SOURCE_KEYS = ("name", "root", "splits")


def out_of_fold_probabilities(
    pool: Pool, folds: int, work: Path, extra: list[str], seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """(N, len(pool.classes)) float64: image i's softmax probabilities from the fold model that did
    not train on it, in pool order; (N,) bool: whether that model could read image i (an
    unreadable one's row is zeros). The K models are trained in `work` as one cnntrain sweep
    (`extra`: the audit command's overrides, a launcher among them), finished ones reused."""
    work = Path(work).resolve()  # the jobs may run elsewhere (a launcher's own folder)
    labels = np.asarray(pool.labels, dtype=np.int64)
    check_fold_count(labels, pool.classes, folds)
    assigned = fold_of_each(labels, folds, seed)
    tables = [fold_rows(pool, assigned, k, seed) for k in range(folds)]
    files = [work / f"fold{k}.csv" for k in range(folds)]
    for file, rows in zip(files, tables, strict=True):
        write_csv(file, TABLE_COLUMNS, rows)
    overrides = pool_as_label_file(pool, work, sweep_overrides(pool.overrides, extra))
    runs = work / RUNS
    jobs = finished_jobs(runs, tables, overrides)
    missing = [k for k, job in enumerate(jobs) if job is None]
    if missing:
        log.info("training %d of %d fold model(s) (%d finished before: reused) in %s",
                 len(missing), folds, folds - len(missing), runs)  # fmt: skip
        attempt, status = train_folds([files[k] for k in missing], runs, overrides)
        jobs = finished_jobs(runs, tables, overrides)
        check_trained(jobs, attempt, status)
    else:
        log.info("all %d fold models finished before in %s: none retrained", folds, runs)
    return fold_probabilities(pool, assigned, jobs)


# ---- the folds ----


def pool_as_label_file(pool: Pool, work: Path, overrides: list[str]) -> list[str]:
    """The fold jobs' `overrides`, with the pool's files as their data whatever source it came
    from: work/labels.csv (path, label; paths relative to the pool's root) with `data=csv`,
    instead of every override naming a data source (a tree is split by its folders alone, and
    a run's own overrides must not pick the files); their other keys stay."""
    root = Path(pool.root).resolve()
    labels = Path(work) / LABELS
    write_label_file(labels, [(name, pool.classes[c]) for name, c in zip(pool.names, pool.labels,
                                                                        strict=True)])  # fmt: skip
    kept = [o for o in overrides if not names_data_source(override_key(o))]
    return ["data=csv", f"data.labels={quoted(str(labels))}", f"data.root={quoted(str(root))}",
            *kept]  # fmt: skip


def names_data_source(key: str) -> bool:
    """`data`, `data.root`, `data.labels`, `data.hf_splits.val`…: a key that says where the
    data is or how its files are listed and split (SOURCE_KEYS, or not a shared `data` key)."""
    parts = key.split(".")
    if parts[0] != "data":
        return False
    return len(parts) == 1 or parts[1] in SOURCE_KEYS or parts[1] not in data_defaults()


def write_label_file(path: Path, rows: list[tuple[str, str]]) -> None:
    """A plain label file (path,label), atomically: cells as they are, since data=csv reads
    them verbatim (a spreadsheet-safe `'` would become part of a file name)."""

    def write(tmp: Path) -> None:
        with open(tmp, "w", encoding="utf-8", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(("path", "label"))
            writer.writerows(rows)

    atomic_write(path, write)


def check_fold_count(labels: np.ndarray, classes: list[str], folds: int) -> None:
    """Refuse fewer than 2 folds, or more than the smallest class has images (each fold holds at
    least one image of every class)."""
    counts = np.bincount(labels, minlength=len(classes))
    smallest = int(counts.argmin())
    fewest, name = int(counts[smallest]), printable(classes[smallest])
    if folds < 2 or folds > fewest:
        fix = f"use --folds between 2 and {fewest}" if fewest >= 2 else "add images to it"
        raise UserError(
            f"--folds={folds}: K-fold needs 2 folds or more, each with an image of every class, "
            f"and class {name!r} has {fewest} image(s); {fix}"
        )


def fold_of_each(labels: np.ndarray, folds: int, seed: int) -> np.ndarray:
    """(N,) each image's fold: each class's images, permuted with `seed`, dealt round the folds
    (each class's deal starting where the last one stopped, so fold sizes differ by one at most)."""
    rng = np.random.default_rng(seed)
    assigned = np.empty(len(labels), dtype=np.int64)
    start = 0
    for c in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == c))
        assigned[members] = (np.arange(len(members)) + start) % folds
        start += len(members)
    return assigned


def fold_rows(pool: Pool, assigned: np.ndarray, k: int, seed: int) -> list[tuple[str, str, str]]:
    """Fold k's splits.csv rows (path, class, split) in pool order: its images `test`, of the
    others a seeded VAL_FRACTION of each class `val`, the rest `train`."""
    split = np.where(assigned == k, "test", "train").astype(object)
    rest = np.flatnonzero(assigned != k)
    targets = np.asarray(pool.labels, dtype=np.int64)[rest]
    _, val = stratified_split(targets, VAL_FRACTION, derived_seed(seed, k))
    split[rest[val]] = "val"
    return [(name, pool.classes[label], str(s))
            for name, label, s in zip(pool.names, pool.labels, split, strict=True)]  # fmt: skip


# ---- the sweep ----


def sweep_overrides(base: list[str], extra: list[str]) -> list[str]:
    """Every fold job's overrides but its data: a run's own (`base`, those for_folds lets pass),
    the command's (`extra` less DATA_KEYS, winning on a key both set), then QUIET."""
    for override in extra:
        if override_key(override) in SWEEP_KEYS:
            raise UserError(
                f"{override}: cnntrain-audit --folds runs its fold jobs as a sweep of its own "
                f"(in <audit folder>/folds/runs); leave {override_key(override)} out"
            )
    kept = [o for o in base if for_folds(o)]
    extra = [o for o in extra if override_key(o) not in DATA_KEYS]
    given = {override_key(o) for o in extra}
    quiet = {override_key(o) for o in QUIET}
    merged = [o for o in kept if override_key(o) not in given] + list(extra)
    return [o for o in merged if override_key(o) not in quiet] + list(QUIET)


def for_folds(override: str) -> bool:
    """May a received run's override go to the fold jobs? Only a group option by its plain name
    (`model=resnet`: GROUPS) or a plain value under KEY_ROOTS (`trainer.epochs=5`): no `+`, `++`
    or `~`, no key Hydra instantiates code from, no data source, no interpolation or sweep."""
    key, equals, value = override.partition("=")
    if not equals:
        return False
    if key in GROUPS:
        return NAME.fullmatch(value) is not None
    if not KEY.fullmatch(key) or key.split(".")[0] not in KEY_ROOTS or names_data_source(key):
        return False
    return not any(word in key for word in INSTANTIATE_KEYS) and single_value(value)


def single_value(value: str) -> bool:
    """One plain value: no `${…}` (an interpolation, a resolver), no sweep function and no comma
    outside brackets and quotes (each would make more jobs or read this machine's settings)."""
    if "${" in value or SWEEP_FUNCTION.search(value):
        return False
    depth, quote, escaped = 0, "", False
    for char in value:
        if escaped:
            escaped = False
        elif quote and char == "\\":
            escaped = True
        elif quote:
            quote = "" if char == quote else quote
        elif char in "'\"":
            quote = char
        elif char in "[{":
            depth += 1
        elif char in "]}":
            depth -= 1
        elif char == "," and depth == 0:
            return False
    return True


def train_folds(files: list[Path], runs: Path, overrides: list[str]) -> tuple[Path, int]:
    """(the attempt's sweep folder, the sweep's exit status): one job per fold file, through
    whichever Hydra launcher `overrides` pick (the basic one runs them one after another)."""
    attempt = runs / str(1 + max((int(p.name) for p in attempts(runs)), default=0))
    write_json(attempt / RECIPE, {"overrides": recipe(overrides)})
    command = [
        sys.executable, "-m", "cnntrain", "-m", *overrides,
        "data.splits=" + ",".join(quoted(str(f)) for f in files),
        "hydra.sweep.dir=" + quoted(str(attempt)),
    ]  # fmt: skip
    # The jobs' console lines go to stderr (file descriptor 2: whatever sys.stderr has become in
    # a notebook or under capture), with the audit's own log: stdout keeps the audit's answer.
    return attempt, subprocess.run(command, check=False, stdout=2).returncode


def recipe(overrides: list[str]) -> list[str]:
    """What a fold model depends on: the overrides but Hydra's (another launcher trains alike)."""
    return [o for o in overrides if not override_key(o).startswith("hydra")]


def attempts(runs: Path) -> list[Path]:
    """The attempts' sweep folders, newest (highest number) first."""
    found = [p for p in runs.iterdir() if p.is_dir() and p.name.isdigit()] if runs.is_dir() else []
    return sorted(found, key=lambda p: int(p.name), reverse=True)


def finished_jobs(runs: Path, tables: list[list[tuple]], overrides: list[str]) -> list[Path | None]:
    """Each fold's finished job folder (the newest), None where none is: one that has results.json,
    trained with `overrides` (its attempt's recipe.json), on the fold's rows (its splits.csv)."""
    wanted = [set(rows) for rows in tables]
    found: list[Path | None] = [None] * len(tables)
    for attempt in attempts(runs):
        if (read_json(attempt / RECIPE) or {}).get("overrides") != recipe(overrides):
            continue
        for job in sorted(p for p in attempt.iterdir() if p.is_dir() and p.name.isdigit()):
            rows = job_rows(job)
            for k, fold in enumerate(wanted):
                if found[k] is None and rows == fold:
                    found[k] = job
    return found


def job_rows(job: Path) -> set[tuple[str, str, str]] | None:
    """The (path, class, split) rows a finished job trained on; None when it did not finish."""
    table = run_split_table(job)
    if not (job / "results.json").is_file() or table is None:
        return None
    rows, _ = read_split_table(Path(table))
    return {(r.path, r.label, r.split) for r in rows}


def check_trained(jobs: list[Path | None], attempt: Path, status: int) -> None:
    """Refuse to go on without every fold's model: the first failed job's error, in one line."""
    if all(job is not None for job in jobs):
        return
    for job in sorted(p for p in attempt.iterdir() if p.is_dir() and p.name.isdigit()):
        error = job / "error.txt"
        if error.is_file():
            first = error.read_text(encoding="utf-8", errors="replace").strip().splitlines()
            raise UserError(f"fold job {job} failed: {printable(first[0] if first else '')}")
    untrained = ", ".join(f"fold{k}" for k, job in enumerate(jobs) if job is None)
    raise UserError(
        f"the fold sweep in {attempt} ended (exit status {status}) without a model for "
        f"{untrained}; its jobs' train.log say why (run the audit again to train only those)"
    )


# ---- the probabilities ----


def fold_probabilities(
    pool: Pool, assigned: np.ndarray, jobs: list[Path]
) -> tuple[np.ndarray, np.ndarray]:
    """(N, classes) float64 and (N,) readable: each fold's images scored by that fold's model."""
    probabilities = np.zeros((len(assigned), len(pool.classes)), dtype=np.float64)
    readable = np.zeros(len(assigned), dtype=bool)
    for k, job in enumerate(jobs):
        rows = np.flatnonzero(assigned == k)
        probabilities[rows], readable[rows] = job_probabilities(job, pool, rows)
    return probabilities, readable


def job_probabilities(job: Path, pool: Pool, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(len(rows), classes) softmax probabilities of the images `rows` by the job's best network,
    in pool.classes' order, read as its evaluation read them (its caps, its test-time flips, its
    temperature when it has one); (len(rows),) bool: which it could read (an unreadable one's
    row is zeros; files.csv lists it)."""
    trained = load_trained(job)
    columns = class_columns(job, trained.classes, pool.classes)
    tta = trained.config.get("trainer", {}).get("tta", False)
    scored = np.zeros((len(rows), len(pool.classes)))
    readable = np.zeros(len(rows), dtype=bool)
    refs = [ImageRef(pool.names[i], Path(pool.files[i])) for i in rows]
    unread = []
    batches = batch_probabilities(trained, refs, batch_size=BATCH, tta=tta,
                                  device=select_device("auto"), show_bars=False,
                                  skipped=unread)  # fmt: skip
    for places, _, probabilities in batches:
        scored[places] = probabilities.numpy()[:, columns]  # softmax(logits ÷ its temperature)
        readable[places] = True
    if unread:
        log.warning("%s: %d image(s) could not be read (first: %s); they are left out of the "
                    "ranking", job, len(unread), unread[0])  # fmt: skip
    return scored, readable


def class_columns(job: Path, trained: list[str], audited: list[str]) -> list[int]:
    """The fold model's column of each audited class, matched by name: data=csv orders classes
    by their sorted labels (numerically when all are integers), the audited source maybe not."""
    if sorted(trained) != sorted(audited):
        raise UserError(
            f"fold job {job} has the classes {', '.join(map(printable, trained))}, not the "
            f"audited data's {', '.join(map(printable, audited))}; remove {job.parent} and "
            "run the audit again"
        )
    return [trained.index(name) for name in audited]
