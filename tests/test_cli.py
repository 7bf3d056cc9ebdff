"""The real `cnntrain` command end to end, on small slices of the shared data."""

import csv
import json
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from cnntrain.reporting.metrics_log import TIME_FIELDS
from tests.conftest import (
    REPO,
    make_image_folder,
    needs_cifar,
    needs_fashion,
    read_jsonl,
    run_cli,
    run_folders,
)
from tests.test_models import ArticleCIFAR10CNN

pytestmark = pytest.mark.slow
QUIET = ("logger=none", "trainer.plots=false")  # for runs whose plots and trackers go unchecked
METRIC_FIELDS = {"epoch", "train/loss", "train/acc", "val/loss", "val/acc", "lr", "epoch_time_s"}
RESULT_FIELDS = {"test/acc", "test/loss", "best_epoch", "epochs", "train_time_s", "params"}


def test_cifar10_run_writes_every_output(finished_run):
    run = finished_run  # `cnntrain model=cifar10cnn optimizer=sgd` on a slice, by the real CLI
    assert {"config.yaml", "overrides.yaml", "hydra.yaml"} <= {
        p.name for p in (run / ".hydra").iterdir()
    }
    log = (run / "train.log").read_text().splitlines()
    assert f"run folder {run}: cifar10cnn on cifar10" in log[0]  # first, before the data is read
    assert "run ETA" in next(line for line in log if "epoch 1/2" in line)
    assert any("epoch 2/2" in line for line in log)

    rows = read_jsonl(run / "metrics.jsonl")
    assert [r["epoch"] for r in rows] == [1, 2]
    assert all(r.keys() >= METRIC_FIELDS for r in rows)
    assert all(0 <= r["train/acc"] <= 1 and 0 <= r["val/acc"] <= 1 for r in rows)
    assert all(r["val/split"] == "val" for r in rows)  # carved from train: data.val_split=0.1
    assert 0 < rows[-1]["lr"] < rows[0]["lr"]  # the lr of each epoch's last step: cosine, not 0
    with open(run / "metrics.csv") as f:
        csv_rows = list(csv.DictReader(f))
    assert [float(r["val/acc"]) for r in csv_rows] == [r["val/acc"] for r in rows]

    results = json.loads((run / "results.json").read_text())
    assert results.keys() >= RESULT_FIELDS
    assert 0 <= results["test/acc"] <= 1 and results["test/count"] == 256
    assert results["params"] == 3_249_994 and results["epochs"] == 2
    best_epoch = max(rows, key=lambda r: r["val/acc"])["epoch"]
    assert results["best_epoch"] == best_epoch

    for name in ("last.pt", "best.pt"):
        ckpt = torch.load(run / "checkpoints" / name, weights_only=True)
        assert {"model", "optimizer", "scheduler", "epoch", "config", "metrics"} <= ckpt.keys()
        assert isinstance(ckpt["config"], dict) and ckpt["config"]["model"]["name"] == "cifar10cnn"
    last = torch.load(run / "checkpoints" / "last.pt", weights_only=True)
    assert last["epoch"] == 2 and last["metrics"] == rows
    ArticleCIFAR10CNN().load_state_dict(last["model"], strict=True)
    assert_plots_and_report(run, results)
    assert_test_predictions(run, results, "test/")


