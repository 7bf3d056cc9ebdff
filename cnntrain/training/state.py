"""Where a run is (RunState): saved in every checkpoint (as its `progress`), restored on resume;
and the metrics a run may monitor (`trainer.monitor`), each with the way it improves."""

from dataclasses import dataclass, field

from cnntrain.core.errors import UserError

# What `trainer.monitor` may name (a key of each epoch's row): is a larger value better? One label
# per image, and several (val/acc: every label right at p 0.5; no per-class recalls to balance).
SINGLE_LABEL_MONITORS = {"val/acc": True, "val/loss": False, "val/balanced_acc": True}
MULTI_LABEL_MONITORS = {"val/acc": True, "val/loss": False, "val/mAP": True, "val/f1_micro": True,
                        "val/f1_macro": True, "val/hamming_loss": False}  # fmt: skip
MONITORS = SINGLE_LABEL_MONITORS | MULTI_LABEL_MONITORS


def chosen_monitor(monitor: str, multi_label: bool) -> str:
    """`trainer.monitor` for this run's data: auto is val/acc, or val/mAP with several labels per
    image; a metric the run's epochs do not report is refused."""
    if monitor == "auto":
        return "val/mAP" if multi_label else "val/acc"
    allowed = MULTI_LABEL_MONITORS if multi_label else SINGLE_LABEL_MONITORS
    if monitor not in allowed:
        kind = "several labels per image" if multi_label else "one label per image"
        raise UserError(
            f"trainer.monitor={monitor} is not reported by a run with {kind}; use auto or one of "
            f"{', '.join(allowed)}"
        )
    return monitor


# results.json fields (`optimized_metric`) only one kind of run has
SINGLE_LABEL_RESULTS = ("test/balanced_acc", "test/top5_acc")
MULTI_LABEL_RESULTS = ("best_val/mAP", "test/mAP")


def check_optimized_metric(metric: str, multi_label: bool) -> None:
    """Refuse an `optimized_metric` this run's results.json will not have."""
    other = SINGLE_LABEL_RESULTS if multi_label else MULTI_LABEL_RESULTS
    if metric in other:
        kind = "several labels per image" if multi_label else "one label per image"
        raise UserError(
            f"optimized_metric={metric} is not in the results of a run with {kind}; use "
            f"best_val/acc{', best_val/mAP or test/mAP' if multi_label else ''}"
        )


def improves(value: float, best: float | None, monitor: str, margin: float = 0.0) -> bool:
    """Is `value` of `monitor` better than `best` (None: nothing yet) by more than `margin`?"""
    if best is None:
        return True
    return value - margin > best if MONITORS[monitor] else value + margin < best


def ranked(rows: list[dict], monitor: str) -> list[dict]:
    """`rows` best first by `monitor`; of equal values the earlier epoch first (it was best
    first: a later epoch must improve on it)."""
    sign = -1 if MONITORS[monitor] else 1
    return sorted(rows, key=lambda row: (sign * row[monitor], row["epoch"]))


@dataclass
class RunState:
    """Where the run is: saved in every checkpoint, restored on resume."""

    epoch: int = 0  # epochs completed
    step: int = 0  # batches done of epoch+1 (non-zero only after an interruption)
    totals: dict | None = None  # Totals of the unfinished epoch
    epoch_time_s: float = 0.0  # time spent in the unfinished epoch
    elapsed_s: float = 0.0  # training time so far (s), excluding start-up and final test
    best_value: float | None = None  # of the monitored metric (trainer.monitor), at best_epoch
    best_epoch: int = 0
    rows: list[dict] = field(default_factory=list)
    stopped_by: str | None = None  # why training ended early ("target_accuracy", "pruned", …)

    @classmethod
    def from_progress(cls, progress: dict) -> "RunState":
        """The state a checkpoint saved. One written before `trainer.monitor` existed monitored
        val/acc and holds it as `best_acc` (-1 before any epoch)."""
        progress = dict(progress)
        if "best_acc" in progress:
            best_acc = progress.pop("best_acc")
            progress["best_value"] = best_acc if progress.get("best_epoch") else None
        return cls(**progress)

    def record(self, row: dict, monitor: str) -> None:
        """Close the epoch of `row`: it joins the rows, and becomes best if its `monitor`
        improved."""
        self.epoch, self.step, self.totals, self.epoch_time_s = row["epoch"], 0, None, 0.0
        self.rows.append(row)
        if improves(row[monitor], self.best_value, monitor):
            self.best_value, self.best_epoch = row[monitor], row["epoch"]
