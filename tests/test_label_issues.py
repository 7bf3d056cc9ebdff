"""cnntrain-audit --folds: seeded stratified folds as splits.csv files, K models trained as one
sweep (finished ones reused), and cleanlab's label issues finding planted label flips."""

import csv
import logging
import random
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from bench.photo_folder import read_sources
from cnntrain.audit import folds
from cnntrain.audit.folds import (
    QUIET,
    check_fold_count,
    check_trained,
    fold_of_each,
    fold_rows,
    job_probabilities,
    out_of_fold_probabilities,
    pool_as_label_file,
    sweep_overrides,
)
from cnntrain.audit.gather import OVERRIDES_FILE, run_overrides
from cnntrain.audit.label_issues import LABEL_ISSUE_COLUMNS, rank_label_issues, write_label_issues
from cnntrain.audit.pool import Pool
from cnntrain.config.compose import compose_config
from cnntrain.core.errors import UserError
from cnntrain.core.overrides import quoted
from cnntrain.data.split_table import TABLE_COLUMNS, read_split_table, write_csv
from tests.conftest import CIFAR_ARCHIVE, make_image_folder, needs_cifar

# Two CIFAR-10 classes a small CNN tells apart well, 200 images each, 5% of labels flipped; a
# recipe of a few seconds per fold on a CPU (SimpleCNN, 20 epochs of ~240 images).
EASY = ("automobile", "frog")
PER_CLASS, FLIPPED = 200, 0.05
RECIPE = ["model=simplecnn", "data.batch_size=32", "trainer.epochs=20",
          "data.augment.crop_padding=4", "data.num_workers=1"]  # fmt: skip


def pool_of(labels: list[int], classes=("cat", "dog"), root=Path("/data")) -> Pool:
    names = [f"{classes[c]}/{i:03d}.png" for i, c in enumerate(labels)]
    return Pool(root=root, files=[root / n for n in names], names=names, labels=list(labels),
                splits=["train"] * len(labels), classes=list(classes),
                overrides=["data=imagefolder", f"data.root={root}"])  # fmt: skip


# ---- units ----


def test_planted_flips_rank_first_with_their_true_class_suggested(tmp_path):
    rng = np.random.default_rng(0)
    truth = np.repeat([0, 1, 2], 40)
    probabilities = np.full((120, 3), 0.05)
    probabilities[np.arange(120), truth] = 0.9
    probabilities += rng.uniform(0, 0.02, probabilities.shape)  # no two rows alike
    probabilities /= probabilities.sum(1, keepdims=True)
    flips = [3, 50, 77, 101, 118]
    given = truth.copy()
    given[flips] = (truth[flips] + 1) % 3
    pool = pool_of(given.tolist(), classes=("cat", "dog", "owl"))
    rows = rank_label_issues(pool, probabilities, np.ones(120, dtype=bool))
    assert {r["path"] for r in rows[: len(flips)]} == {pool.names[i] for i in flips}
    assert [r["rank"] for r in rows] == list(range(1, len(rows) + 1))
    first = rows[0]
    i = pool.names.index(first["path"])
    assert first["given"] == pool.classes[given[i]] and first["suggested"] == pool.classes[truth[i]]
    assert first["given_probability"] < 0.1 < 0.85 < first["suggested_probability"]
    written = write_label_issues(rows, tmp_path)
    with open(written, newline="") as f:
        read = list(csv.DictReader(f))
    assert written.name == "label_issues.csv" and tuple(read[0]) == LABEL_ISSUE_COLUMNS
    assert [r["path"] for r in read] == [r["path"] for r in rows]
    with pytest.raises(UserError, match="one probability per image and class"):
        rank_label_issues(pool, probabilities[:, :2], np.ones(120, dtype=bool))
    unread = np.ones(120, dtype=bool)
    unread[flips[:2]] = False  # what the fold models could not read is no evidence either way
    rows = rank_label_issues(pool, probabilities, unread)
    assert rows and {r["path"] for r in rows} <= {pool.names[i] for i in flips[2:]}


