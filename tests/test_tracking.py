"""Trackers, read back by their own readers: TensorBoard's EventAccumulator and MLflow's client."""

import json
from pathlib import Path

import pytest
from mlflow import MlflowClient
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.plugins.hparams import plugin_data_pb2

from cnntrain.training.step import SYNC_EVERY
from tests.conftest import read_jsonl, run_cli, run_folders, run_with_fault

pytestmark = pytest.mark.slow
EPOCHS = 2
BATCH = 2
STEPS = 52  # 104 training images / batch 2: one running-loss point (every 50 steps) per epoch
TRACKED = ("train/loss", "train/acc", "val/loss", "val/acc", "lr", "train/images_per_s", "epoch")


def args(root) -> list[str]:
    return [
        "data=imagefolder", f"data.root={root}", "model=simplecnn", f"trainer.epochs={EPOCHS}",
        f"data.batch_size={BATCH}", f"data.max_train_samples={BATCH * STEPS}",
        "data.val_split=0", "logger=[tensorboard,mlflow]",
        "trainer.grad_clip=1",  # batches of 2 at lr 0.05 can blow up, as the flips fall
    ]  # fmt: skip


def events(run) -> EventAccumulator:
    accumulator = EventAccumulator(str(run / "tensorboard"), size_guidance={"scalars": 0})
    accumulator.Reload()  # purges what a killed run wrote after its checkpoint, as TensorBoard does
    return accumulator


def mlflow_client(cwd) -> MlflowClient:
    return MlflowClient(f"sqlite:///{cwd / 'outputs' / 'mlflow.db'}")


def only_mlflow_run(client: MlflowClient):
    (experiment,) = [e for e in client.search_experiments() if e.name == "cnntrain"]
    (run,) = client.search_runs([experiment.experiment_id])
    return run


def assert_tracked_once_per_epoch(run_dir, cwd) -> None:
    rows = read_jsonl(run_dir / "metrics.jsonl")
    assert [r["epoch"] for r in rows] == list(range(1, EPOCHS + 1))
    tb = events(run_dir)
    for tag in TRACKED:
        points = tb.Scalars(tag)
        assert [p.step for p in points] == [STEPS * e for e in range(1, EPOCHS + 1)], tag
    for tag in ("val/acc", "train/loss", "lr"):
        assert [p.value for p in tb.Scalars(tag)] == pytest.approx([r[tag] for r in rows])
    running = tb.Scalars("step/train_loss")
    steps = [p.step for p in running]
    assert steps == sorted(set(steps)) and len(steps) == EPOCHS * (STEPS // SYNC_EVERY)

    client = mlflow_client(cwd)
    run = only_mlflow_run(client)
    assert run.info.run_name == run_dir.name and run.info.status == "FINISHED"
    for key in ("val/acc", "train/loss", "lr"):
        history = sorted(client.get_metric_history(run.info.run_id, key), key=lambda m: m.step)
        assert [m.step for m in history] == list(range(1, EPOCHS + 1)), key
        assert [m.value for m in history] == pytest.approx([r[key] for r in rows])


def test_a_killed_and_resumed_run_is_one_tracked_run_holding_everything(image_root, tmp_path):
    # Killed after the last epoch's row reached the files and trackers, before its checkpoint:
    # the resumed run redoes that epoch, which must not appear twice in either tracker.
    proc = run_with_fault(f"kill-after-row:{EPOCHS}", *args(image_root), cwd=tmp_path)
    assert proc.returncode == -9, proc.stderr
    (run_dir,) = run_folders(tmp_path)
    run_cli(f"resume={run_dir}", cwd=tmp_path)  # as the interrupt message says: its own trackers
    assert_tracked_once_per_epoch(run_dir, tmp_path)
    results = json.loads((run_dir / "results.json").read_text())

    tb = events(run_dir)
    assert tb.Scalars("test/acc")[-1].value == pytest.approx(results["test/acc"])
    hparams = tb.PluginTagToContent("hparams")
    start = plugin_data_pb2.HParamsPluginData.FromString(hparams["_hparams_/session_start_info"])
    values = start.session_start_info.hparams
    assert values["optimizer.lr"].number_value == pytest.approx(0.05)
    assert values["model.name"].string_value == "simplecnn"
    experiment = plugin_data_pb2.HParamsPluginData.FromString(hparams["_hparams_/experiment"])
    metrics = {m.name.tag for m in experiment.experiment.metric_infos}
    assert {"test/acc", "best_val/acc"} <= metrics
    assert all(p.is_file() for p in (run_dir / "tensorboard").iterdir())  # no timestamped sub-run
    images = set(tb.Tags()["images"])
    assert {"plots/confusion_matrix", "plots/feature_maps", "plots/misclassified"} <= images
    assert tb.Images("plots/confusion_matrix")[0].height > 100  # a real figure

    client = mlflow_client(tmp_path)
    run = only_mlflow_run(client)
    assert run.data.params["optimizer.lr"] == "0.05"
    assert run.data.params["model.name"] == "simplecnn"
    assert run.data.metrics["test/acc"] == pytest.approx(results["test/acc"])
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"results.json", "report.html", "summary.txt", "plots"} <= artifacts
    plots = {a.path for a in client.list_artifacts(run.info.run_id, "plots")}
    assert "plots/confusion_matrix.png" in plots
    local = client.download_artifacts(run.info.run_id, "results.json", str(tmp_path))
    assert json.loads(Path(local).read_text())["test/acc"] == results["test/acc"]


def test_an_unreachable_tracking_server_is_one_line_naming_it(image_root, tmp_path):
    uri = "http://127.0.0.1:9"  # the discard port: nothing listens there
    no_retries = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0", "MLFLOW_HTTP_REQUEST_TIMEOUT": "5"}
    proc = run_cli(*args(image_root), "logger=mlflow", f"logger.mlflow.tracking_uri={uri}",
                   cwd=tmp_path, check=False, env=no_retries)  # fmt: skip
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr
    line = f"cnntrain: error: logger=mlflow cannot use the tracking URI {uri}"
    assert proc.stderr.startswith(line)
    (run_dir,) = run_folders(tmp_path)  # the run folder stays, with its config
    assert (run_dir / ".hydra" / "config.yaml").exists()
