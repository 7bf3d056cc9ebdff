"""A received run folder is untrusted: no command writes through a symbolic link inside it (nor
through the file --out names); each refuses in one line before any work, and the link's target,
outside the run folder, stays as it was."""

import logging
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from cnntrain.cli import export as export_cli
from cnntrain.cli import predict as predict_cli
from cnntrain.cli import report as report_cli
from cnntrain.cli import train as train_cli
from cnntrain.core import files
from cnntrain.core.errors import UserError
from cnntrain.core.files import atomic_write, write_text
from cnntrain.sweeps.jobs import continued
from tests.conftest import DEFAULT_JOB_SLICE, REPO, compose_config, make_image_folder

BOUND_S = 120  # s: any one command here; a refusal comes before any work, in seconds


@pytest.fixture
def victim(tmp_path) -> Path:
    """A folder outside the run folder, with a file, that no command may change."""
    folder = tmp_path / "victim"
    folder.mkdir()
    (folder / "precious.txt").write_text("precious\n")
    return folder


def snapshot(folder: Path) -> dict[str, bytes | None]:
    """Every entry under `folder`: a file's bytes, None for a folder."""
    return {
        str(p.relative_to(folder)): None if p.is_dir() else p.read_bytes()
        for p in sorted(folder.rglob("*"))
    }


def plant_link(run: Path, name: str, victim: Path) -> Path:
    """Move the run's entry `name` (file or folder; an empty folder when the run has none) into
    `victim` and leave a symbolic link to it in its place: the run reads as before, and a write
    through the link lands outside."""
    entry = run / name
    target = victim / entry.name
    if entry.exists():
        shutil.move(entry, target)
    else:
        target.mkdir()
    entry.symlink_to(target)
    return entry


def assert_refused(status: int, stderr: str, link: Path) -> None:
    """Exit status 2, no traceback, and a last line `cnntrain: error: LINK is a symbolic link…`."""
    lines = stderr.strip().splitlines()
    assert status == 2, stderr[-3000:]
    assert "Traceback" not in stderr, stderr[-3000:]
    assert lines[-1].startswith("cnntrain: error: "), lines[-1]
    assert f"{link} is a symbolic link" in lines[-1], lines[-1]


def command(module: str, *args, cwd: Path) -> tuple[int, str]:
    """(exit status, stderr) of `python -m <module> *args` in a process of its own, bounded."""
    proc = subprocess.run(
        [sys.executable, "-m", module, *map(str, args)], cwd=cwd, capture_output=True, text=True,
        timeout=BOUND_S, env={**os.environ, "PYTHONPATH": str(REPO)},
    )  # fmt: skip
    return proc.returncode, proc.stderr


def console_script(main, monkeypatch, capsys, *args) -> tuple[int, str]:
    """(exit status, stderr) of a console script's main() run here (no start-up cost), bounded."""
    monkeypatch.setattr(sys, "argv", ["cnntrain", *map(str, args)])
    cnntrain_log = logging.getLogger("cnntrain")
    monkeypatch.setattr(cnntrain_log, "level", cnntrain_log.level)  # some main()s set it
    started = time.perf_counter()
    with pytest.raises(SystemExit) as stop:
        main()
    assert time.perf_counter() - started < BOUND_S
    return stop.value.code, capsys.readouterr().err


# ---- cnntrain resume= and other folders given to `cnntrain` ----


def test_resume_refuses_a_train_log_linked_out_of_the_run(copied_run, victim):
    """The demonstrated attack: Hydra would append the run's log lines to the link's target (a
    .pth file in site-packages runs a line of them at the next Python start)."""
    link = plant_link(copied_run, "train.log", victim)
    before = snapshot(victim)
    status, stderr = command("cnntrain", f"resume={copied_run}", "trainer.epochs=3",
                             cwd=copied_run.parent)  # fmt: skip
    assert_refused(status, stderr, link)
    assert snapshot(victim) == before


