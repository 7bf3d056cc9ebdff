"""Exact resume: a run killed at any point and resumed ends bitwise identical to one left alone."""

import json
import signal
from pathlib import Path

import pytest
import torch

from cnntrain.outputs.metrics import TIME_FIELDS
from tests.conftest import make_image_folder, read_jsonl, run_cli, run_folders, run_with_fault

pytestmark = pytest.mark.slow
EPOCHS = 3
STEPS = 4  # 64 training images / batch 16


@pytest.fixture(scope="module")
def image_root(tmp_path_factory):
    return make_image_folder(tmp_path_factory.mktemp("data") / "shapes", per_class=40, mode="RGB")


def args(root: Path, loader: str) -> list[str]:
    return [
        f"data.root={root}", "model=simplecnn", f"trainer.epochs={EPOCHS}", f"data.loader={loader}",
        "data.batch_size=16", "data.max_train_samples=64", "data.num_workers=1",
        "data.augment.crop_padding=2", "data.augment.rotation=10", "trainer.ema=0.9",
    ]  # fmt: skip


def outcome(run: Path) -> dict:
    """Everything that must match bitwise: weights, optimizer state, metrics rows, test result."""
    last = torch.load(run / "checkpoints" / "last.pt", weights_only=True)
    rows = [
        {k: v for k, v in r.items() if k not in TIME_FIELDS}
        for r in read_jsonl(run / "metrics.jsonl")
    ]
    results = json.loads((run / "results.json").read_text())
    return {"model": last["model"], "ema": last["ema"]["weights"], "rows": rows,
            "test": (results["test/acc"], results["test/loss"], results["best_epoch"])}  # fmt: skip


def assert_identical(a: dict, b: dict) -> None:
    assert a["rows"] == b["rows"]
    assert a["test"] == b["test"]
    for key in ("model", "ema"):
        assert a[key].keys() == b[key].keys()
        for name in a[key]:
            assert torch.equal(a[key][name], b[key][name]), f"{key}.{name} differs"


@pytest.fixture(scope="module", params=["tensor", "dataloader"])
def reference(request, image_root, tmp_path_factory):
    """The uninterrupted run."""
    cwd = tmp_path_factory.mktemp(f"reference-{request.param}")
    run_cli(*args(image_root, request.param), cwd=cwd)
    (run,) = run_folders(cwd)
    return request.param, outcome(run)


@pytest.mark.parametrize(
    "fault",
    ["kill-step:2:2", "kill-after-row:2", "kill-in-save:last.pt:2", "kill-in-save:best.pt:1"],
)
def test_killed_and_resumed_run_is_bitwise_identical(fault, reference, image_root, tmp_path):
    loader, expected = reference
    proc = run_with_fault(fault, *args(image_root, loader), cwd=tmp_path)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    (run,) = run_folders(tmp_path)
    torn = list((run / "checkpoints").glob(".*.tmp"))
    assert bool(torn) == fault.startswith("kill-in-save")  # a torn write stays a temporary file
    torch.load(run / "checkpoints" / "last.pt", weights_only=True)  # the previous one is intact
    run_cli(f"resume={run}", cwd=tmp_path)
    assert not list((run / "checkpoints").glob(".*.tmp"))
    assert_identical(outcome(run), expected)


def test_resuming_a_run_that_died_before_any_checkpoint_is_refused_clearly(image_root, tmp_path):
    proc = run_with_fault("kill-step:1:1", *args(image_root, "tensor"), cwd=tmp_path)
    assert proc.returncode == -signal.SIGKILL
    (run,) = run_folders(tmp_path)
    proc = run_cli(f"resume={run}", cwd=tmp_path, check=False)
    assert proc.returncode == 2
    last = run / "checkpoints" / "last.pt"
    assert proc.stderr.strip() == (
        f"cnntrain: error: resume={str(run)!r}: no checkpoint at {last}; "
        "give a run folder or a .pt file"
    )


def test_sigint_checkpoints_mid_epoch_prints_the_command_and_resumes_exactly(
    reference, image_root, tmp_path
):
    loader, expected = reference
    proc = run_with_fault("sigint-step:2:1", *args(image_root, loader), cwd=tmp_path)
    assert proc.returncode == 128 + signal.SIGINT
    (run,) = run_folders(tmp_path)
    assert f"cnntrain resume={run}" in proc.stdout + proc.stderr
    saved = torch.load(run / "checkpoints" / "last.pt", weights_only=True)
    assert (saved["progress"]["epoch"], saved["progress"]["step"]) == (1, 2)  # finished the step
    assert [r["epoch"] for r in read_jsonl(run / "metrics.jsonl")] == [1]
    run_cli(f"resume={run}", cwd=tmp_path)
    assert_identical(outcome(run), expected)
    assert len(list(run.parent.iterdir())) == 1  # resumed in place, no second folder


def test_a_second_signal_ends_the_run_at_once_and_keeps_the_last_checkpoint(image_root, tmp_path):
    proc = run_with_fault("sigint2-step:2:1", *args(image_root, "tensor"), cwd=tmp_path)
    assert proc.returncode == 128 + signal.SIGINT
    (run,) = run_folders(tmp_path)
    saved = torch.load(run / "checkpoints" / "last.pt", weights_only=True)
    assert (saved["progress"]["epoch"], saved["progress"]["step"]) == (1, 0)  # epoch 1's, untouched
    assert "continue with" not in proc.stderr  # no graceful stop happened
