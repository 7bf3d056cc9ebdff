"""EpochRows: the part every remote tracker shares — its run's id, saved in every checkpoint so
a resume continues that run, and each epoch's metrics row sent once, when its checkpoint is
written, so after a kill and a resume the tracker holds every epoch once."""

from cnntrain.core.checkpoint import LAST
from cnntrain.training.events import Callback


def numbers(row: dict) -> dict[str, int | float]:
    """The numeric fields of a metrics row but `epoch` (the step they are sent at)."""
    return {
        k: v
        for k, v in row.items()
        if k != "epoch" and isinstance(v, int | float) and not isinstance(v, bool)
    }


class EpochRows(Callback):
    """A tracker whose history is one row per epoch at step=epoch. `sent` is the last epoch the
    tracker holds (0 on a new run; on resume what the tracker itself says); a subclass sends
    one row with `send_row`."""

    is_tracker = True
    sent = 0  # epochs the tracker holds
    run_id = None  # the tracker's run: set on the first start, from the checkpoint on resume

    def state_dict(self) -> dict:
        return {"run_id": self.run_id}

    def load_state_dict(self, state: dict) -> None:
        self.run_id = state["run_id"]

    def send_row(self, row: dict) -> None:
        raise NotImplementedError

    def send_rows(self, rows: list[dict]) -> None:
        """Each row of `rows` the tracker lacks, in epoch order."""
        for row in rows:
            if row["epoch"] > self.sent:
                self.send_row(row)
                self.sent = row["epoch"]

    def on_checkpoint(self, loop, name: str, path) -> None:
        if name == LAST:  # its epochs are what a resume would continue from
            self.send_rows(loop.state.rows)
