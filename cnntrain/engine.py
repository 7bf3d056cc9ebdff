"""Training and evaluation loops, and the arithmetic they run in (precision, EMA, TTA).

Losses and accuracies accumulate on the device and are read once per epoch; the only other
host sync is a finite-loss check every SYNC_EVERY steps (it also refreshes the progress bar).
"""

import contextlib
import copy
import logging
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import nn

from cnntrain import distributed
from cnntrain.core.device import native_bf16
from cnntrain.models.fold import folded
from cnntrain.models.freeze import train_mode
from cnntrain.reporting.progress import progress_bar
from cnntrain.training.mixing import BatchMix

log = logging.getLogger("cnntrain")
SYNC_EVERY = 50  # steps between host reads of the running loss


class Diverged(Exception):
    """The loss became NaN or infinite."""

    def __init__(self, epoch: int, step: int):
        super().__init__(f"loss is not finite at epoch {epoch}, step {step}")
        self.epoch, self.step = epoch, step


def autocast_dtype(
    precision, device: torch.device, hazard: str | None = None
) -> torch.dtype | None:
    """The autocast dtype for `trainer.precision`, None for plain fp32. `hazard`: a convolution
    whose bf16 weight gradient the CPU computes wrongly (bf16_gradient_hazard): `auto` trains it
    in fp32 instead, an explicit `bf16` is warned about."""
    precision = str(precision)
    if precision == "auto":
        if not native_bf16(device):
            return None
        if device.type == "cpu" and hazard:
            log.warning("precision auto: float32, not bf16: %s", hazard_line(hazard))
            return None
        return torch.bfloat16
    if precision == "bf16" and device.type == "cpu" and hazard:
        log.warning(
            "trainer.precision=bf16: %s; trainer.precision=32 avoids it", hazard_line(hazard)
        )
    return {"32": None, "tf32": None, "bf16": torch.bfloat16, "16": torch.float16}[precision]


def hazard_line(conv: str) -> str:
    return (
        f"convolution {conv} is strided over an input narrower than its stride, where oneDNN's "
        "bf16 weight gradient on CPUs returns garbage (measured with torch 2.14.1)"
    )


@torch.no_grad()
def bf16_gradient_hazard(model: nn.Module, shape: tuple[int, int, int]) -> str | None:
    """The first Conv2d of `model` (on an input of `shape` (C, H, W)) whose bf16 weight gradient
    oneDNN gets wrong on CPUs, or None. Measured with torch 2.14.1 on an AVX512-BF16 CPU: when a
    kernel wider than 1 px strides over an input side shorter than the stride (ResNet's last
    stage on 16 px images), the gradient entries that see only padding come back as garbage
    (up to 1e28) in most steps; fp32 and wider inputs are exact."""
    found = []

    def check(name):
        def hook(conv, args):
            sides, kernel, stride = args[0].shape[-2:], conv.kernel_size, conv.stride
            if any(k > 1 and s > n for n, k, s in zip(sides, kernel, stride, strict=True)):
                found.append(name)

        return hook

    convs = [(n, m) for n, m in model.named_modules() if isinstance(m, nn.Conv2d)]
    hooks = [m.register_forward_pre_hook(check(n)) for n, m in convs]
    was_training = model.training
    try:
        model.eval()(torch.zeros(1, *shape, device=next(model.parameters()).device))
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)
    return found[0] if found else None


def set_cuda_math(precision, device: torch.device) -> None:
    """On a GPU: cuDNN benchmarks its convolution algorithms once per shape and keeps the fastest
    (a run's shapes are fixed); fp32 matmuls and convolutions (outside autocast) use TF32 — a
    10-bit mantissa on tensor cores — except under `trainer.precision=32`, which is IEEE fp32."""
    if device.type != "cuda":
        return
    torch.backends.cudnn.benchmark = True
    mode = "ieee" if str(precision) == "32" else "tf32"
    torch.backends.cuda.matmul.fp32_precision = mode
    torch.backends.cudnn.conv.fp32_precision = mode


