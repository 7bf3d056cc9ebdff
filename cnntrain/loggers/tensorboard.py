"""TensorBoard: event files in RUN_DIR/tensorboard/, so `tensorboard --logdir outputs` shows every
run and sweep job side by side.

Per epoch the metrics row's numbers under their own names (`train/loss`, `val/acc`, `lr`, …) and
`epoch`; every SYNC_EVERY steps the running training loss and lr (`step/train_loss`, `step/lr`);
at the end the run's hyper-parameters (the flat config) with its final metrics in the same run,
and the confusion matrix, feature maps and misclassified images. Every value sits at the number
of training batches so far (loop.global_step), so a resumed run purges what the killed one wrote
after its checkpoint (`purge_step`) and TensorBoard reads exactly one value per step.
"""

import threading
from pathlib import Path

import numpy as np
from PIL import Image

from cnntrain.core.errors import UserError
from cnntrain.loggers.params import flat_config
from cnntrain.training.events import Callback

FINAL_METRICS = ("test/acc", "test/loss", "test/balanced_acc", "best_val/acc")
IMAGES = ("confusion_matrix", "feature_maps", "misclassified")  # plots/<name>.png


class TensorBoardLogger(Callback):
    is_tracker = True

    def __init__(self, folder: str = "tensorboard", images: bool = True):
        self.folder, self.images = folder, images  # folder: inside the run folder
        self.writer = None  # made by on_fit_start, which a run that fails early never reaches

    def on_fit_start(self, loop) -> None:
        from torch.utils.tensorboard import SummaryWriter  # imported only when tracking

        path = loop.run_dir / self.folder
        resumed = loop.global_step > 0
        quiet_writer_threads()
        try:
            # After a resume, steps past the checkpoint's were written by the killed run: purge.
            self.writer = SummaryWriter(
                str(path), purge_step=loop.global_step + 1 if resumed else None
            )
        except OSError as e:
            raise UserError(
                f"logger=tensorboard cannot write to {path} ({e.strerror or e}); "
                "fix the folder's permissions or use logger=none"
            ) from e

    def on_step(self, loop, epoch: int, step: int, loss: float, lr: float) -> None:
        at = (epoch - 1) * len(loop.data.train) + step + 1  # training batches done
        self.writer.add_scalar("step/train_loss", loss, at)
        self.writer.add_scalar("step/lr", lr, at)

    def on_epoch_end(self, loop, row: dict) -> None:
        at = loop.global_step
        for key, value in row.items():
            if isinstance(value, int | float):
                self.writer.add_scalar(key, value, at)
        self.writer.flush()

    def on_fit_end(self, loop, results: dict) -> None:
        from torch.utils.tensorboard.summary import hparams

        at = loop.global_step
        metrics = {k: results[k] for k in FINAL_METRICS if isinstance(results.get(k), float)}
        # The hparams summaries go to this writer's own file: SummaryWriter.add_hparams would
        # make a separate run in a timestamped subfolder.
        for summary in hparams(flat_config(loop.cfg), metrics):
            self.writer.file_writer.add_summary(summary, at)
        for key, value in metrics.items():
            self.writer.add_scalar(key, value, at)
        if self.images:
            for name in IMAGES:
                png = loop.run_dir / "plots" / f"{name}.png"
                if png.exists():
                    self.writer.add_image(f"plots/{name}", rgb(png), at, dataformats="HWC")

    def on_close(self, loop, status: str) -> None:
        if self.writer is not None:
            self.writer.close()


def quiet_writer_threads() -> None:
    """TensorBoard writes from a thread of its own, which prints a traceback when a write fails
    (a full disk), then hands the error to the writer's next call here, which Loop.emit turns
    into one warning (the tracker stops, the run goes on): keep that thread quiet. Other
    threads' errors print as before."""
    if getattr(threading.excepthook, "quiets_tensorboard", False):
        return
    default = threading.excepthook

    def hook(args) -> None:
        writer_thread = type(args.thread).__module__.startswith("tensorboard.")
        if not (writer_thread and isinstance(args.exc_value, OSError)):
            default(args)

    hook.quiets_tensorboard = True
    threading.excepthook = hook


def rgb(png: Path) -> np.ndarray:
    """(H, W, 3) uint8 pixels of a PNG."""
    with Image.open(png) as img:
        return np.asarray(img.convert("RGB"))
