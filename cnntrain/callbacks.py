"""Callbacks: what reacts to the epoch loop's events (loop.py lists them). The built-in ones write
the metrics files, print the epoch line, stop at a target accuracy and write checkpoints; the
trackers (cnntrain/loggers/) and any `callbacks.<name>._target_` of the config join them."""

import logging

from hydra.utils import instantiate

from cnntrain.outputs.checkpoint import save_checkpoint
from cnntrain.outputs.metrics import MetricsLog
from cnntrain.resume import best_is_intact, checkpoint_state, remove_torn_writes

log = logging.getLogger("cnntrain")


class Callback:
    """The loop's events, each a no-op here; a subclass overrides those it reacts to.
    `state_dict()` (None: nothing) is saved in every checkpoint and given back on resume."""

    is_tracker = False  # trackers' failures after the start are warnings, not the run's end

    def on_fit_start(self, loop) -> None: ...
    def on_batch_start(self, loop, epoch: int, step: int) -> None: ...
    def on_step(self, loop, epoch: int, step: int, loss: float, lr: float) -> None: ...
    def on_epoch_end(self, loop, row: dict) -> None: ...
    def on_checkpoint(self, loop, name: str, path) -> None: ...
    def on_interrupt(self, loop) -> None: ...
    def on_fit_end(self, loop, results: dict) -> None: ...
    def on_close(self, loop, status: str) -> None: ...

    def state_dict(self) -> dict | None:
        return None

    def load_state_dict(self, state: dict) -> None: ...


class MetricsFiles(Callback):
    """metrics.jsonl and metrics.csv: one row per epoch; on resume cut back to the checkpoint."""

    def on_fit_start(self, loop) -> None:
        self.log = MetricsLog(loop.run_dir, loop.progress.rows)
        self.log.write()  # on resume: drop rows written after the checkpoint we continue from

    def on_epoch_end(self, loop, row: dict) -> None:
        self.log.append(row)


class EpochLine(Callback):
    """One console (and train.log) line per epoch."""

    def on_epoch_end(self, loop, row: dict) -> None:
        log.info(
            "epoch %d/%d  train loss %.4f acc %5.2f%%  %s loss %.4f acc %5.2f%%  lr %.2e  %.1fs  "
            "%s img/s",
            row["epoch"], loop.epochs, row["train/loss"], 100 * row["train/acc"], row["val/split"],
            row["val/loss"], 100 * row["val/acc"], row["lr"], row["epoch_time_s"],
            f"{row['train/images_per_s']:,.0f}",
        )  # fmt: skip


class TargetAccuracy(Callback):
    """`trainer.target_accuracy`: stop once validation accuracy reaches `target` (a fraction)."""

    def __init__(self, target: float):
        self.target = target

    def on_fit_start(self, loop) -> None:
        rows = loop.progress.rows  # a resumed run may have reached it already
        if rows:
            self.on_epoch_end(loop, rows[-1])

    def on_epoch_end(self, loop, row: dict) -> None:
        if row["val/acc"] >= self.target:
            loop.stop("target_accuracy")


class Checkpoints(Callback):
    """checkpoints/last.pt every `every` epochs, at the last epoch, on an early stop and on a
    signal; checkpoints/best.pt whenever validation accuracy improves (written after last.pt, so
    a crash in between leaves a best.pt that `on_fit_start` heals on resume)."""

    def __init__(self, every: int):
        self.every = every  # epochs

    def on_fit_start(self, loop) -> None:
        remove_torn_writes(loop.checkpoint_path("last.pt").parent)
        p = loop.progress
        resumed_after_best = p.epoch and p.best_epoch == p.epoch and not p.step
        if resumed_after_best and not best_is_intact(loop.checkpoint_path("best.pt"), p.epoch):
            self.save(loop, "best.pt")

    def on_epoch_end(self, loop, row: dict) -> None:
        epoch = row["epoch"]
        if epoch % self.every == 0 or epoch == loop.epochs or loop.progress.stopped_by:
            self.save(loop, "last.pt")
        if loop.progress.best_epoch == epoch:
            self.save(loop, "best.pt")

    def on_interrupt(self, loop) -> None:
        self.save(loop, "last.pt")

    def save(self, loop, name: str) -> None:
        path = loop.checkpoint_path(name)
        save_checkpoint(path, checkpoint_state(loop))
        loop.emit("on_checkpoint", name, path)


def build_callbacks(cfg, is_main: bool = True) -> dict[str, Callback]:
    """The run's callbacks in the order they hear events: files and console, the stopping rule,
    the trackers (`logger.*`), the config's `callbacks.*`, and last the checkpoints (so they save
    what the others decided, e.g. an early stop).

    With several processes only rank 0 (`is_main`) writes, prints and tracks; the other ranks
    get the stopping rule and the config's `callbacks.*`, which run on every rank (a callback
    that writes checks `loop.is_main`)."""
    callbacks = {"metrics_files": MetricsFiles(), "epoch_line": EpochLine()} if is_main else {}
    if cfg.trainer.target_accuracy is not None:
        callbacks["target_accuracy"] = TargetAccuracy(cfg.trainer.target_accuracy)
    for group in ("logger", "callbacks") if is_main else ("callbacks",):
        for name, spec in (cfg.get(group) or {}).items():
            callbacks[name] = instantiate(spec)
    if is_main:
        callbacks["checkpoints"] = Checkpoints(cfg.trainer.checkpoint_every)
    return callbacks
