"""Runs `cnntrain` with one fault injected, for the resume tests: `python tests/fault_runner.py
FAULT cnntrain-args…`. The process kills itself (SIGKILL, no cleanup) or signals itself at the
chosen point, by patching the real functions; production code has no failpoints.

FAULT is one of:
  kill-step:E:S      SIGKILL just before training batch S of epoch E
  kill-after-row:E   SIGKILL after epoch E's metrics row is written, before its checkpoint
  kill-in-save:NAME:N  SIGKILL halfway through the N-th write of checkpoints/NAME
  sigint-step:E:S    SIGINT just before training batch S of epoch E (a graceful stop)
  sigint2-step:E:S   two SIGINTs there (the second must end the run at once)
  nan-step:E:S       training batch S of epoch E is all NaN (the loss diverges)
"""

import os
import signal
import sys

import cnntrain.train as train_module
from cnntrain import cli, engine
from cnntrain.outputs import checkpoint, metrics


def at_step(epoch: int, step: int, action):
    """Wrap train_one_epoch's loader so batch `step` of `epoch` is replaced by `action(batch)`."""
    original = engine.train_one_epoch

    def wrapped(parts, loader, ep, totals, start=0, *args, **kwargs):
        batches = loader.batches

        def patched(e=0, s=0):
            for i, batch in enumerate(batches(e, s), s):
                yield action(batch) if (e, i) == (epoch, step) else batch

        loader.batches = patched
        try:
            return original(parts, loader, ep, totals, start, *args, **kwargs)
        finally:
            loader.batches = batches

    train_module.train_one_epoch = wrapped  # the name train.py calls


def kill_after_row(epoch: int):
    original = metrics.MetricsLog.append

    def append(self, row):
        original(self, row)
        if row["epoch"] == epoch:
            os.kill(os.getpid(), signal.SIGKILL)

    metrics.MetricsLog.append = append


def kill_in_save(name: str, n: int):
    """The n-th save of checkpoints/`name` writes half its bytes to its temp file, then dies."""
    calls = {"count": 0}
    original = checkpoint.torch.save

    def save(obj, path):
        original(obj, path)
        calls["count"] += path.name.startswith(f".{name}.")  # the temporary file of `name`
        if calls["count"] == n:
            with open(path, "r+b") as f:
                f.truncate(os.path.getsize(path) // 2)
            os.kill(os.getpid(), signal.SIGKILL)

    checkpoint.torch.save = save


def main() -> None:
    fault, *args = sys.argv[1:]
    kind, *params = fault.split(":")
    numbers = [int(n) for n in params if n.isdigit()]
    if kind == "kill-step":
        at_step(*numbers, lambda batch: os.kill(os.getpid(), signal.SIGKILL))
    elif kind == "sigint-step":
        at_step(*numbers, lambda batch: os.kill(os.getpid(), signal.SIGINT) or batch)
    elif kind == "sigint2-step":
        at_step(
            *numbers, lambda batch: [os.kill(os.getpid(), signal.SIGINT) for _ in "12"] and batch
        )
    elif kind == "nan-step":
        at_step(*numbers, lambda batch: (batch[0] * float("nan"), batch[1]))
    elif kind == "kill-after-row":
        kill_after_row(*numbers)
    elif kind == "kill-in-save":
        kill_in_save(params[0], numbers[0])
    else:
        raise SystemExit(f"unknown fault {fault}")
    sys.argv = ["cnntrain", *args]
    cli.main()


if __name__ == "__main__":
    main()
