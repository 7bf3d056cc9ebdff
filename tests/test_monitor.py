"""trainer.monitor, trainer.early_stopping and trainer.save_top_k: the rules alone, then in-process
runs of a Fashion-MNIST slice whose seed makes val/loss and val/acc disagree on the best epoch."""

import logging
import signal
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from cnntrain.core.checkpoint import (
    BEST,
    best_weights,
    checkpoint_file,
    checkpoint_path,
    save_checkpoint,
)
from cnntrain.models import build_model
from cnntrain.reporting.metrics_log import TIME_FIELDS
from cnntrain.training import best
from cnntrain.training.best import BestCheckpoints, held_epochs
from cnntrain.training.evaluate import evaluate
from cnntrain.training.precision import Arithmetic
from cnntrain.training.state import RunState, ranked
from cnntrain.training.stopping import stalled
from tests.conftest import FASHION_DIR, compose_config, load_run_data, read_jsonl, train_here

CPU = torch.device("cpu")
# 5 epochs: val/loss falls to the last epoch while val/acc peaks at epoch 4.
SLICE = ("data=fashion_mnist", "model=lenet5", "optimizer=adam", "optimizer.lr=0.01",
         "trainer.epochs=5", "data.max_train_samples=256", "data.max_eval_samples=128",
         "trainer.device=cpu", "trainer.precision=32", "trainer.plots=false",
         "logger=none")  # fmt: skip
# Early stopping on that slice: val/loss improves by more than 0.2 from epoch 1 to 2, not from
# 2 to 3 (1 epoch of patience): the run stops after epoch 3.
EARLY = ("trainer.monitor=val/loss", "trainer.early_stopping.patience=1",
         "trainer.early_stopping.min_delta=0.2")  # fmt: skip


def rows_of(*values: float, monitor: str = "val/loss") -> list[dict]:
    return [{"epoch": e, monitor: v} for e, v in enumerate(values, 1)]


def test_early_stopping_counts_from_the_last_improvement_by_more_than_min_delta():
    # The reference moves only on an improvement by more than min_delta: 0.95 and 0.91 do not.
    waited, reference = stalled(rows_of(1.0, 0.95, 0.91, 0.94), "val/loss", 0.1)
    assert (waited, reference["epoch"]) == (3, 1)
    waited, reference = stalled(rows_of(1.0, 0.8, 0.85), "val/loss", 0.1)
    assert (waited, reference["epoch"]) == (1, 2)
    waited, reference = stalled(rows_of(0.5, 0.5, 0.6, monitor="val/acc"), "val/acc", 0.0)
    assert (waited, reference["epoch"]) == (0, 3)  # higher is better; a tie is no improvement


def test_the_best_epoch_follows_the_monitor_and_an_old_checkpoints_progress_still_loads():
    state = RunState()
    for row in rows_of(0.9, 0.7, 0.7, 0.8):
        state.record(row, "val/loss")
    assert (state.best_value, state.best_epoch) == (0.7, 2)  # lower is better; ties keep the first
    assert [r["epoch"] for r in ranked(state.rows, "val/loss")] == [2, 3, 4, 1]
    old = {"epoch": 3, "step": 0, "best_acc": 0.5, "best_epoch": 2, "rows": []}  # before monitor
    assert (RunState.from_progress(old).best_value, RunState.from_progress(old).best_epoch) == (
        0.5, 2)  # fmt: skip
    assert RunState.from_progress({**old, "best_acc": -1.0, "best_epoch": 0}).best_value is None


def fake_loop(folder, losses: list[float]):
    state = RunState()
    for row in rows_of(*losses):
        state.record(row, "val/loss")
    return SimpleNamespace(state=state, checkpoint_path=lambda name: folder / name)


def test_save_top_k_keeps_the_k_best_epochs_and_a_resume_puts_a_torn_set_right(
    tmp_path, monkeypatch
):
    # Each checkpoint file holds only its epoch: what the folder holds is read back from them.
    monkeypatch.setattr(best, "write_checkpoint", lambda loop, name: save_checkpoint(
        loop.checkpoint_path(name), {"progress": {"epoch": loop.state.epoch}}))  # fmt: skip
    losses = [0.9, 0.7, 0.8, 0.5, 0.6, 0.55]
    expected = [{BEST: 1}, {BEST: 2, "best-epoch1.pt": 1}, {BEST: 2, "best-epoch3.pt": 3},
                {BEST: 4, "best-epoch2.pt": 2}, {BEST: 4, "best-epoch5.pt": 5},
                {BEST: 4, "best-epoch6.pt": 6}]  # fmt: skip
    callback = BestCheckpoints(2, "val/loss")
    for epoch in range(len(losses) + 1):
        loop = fake_loop(tmp_path, losses[:epoch])
        if epoch == 0:
            callback.on_fit_start(loop)
            continue
        callback.on_epoch_end(loop, loop.state.rows[-1])
        assert held_epochs(tmp_path) == expected[epoch - 1], epoch
    # Epoch 7 (the best) killed after best.pt moved to best-epoch4.pt, before the new best.pt;
    # and a file of an epoch past the checkpoint, written before a kill: resumed at epoch 7.
    (tmp_path / BEST).rename(tmp_path / "best-epoch4.pt")
    save_checkpoint(tmp_path / "best-epoch9.pt", {"progress": {"epoch": 9}})
    BestCheckpoints(2, "val/loss").on_fit_start(fake_loop(tmp_path, [*losses, 0.4]))
    assert held_epochs(tmp_path) == {BEST: 7, "best-epoch4.pt": 4}


