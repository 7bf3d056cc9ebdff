"""core.side_by_side: jobs run in forked children where that is safe, their failures come back."""

import os
import signal
import subprocess
import sys
from types import SimpleNamespace

import pytest

from cnntrain.core import side_by_side
from cnntrain.core.errors import UserError
from cnntrain.core.side_by_side import can_fork, run_side_by_side
from tests.conftest import REPO

forking = pytest.mark.skipif(not can_fork(), reason="this platform runs the jobs one by one")


def writer(path, text):
    return lambda: path.write_text(f"{text} {os.getpid()}")


@forking
def test_every_job_runs_and_all_but_the_last_in_a_child(tmp_path):
    paths = [tmp_path / f"{i}.txt" for i in range(3)]
    run_side_by_side(*(writer(p, i) for i, p in enumerate(paths)))
    pids = [int(p.read_text().split()[1]) for p in paths]
    assert pids[-1] == os.getpid()
    assert len({*pids[:-1]}) == 2 and os.getpid() not in pids[:-1]


@forking
def test_a_childs_user_error_comes_back_as_itself_after_the_parents_job(tmp_path):
    def refuse():
        raise UserError("trainer.cam_layer='fc' gives no map")

    with pytest.raises(UserError, match="cam_layer='fc'"):
        run_side_by_side(refuse, writer(tmp_path / "parent.txt", "done"))
    assert (tmp_path / "parent.txt").exists()  # the parent's job was not cut short


@forking
def test_an_unpicklable_error_comes_back_as_its_traceback():
    class Local(Exception):  # defined in a function: pickle cannot find it by name
        pass

    def fail():
        raise Local("with a lock inside")

    with pytest.raises(RuntimeError, match="Local: with a lock inside"):
        run_side_by_side(fail, lambda: None)


@forking
def test_a_killed_child_is_an_error():
    with pytest.raises(RuntimeError, match="status -9"):
        run_side_by_side(lambda: os.kill(os.getpid(), signal.SIGKILL), lambda: None)


@forking
def test_the_parents_error_wins_and_the_children_have_ended(tmp_path):
    def fail():
        raise ValueError("parent")

    with pytest.raises(ValueError, match="parent"):
        run_side_by_side(writer(tmp_path / "child.txt", "child"), fail)
    assert (tmp_path / "child.txt").exists()
    with pytest.raises(ChildProcessError):  # reaped: no child of this process is left
        os.waitpid(-1, os.WNOHANG)


def test_without_a_safe_fork_the_jobs_run_here_in_order(tmp_path, monkeypatch):
    monkeypatch.setattr(side_by_side, "can_fork", lambda: False)
    order = []
    run_side_by_side(lambda: order.append(1), lambda: order.append(2))
    assert order == [1, 2]  # both here (a child's append would not be seen), in order


class TwoArguments(Exception):  # pickles, but cannot be rebuilt from its one message argument
    def __init__(self, path, why):
        super().__init__(f"{path}: {why}")


@forking
def test_an_error_that_cannot_be_rebuilt_comes_back_as_its_traceback():
    def fail():
        raise TwoArguments("a.png", "unreadable")

    with pytest.raises(RuntimeError, match=r"TwoArguments: a\.png: unreadable"):
        run_side_by_side(fail, lambda: None)


@forking
def test_a_job_runs_here_when_no_process_can_be_forked(tmp_path, monkeypatch):
    def no_fork():
        raise BlockingIOError("EAGAIN")

    monkeypatch.setattr(side_by_side.os, "fork", no_fork)
    paths = [tmp_path / "a.txt", tmp_path / "b.txt"]
    run_side_by_side(*(writer(p, i) for i, p in enumerate(paths)))
    assert {int(p.read_text().split()[1]) for p in paths} == {os.getpid()}


@forking
def test_a_live_wandb_run_keeps_the_jobs_here(monkeypatch):
    # W&B's console capture raises ForkedError at a forked child's printing: a run with
    # logger=wandb failed at its figures.
    monkeypatch.setitem(sys.modules, "wandb", SimpleNamespace(run=None))
    assert can_fork()
    monkeypatch.setitem(sys.modules, "wandb", SimpleNamespace(run=object()))
    assert not can_fork()


@forking
def test_a_child_whose_output_cannot_be_flushed_still_ends(tmp_path):
    # The child's last flush raised past its os._exit: the child went on as a copy of the
    # parent (here it would print "parent went on" twice, in the real run it re-ran the run's end).
    script = (
        "import sys\n"
        "from cnntrain.core.side_by_side import run_side_by_side\n"
        "class Broken:\n"
        "    def write(self, text): return len(text)\n"
        "    def flush(self): raise OSError('broken pipe')\n"
        "def child_job(): sys.stdout = Broken()\n"
        "run_side_by_side(child_job, lambda: None)\n"
        "print('parent went on', flush=True)\n"
    )
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=60, cwd=REPO)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == "parent went on\n"
