"""Exact resume: a run killed at any point and resumed ends bitwise identical to one left alone.

Each data path gets one reference run and one run that is stopped again and again — by a signal,
by SIGKILL mid-epoch, after a metrics row, in the middle of writing last.pt and best.pt — and
resumed every time; it must end bitwise identical to the reference.
"""

import json
import signal
from pathlib import Path

import pytest
import torch

from cnntrain.reporting.metrics_log import TIME_FIELDS
from tests.conftest import make_image_folder, read_jsonl, run_cli, run_folders, run_with_fault

pytestmark = pytest.mark.slow
EPOCHS = 3
STEPS = 4  # 64 training images / batch 16


@pytest.fixture(scope="module")
def image_root(tmp_path_factory):
    return make_image_folder(tmp_path_factory.mktemp("data") / "shapes", per_class=40, mode="RGB")


def args(root: Path, loader: str) -> list[str]:
    return [
        "data=imagefolder", f"data.root={root}", "model=simplecnn", f"trainer.epochs={EPOCHS}",
        f"data.loader={loader}", "data.batch_size=16", "data.max_train_samples=64",
        "data.num_workers=1", "data.augment.crop_padding=2", "data.augment.rotation=10",
        "trainer.ema=0.9", "logger=none", "trainer.plots=false",
    ]  # fmt: skip


def outcome(run: Path) -> dict:
    """Everything that must match bitwise: weights, EMA, optimizer state, metrics rows, test."""
    last = torch.load(run / "checkpoints" / "last.pt", weights_only=True)
    rows = [
        {k: v for k, v in r.items() if k not in TIME_FIELDS}
        for r in read_jsonl(run / "metrics.jsonl")
    ]
    results = json.loads((run / "results.json").read_text())
    optimizer = {f"{i}.{k}": v for i, state in last["optimizer"]["state"].items()
                 for k, v in state.items()}  # fmt: skip
    return {"model": last["model"], "ema": last["ema"]["weights"], "optimizer": optimizer,
            "rows": rows, "test": (results["test/acc"], results["test/loss"],
                                   results["best_epoch"])}  # fmt: skip


def assert_identical(a: dict, b: dict) -> None:
    assert a["rows"] == b["rows"]
    assert a["test"] == b["test"]
    for key in ("model", "ema", "optimizer"):
        assert a[key].keys() == b[key].keys() and a[key], key
        for name in a[key]:
            assert torch.equal(torch.as_tensor(a[key][name]), torch.as_tensor(b[key][name])), (
                f"{key}.{name} differs"
            )


@pytest.fixture(scope="module", params=["tensor", "dataloader"])
def reference(request, image_root, tmp_path_factory):
    """The uninterrupted run."""
    cwd = tmp_path_factory.mktemp(f"reference-{request.param}")
    run_cli(*args(image_root, request.param), cwd=cwd)
    (run,) = run_folders(cwd)
    return request.param, outcome(run)


def saved_position(run: Path) -> tuple[int, int]:
    progress = torch.load(run / "checkpoints" / "last.pt", weights_only=True)["progress"]
    return progress["epoch"], progress["step"]


def test_a_run_stopped_every_way_and_resumed_each_time_is_bitwise_identical(
    reference, image_root, tmp_path
):
    loader, expected = reference
    # SIGINT before batch 2 of epoch 1: the step finishes, last.pt holds step 3, exit 130.
    proc = run_with_fault("sigint-step:1:2", *args(image_root, loader), cwd=tmp_path)
    assert proc.returncode == 128 + signal.SIGINT, proc.stderr
    (run,) = run_folders(tmp_path)
    assert f"continue with: cnntrain resume={run}" in proc.stderr
    assert saved_position(run) == (0, 3) and not (run / "metrics.jsonl").read_text()

    def resume_with(fault: str, code: int, *extra: str):
        proc = run_with_fault(fault, f"resume={run}", *extra, cwd=tmp_path)
        assert proc.returncode == code, f"{fault}: {proc.stderr}"
        return proc

    if loader == "tensor":  # the loaders differ only in restoring the position in an epoch
        stop_at_every_checkpoint_fault(run, resume_with)
    else:  # killed mid-epoch 2: the position within the epoch comes from epoch 1's end
        resume_with("kill-step:2:2", -signal.SIGKILL)
        assert saved_position(run) == (1, 0)
    # Resumed by the checkpoint's path, to the end, in the same folder.
    run_cli(f"resume={run / 'checkpoints' / 'last.pt'}", cwd=tmp_path)
    assert run_folders(tmp_path) == [run] and not list((run / "checkpoints").glob(".*.tmp"))
    assert_identical(outcome(run), expected)


def stop_at_every_checkpoint_fault(run: Path, resume_with) -> None:
    """From mid-epoch 1: killed while writing best.pt, mid-epoch, after a row, while writing
    last.pt, and by SIGTERM; each time resumed."""
    # Killed halfway through the first write of best.pt (end of epoch 1): it stays missing, its
    # temporary file half written; the resumed run heals it.
    resume_with("kill-in-save:best.pt:1", -signal.SIGKILL)
    assert [p.name.startswith(".best.pt.") for p in (run / "checkpoints").glob(".*.tmp")] == [True]
    assert not (run / "checkpoints" / "best.pt").exists() and saved_position(run) == (1, 0)
    # Killed mid-epoch 2, before batch 2: no torn file; last.pt is epoch 1's.
    resume_with("kill-step:2:2", -signal.SIGKILL)
    assert (run / "checkpoints" / "best.pt").exists()  # healed by that resume
    assert not list((run / "checkpoints").glob(".*.tmp")) and saved_position(run) == (1, 0)
    # Killed after epoch 2's metrics row is written, before its checkpoint.
    resume_with("kill-after-row:2", -signal.SIGKILL)
    assert [r["epoch"] for r in read_jsonl(run / "metrics.jsonl")] == [1, 2]
    assert saved_position(run) == (1, 0)
    # Killed halfway through the next write of last.pt (end of epoch 2): the old one survives.
    resume_with("kill-in-save:last.pt:1", -signal.SIGKILL)
    assert saved_position(run) == (1, 0)
    # SIGTERM (as Slurm and torchrun send it) before batch 1 of epoch 3: exit 143.
    resume_with("sigterm-step:3:1", 128 + signal.SIGTERM)
    assert saved_position(run) == (2, 2)


def test_resuming_a_run_that_died_before_any_checkpoint_is_refused_clearly(image_root, tmp_path):
    proc = run_with_fault("kill-step:1:1", *args(image_root, "tensor"), cwd=tmp_path)
    assert proc.returncode == -signal.SIGKILL
    (run,) = run_folders(tmp_path)
    proc = run_cli(f"resume={run}", cwd=tmp_path, check=False)
    assert proc.returncode == 2
    last = run / "checkpoints" / "last.pt"
    assert proc.stderr.strip() == (
        f"cnntrain: error: resume={str(run)!r}: no checkpoint at {last}; "
        "give a cnntrain run folder or a .pt checkpoint"
    )


def test_a_second_signal_ends_the_run_at_once_and_keeps_the_last_checkpoint(image_root, tmp_path):
    proc = run_with_fault("sigint2-step:2:1", *args(image_root, "tensor"), cwd=tmp_path)
    assert proc.returncode == 128 + signal.SIGINT
    (run,) = run_folders(tmp_path)
    assert saved_position(run) == (1, 0)  # epoch 1's, untouched
    assert "continue with" not in proc.stderr  # no graceful stop happened
