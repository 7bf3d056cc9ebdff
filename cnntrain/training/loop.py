"""The epoch loop: train an epoch, evaluate it, tell the callbacks; and the final test.

Everything that reacts to the loop — metrics files, the console line, checkpoints, trackers,
stopping rules, fault injection in tests — is a callback (callbacks.py) receiving its events:

  on_fit_start(loop)                     after the model, data and any resumed state are ready
  on_batch_start(loop, epoch, step)      before every training batch (no host sync)
  on_step(loop, epoch, step, loss, lr)   every SYNC_EVERY steps, with the running mean loss
  on_train_epoch_end(loop, epoch)        after the epoch's last training step, before evaluation
  on_epoch_end(loop, row)                after evaluation, with the metrics row
  on_checkpoint(loop, name, path)        after a checkpoint file is written
  on_interrupt(loop)                     a signal stopped the run: save what resumes it
  on_fit_end(loop, results)              after the final test, with results.json's fields
  on_close(loop, status)                 last, always: "finished", "interrupted" or "failed"

A callback asks the loop to stop with `loop.stop(reason)`; the loop ends after that epoch.

With several processes (distributed/) every rank runs the loop on its part of each batch; only
rank 0 (`loop.is_main`) has the callbacks that write, print and track, and its stop decisions
are every rank's. The epoch's totals are summed over ranks before they are read.
"""

import logging
import math
import sys
import time
from pathlib import Path

import torch

from cnntrain import distributed
from cnntrain.core.checkpoint import BEST, LAST, checkpoint_path, evaluated_weights, load_checkpoint
from cnntrain.core.errors import UserError
from cnntrain.data import DataBundle
from cnntrain.metrics import epoch_metrics
from cnntrain.models.freeze import train_mode
from cnntrain.reporting.progress import progress_bar
from cnntrain.training.evaluate import evaluate
from cnntrain.training.events import Callback
from cnntrain.training.signals import StopSignal
from cnntrain.training.state import RunState
from cnntrain.training.step import SYNC_EVERY, Diverged, StepParts, Totals, settle, train_batch

log = logging.getLogger("cnntrain")
# Stop reasons whose rule decides again at on_fit_start, from the rows and the plan (stopping.py,
# callbacks.py, budget.py): a resumed run with a longer patience, more time or none trains on.
# Others ("pruned": its study's word) stand.
REDECIDED = ("early_stopping", "target_accuracy", "time_budget")