@pytest.mark.parametrize(
    "name", ["checkpoints", "tensorboard", "plots", "summary.json", "checkpoints/best.pt"]
)
def test_resume_refuses_a_link_anywhere_in_the_run(copied_run, victim, name, monkeypatch, capsys):
    link = plant_link(copied_run, name, victim)
    before = snapshot(victim)
    status, stderr = console_script(train_cli.main, monkeypatch, capsys,
                                    f"resume={copied_run}", "trainer.epochs=3")  # fmt: skip
    assert_refused(status, stderr, link)
    assert snapshot(victim) == before


@pytest.mark.parametrize("key", ["hydra.run.dir", "hydra.sweep.dir"])
def test_a_new_run_or_sweep_refuses_an_existing_folder_holding_a_link(tmp_path, victim, key):
    """`cnntrain hydra.run.dir=FOLDER` or `-m hydra.sweep.dir=FOLDER` writes into FOLDER."""
    folder = tmp_path / "received"
    (folder / "0").mkdir(parents=True)
    link = folder / ("0/train.log" if key == "hydra.sweep.dir" else "train.log")
    link.symlink_to(victim / "precious.txt")
    before = snapshot(victim)
    sweep = ["-m", "optimizer.lr=0.01,0.02"] if key == "hydra.sweep.dir" else []
    status, stderr = command("cnntrain", *sweep, f"{key}={folder}", "model=cifar10cnn",
                             *DEFAULT_JOB_SLICE, "trainer.epochs=1", cwd=tmp_path)  # fmt: skip
    assert_refused(status, stderr, link)
    assert snapshot(victim) == before


def test_a_sweep_job_refuses_to_continue_a_run_holding_a_link(copied_run, victim, tmp_path):
    """A sweeper's retry (`resume=` in a job) continues a run folder: the job checks it too."""
    link = plant_link(copied_run, "plots", victim)
    cfg = compose_config(f"resume={copied_run}", output_dir=tmp_path / "job")
    with pytest.raises(UserError, match=re.escape(f"{link} is a symbolic link")):
        continued(cfg, tmp_path / "job", [])


# ---- the commands that use a trained run ----


def test_eval_refuses_a_linked_eval_folder(copied_run, victim):
    link = plant_link(copied_run, "eval", victim)
    status, stderr = command("cnntrain.cli.eval", copied_run, cwd=copied_run.parent)
    assert_refused(status, stderr, link)
    assert snapshot(victim) == {"precious.txt": b"precious\n", "eval": None}


def test_export_refuses_a_linked_export_folder(copied_run, victim, monkeypatch, capsys):
    link = plant_link(copied_run, "export", victim)
    status, stderr = console_script(export_cli.main, monkeypatch, capsys,
                                    copied_run, "--format", "torchscript")  # fmt: skip
    assert_refused(status, stderr, link)
    assert snapshot(victim) == {"precious.txt": b"precious\n", "export": None}


def test_predict_refuses_an_out_file_that_is_a_link(copied_run, victim, tmp_path, monkeypatch,
                                                    capsys):  # fmt: skip
    images = make_image_folder(tmp_path / "images", splits=("test",), per_class=1, mode="RGB")
    out = tmp_path / "predictions.csv"
    out.symlink_to(victim / "precious.txt")
    status, stderr = console_script(predict_cli.main, monkeypatch, capsys,
                                    copied_run, images, "--out", out)  # fmt: skip
    assert_refused(status, stderr, out)
    assert out.is_symlink() and snapshot(victim) == {"precious.txt": b"precious\n"}


def test_report_refuses_a_link_in_the_run(copied_run, victim, monkeypatch, capsys):
    link = plant_link(copied_run, "report.html", victim)
    before = snapshot(victim)
    status, stderr = console_script(report_cli.main, monkeypatch, capsys, copied_run)
    assert_refused(status, stderr, link)
    assert link.is_symlink() and snapshot(victim) == before


