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
  kill-rank-step:R:E:S SIGKILL just before training batch S of epoch E, on rank R only (torchrun)
  sigterm-job-step:E:S rank 0 sends SIGTERM to the launcher (torchrun's agent, its parent) just
                       before batch S of epoch E: a job stopped as Slurm or a user stops it
  nan-step:E:S         the weights turn NaN just before training batch S of epoch E
  nan-sigint-step:E:S  both: NaN weights and a SIGINT before batch S of epoch E
"""

import os
import signal

import torch

from cnntrain.callbacks import Callback


def die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def rank() -> int:
    return int(os.environ.get("RANK", 0))


class Fault(Callback):
    def __init__(self, at: str):
        self.kind, *self.params = at.split(":")
        self.saves = 0  # writes of checkpoints/NAME so far
        self.previous = None  # NAME's bytes before the latest write (None: there was no file)

    def on_fit_start(self, loop) -> None:
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