def test_folds_are_seeded_disjoint_stratified_splits_csv_files(tmp_path):
    labels = [0] * 31 + [1] * 12
    pool = pool_of(labels)
    assigned = fold_of_each(np.array(labels), 3, seed=5)
    assert np.array_equal(assigned, fold_of_each(np.array(labels), 3, seed=5))
    assert not np.array_equal(assigned, fold_of_each(np.array(labels), 3, seed=6))
    for c, count in ((0, 31), (1, 12)):
        sizes = np.bincount(assigned[np.array(labels) == c], minlength=3)
        assert sizes.sum() == count and sizes.max() - sizes.min() <= 1  # every class in every fold
    assert np.ptp(np.bincount(assigned)) <= 1  # and the folds as large as each other
    tested = []
    for k in range(3):
        table = tmp_path / f"fold{k}.csv"
        write_csv(table, TABLE_COLUMNS, fold_rows(pool, assigned, k, seed=5))
        rows, bad = read_split_table(table)
        assert not bad and [r.path for r in rows] == pool.names
        split = {r.path: r.split for r in rows}
        tested += [p for p, s in split.items() if s == "test"]
        assert {p for p, s in split.items() if s == "test"} == {
            pool.names[i] for i in np.flatnonzero(assigned == k)
        }
        val = [p for p, s in split.items() if s == "val"]
        assert {p.split("/")[0] for p in val} == {"cat", "dog"}  # val: ~10% of each class
    assert sorted(tested) == sorted(pool.names)  # each image tested by exactly one fold


def test_fold_count_and_overrides_are_checked(tmp_path):
    with pytest.raises(UserError, match=r"--folds=1: .* use --folds between 2 and 4"):
        check_fold_count(np.array([0] * 9 + [1] * 4), ["cat", "dog"], 1)
    with pytest.raises(UserError, match=r"--folds=5: .*class 'dog' has 4 image"):
        check_fold_count(np.array([0] * 9 + [1] * 4), ["cat", "dog"], 5)
    base = ["data=imagefolder", "data.root=/d", "data.splits=/old.csv", "resume=/r",
            "hydra.run.dir=/x", "model=resnet", "logger=mlflow", "trainer.epochs=3"]  # fmt: skip
    merged = sweep_overrides(base, ["model=simplecnn", "hydra/launcher=joblib", "data.splits=/s"])
    assert merged == ["trainer.epochs=3", "model=simplecnn", "hydra/launcher=joblib",
                      "trainer.plots=false", "logger=none", "trainer.progress=false"]  # fmt: skip
    with pytest.raises(UserError, match=r"runs its fold jobs as a sweep of its own"):
        sweep_overrides(base, ["hydra.sweep.dir=/mine"])
    attempt = tmp_path / "runs" / "1"
    (attempt / "0").mkdir(parents=True)
    (attempt / "1").mkdir()
    (attempt / "1" / "error.txt").write_text("data.root='/gone' does not exist; give …\n")
    with pytest.raises(UserError, match=r"fold job .*runs/1/1 failed: data.root='/gone' does"):
        check_trained([attempt / "0", None], attempt, 1)
    (attempt / "1" / "error.txt").unlink()
    with pytest.raises(UserError, match=r"exit status 1\) without a model for fold1;"):
        check_trained([attempt / "0", None], attempt, 1)
    tree = make_image_folder(tmp_path / "tree", per_class=3)
    pool = pool_of([0, 1], root=tree)
    pool = replace(pool, names=["train/=a.png", "val/b c.png"])
    # a tree is split by its folders: the fold jobs get its files as a label file instead
    given = sweep_overrides(pool.overrides, [f"data.root={tree}", "data.image_size=16"])
    assert pool_as_label_file(pool, tmp_path / "w", given) == [
        "data=csv", f"data.labels={quoted(str(tmp_path / 'w' / 'labels.csv'))}",
        f"data.root={quoted(str(tree))}", "data.image_size=16", *QUIET]  # fmt: skip
    written = (tmp_path / "w" / "labels.csv").read_text().splitlines()
    assert written == ["path,label", "train/=a.png,cat", "val/b c.png,dog"]  # read verbatim


# What a received run folder's .hydra/overrides.yaml may hold to steer the fold jobs: none of it
# reaches them (code to run, files elsewhere, more jobs, this machine's settings, other data).
CRAFTED = ["+callbacks.x._target_=cnntrain.core.files.write_text", "+logger.x._target_=a.B",
           "paths.output_dir=/x", "optimizer._target_=os.system", "trainer.epochs=1,2",
           "data.root=/elsewhere", "model=${oc.env:HOME}", "data=imagefolder",
           "data.labels=/other.csv", "data.hf_splits.val=train", "hydra.run.dir=/y",
           "hydra/launcher=joblib", "resume=/r", "hparams_search=x", "~trainer.ema",
           "++trainer.seed=1", "trainer.seed=range(1,9)", "optimizer.lr=${oc.env:LR}",
           "model.head._partial_=true", "trainer.seed='1',2",
           r"trainer.seed=1,'a\',b'"]  # fmt: skip
