"""Callbacks: what reacts to the epoch loop's events (loop.py lists them). The built-in ones write
the metrics files, print the epoch line, stop at a target accuracy or early (stopping.py), tell
the model the epoch, average the weights (Lookahead) and write checkpoints (last.pt here, the best
ones in best.py); the trackers (cnntrain/loggers/) and any `callbacks.<name>._target_` of the
config join them."""

import logging
import time

import torch
from hydra.utils import instantiate

from cnntrain.core.checkpoint import LAST, remove_torn_writes
from cnntrain.reporting.formats import duration
from cnntrain.reporting.metrics_log import MetricsLog
from cnntrain.training.best import BestCheckpoints
from cnntrain.training.budget import NAME as TIME_BUDGET
from cnntrain.training.budget import TimeBudget
from cnntrain.training.events import Callback
from cnntrain.training.resume import write_checkpoint
from cnntrain.training.step import optimizer_steps
from cnntrain.training.stopping import EarlyStopping

log = logging.getLogger("cnntrain")


class MetricsFiles(Callback):
    """metrics.jsonl and metrics.csv: one row per epoch; on resume cut back to the checkpoint."""

    def on_fit_start(self, loop) -> None:
        self.log = MetricsLog(loop.run_dir, loop.state.rows)
        self.log.write()  # on resume: drop rows written after the checkpoint we continue from

    def on_epoch_end(self, loop, row: dict) -> None:
        self.log.append(row)


class EpochLine(Callback):
    """One console (and train.log) line per epoch, with the whole run's ETA: the wall time per
    epoch of this process so far (evaluation included) times the epochs left."""

    def on_fit_start(self, loop) -> None:
        self.started, self.first_epoch = time.monotonic(), loop.state.epoch

    def on_epoch_end(self, loop, row: dict) -> None:
        per_epoch = (time.monotonic() - self.started) / max(1, row["epoch"] - self.first_epoch)
        left = loop.epochs - row["epoch"]
        eta = f"  run ETA {duration(left * per_epoch)}" if left else ""
        # several labels per image: the mean AP besides the exact-match accuracy
        ap = f" mAP {100 * row['val/mAP']:5.2f}%" if "val/mAP" in row else ""
        log.info(
            "epoch %d/%d  train loss %.4f acc %5.2f%%  %s loss %.4f acc %5.2f%%%s  lr %.2e  "
            "%.1fs  %s img/s%s",
            row["epoch"], loop.epochs, row["train/loss"], 100 * row["train/acc"], row["val/split"],
            row["val/loss"], 100 * row["val/acc"], ap, row["lr"], row["epoch_time_s"],
            f"{row['train/images_per_s']:,.0f}", eta,
        )  # fmt: skip


class ProgressLines(Callback):
    """Progress without a terminal (nohup, `| tee`, Slurm, CI), where there are no bars: a line
    at most every `every_s` seconds, at the loop's loss reads (every SYNC_EVERY steps), with
    the running loss, the learning rate, images/s and the epoch's and the whole run's ETA."""

    def __init__(self, every_s: float):
        self.every_s = every_s  # seconds between lines, at least

    def on_fit_start(self, loop) -> None:
        self.active = not loop.show_bars
        self.mark = (time.monotonic(), loop.state.epoch + 1, loop.state.step)  # (s, epoch, step)
        self.said = self.mark[0]

    def on_step(self, loop, epoch: int, step: int, loss: float, lr: float) -> None:
        now, (then, marked_epoch, marked_step) = time.monotonic(), self.mark
        steps, done = len(loop.data.train), step + 1
        if epoch != marked_epoch:  # a new epoch (evaluation came between): measure from here
            self.mark = (now, epoch, done)
            return
        if not self.active or now - self.said < self.every_s or done <= marked_step:
            return
        per_step = (now - then) / (done - marked_step)  # s
        epoch_left = (steps - done) * per_step
        run_left = epoch_left + (loop.epochs - epoch) * steps * per_step
        log.info(
            "epoch %d/%d step %d/%d  loss %.4f  lr %.2e  %s img/s  epoch ETA %s  run ETA %s",
            epoch, loop.epochs, done, steps, loss, lr,
            f"{loop.cfg.data.batch_size / per_step:,.0f}", duration(epoch_left), duration(run_left),
        )  # fmt: skip
        self.said = now


class TargetAccuracy(Callback):
    """`trainer.target_accuracy`: stop once validation accuracy reaches `target` (a fraction)."""

    def __init__(self, target: float):
        self.target = target

    def on_fit_start(self, loop) -> None:
        rows = loop.state.rows  # a resumed run may have reached it already
        if rows:
            self.on_epoch_end(loop, rows[-1])

    def on_epoch_end(self, loop, row: dict) -> None:
        if row["val/acc"] >= self.target:
            loop.stop("target_accuracy")


class ModelEpoch(Callback):
    """Tells the model's modules that train differently by epoch — those with a
    `set_epoch(epoch)` method, like FastNet (its whitening bias) — which epoch comes next: before
    the first, after each, and on resume (from the progress, so a resumed run agrees)."""

    def on_fit_start(self, loop) -> None:
        self.modules = [m for m in loop.model.modules() if callable(getattr(m, "set_epoch", None))]
        self.tell(loop.state.epoch + 1)

    def on_epoch_end(self, loop, row: dict) -> None:
        self.tell(row["epoch"] + 1)

    def tell(self, epoch: int) -> None:
        for module in self.modules:
            module.set_epoch(epoch)