@dataclass
class Arithmetic:
    """How steps compute: autocast dtype, fp16 loss scaling, test-time views at evaluation."""

    device: torch.device
    dtype: torch.dtype | None
    tta: bool | str = False  # trainer.tta: model_logits' views
    scaler: torch.amp.GradScaler = field(init=False)

    def __post_init__(self):
        # Loss scaling keeps small fp16 gradients from flushing to zero; bf16 has fp32's range.
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.scaled)

    @classmethod
    def for_trainer(cls, trainer, device: torch.device, hazard: str | None = None) -> "Arithmetic":
        """As `trainer.precision` and `trainer.tta` say, on `device` (set_cuda_math too);
        `hazard`: see autocast_dtype."""
        set_cuda_math(trainer.precision, device)
        return cls(device, autocast_dtype(trainer.precision, device, hazard), trainer.tta)

    @property
    def scaled(self) -> bool:
        """fp16: losses are scaled, and the optimizer must be a fused one, which skips a step
        whose gradients overflowed on the device (GradScaler otherwise reads a flag per step)."""
        return self.dtype == torch.float16

    def autocast(self):
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.dtype)


class EMA:
    """Exponential moving average of a model's weights and BatchNorm statistics.

    Not torch.optim.swa_utils.AveragedModel: that reads a device counter every step (a host
    sync) and has no warmup. Here the decay ramps as (1+n)/(10+n) up to `decay`, so the
    average is not dominated by the random initial weights in short runs.
    """

    def __init__(self, model: nn.Module, decay: float):
        self.module = copy.deepcopy(model).eval().requires_grad_(False)
        self.decay, self.updates = decay, 0
        pairs = list(
            zip(self.module.state_dict().values(), model.state_dict().values(), strict=True)
        )
        self.floats = [(e, m) for e, m in pairs if e.is_floating_point()]
        self.counters = [(e, m) for e, m in pairs if not e.is_floating_point()]  # BN batch counts

    @torch.no_grad()
    def update(self, skipped: torch.Tensor | None = None) -> None:
        """Move towards the model's weights; `skipped` (0-dim, on the device): 1 when the
        optimizer skipped this step (fp16 overflow), which then moves nothing, with no sync."""
        self.updates += 1
        decay = min(self.decay, (1 + self.updates) / (10 + self.updates))
        ema, current = zip(*self.floats, strict=True)
        weight = 1 - decay if skipped is None else (1 - skipped) * (1 - decay)
        torch._foreach_lerp_(list(ema), list(current), weight)
        for e, m in self.counters:
            e.copy_(m)

    def state_dict(self) -> dict:
        return {"weights": self.module.state_dict(), "updates": self.updates}

    def load_state_dict(self, state: dict) -> None:
        self.module.load_state_dict(state["weights"])
        self.updates = state["updates"]


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

    def add(self, loss: torch.Tensor, logits: torch.Tensor, y: torch.Tensor, step: int) -> None:
        n = len(y)
        self.loss += loss.detach().double() * n
        self.correct += (logits.argmax(1) == y).sum()
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


def train_one_epoch(
    parts: StepParts,
    loader,
    epoch: int,
    totals: Totals,
    start: int = 0,
    *,
    stop_requested: Callable[[], bool] = lambda: False,
    on_batch_start: Callable[[int], None] = lambda step: None,
    on_sync: Callable[[int, float, float], None] = lambda step, loss, lr: None,
    progress=False,
) -> int:
    """Train over `loader` from batch `start`; add into `totals`; return the next batch index.

    Every `parts.accumulate` batches make one optimizer step: each batch's loss is scaled by
    1 / (the batches in its group), so the step sees their mean gradient (the last group of an
    epoch may be smaller); clipping, the schedule and the EMA move once per optimizer step.
    `on_batch_start(step)` runs before each batch (no host sync); every SYNC_EVERY batches the
    running mean loss is read once and passed on with the lr as `on_sync(step, loss, lr)`.
    Returns early, at the end of the current optimizer step, when `stop_requested()` turns true
    (so `start` is always a group's first batch). Raises Diverged on a non-finite loss, before
    returning in either case: what returns is finite.
    """
    model, a = parts.model, parts.arithmetic
    train_mode(model)  # frozen BatchNorm layers stay in eval mode (models/freeze.py)
    batches, step = len(loader), start
    with progress_bar(batches, f"epoch {epoch}", progress, start) as bar:
        for step, (x, y) in enumerate(loader.batches(epoch, start), start):
            on_batch_start(step)
            size, last = group_of(step, batches, parts.accumulate)
            target, counted = y, y
            if parts.mix is not None:  # class probabilities; accuracy against the larger share
                x, target = parts.mix(x, y, epoch, step)
                counted = target.argmax(1)
            if step % parts.accumulate == 0:
                parts.optimizer.zero_grad(set_to_none=True)
            with micro_step_context(model, last):
                with a.autocast():
                    logits = model(x)  # (B, classes)
                    loss = parts.loss_fn(logits.float(), target)
                a.scaler.scale(loss / size).backward()  # / 1 is exact: no accumulation, no change
            if last:
                optimizer_step(parts, totals)
            totals.add(loss, logits, counted, step)
            bar.update()
            if (step + 1) % SYNC_EVERY == 0:
                check_finite(totals, epoch)
                take_back_skipped_steps(parts, totals)
                running = totals.loss.item() / totals.count
                bar.set_postfix(loss=f"{running:.3f}")
                on_sync(step, running, totals.lr)
            if last and stop_requested():
                break
    check_finite(totals, epoch)
    take_back_skipped_steps(parts, totals)
    return step + 1


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