ALLOWED = ["model=simplecnn", "experiment=smoke", "trainer.epochs=2", "optimizer.lr=0.05",
           "loss.label_smoothing=0.1", "data.image_size=16", "trainer.early_stopping.patience=3",
           "model.freeze=[conv1,bn1]", r"trainer.device='cpu,\',{'"]  # fmt: skip


def test_a_received_runs_overrides_cannot_steer_the_fold_jobs(tmp_path, caplog):
    run = tmp_path / "run"
    (run / OVERRIDES_FILE).parent.mkdir(parents=True)
    (run / OVERRIDES_FILE).write_text(yaml.safe_dump([*CRAFTED, *ALLOWED]))
    with caplog.at_level(logging.INFO, logger="cnntrain"):
        kept = run_overrides(run)
    assert kept == ALLOWED
    [line] = [r.getMessage() for r in caplog.records if "ignored from" in r.getMessage()]
    assert line.startswith(f"ignored from {run / OVERRIDES_FILE}: ")
    # the data source is replaced by the pool's label file anyway: dropped without a word
    replaced = ("data.root=/elsewhere", "data=imagefolder", "data.labels=/other.csv",
                "data.hf_splits.val=train")  # fmt: skip
    assert all(o in line for o in CRAFTED if o not in replaced), line
    assert not any(o in line for o in replaced), line
    tree = make_image_folder(tmp_path / "tree", per_class=2)
    pool = replace(pool_of([0, 1], root=tree), overrides=[*CRAFTED, *ALLOWED])
    jobs = pool_as_label_file(pool, tmp_path / "w", sweep_overrides(pool.overrides, []))
    assert jobs == ["data=csv", f"data.labels={quoted(str(tmp_path / 'w' / 'labels.csv'))}",
                    f"data.root={quoted(str(tree))}", *ALLOWED, *QUIET]  # fmt: skip
    cfg = compose_config([*jobs, "data.splits=/fold0.csv"])  # one job's config
    assert (cfg.data.name, cfg.data.root, cfg.model.name) == ("csv", str(tree), "simplecnn")
    assert not cfg.callbacks and cfg.data.augment.hflip and cfg.trainer.epochs == 2


def test_a_run_without_overrides_trains_its_folds_on_the_pools_files(tmp_path):
    assert run_overrides(tmp_path) == []  # no .hydra/overrides.yaml
    pool = replace(pool_of([0, 1, 1]), overrides=[])  # a flat folder, no tree
    extra = ["data=imagefolder", "data.root=/data", "data.val_split=0.2", "hydra/launcher=joblib"]
    jobs = pool_as_label_file(pool, tmp_path / "w", sweep_overrides(pool.overrides, extra))
    assert jobs == ["data=csv", f"data.labels={quoted(str(tmp_path / 'w' / 'labels.csv'))}",
                    "data.root='/data'", "data.val_split=0.2", "hydra/launcher=joblib",
                    *QUIET]  # fmt: skip
    written = (tmp_path / "w" / "labels.csv").read_text().splitlines()
    assert written == ["path,label", "cat/000.png,cat", "dog/001.png,dog", "dog/002.png,dog"]


class FoldModel:
    """What job_probabilities reads of a trained fold job: its classes and config."""

    def __init__(self, classes: list[str]):
        self.classes, self.config = classes, {}


def test_fold_probabilities_follow_the_pools_class_names_and_mark_unread_images(
    tmp_path, monkeypatch
):
    # data=csv sorts integer labels numerically: the fold model's columns are "9", "10", the
    # folder's classes "10", "9"; the second image cannot be read.
    pool = pool_of([0, 1, 1], classes=("10", "9"))
    scored = torch.tensor([[0.8, 0.2], [0.3, 0.7]], dtype=torch.float64)  # columns 9, 10

    def batches(trained, refs, *, skipped, **_):
        skipped.append(refs[1].name)
        yield [0, 2], None, scored

    monkeypatch.setattr(folds, "batch_probabilities", batches)
    monkeypatch.setattr(folds, "load_trained", lambda job: FoldModel(["9", "10"]))
    probabilities, readable = job_probabilities(tmp_path, pool, np.arange(3))
    assert readable.tolist() == [True, False, True]
    assert probabilities.tolist() == [[0.2, 0.8], [0.0, 0.0], [0.7, 0.3]]  # columns 10, 9
    monkeypatch.setattr(folds, "load_trained", lambda job: FoldModel(["9", "11"]))
    with pytest.raises(UserError, match=r"has the classes 9, 11, not the audited data's 10, 9"):
        job_probabilities(tmp_path, pool, np.arange(3))


