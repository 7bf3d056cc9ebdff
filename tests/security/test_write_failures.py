"""Every write that fails (a full disk, a file size limit) ends the command in one line naming the
file and what to do, and what was saved before stays intact; a cache or TensorBoard that cannot
write costs the run nothing but a warning."""

import errno
import hashlib
import logging
import os
import re
import resource
import subprocess
import sys
import threading
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from tensorboard.compat.tensorflow_stub.io import gfile

from cnntrain.core.checkpoint import save_checkpoint
from cnntrain.core.errors import UserError
from cnntrain.loggers.tensorboard import TensorBoardLogger
from cnntrain.reporting.metrics_log import MetricsLog
from cnntrain.reporting.plots import plot_curves
from cnntrain.training.loop import Loop
from tests.conftest import REPO, compose_config, load_run_data, make_image_folder

BOUND_S = 300  # s: any one command here (the resumed run trains one epoch first)
# What torch.save raises when its zip writer cannot write (a full disk, a file size limit).
TORCH_FAILURE = "[enforce fail at inline_container.cc:603] . unexpected pos 123 vs 0"
ROW = {"epoch": 1, "train/loss": 2.0, "val/loss": 1.9, "val/acc": 0.3, "lr": 0.1}


def digests(folder: Path) -> dict[str, str]:
    """SHA-256 of every file under `folder`, by relative path (temporary files included)."""
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def with_file_size_limit(size: int, module: str, *args, cwd: Path) -> subprocess.CompletedProcess:
    """`python -m <module> *args` allowed files of at most `size` bytes (RLIMIT_FSIZE): a larger
    write fails with EFBIG, as on a full disk (Python ignores SIGXFSZ)."""

    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (size, resource.RLIM_INFINITY))

    return subprocess.run(
        [sys.executable, "-m", module, *map(str, args)], cwd=cwd, capture_output=True, text=True,
        timeout=BOUND_S, preexec_fn=limit, env={**os.environ, "PYTHONPATH": str(REPO)},
    )  # fmt: skip


def one_line_error(proc: subprocess.CompletedProcess, path: Path) -> str:
    """Exit status 2, no traceback, a last line `cnntrain: error: could not write PATH…` saying
    what to do."""
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert lines[-1].startswith(f"cnntrain: error: could not write {path}"), lines[-1]
    assert lines[-1].endswith("free space or fix permissions"), lines[-1]
    return lines[-1]