def assert_test_predictions(run, results, prefix: str) -> None:
    """test_predictions.csv: one row per test image, worst (largest loss) first, its file's path
    under the data's root starting with `prefix` ("" where the data is arrays), and the
    accuracy it implies equal to results.json's."""
    with open(run / "test_predictions.csv", newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == results["test/count"]
    assert sorted(int(r["index"]) for r in rows) == list(range(len(rows)))
    losses = [float(r["loss"]) for r in rows]
    assert losses == sorted(losses, reverse=True)
    right = sum(r["true"] == r["predicted"] for r in rows)
    assert right == round(results["test/acc"] * len(rows))
    assert all(r["path"].startswith(prefix) if prefix else r["path"] == "" for r in rows)
    assert {r["true"] for r in rows} <= set(results["classes"])


PLOTS = ("curves", "confusion_matrix", "per_class_accuracy", "class_distribution",
         "feature_maps", "filters", "misclassified", "reliability", "coverage", "cam_mistakes",
         "cam_correct")  # fmt: skip


def assert_plots_and_report(run, results) -> None:
    for name in PLOTS:
        with Image.open(run / "plots" / f"{name}.png") as img:
            pixels = np.asarray(img.convert("L"), dtype=float)
        assert min(pixels.shape) > 100 and pixels.std() > 8, name  # a real picture, not blank
    html = (run / "report.html").read_text()
    assert f"{100 * results['test/acc']:.2f}%" in html
    assert html.count("data:image/png;base64,") == len(PLOTS) and "http" not in html
    summary = json.loads((run / "summary.json").read_text())
    assert sum(layer["params"] for layer in summary["layers"]) == results["params"]
    assert "features.0" in (run / "summary.txt").read_text()


@needs_fashion
def test_fashion_mnist_run_learns(tmp_path):
    run_cli(
        "data=fashion_mnist",
        "model=simplecnn",
        "trainer.epochs=2",
        "data.max_train_samples=2048",
        "data.max_eval_samples=512",
        "data.val_split=0",
        *QUIET,
        cwd=tmp_path,
    )
    (run,) = run_folders(tmp_path)
    results = json.loads((run / "results.json").read_text())
    assert results["dataset"] == "fashion_mnist" and results["classes"][0] == "T-shirt/top"
    assert results["test/acc"] > 0.5  # 10 classes: chance is 0.1
    # Evaluated on the test split every epoch: the final test is the best epoch's evaluation.
    best = read_jsonl(run / "metrics.jsonl")[results["best_epoch"] - 1]
    assert best["val/split"] == "test"
    assert (results["test/acc"], results["test/loss"]) == (best["val/acc"], best["val/loss"])
    assert results["test/count"] == 512
    assert_test_predictions(run, results, "")


def test_unseen_image_folder_trains_without_options(tmp_path):
    root = make_image_folder(
        tmp_path / "my images", classes=("round thing", "square thing"), per_class=24
    )
    run_cli("data=imagefolder", f"data.root={root}", "model=simplecnn", "trainer.epochs=3",
            *QUIET, cwd=tmp_path)  # fmt: skip
    (run,) = run_folders(tmp_path)
    results = json.loads((run / "results.json").read_text())
    assert results["classes"] == ["round thing", "square thing"] and results["test/split"] == "val"
    assert results["test/acc"] >= 0.75  # stripes and brightness are easy to tell apart


@needs_cifar
def test_same_seed_same_run_on_cpu(tmp_path):
    args = (
        "model=simplecnn",
        "trainer.epochs=2",
        "data.max_train_samples=256",
        "data.max_eval_samples=128",
        "data.augment.rotation=10",
        *QUIET,
    )
    with ThreadPoolExecutor(2) as pool:  # two processes at once: the same run, in half the time
        list(pool.map(lambda _: run_cli(*args, cwd=tmp_path), range(2)))
    a, b = run_folders(tmp_path)
    strip = lambda rows: [{k: v for k, v in r.items() if k not in TIME_FIELDS} for r in rows]  # noqa: E731
    assert strip(read_jsonl(a / "metrics.jsonl")) == strip(read_jsonl(b / "metrics.jsonl"))
    wa = torch.load(a / "checkpoints" / "last.pt", weights_only=True)["model"]
    wb = torch.load(b / "checkpoints" / "last.pt", weights_only=True)["model"]
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


@needs_cifar
def test_two_runs_started_together_get_their_own_folders(tmp_path):
    cmd = [sys.executable, "-m", "cnntrain", "experiment=smoke", "trainer.epochs=1", *QUIET]
    procs = [
        subprocess.Popen(cmd, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        for _ in range(2)
    ]
    assert all(p.wait(timeout=300) == 0 for p in procs)
    runs = run_folders(tmp_path)
    assert len(runs) == 2 and all((r / "results.json").exists() for r in runs)


@needs_cifar
def test_multirun_sweeps_into_numbered_folders_with_a_ranked_summary_and_failed_jobs(tmp_path):
    # lr=-1 is refused by each of its jobs: recorded with its reason, the others still run.
    proc = run_cli("-m", "experiment=smoke", "optimizer=sgd,adam", "optimizer.lr=0.01,-1",
                   "logger=none", cwd=tmp_path, check=False)  # fmt: skip
    assert proc.returncode != 0 and "2 job(s) did not complete" in proc.stderr
    (sweep,) = (tmp_path / "outputs" / "multirun").glob("*/*")
    assert sorted(p.name for p in sweep.iterdir() if p.is_dir()) == ["0", "1", "2", "3", "plots"]
    with open(sweep / "summary.csv") as f:
        reader = csv.DictReader(f)
        rows = list(reader)
    assert reader.fieldnames[:5] == ["rank", "job", "optimizer", "optimizer.lr", "overrides"]
    assert [r["rank"] for r in rows] == ["1", "2", "3", "4"]
    completed, failed = rows[:2], rows[2:]
    assert {r["overrides"] for r in completed} == {
        "experiment=smoke optimizer=sgd optimizer.lr=0.01 logger=none",
        "experiment=smoke optimizer=adam optimizer.lr=0.01 logger=none",
    }
    assert all(r["status"] == "completed" for r in completed)
    accs = [float(r["val/acc"]) for r in completed]
    assert accs == sorted(accs, reverse=True)
    for r in failed:
        assert "optimizer.lr=-1" in r["overrides"]
        assert r["status"] == "failed: optimizer.lr=-1 is not valid; use a learning rate > 0"
        assert not (sweep / r["job"] / "results.json").exists()
    for r in completed:
        job = json.loads((sweep / r["job"] / "results.json").read_text())
        assert float(r["test/acc"]) == job["test/acc"]
    assert "sweep, best first" in proc.stdout
    table = proc.stdout[proc.stdout.index("sweep, best first") :]
    assert table.count("experiment=smoke") == 1  # what every job shares, said once
    html = (sweep / "report.html").read_text()
    assert "every job: <code>experiment=smoke logger=none</code>" in html
    assert html.count("experiment=smoke") == 1 and ">adam<" in html and ">sgd<" in html
    assert "data:image/png;base64," in html  # the swept optimizer against accuracy


def test_report_of_an_interrupted_run_can_be_rebuilt(copied_run):
    run = copied_run
    (run / "results.json").unlink()  # as if it had been killed before the test evaluation
    (run / "report.html").unlink()
    script = Path(sys.executable).parent / "cnntrain-report"  # the installed console script
    proc = subprocess.run([script, str(run)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    html = (run / "report.html").read_text()
    assert "did not finish" in html and "last completed epoch 2" in html


@pytest.mark.parametrize("command", ["train", "eval", "predict", "export", "report", "summary"])
def test_every_command_answers_help(command, tmp_path):
    """`cnntrain --help` says what cnntrain does, its groups and options, examples and the other
    commands (Hydra's help template: --cfg and --hydra-help keep working), without the whole
    config; every cnntrain-* command answers --help with exit status 0; none makes a folder."""
    module = "cnntrain" if command == "train" else f"cnntrain.cli.{command}"
    proc = subprocess.run([sys.executable, "-m", module, "--help"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=120)  # fmt: skip
    assert proc.returncode == 0 and not proc.stderr.strip(), proc.stderr
    name = "cnntrain" if command == "train" else f"cnntrain-{command}"
    assert proc.stdout.startswith(f"usage: {name}" if command != "train" else "cnntrain: train")
    if command == "train":
        assert "model: alexnet, cifar10cnn" in proc.stdout and "cnntrain-predict RUN" in proc.stdout
        assert "memory_budget_gb" not in proc.stdout  # the config is for --cfg job
    assert list(tmp_path.iterdir()) == []


def test_the_readmes_first_command_installs_what_training_needs_and_says_how_to_skip_cuda():
    """The Quick start's first command trains with the core dependencies (no [dev]: tests,
    linters and every extra); the CPU wheel index is named; the second is .ci/run's."""
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    block = readme.split("## Quick start", 1)[1].split("```bash\n", 1)[1].split("```", 1)[0]
    first, second = block.splitlines()[:2]
    assert "pip install -e . torch==" in first and "[" not in first and first.endswith("cnntrain")
    assert second in (REPO / ".ci" / "run").read_text()
    assert "--index-url https://download.pytorch.org/whl/cpu" in readme
