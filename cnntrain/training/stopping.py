"""Early stopping (`trainer.early_stopping`): end the run once `trainer.monitor` has not improved
by more than `min_delta` for `patience` epochs. Counted from the run's rows alone, so a resumed
run stops after the same epoch as one left alone."""

import logging

from cnntrain.training.events import Callback
from cnntrain.training.state import improves

log = logging.getLogger("cnntrain")


def stalled(rows: list[dict], monitor: str, min_delta: float) -> tuple[int, dict]:
    """Epochs since the last row that improved `monitor` by more than `min_delta` on the one
    before it that did, and that row (the first row counts as one). As in Keras and Lightning,
    the reference moves only on such an improvement: small steps do not reset the count."""
    reference = rows[0]
    for row in rows[1:]:
        if improves(row[monitor], reference[monitor], monitor, min_delta):
            reference = row
    return rows[-1]["epoch"] - reference["epoch"], reference


class EarlyStopping(Callback):
    """Stops the run (`stopped_by: early_stopping`) after the epoch that makes `patience`
    epochs without an improvement; says so once."""

    def __init__(self, monitor: str, patience: int, min_delta: float):
        self.monitor, self.patience, self.min_delta = monitor, patience, min_delta

    def on_fit_start(self, loop) -> None:
        # A resumed run given a smaller patience (it may change on resume) may be due already.
        if loop.state.rows and loop.state.stopped_by is None:
            self.check(loop)

    def on_epoch_end(self, loop, row: dict) -> None:
        self.check(loop)

    def check(self, loop) -> None:
        waited, best = stalled(loop.state.rows, self.monitor, self.min_delta)
        if waited < self.patience:
            return
        if loop.is_main:
            log.info(
                "early stopping: %s has not improved by more than %g for %d epochs "
                "(best %.4f at epoch %d)",
                self.monitor, self.min_delta, waited, best[self.monitor], best["epoch"],
            )  # fmt: skip
        loop.stop("early_stopping")