def full_disk_at_fsync(monkeypatch) -> None:
    """The disk fills up under a write: the kernel says so when the file is flushed (ENOSPC)."""

    def fsync(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", fsync)


# ---- the commands, on a real file size limit ----


def test_a_checkpoint_that_cannot_be_written_ends_the_run_in_one_line(copied_run):
    """torch.save fails with a RuntimeError of its own, no errno: still one line, exit 2."""
    checkpoints = copied_run / "checkpoints"
    before = digests(checkpoints)
    proc = with_file_size_limit(1_000_000, "cnntrain", f"resume={copied_run}", "trainer.epochs=3",
                                cwd=copied_run.parent)  # fmt: skip
    assert "disk full or file too large" in one_line_error(proc, checkpoints)
    assert digests(checkpoints) == before  # the last good checkpoints, and no temporary file


def test_an_export_that_cannot_be_written_is_one_line_and_keeps_the_old_one(copied_run):
    """Given a path, torch.jit.save's writer aborted the whole process on a failed write."""
    old = copied_run / "export" / "model.torchscript.pt"
    old.parent.mkdir()
    old.write_bytes(b"the previous export")
    proc = with_file_size_limit(1_000_000, "cnntrain.cli.export", copied_run,
                                "--format", "torchscript", cwd=copied_run.parent)  # fmt: skip
    assert "File too large" in one_line_error(proc, old)
    assert digests(old.parent) == {old.name: hashlib.sha256(b"the previous export").hexdigest()}


def test_a_report_that_cannot_be_written_is_one_line_and_keeps_the_old_one(copied_run):
    report = copied_run / "report.html"
    before = report.read_bytes()
    proc = with_file_size_limit(10_000, "cnntrain.cli.report", copied_run, cwd=copied_run.parent)
    one_line_error(proc, report)
    assert report.read_bytes() == before
    assert not list(copied_run.glob(".report.html.*"))  # no temporary file left


# ---- the writers, on a simulated failure ----


def test_torch_saves_failure_is_a_user_error_and_the_old_checkpoint_stays(tmp_path, monkeypatch):
    path = tmp_path / "checkpoints" / "last.pt"
    save_checkpoint(path, {"epoch": 1})
    before = digests(path.parent)

    def half_then_fail(obj, f, *args, **kwargs):
        Path(f).write_bytes(b"PK\x03\x04 half a zip")
        raise RuntimeError(TORCH_FAILURE)

    monkeypatch.setattr(torch, "save", half_then_fail)
    message = re.escape(f"could not write {path} (") + ".*free space or fix permissions"
    with pytest.raises(UserError, match=message):
        save_checkpoint(path, {"epoch": 2})
    assert digests(path.parent) == before


@pytest.mark.parametrize("written", ["metrics.jsonl", "plots/curves.png"])
def test_metrics_and_plots_on_a_full_disk_are_a_user_error_and_the_old_file_stays(
    tmp_path, monkeypatch, written
):
    write = {
        "metrics.jsonl": lambda rows: MetricsLog(tmp_path, rows[:-1]).append(rows[-1]),
        "plots/curves.png": lambda rows: plot_curves(rows, tmp_path / "plots" / "curves.png"),
    }[written]
    write([ROW])
    before = digests(tmp_path)
    full_disk_at_fsync(monkeypatch)
    message = f"could not write {tmp_path / written}: No space left on device; free space"
    with pytest.raises(UserError, match=re.escape(message)):
        write([ROW, {**ROW, "epoch": 2}])
    assert digests(tmp_path) == before


def test_a_decoded_image_cache_torch_cannot_write_costs_the_run_nothing(tmp_path, monkeypatch,
                                                                         caplog):  # fmt: skip
    root = make_image_folder(tmp_path / "images", splits=("train", "test"))
    cache = tmp_path / "cache"

    def fail(obj, f, *args, **kwargs):
        raise RuntimeError(TORCH_FAILURE)

    monkeypatch.setattr(torch, "save", fail)
    cfg = compose_config("data=imagefolder", f"data.root={root}", f"paths.cache_dir={cache}",
                         "data.num_workers=0", "data.loader=tensor",
                         output_dir="unused")  # fmt: skip
    with caplog.at_level(logging.WARNING):
        data = load_run_data(cfg)
    assert data.train.count + data.val.count == 24 and data.test.count == 24  # all of it
    assert any("could not cache" in r.getMessage() for r in caplog.records)
    assert not list(cache.rglob("*.pt")) and not list(cache.rglob("*.tmp"))


def test_tensorboard_failing_mid_run_stops_it_with_one_warning(tmp_path, monkeypatch, caplog):
    """TensorBoard writes from a thread of its own: its failure prints no traceback; the next
    call stops the tracker with one warning (Loop.emit) and the run goes on."""
    thread_errors = []
    monkeypatch.setattr(threading, "excepthook", thread_errors.append)
    loop = SimpleNamespace(run_dir=tmp_path, global_step=0, callbacks={})
    tracker = TensorBoardLogger()
    tracker.on_fit_start(loop)

    def full_disk(self, filename, content, binary_mode=False):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(gfile.LocalFileSystem, "append", full_disk)
    loop.callbacks["tensorboard"] = tracker
    with caplog.at_level(logging.WARNING):
        for epoch in (1, 2):
            loop.global_step = epoch * 10
            Loop.emit(loop, "on_epoch_end", {**ROW, "epoch": epoch})
    for thread in threading.enumerate():
        if type(thread).__module__.startswith("tensorboard."):
            thread.join(timeout=10)
    assert thread_errors == []  # the writer's thread printed nothing
    assert loop.callbacks == {}  # the tracker stopped; training would go on
    (warning,) = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert "tensorboard stopped tracking" in warning and "No space left on device" in warning