@pytest.fixture(scope="module")
def monitored(tmp_path_factory) -> tuple[dict, Path]:
    """SLICE's 5 epochs, monitoring val/loss, keeping the 2 best: its results and folder."""
    if not FASHION_DIR.exists():
        pytest.skip(f"no {FASHION_DIR}")
    run = tmp_path_factory.mktemp("monitored") / "run"
    return train_here(*SLICE, "trainer.monitor=val/loss", "trainer.save_top_k=2",
                      output_dir=run), run  # fmt: skip


def test_monitoring_val_loss_tests_the_lowest_loss_epochs_weights_and_keeps_the_top_k(monitored):
    results, run = monitored
    rows = read_jsonl(run / "metrics.jsonl")
    lowest = min(rows, key=lambda r: r["val/loss"])
    assert lowest["epoch"] != max(rows, key=lambda r: r["val/acc"])["epoch"]  # they disagree
    assert results["best_epoch"] == lowest["epoch"] and results["monitor"] == "val/loss"
    assert results["best_val/loss"] == lowest["val/loss"]
    assert results["best_val/acc"] == max(r["val/acc"] for r in rows)  # its meaning is kept
    assert all(0 <= r["val/balanced_acc"] <= 1 for r in rows)
    second = sorted(rows, key=lambda r: r["val/loss"])[1]["epoch"]
    assert held_epochs(run / "checkpoints") == {BEST: lowest["epoch"],
                                                f"best-epoch{second}.pt": second}  # fmt: skip
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == sorted(
        [BEST, f"best-epoch{second}.pt", "last.pt"])  # fmt: skip

    cfg = compose_config(*SLICE, output_dir=run)  # the final test evaluated best.pt's weights
    data = load_run_data(cfg, CPU)
    net = build_model(cfg.model, data.spec)
    net.load_state_dict(best_weights(checkpoint_path(run, BEST)))
    assert results["test/loss"] == pytest.approx(
        evaluate(net, data.test, Arithmetic(CPU, None))["loss"], rel=1e-6)  # fmt: skip


def without_times(rows: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if k not in TIME_FIELDS} for r in rows]


def test_early_stopping_stops_at_the_same_epoch_with_the_same_rows_after_a_stop_and_resume(
    monitored, tmp_path, caplog
):
    caplog.set_level(logging.INFO, logger="cnntrain")
    _, reference = monitored  # without early stopping: all 5 epochs (the same training)
    run = tmp_path / "run"
    fault = ("+callbacks.fault._target_=tests.faults.Fault", "+callbacks.fault.at=sigterm-step:3:0")
    with pytest.raises(SystemExit) as stopped:  # SIGTERM before epoch 3's first batch
        train_here(*SLICE, *EARLY, "trainer.save_top_k=0", *fault, output_dir=run)
    assert stopped.value.code == 128 + signal.SIGTERM
    assert torch.load(checkpoint_path(run, "last.pt"), weights_only=True)["progress"]["step"] == 1
    results = train_here(output_dir=run, resume=run)
    assert results["stopped_by"] == "early_stopping" and results["epochs"] == 3
    expected = without_times(read_jsonl(reference / "metrics.jsonl"))[:3]
    assert without_times(read_jsonl(run / "metrics.jsonl")) == expected
    said = [r.getMessage() for r in caplog.records]
    assert [m for m in said if m.startswith("early stopping")] == [
        "early stopping: val/loss has not improved by more than 0.2 for 1 epochs "
        f"(best {expected[1]['val/loss']:.4f} at epoch 2)"
    ]
    # trainer.save_top_k=0: no best checkpoint; the final test took the last weights, and says so.
    assert [p.name for p in (run / "checkpoints").iterdir()] == ["last.pt"]
    assert ("trainer.save_top_k=0 keeps no best checkpoint: the final test uses the last epoch's "
            "weights (epoch 3)") in said  # fmt: skip
    # …and the commands that use a run (eval, predict, export, init_from) take those weights too.
    assert checkpoint_file(run, BEST, "RUN_DIR") == checkpoint_path(run, "last.pt")


def test_a_run_early_stopping_ended_stops_again_on_resume_unless_its_patience_changed(
    monitored, tmp_path
):
    _, reference = monitored  # without early stopping: all 5 epochs (the same training)
    run = tmp_path / "run"
    assert train_here(*SLICE, *EARLY, output_dir=run)["stopped_by"] == "early_stopping"
    again = train_here(output_dir=run, resume=run)  # the rule, asked again, still says stop
    assert (again["stopped_by"], again["epochs"]) == ("early_stopping", 3)
    results = train_here("trainer.early_stopping.patience=0", output_dir=run, resume=run)
    assert (results["stopped_by"], results["epochs"]) == ("epochs", 5)
    rows = without_times(read_jsonl(run / "metrics.jsonl"))
    assert rows == without_times(read_jsonl(reference / "metrics.jsonl"))


def test_the_final_test_and_the_calibration_read_best_pt_once(tmp_path, monkeypatch):
    if not FASHION_DIR.exists():
        pytest.skip(f"no {FASHION_DIR}")
    read, load = [], torch.load

    def recorded(f, *args, **kwargs):
        read.append(Path(str(f)).name)
        return load(f, *args, **kwargs)

    monkeypatch.setattr(torch, "load", recorded)
    results = train_here(*SLICE, "trainer.epochs=2", output_dir=tmp_path / "run")
    assert read.count(BEST) == 1  # the test's load; the temperature is written into that state
    monkeypatch.undo()
    saved = torch.load(checkpoint_path(tmp_path / "run", BEST), weights_only=True)
    assert saved["progress"]["epoch"] == results["best_epoch"] and saved["optimizer"]
    assert saved["calibration"]["fitted_on"] == "val" and saved["calibration"]["images"] == 128
