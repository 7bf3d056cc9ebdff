"""A callback that injects one fault into a real `cnntrain` run, for the resume tests:

    cnntrain … +callbacks.fault._target_=tests.faults.Fault +callbacks.fault.at=FAULT

(with the repository on PYTHONPATH). The process kills or signals itself at the chosen point;
production code has no failpoints. FAULT is one of:
  kill-step:E:S        SIGKILL just before training batch S of epoch E
  kill-after-row:E     SIGKILL after epoch E's metrics row is written, before its checkpoint
  kill-in-save:NAME:N  SIGKILL halfway through the N-th write of checkpoints/NAME: the disk is
                       left as that crash leaves it (the previous NAME intact, its temporary
                       file half written)
  sigint-step:E:S      SIGINT just before training batch S of epoch E (a graceful stop)
  sigint2-step:E:S     two SIGINTs there (the second must end the run at once)
  sigterm-step:E:S     SIGTERM just before training batch S of epoch E
  preempt-step:E:S     SIGUSR2 (submitit's preemption signal) just before training batch S of
                       epoch E, unless the run was resumed: a requeued job is not preempted again
  kill-rank-step:R:E:S SIGKILL just before training batch S of epoch E, on rank R only (torchrun)
  sigterm-job-step:E:S rank 0 sends SIGTERM to the launcher (torchrun's agent, its parent) just
                       before batch S of epoch E: a job stopped as Slurm or a user stops it
  nan-step:E:S         the weights turn NaN just before training batch S of epoch E
  nan-sigint-step:E:S  both: NaN weights and a SIGINT before batch S of epoch E
  barrier:N:DIR        at the start of training, wait (60 s at most, then fail) until N runs
                       have reached this point, each leaving a file in DIR: proof that N runs
                       (sweep jobs) train at the same time
  hang-in-job:J:E      in sweep job J, hang after epoch E's checkpoints/last.pt until killed,
                       unless the run was resumed (a sweep killed while that job runs)
"""

import os
import signal
import time
from pathlib import Path

import torch

from cnntrain.training.events import Callback


def die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def wait_for_peers(count: int, folder: Path, timeout_s: float = 60.0) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / str(os.getpid())).touch()
    deadline = time.monotonic() + timeout_s
    while len(list(folder.iterdir())) < count:
        if time.monotonic() > deadline:
            raise RuntimeError(f"barrier: {count} runs never trained at the same time")
        time.sleep(0.05)


def rank() -> int:
    return int(os.environ.get("RANK", 0))


class Fault(Callback):
    def __init__(self, at: str):
        self.kind, *self.params = at.split(":")
        self.saves = 0  # writes of checkpoints/NAME so far
        self.previous = None  # NAME's bytes before the latest write (None: there was no file)
        self.resumed = False

    def on_fit_start(self, loop) -> None:
        self.resumed = loop.state.epoch > 0 or loop.state.step > 0
        if self.kind == "barrier":
            wait_for_peers(int(self.params[0]), Path(":".join(self.params[1:])))
        if self.kind == "kill-in-save":  # what a crash mid-write leaves under the final name
            path = loop.checkpoint_path(self.params[0])
            self.previous = path.read_bytes() if path.exists() else None

    def at_step(self, epoch: int, step: int) -> bool:
        return [epoch, step] == [int(p) for p in self.params[-2:]]

    def on_batch_start(self, loop, epoch: int, step: int) -> None:
        if not self.kind.endswith("-step") or not self.at_step(epoch, step):
            return
        if self.kind == "kill-step":
            die()
        elif self.kind == "sigint-step":
            os.kill(os.getpid(), signal.SIGINT)
        elif self.kind == "sigint2-step":
            os.kill(os.getpid(), signal.SIGINT)
            os.kill(os.getpid(), signal.SIGINT)
        elif self.kind == "sigterm-step":
            os.kill(os.getpid(), signal.SIGTERM)
        elif self.kind == "preempt-step" and not self.resumed:
            os.kill(os.getpid(), signal.SIGUSR2)
        elif self.kind == "kill-rank-step" and rank() == int(self.params[0]):
            die()
        elif self.kind == "sigterm-job-step" and rank() == 0:
            os.kill(os.getppid(), signal.SIGTERM)
        if self.kind in ("nan-step", "nan-sigint-step"):
            with torch.no_grad():
                next(loop.model.parameters()).fill_(float("nan"))
        if self.kind == "nan-sigint-step":
            os.kill(os.getpid(), signal.SIGINT)

    def on_epoch_end(self, loop, row: dict) -> None:
        if self.kind == "kill-after-row" and row["epoch"] == int(self.params[0]):
            die()

    def on_checkpoint(self, loop, name: str, path) -> None:
        if self.kind == "hang-in-job":
            self.hang_in_job(loop, name)
        if self.kind != "kill-in-save" or name != self.params[0]:
            return
        self.saves += 1
        written = path.read_bytes()
        if self.saves == int(self.params[1]):
            torn = path.with_name(f".{path.name}.{os.getpid()}.tmp")
            torn.write_bytes(written[: len(written) // 2])
            if self.previous is None:
                path.unlink()
            else:
                path.write_bytes(self.previous)
            die()
        self.previous = written

    def hang_in_job(self, loop, name: str) -> None:
        from hydra.core.hydra_config import HydraConfig

        job, epoch = (int(p) for p in self.params)
        here = HydraConfig.get().job.num == job and loop.state.epoch == epoch
        if here and name == "last.pt" and not self.resumed:
            while True:
                time.sleep(1)
