"""Stopping on a signal: finish the step, checkpoint, exit; agreed by every rank of a run."""

import logging
import signal
import threading

from cnntrain import distributed
from cnntrain.training.step import SYNC_EVERY

log = logging.getLogger("cnntrain")


class StopSignal:
    """First SIGINT/SIGTERM, or SIGUSR1/SIGUSR2 (what Slurm and submitit send before a preemption
    or a time limit): finish the current step, checkpoint, exit. A second: exit at once.

    With several processes every rank must stop at the same step, so a signal is only noted and
    `agree()`, at the loop's host syncs (every SYNC_EVERY steps and at each epoch's end), makes
    it every rank's stop: a distributed stop takes effect within SYNC_EVERY steps. A second
    signal does not exit at once there (Slurm signals every process of a job, and torchrun then
    forwards the signal again); torchrun kills ranks that outlast its shutdown timeout."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGUSR1, signal.SIGUSR2)

    def __init__(self, ranks: int = 1):
        self.ranks = ranks
        self.received = None  # the signal this process got
        self.signum = None  # the signal that stops the run (with several ranks: once agreed)

    def __enter__(self):
        self.previous = {}
        if threading.current_thread() is threading.main_thread():  # signals need the main thread
            for s in self.SIGNALS:
                self.previous[s] = signal.signal(s, self.handle)
        return self

    def handle(self, signum, frame):
        if self.received is not None:
            if self.ranks == 1:
                raise SystemExit(128 + signum)
            return
        self.received = signum
        name = signal.Signals(signum).name
        if self.ranks == 1:
            self.signum = signum
            log.warning("%s received: stopping after this step (again to quit now)", name)
        else:
            log.warning("%s received: every process stops within %d steps", name, SYNC_EVERY)

    def agree(self) -> None:
        """With several ranks (a collective: all call it at the same points): stop if any got a
        signal, with the highest signal number any got."""
        if self.ranks > 1:
            self.signum = distributed.max_over_ranks(self.received or 0) or None

    def requested(self) -> bool:
        return self.signum is not None

    def __exit__(self, *exc):
        for s, handler in self.previous.items():
            signal.signal(s, handler)
