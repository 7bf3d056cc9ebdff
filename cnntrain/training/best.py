"""The best checkpoints (`trainer.save_top_k`): the k best epochs by `trainer.monitor`, the best as
checkpoints/best.pt and each other as checkpoints/best-epoch<N>.pt, kept in step with the rows."""

import os
import re
from pathlib import Path

from cnntrain.core.checkpoint import BEST, BEST_OF_EPOCH, saved_epoch
from cnntrain.training.events import Callback
from cnntrain.training.resume import write_checkpoint
from cnntrain.training.state import ranked

OF_EPOCH = re.compile(re.escape(BEST_OF_EPOCH).replace(r"\{\}", r"(\d+)"))


class BestCheckpoints(Callback):
    """After each epoch (and on resume) the checkpoints folder holds the `k` best epochs of the
    rows so far, each under its rank's name: a better epoch moves best.pt's to best-epoch<N>.pt
    (a rename) and takes best.pt; an epoch among the k is written; one that falls out goes.
    Each step is atomic and the whole is redone from the rows on resume, so a crash anywhere
    leaves what a resume puts right: the epoch it continues from is rewritten when its file is
    missing; another epoch's file written by a killed run past its checkpoint is removed, or
    replaced when the rerun reaches it (best.pt is only ever replaced, never removed)."""

    def __init__(self, k: int, monitor: str):
        self.k, self.monitor = k, monitor  # k ≥ 1 (0: no best checkpoints, no callback)

    def on_fit_start(self, loop) -> None:
        self.held = held_epochs(loop.checkpoint_path(BEST).parent)  # file name → its epoch
        p = loop.state
        self.arrange(loop, p.epoch if p.epoch and not p.step else None)

    def on_epoch_end(self, loop, row: dict) -> None:
        self.arrange(loop, row["epoch"])

    def arrange(self, loop, current: int | None) -> None:
        """Move, write and remove files until they are the k best epochs of the rows; `current`:
        the epoch the model holds now (None mid-epoch: it cannot be written)."""
        best = ranked(loop.state.rows, self.monitor)[: self.k]
        wanted = {row["epoch"]: BEST_OF_EPOCH.format(row["epoch"]) for row in best[1:]}
        wanted.update({best[0]["epoch"]: BEST} if best else {})  # epoch → its file's name
        for name in sorted(self.held, key=lambda n: n != BEST):  # best.pt's moves first
            target = wanted.get(self.held[name])
            if target not in (None, name):
                os.replace(folder_of(loop) / name, folder_of(loop) / target)
                self.held[target] = self.held.pop(name)
        if current in wanted and self.held.get(wanted[current]) != current:
            write_checkpoint(loop, wanted[current])
            self.held[wanted[current]] = current
        for name, epoch in list(self.held.items()):  # fallen out, or from past the checkpoint
            if name != BEST and wanted.get(epoch) != name:
                (folder_of(loop) / name).unlink(missing_ok=True)
                del self.held[name]


def folder_of(loop) -> Path:
    return loop.checkpoint_path(BEST).parent


def held_epochs(folder: Path) -> dict[str, int]:
    """{file name: epoch} of the best checkpoints in `folder` (best.pt read for its epoch)."""
    held = {}
    for path in folder.glob(BEST_OF_EPOCH.format("*")):
        match = OF_EPOCH.fullmatch(path.name)
        if match:
            held[path.name] = int(match.group(1))
    epoch = saved_epoch(folder / BEST) if (folder / BEST).exists() else None
    if epoch is not None:
        held[BEST] = epoch
    return held
