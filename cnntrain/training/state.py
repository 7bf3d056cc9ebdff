"""Where a run is (RunState): saved in every checkpoint (as its `progress`), restored on resume."""

from dataclasses import dataclass, field


@dataclass
class RunState:
    """Where the run is: saved in every checkpoint, restored on resume."""

    epoch: int = 0  # epochs completed
    step: int = 0  # batches done of epoch+1 (non-zero only after an interruption)
    totals: dict | None = None  # Totals of the unfinished epoch
    epoch_time_s: float = 0.0  # time spent in the unfinished epoch
    elapsed_s: float = 0.0  # training time so far (s), excluding start-up and final test
    best_acc: float = -1.0
    best_epoch: int = 0
    rows: list[dict] = field(default_factory=list)
    stopped_by: str | None = None  # why training ended early ("target_accuracy", "pruned", …)

    def record(self, row: dict) -> None:
        """Close the epoch of `row`: it joins the rows, and becomes best if it improved."""
        self.epoch, self.step, self.totals, self.epoch_time_s = row["epoch"], 0, None, 0.0
        self.rows.append(row)
        if row["val/acc"] > self.best_acc:
            self.best_acc, self.best_epoch = row["val/acc"], row["epoch"]