class Lookahead(Callback):
    """`trainer.lookahead`: airbench's Lookahead weight averaging. From epoch `after_epochs` + 1,
    every `every` optimizer steps the average a of the weights w moves toward them and they are
    reset to it: a ← a + (1 − ρ)(w − a), w ← a, with ρ = decay^every · (t / T)^power after step
    t of the run's T (little averaging early, strong at the end); its first such step only takes
    a = w. At the end of each epoch w ← a, so evaluation, checkpoints and the final weights are the
    average. It covers every floating-point tensor of the model's state (BatchNorm's statistics
    too); the average is saved in checkpoints, so a resumed run continues it exactly."""

    def __init__(self, every: int, decay: float, power: float, after_epochs: int):
        self.every, self.decay, self.power, self.after_epochs = every, decay, power, after_epochs
        self.average: dict[str, torch.Tensor] | None = None  # state-dict name → its average

    def on_fit_start(self, loop) -> None:
        floats = {k: v for k, v in loop.model.state_dict().items() if v.is_floating_point()}
        self.names, self.weights = list(floats), list(floats.values())
        if self.average is not None:  # resumed: onto the training device, in the model's order
            self.average = {k: self.average[k].to(v.device) for k, v in floats.items()}
        self.steps_per_epoch = optimizer_steps(len(loop.data.train), loop.parts.accumulate)

    def on_batch_start(self, loop, epoch: int, step: int) -> None:
        # After an optimizer step of this epoch (its last step is on_train_epoch_end's).
        if step and step % loop.parts.accumulate == 0:
            self.after_step(loop, epoch, step // loop.parts.accumulate)

    def on_train_epoch_end(self, loop, epoch: int) -> None:
        self.after_step(loop, epoch, self.steps_per_epoch)
        if self.average is not None:
            torch._foreach_copy_(self.weights, list(self.average.values()))

    @torch.no_grad()
    def after_step(self, loop, epoch: int, done_in_epoch: int) -> None:
        done = (epoch - 1) * self.steps_per_epoch + done_in_epoch  # steps of the run so far
        if epoch <= self.after_epochs or done % self.every:
            return
        if self.average is None:
            self.average = {k: w.clone() for k, w in zip(self.names, self.weights, strict=True)}
            return
        total = loop.epochs * self.steps_per_epoch
        rho = self.decay**self.every * (done / total) ** self.power
        average = list(self.average.values())
        torch._foreach_lerp_(average, self.weights, 1 - rho)
        torch._foreach_copy_(self.weights, average)

    def state_dict(self) -> dict:
        return {"average": self.average}

    def load_state_dict(self, state: dict) -> None:
        self.average = state["average"]


class Checkpoints(Callback):
    """checkpoints/last.pt every `every` epochs, at the last epoch, on an early stop and on a
    signal (the best ones come after it: BestCheckpoints, whose files a resume puts right)."""

    def __init__(self, every: int):
        self.every = every  # epochs

    def on_fit_start(self, loop) -> None:
        remove_torn_writes(loop.checkpoint_path(LAST).parent)

    def on_epoch_end(self, loop, row: dict) -> None:
        epoch = row["epoch"]
        if epoch % self.every == 0 or epoch == loop.epochs or loop.state.stopped_by:
            write_checkpoint(loop, LAST)

    def on_interrupt(self, loop) -> None:
        write_checkpoint(loop, LAST)


def build_callbacks(cfg, is_main: bool = True) -> dict[str, Callback]:
    """The run's callbacks in the order they hear events: files and console, the stopping rules,
    the trackers (`logger.*`), the config's `callbacks.*`, and last the checkpoints (so they save
    what the others decided, e.g. an early stop): last.pt, then the best ones.

    With several processes only rank 0 (`is_main`) writes, prints and tracks; the other ranks
    get the stopping rules and the config's `callbacks.*`, which run on every rank (a callback
    that writes checks `loop.is_main`)."""
    callbacks = {"metrics_files": MetricsFiles(), "epoch_line": EpochLine()} if is_main else {}
    if is_main and cfg.trainer.get("progress_every_s"):
        callbacks["progress_lines"] = ProgressLines(cfg.trainer.progress_every_s)
    if cfg.trainer.target_accuracy is not None:
        callbacks["target_accuracy"] = TargetAccuracy(cfg.trainer.target_accuracy)
    early = cfg.trainer.early_stopping
    if early.patience:  # null or 0: off
        callbacks["early_stopping"] = EarlyStopping(cfg.trainer.monitor, **early)
    callbacks["model_epoch"] = ModelEpoch()
    if cfg.trainer.get("lookahead") is not None:
        callbacks["lookahead"] = Lookahead(**cfg.trainer.lookahead)
    if cfg.trainer.get("time_budget") is not None:  # before the checkpoints: they save its plan
        callbacks[TIME_BUDGET] = TimeBudget(cfg.trainer.time_budget)
    for group in ("logger", "callbacks") if is_main else ("callbacks",):
        for name, spec in (cfg.get(group) or {}).items():
            callbacks[name] = instantiate(spec)
    if is_main:
        callbacks["checkpoints"] = Checkpoints(cfg.trainer.checkpoint_every)
    if is_main and cfg.trainer.save_top_k:
        callbacks["best_checkpoints"] = BestCheckpoints(cfg.trainer.save_top_k, cfg.trainer.monitor)
    return callbacks
