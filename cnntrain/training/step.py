"""The training step: one batch forward and backward, an optimizer step per group of
`trainer.accumulate` batches, and the epoch's running totals.

Losses and accuracies accumulate on the device and are read once per epoch; the only other
host sync is a finite-loss check every SYNC_EVERY steps (the loop's, which also reads the
running loss for the progress bar and the callbacks).
"""

import contextlib
import logging
from dataclasses import dataclass

import torch
from torch import nn

from cnntrain.metrics import hits
from cnntrain.training.ema import EMA
from cnntrain.training.mixing import BatchMix
from cnntrain.training.precision import Arithmetic

log = logging.getLogger("cnntrain")
SYNC_EVERY = 50  # steps between host reads of the running loss


class Diverged(Exception):
    """The loss became NaN or infinite."""

    def __init__(self, epoch: int, step: int):
        super().__init__(f"loss is not finite at epoch {epoch}, step {step}")
        self.epoch, self.step = epoch, step


@dataclass
class Totals:
    """Running sums of an epoch, on the device: summed loss, correct predictions, images."""

    loss: torch.Tensor
    correct: torch.Tensor
    count: int = 0
    first_bad_step: torch.Tensor | None = None  # -1 while every loss is finite
    lr: float = 0.0  # learning rate of the latest step (the scheduler has moved on after it)
    skipped: torch.Tensor | None = None  # fp16 steps skipped since the last host sync (float32)

    @classmethod
    def zeros(cls, device) -> "Totals":
        z = torch.zeros((), dtype=torch.float64, device=device)
        return cls(
            z,
            torch.zeros((), dtype=torch.int64, device=device),
            0,
            z.new_full((), -1).long(),
            skipped=torch.zeros((), device=device),
        )

    def add(self, loss: torch.Tensor, right: torch.Tensor, step: int) -> None:
        """Add a batch's mean `loss` and `right` (B,) bool: its images predicted right."""
        n = len(right)
        self.loss += loss.detach().double() * n
        self.correct += right.sum()
        self.count += n
        bad = ~torch.isfinite(loss.detach()) & (self.first_bad_step < 0)
        self.first_bad_step = torch.where(bad, step, self.first_bad_step)

    def read(self) -> tuple[float, float]:
        """(mean loss, accuracy): one host sync."""
        return self.loss.item() / max(1, self.count), self.correct.item() / max(1, self.count)

    def state_dict(self) -> dict:
        return {"loss": self.loss, "correct": self.correct, "count": self.count}

    @classmethod
    def from_state(cls, state: dict, device) -> "Totals":
        totals = cls.zeros(device)
        totals.loss.copy_(state["loss"])
        totals.correct.copy_(state["correct"])
        totals.count = state["count"]
        return totals


@dataclass
class StepParts:
    """What a training step touches."""

    model: nn.Module  # possibly torch.compile'd
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    loss_fn: nn.Module
    arithmetic: Arithmetic
    grad_clip: float | None = None
    ema: EMA | None = None
    accumulate: int = 1  # batches per optimizer step (`trainer.accumulate`)
    mix: BatchMix | None = None  # MixUp / CutMix of each training batch
    multi_label: bool = False  # several labels per image: targets (B, L), one sigmoid per label


def optimizer_steps(batches: int, accumulate: int) -> int:
    """Optimizer steps in an epoch of `batches` batches: one per `accumulate` of them, the last
    on the remainder when they do not divide evenly."""
    return -(-batches // accumulate)


def group_of(step: int, batches: int, accumulate: int) -> tuple[int, bool]:
    """(size, last): how many batches the optimizer step of batch `step` sums, and whether this
    batch ends it."""
    start = step - step % accumulate
    end = min(batches, start + accumulate)
    return end - start, step + 1 == end


def micro_step_context(model: nn.Module, last: bool):
    """A non-final batch of a group runs under the model's `no_sync()` when it has one
    (DistributedDataParallel: no gradient all-reduce until the group's last batch)."""
    no_sync = getattr(model, "no_sync", None)
    return contextlib.nullcontext() if last or no_sync is None else no_sync()


def train_batch(parts: StepParts, x: torch.Tensor, y: torch.Tensor, epoch: int, step: int,
                batches: int, totals: Totals) -> bool:  # fmt: skip
    """Train on batch `step` (x (B, C, H, W), y (B,) or (B, L)) of an epoch of `batches`; add into
    `totals`;
    return whether it ended an optimizer step (so the loop may stop after it).

    Every `parts.accumulate` batches make one optimizer step: each batch's loss is scaled by
    1 / (the batches in its group), so the step sees their mean gradient (the last group of an
    epoch may be smaller); clipping, the schedule and the EMA move once per optimizer step.
    No host sync: a non-finite loss is found at the next `synced_loss`.
    """
    model, a = parts.model, parts.arithmetic
    size, last = group_of(step, batches, parts.accumulate)
    target, counted = y, y
    if parts.mix is not None:  # class probabilities (or label vectors) mixed
        x, target = parts.mix(x, y, epoch, step)
        counted = target if parts.multi_label else target.argmax(1)  # the larger share's class
    if step % parts.accumulate == 0:
        parts.optimizer.zero_grad(set_to_none=True)
    with micro_step_context(model, last):
        with a.autocast():
            logits = model(x)  # (B, classes)
            loss = parts.loss_fn(logits.float(), target)
        a.scaler.scale(loss / size).backward()  # / 1 is exact: no accumulation, no change
    if last:
        optimizer_step(parts, totals)
    totals.add(loss, hits(logits, counted), step)
    return last


def settle(parts: StepParts, totals: Totals, epoch: int) -> None:
    """At a host sync (every SYNC_EVERY batches and at the epoch's end): raise Diverged on a
    non-finite loss; take back the steps fp16 skipped."""
    check_finite(totals, epoch)
    take_back_skipped_steps(parts, totals)


def optimizer_step(parts: StepParts, totals: Totals) -> None:
    """Clip, step, schedule and average: once per group of `parts.accumulate` batches."""
    optimizer, a = parts.optimizer, parts.arithmetic
    if parts.grad_clip:
        a.scaler.unscale_(optimizer)  # clip the true gradients, not the scaled ones
        nn.utils.clip_grad_norm_(parts.model.parameters(), parts.grad_clip)
    a.scaler.step(optimizer)  # fused under fp16: an overflowed step is skipped on the device
    skipped = skipped_step(a.scaler, optimizer)
    a.scaler.update()
    totals.lr = optimizer.param_groups[0]["lr"]
    parts.scheduler.step()
    if skipped is not None:
        totals.skipped += skipped
    if parts.ema is not None:
        parts.ema.update(skipped)


def skipped_step(scaler: torch.amp.GradScaler, optimizer) -> torch.Tensor | None:
    """1.0 on the device if the loss scaler made the optimizer skip this step (its gradients
    overflowed), else 0.0; None without loss scaling. Read before `scaler.update()`."""
    if not scaler.is_enabled():
        return None
    return sum(scaler._found_inf_per_device(optimizer).values()).clamp(max=1)


def take_back_skipped_steps(parts: StepParts, totals: Totals) -> None:
    """At a host sync: the schedule moved on the steps fp16 skipped since the last one; move it
    back, so the learning rate follows the steps really taken (lagging at most SYNC_EVERY)."""
    if parts.arithmetic.scaled and (skipped := int(totals.skipped.item())):
        parts.scheduler.take_back(skipped)
        totals.skipped.zero_()


def check_finite(totals: Totals, epoch: int) -> None:
    bad = int(totals.first_bad_step)
    if bad >= 0:
        raise Diverged(epoch, bad)
