"""logger=wandb, offline, read back from W&B's transaction logs (run-<id>.wandb: wandb.proto
records): a run stopped by SIGTERM, then killed by SIGKILL, and resumed each time is one W&B run
holding every epoch once, in order; W&B writes nothing outside the run folder. And the
checkpoints `log_checkpoints` uploads."""

import json
import signal

import pytest
import torch

from cnntrain.core.checkpoint import BEST, LAST, checkpoint_path
from cnntrain.loggers.wandb import (
    BLOCK,
    history_steps,
    logged_checkpoints,
    places,
    transaction_records,
)
from tests.conftest import read_jsonl, run_cli, run_folders, run_with_fault

EPOCHS = 4


def args(root) -> list[str]:
    return [
        "data=imagefolder", f"data.root={root}", "model=simplecnn", f"trainer.epochs={EPOCHS}",
        "data.batch_size=16", "data.max_train_samples=64", "trainer.device=cpu",
        "trainer.plots=false", "logger=wandb",
    ]  # fmt: skip


def items(record) -> dict:
    """{key: value} of a history or summary record."""
    entries = record.history.item if record.HasField("history") else record.summary.update
    return {"/".join(i.nested_key) or i.key: json.loads(i.value_json) for i in entries}


@pytest.fixture
def isolated(tmp_path, monkeypatch):
    """W&B offline, with a home of its own: what it writes there (or in the working folder)
    shows."""
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_X_DISABLE_STATS", "true")  # no system metrics: quicker
    for key in ("WANDB_API_KEY", "WANDB_DIR", "XDG_CACHE_HOME", "XDG_CONFIG_HOME"):
        monkeypatch.delenv(key, raising=False)
    return home


@pytest.mark.slow
def test_a_stopped_killed_and_resumed_run_is_one_wandb_run_with_every_epoch_once(
    isolated, image_root, tmp_path
):
    # SIGTERM mid-epoch 2: a graceful stop (W&B finishes its run: epoch 1 is in its log).
    proc = run_with_fault("sigterm-step:2:1", *args(image_root), cwd=tmp_path)
    assert proc.returncode == 128 + signal.SIGTERM, proc.stderr
    (run,) = run_folders(tmp_path)
    # Resumed as the message says (its tracker from the checkpoint), killed outright after epoch
    # 3's row: W&B's service dies with what it had not yet written (epoch 2's row, likely).
    proc = run_with_fault("kill-after-row:3", f"resume={run}", cwd=tmp_path)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    run_cli(f"resume={run}", cwd=tmp_path)

    saved = torch.load(checkpoint_path(run, LAST), weights_only=True)
    run_id = saved["callbacks"]["wandb"]["run_id"]
    logs = sorted(run.glob("wandb/*run-*/run-*.wandb"))  # by start time: one per process
    assert [p.name for p in logs] == [f"run-{run_id}.wandb"] * 3
    assert history_steps(logs[0]) == [1]  # so the resumed runs must not send it again
    records = [r for path in logs for r in transaction_records(path)]
    assert {r.run.run_id for r in records if r.HasField("run")} == {run_id}
    history = [items(r) for r in records if r.HasField("history")]
    rows = read_jsonl(run / "metrics.jsonl")
    assert [h["_step"] for h in history] == [h["epoch"] for h in history] == [1, 2, 3, 4]
    assert [h["val/acc"] for h in history] == [r["val/acc"] for r in rows]
    summary = {}
    for record in records:
        if record.HasField("summary"):
            summary.update(items(record))
    results = json.loads((run / "results.json").read_text())
    assert summary["test/acc"] == results["test/acc"] and summary["monitor"] == "val/acc"

    # Nothing outside the run folder: not in the home, not in the working folder.
    assert [p for p in isolated.rglob("*") if "wandb" in str(p).lower()] == []
    assert sorted(p.name for p in tmp_path.iterdir()) == ["home", "outputs"]
    assert not [p for p in run.rglob("*") if p.is_symlink()]  # W&B's own links are removed
    assert (run / "wandb" / "cache").is_dir()  # where W&B's service logs went


@pytest.mark.slow
def test_the_transaction_log_reader_reads_what_wandb_wrote_across_blocks(
    isolated, tmp_path, monkeypatch
):
    import wandb

    for key, value in places(tmp_path).items():
        monkeypatch.setenv(key, value)
    run = wandb.init(project="cnntrain", dir=tmp_path, mode="offline",
                     settings=wandb.Settings(console="off", symlink=False))  # fmt: skip
    run.config.update({"long": "x" * (2 * BLOCK)})  # one record in pieces over three blocks
    for step in range(1, 301):
        run.log({"value": step / 7}, step=step)
    run.finish()
    wandb.teardown()
    (path,) = tmp_path.glob("wandb/*run-*/run-*.wandb")
    assert path.stat().st_size > 3 * BLOCK
    assert history_steps(path) == list(range(1, 301))
    values = [items(r)["value"] for r in transaction_records(path) if r.HasField("history")]
    assert values == [step / 7 for step in range(1, 301)]
    configs = [i.value_json for r in transaction_records(path) if r.HasField("config")
               for i in r.config.update]  # fmt: skip
    assert any("x" * (2 * BLOCK) in value for value in configs)


def test_the_logged_checkpoints_are_the_best_ones_else_the_tested_last_pt(tmp_path):
    folder = tmp_path / "checkpoints"
    folder.mkdir()
    (folder / LAST).touch()
    assert logged_checkpoints(tmp_path) == [folder / LAST]  # trainer.save_top_k=0
    for name in (BEST, "best-epoch3.pt"):
        (folder / name).touch()
    assert logged_checkpoints(tmp_path) == [folder / "best-epoch3.pt", folder / BEST]