def test_report_refuses_a_linked_plots_folder_of_a_sweep(tmp_path, victim, monkeypatch, capsys):
    sweep = tmp_path / "sweep"
    for job, lr in enumerate(("0.1", "0.2")):
        (sweep / str(job) / ".hydra").mkdir(parents=True)
        (sweep / str(job) / ".hydra" / "overrides.yaml").write_text(f"- optimizer.lr={lr}\n")
        write_text(sweep / str(job) / "results.json", f'{{"best_val/acc": 0.{job + 5}}}\n')
    link = plant_link(sweep, "plots", victim)
    status, stderr = console_script(report_cli.main, monkeypatch, capsys, sweep)
    assert_refused(status, stderr, link)
    assert snapshot(victim) == {"precious.txt": b"precious\n", "plots": None}


def test_report_through_a_link_to_the_run_folder_itself_is_fine(copied_run, monkeypatch, capsys):
    """The folder named may be a link (outputs/latest): only links inside it are refused."""
    latest = copied_run.parent / "latest"
    latest.symlink_to(copied_run)
    (copied_run / "report.html").unlink()
    monkeypatch.setattr(sys, "argv", ["cnntrain-report", str(latest)])
    report_cli.main()
    assert (copied_run / "report.html").is_file() and latest.is_symlink()


# ---- core.files: the backstop under every write ----


def test_atomic_write_refuses_a_path_that_is_a_link(tmp_path, victim):
    link = tmp_path / "results.json"
    link.symlink_to(victim / "precious.txt")
    with pytest.raises(UserError, match=re.escape(f"{link} is a symbolic link")):
        write_text(link, "{}\n")
    assert link.is_symlink() and snapshot(victim) == {"precious.txt": b"precious\n"}


def test_atomic_write_never_writes_through_a_link_at_its_temporary_name(tmp_path, victim):
    """The temporary file's name is drawn at random and the file created with O_EXCL|O_NOFOLLOW:
    a link planted at the name a write once used (`.<name>.<pid>.tmp`) is not followed."""
    path = tmp_path / "metrics.csv"
    planted = tmp_path / f".{path.name}.{os.getpid()}.tmp"
    planted.symlink_to(victim / "precious.txt")
    write_text(path, "epoch\n1\n")
    assert path.read_text() == "epoch\n1\n" and not path.is_symlink()
    assert planted.is_symlink() and snapshot(victim) == {"precious.txt": b"precious\n"}


def test_atomic_write_refuses_a_link_at_the_very_name_it_draws(tmp_path, victim, monkeypatch):
    path = tmp_path / "last.pt"
    path.write_bytes(b"old checkpoint")
    monkeypatch.setattr(files.secrets, "token_hex", lambda n: "0" * 2 * n)
    planted = tmp_path / f".{path.name}.{os.getpid()}.00000000.tmp"
    planted.symlink_to(victim / "precious.txt")
    with pytest.raises(UserError, match=re.escape(f"{planted} is in the way of writing {path}")):
        atomic_write(path, lambda tmp: tmp.write_bytes(b"new checkpoint"))
    assert path.read_bytes() == b"old checkpoint"
    assert planted.is_symlink() and snapshot(victim) == {"precious.txt": b"precious\n"}


def test_refuse_links_finds_a_link_or_fifo_at_any_depth_but_not_the_folder_itself(tmp_path):
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    (run / "checkpoints" / "last.pt").write_bytes(b"weights")
    latest = tmp_path / "latest"
    latest.symlink_to(run)
    files.refuse_links(latest)  # a clean run folder, reached through a link: fine
    (run / "checkpoints" / "best.pt").symlink_to(tmp_path / "nowhere")  # dangling too
    with pytest.raises(UserError, match=r"best\.pt is a symbolic link"):
        files.refuse_links(latest)
    files.refuse_links(run, ["plots"])  # only the entries named: best.pt is not among them
    os.mkfifo(run / "train.log")  # Hydra's log handler would block opening it
    with pytest.raises(UserError, match=r"train\.log is not a regular file or folder"):
        files.refuse_links(run, ["train.log"])