def model_logits(model: nn.Module, x: torch.Tensor, tta: bool | str = False) -> torch.Tensor:
    """(B, classes) float32 logits of a batch (B, C, H, W), averaged over test-time views.

    tta=True: the mean of those of each image and of its left-right mirror. "flip_translate"
    (airbench's level 2): that pair's mean weighted 1/2, and 1/4 each the pair's mean of the
    image moved 1 px diagonally either way (down-right and up-left, reflect-padded): six views."""
    if tta == "flip_translate":
        h, w = x.shape[-2:]
        padded = nn.functional.pad(x, (1, 1, 1, 1), mode="reflect")  # (B, C, H+2, W+2)
        moved = [padded[..., :h, :w], padded[..., 2:, 2:]]
        shifted = sum(model_logits(model, m, True) for m in moved) / 2
        return (model_logits(model, x, True) + shifted) / 2
    logits = model(x).float()
    if tta:  # a mirrored image is as likely as the image itself
        logits = (logits + model(x.flip(-1)).float()) / 2
    return logits


@torch.no_grad()
def evaluate(
    model: nn.Module,
    loader,
    arithmetic: Arithmetic,
    progress=False,
    desc="eval",
    keep_outputs=False,
) -> dict:
    """Mean cross-entropy and accuracy of `model` on `loader`, in eval mode, without gradients.

    With several processes each evaluates its shard and the sums are added over ranks: every
    image counts once (a shard's padding has target distributed.IGNORED, which cross_entropy
    ignores and no prediction matches). With keep_outputs, also returns `logits` (N, classes)
    and `targets` (N,) on the CPU, in the split's order: on rank 0 only (None on the others).
    """
    was_training = model.training
    model.eval()  # BatchNorm uses its running statistics, Dropout is off
    net = folded(model)  # each BatchNorm folded into its convolution (a copy): ~7% faster
    sums = torch.zeros(3, dtype=torch.float64, device=arithmetic.device)  # loss, correct, images
    outputs, targets = [], []
    with progress_bar(len(loader), desc, progress) as bar:
        for x, y in loader.batches():
            with arithmetic.autocast():
                logits = model_logits(net, x, arithmetic.tta)
            loss = nn.functional.cross_entropy(logits, y, reduction="sum")  # padding ignored
            correct, images = (logits.argmax(1) == y).sum(), (y != distributed.IGNORED).sum()
            sums += torch.stack([loss.double(), correct.double(), images.double()])
            if keep_outputs:
                outputs.append(logits)
                targets.append(y)
            bar.update()
    model.train(was_training)
    loss, correct, count = distributed.sum_over_ranks(sums).tolist()  # one host sync
    result = {"loss": loss / max(1, count), "acc": correct / max(1, count), "count": int(count)}
    if keep_outputs:
        result["logits"], result["targets"] = gathered_outputs(outputs, targets)
    return result


def gathered_outputs(outputs: list, targets: list) -> tuple:
    """Every rank's per-batch logits and targets, on rank 0 in the split's order, padding
    dropped, on the CPU; (None, None) on the other ranks."""
    logits, targets = distributed.gather_in_order(outputs), distributed.gather_in_order(targets)
    if logits is None:
        return None, None
    real = targets != distributed.IGNORED
    return logits[real].cpu(), targets[real].cpu()