# ---- end to end: the done-when ----


def flipped_photos(root: Path, seed: int = 0) -> tuple[Pool, set[str]]:
    """EASY's CIFAR images as flat class folders, FLIPPED of them (seeded) in the other class's
    folder; the Pool of them, and the flipped files' names."""
    sources = read_sources(CIFAR_ARCHIVE, 7, PER_CLASS, seed)  # the first 7 classes hold EASY
    images = [(c, i) for c in EASY for i in range(PER_CLASS)]
    flips = set(random.Random(seed).sample(range(len(images)), round(FLIPPED * len(images))))
    flipped = set()
    for j, (name, i) in enumerate(images):
        label = EASY[1 - EASY.index(name)] if j in flips else name
        file = root / label / f"{name}_{i:03d}.jpg"
        file.parent.mkdir(parents=True, exist_ok=True)
        file.write_bytes(sources[name][i])
        if j in flips:
            flipped.add(file.relative_to(root).as_posix())
    files = sorted(root.glob("*/*.jpg"))
    names = [f.relative_to(root).as_posix() for f in files]
    labels = [EASY.index(n.split("/")[0]) for n in names]
    pool = Pool(root=root, files=files, names=names, labels=labels,
                splits=["train"] * len(names), classes=list(EASY),
                overrides=["data=imagefolder", f"data.root={root}"])  # fmt: skip
    return pool, flipped


def job_results(work: Path) -> dict[Path, int]:
    """Each fold job's results.json and its mtime (ns)."""
    return {p: p.stat().st_mtime_ns for p in sorted((work / "runs").glob("*/*/results.json"))}


@pytest.mark.slow
@needs_cifar
def test_out_of_fold_label_issues_find_planted_flips_and_reuse_finished_folds(
    tmp_path, monkeypatch
):
    # One compute thread per fold job: beside other tests' processes, threads that wait for a
    # core spin; this small net trains as fast on one (155 → 34 CPU-s here for this test).
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    pool, flipped = flipped_photos(tmp_path / "photos")
    work = tmp_path / "audit" / "folds"
    probabilities, readable = out_of_fold_probabilities(pool, 3, work, RECIPE, seed=0)
    assert probabilities.shape == (2 * PER_CLASS, 2) and readable.all()
    assert np.allclose(probabilities.sum(1), 1)
    rows = rank_label_issues(pool, probabilities, readable)
    top = {r["path"] for r in rows[: 2 * len(flipped)]}
    assert len(top & flipped) >= 0.7 * len(flipped), (len(top & flipped), len(flipped))

    trained = job_results(work)
    assert len(trained) == 3 and sorted((work / "runs").iterdir()) == [work / "runs" / "1"]
    again, _ = out_of_fold_probabilities(pool, 3, work, RECIPE, seed=0)  # nothing retrains
    assert job_results(work) == trained and np.array_equal(again, probabilities)

    lost = next(iter(trained))  # a fold whose job did not finish: only it is trained again
    lost.unlink()
    resumed, _ = out_of_fold_probabilities(pool, 3, work, RECIPE, seed=0)
    assert [p.name for p in (work / "runs" / "2").iterdir() if p.name.isdigit()] == ["0"]
    kept = {p: t for p, t in trained.items() if p != lost}
    assert {p: t for p, t in job_results(work).items() if p.parts[-3] == "1"} == kept
    assert resumed.shape == probabilities.shape


def test_the_fold_jobs_get_absolute_paths_from_a_relative_audit_folder(tmp_path, monkeypatch):
    """A launcher may run the jobs in another folder: the label file, the data's root and each
    fold's split file reach them as absolute paths."""
    monkeypatch.chdir(tmp_path)
    given = {}

    def launched(files, runs, overrides):
        given.update(files=files, runs=runs, overrides=overrides)
        raise StopIteration  # the sweep itself is not the point

    monkeypatch.setattr(folds, "train_folds", launched)
    with pytest.raises(StopIteration):
        folds.out_of_fold_probabilities(pool_of([0, 1] * 3, root=Path("data")), 2, Path("a/folds"),
                                        [], 0)  # fmt: skip
    assert all(f.is_absolute() for f in given["files"]) and given["runs"].is_absolute()
    labels = tmp_path / "a" / "folds" / "labels.csv"
    assert f"data.labels={quoted(str(labels))}" in given["overrides"]
    assert f"data.root={quoted(str(tmp_path / 'data'))}" in given["overrides"]