class Loop:
    """One run's epochs: `fit()` trains to `epochs` (or a callback's stop), `test()` evaluates
    the best checkpoint's weights on the test split (the best by `trainer.monitor`)."""

    def __init__(self, *, cfg, run_dir: Path, model, parts: StepParts, data: DataBundle,
                 callbacks: dict, show_bars: bool):  # fmt: skip
        self.cfg, self.run_dir, self.model, self.parts, self.data = cfg, run_dir, model, parts, data
        self.callbacks = callbacks  # name → Callback, in the order they hear each event
        self.epochs = cfg.trainer.epochs
        self.monitor = cfg.trainer.monitor  # the row's metric that decides the best epoch
        self.keeps_best = cfg.trainer.save_top_k > 0  # else the final test takes the last weights
        self.show_bars = show_bars
        self.state = RunState()
        # When per-epoch evaluation runs on the test loader itself (data.val_split=0), the tested
        # epoch's outputs are the final test's: kept, so the test set is not evaluated twice.
        self.shared_eval = data.val is data.test
        self.best_outputs = None
        self.tested_checkpoint = None  # best.pt as test() loaded it: calibration writes into it
        self.interrupted = False  # set when a signal ends the run (it exits 130/143)
        self.compile_s = 0.0  # torch.compile's warm-up before epoch 1 (compiling.py)
        self.world = distributed.world()
        self.batch_listeners = [c for c in callbacks.values() if overrides(c, "on_batch_start")]

    @property
    def is_main(self) -> bool:
        """Rank 0, or the only process: the one that writes the run folder and prints."""
        return self.world.is_main

    @property
    def eval_model(self):
        """The EMA network or the step model, outside DistributedDataParallel: each rank
        evaluates its shard alone."""
        if self.parts.ema is not None:
            return self.parts.ema.module
        return distributed.unwrap(self.parts.model)

    @property
    def global_step(self) -> int:
        """Training batches done so far (optimizer steps × trainer.accumulate)."""
        return self.state.epoch * len(self.data.train) + self.state.step

    def checkpoint_path(self, name: str) -> Path:
        return checkpoint_path(self.run_dir, name)

    def emit(self, event: str, *args) -> None:
        for name, callback in list(self.callbacks.items()):
            try:
                getattr(callback, event)(self, *args)
            except Exception as e:
                if not getattr(callback, "is_tracker", False) or event == "on_fit_start":
                    raise
                log.warning("%s stopped tracking at %s (%s); training goes on", name, event, e)
                del self.callbacks[name]

    def stop(self, reason: str) -> None:
        """End training after this epoch; `reason` becomes results.json's `stopped_by`."""
        self.state.stopped_by = reason

    def fit(self) -> None:
        if self.state.stopped_by in REDECIDED:  # restored from the checkpoint
            self.state.stopped_by = None
        self.emit("on_fit_start")
        with StopSignal(self.world.size) as stop:
            while self.state.epoch < self.epochs and self.state.stopped_by is None:
                self.train_epoch(self.state.epoch + 1, stop)

    def train_epoch(self, epoch: int, stop: StopSignal) -> None:
        """Train epoch `epoch` from the run's step in it; evaluate it; stop after it, or after
        the current optimizer step, when a signal asks."""
        p, parts, train = self.state, self.parts, self.data.train
        device = parts.arithmetic.device
        # A resumed epoch's totals so far are every rank's: rank 0 carries them on.
        resumed = p.step and self.is_main
        totals = Totals.from_state(p.totals, device) if resumed else Totals.zeros(device)
        began, step = time.perf_counter(), p.step
        train_mode(parts.model)  # frozen BatchNorm layers stay in eval mode (models/freeze.py)
        try:
            with progress_bar(len(train), f"epoch {epoch}", self.show_bars, p.step) as bar:
                for step, (x, y) in enumerate(train.batches(epoch, p.step), p.step):
                    self.batch_start(epoch, step)
                    ended_a_step = train_batch(parts, x, y, epoch, step, len(train), totals)
                    bar.update()
                    if (step + 1) % SYNC_EVERY == 0:
                        bar.set_postfix(loss=f"{self.synced(epoch, step, totals, stop):.3f}")
                    if ended_a_step and stop.requested():
                        break
            settle(parts, totals, epoch)
        except Diverged as e:
            raise self.divergence(str(e)) from e
        seconds = time.perf_counter() - began
        p.epoch_time_s += seconds
        p.elapsed_s += seconds
        if step + 1 < len(train):  # interrupted mid-epoch
            p.step, p.totals = step + 1, over_ranks(totals).state_dict()
            self.exit_interrupted(stop.signum, f"epoch {epoch}, step {step + 1}")
        self.emit("on_train_epoch_end", epoch)
        self.end_epoch(epoch, totals)
        stop.agree()
        if stop.requested():
            self.exit_interrupted(stop.signum, f"the end of epoch {epoch}")

    def synced(self, epoch: int, step: int, totals: Totals, stop: StopSignal) -> float:
        """Every SYNC_EVERY steps: check the loss, agree on a stop, and tell the callbacks the
        running mean loss of every rank's images (returned, for the bar)."""
        settle(self.parts, totals, epoch)
        stop.agree()
        summed = over_ranks(totals)  # `totals` itself for a single process
        loss = summed.loss.item() / summed.count
        self.emit("on_step", epoch, step, loss, totals.lr)
        return loss

    def batch_start(self, epoch: int, step: int) -> None:
        for callback in self.batch_listeners:
            callback.on_batch_start(self, epoch, step)

    def end_epoch(self, epoch: int, totals: Totals) -> None:
        p = self.state
        totals = over_ranks(totals)
        train_loss, train_acc = totals.read()
        distributed.share_from_main(self.eval_model.buffers())  # rank 0's BatchNorm statistics
        val = evaluate(self.eval_model, self.data.val, self.parts.arithmetic, self.show_bars, "val",
                       keep_outputs=self.shared_eval)  # fmt: skip
        if not math.isfinite(val["loss"]):  # finite training losses, broken weights: don't save
            raise self.divergence(f"validation loss is not finite after epoch {epoch}")
        row = {
            "epoch": epoch,
            "train/loss": train_loss,
            "train/acc": train_acc,
            "val/loss": val["loss"],
            "val/acc": val["acc"],
            **self.epoch_metrics(val),
            "val/split": self.data.val_name,  # what val/* measured: "test" when val_split=0
            "lr": totals.lr,  # of the epoch's last step
            "epoch_time_s": round(p.epoch_time_s, 3),
            "elapsed_s": round(p.elapsed_s, 3),
            "train/images_per_s": round(totals.count / max(p.epoch_time_s, 1e-9), 1),
        }
        p.record(row, self.monitor)
        if self.shared_eval and (p.best_epoch == epoch or not self.keeps_best):
            self.best_outputs = val
        self.emit("on_epoch_end", row)
        p.stopped_by = distributed.from_main(p.stopped_by)  # rank 0's callbacks may end the run

    def epoch_metrics(self, val: dict) -> dict:
        """The row's metrics besides loss and accuracy: val/balanced_acc (the mean of the
        per-class recalls), or with several labels per image val/mAP, the F1s and the Hamming
        loss at probability 0.5 (from rank 0's gathered outputs, the same on every rank)."""
        if not self.data.multi_label:
            return {"val/balanced_acc": val["balanced_acc"]}
        metrics = epoch_metrics(val["logits"], val["targets"], "val") if self.is_main else None
        return distributed.from_main(metrics)

    def divergence(self, what: str) -> UserError:
        last = self.checkpoint_path(LAST)
        where = (
            f"the last good checkpoint is {last}" if last.exists() else "no checkpoint was written"
        )
        return UserError(
            f"{what}: training diverged; {where} "
            "(start a new run with a lower optimizer.lr or with trainer.grad_clip set)"
        )

    def exit_interrupted(self, signum: int, where: str) -> None:
        self.interrupted = True
        self.emit("on_interrupt")
        distributed.barrier()  # until rank 0's checkpoint is written: the job ends as ranks exit
        if self.is_main:
            log.warning("interrupted at %s; checkpoint saved", where)
            print(f"continue with: cnntrain resume={self.run_dir}", file=sys.stderr, flush=True)
        raise SystemExit(128 + signum)

    def test(self) -> tuple[dict, torch.nn.Module]:
        """Evaluate the best checkpoint's weights on the test split (or reuse that evaluation);
        with `trainer.save_top_k=0` (no best checkpoint) the last epoch's.

        Returns the test outputs (loss, acc, count, logits, targets) and the network, left
        holding the tested weights (the run is over: nothing trains it again).
        """
        net = self.parts.ema.module if self.parts.ema is not None else self.model  # not compiled
        if not self.keeps_best and self.is_main:
            log.info("trainer.save_top_k=0 keeps no best checkpoint: the final test uses the last "
                     "epoch's weights (epoch %d)", self.state.epoch)  # fmt: skip
        elif self.is_main:  # it wrote best.pt; the other ranks may not see its disk
            self.tested_checkpoint = load_checkpoint(self.checkpoint_path(BEST))
            net.load_state_dict(evaluated_weights(self.tested_checkpoint))
        distributed.share_from_main(net.state_dict().values())
        out = self.best_outputs or evaluate(
            net, self.data.test, self.parts.arithmetic, self.show_bars, "test", keep_outputs=True
        )
        return out, net


def over_ranks(totals: Totals) -> Totals:
    """`totals` summed over every rank's part of the epoch; as they are for a single process."""
    if distributed.world().size == 1:
        return totals
    loss = totals.loss
    sums = torch.stack([loss, totals.correct.to(loss.dtype), loss.new_tensor(totals.count)])
    loss, correct, count = distributed.sum_over_ranks(sums)  # float64: exact for counts
    return Totals(loss, correct.long(), int(count), totals.first_bad_step, totals.lr)


def overrides(callback, method: str) -> bool:
    """Does `callback` define `method` itself (not only the base class's no-op)?"""
    return getattr(type(callback), method) is not getattr(Callback, method)
