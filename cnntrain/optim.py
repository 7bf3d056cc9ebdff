"""Optimizers and learning-rate schedules, both built from config as Hydra `_target_` + `_partial_`.

Every schedule is stepped once per optimizer step, so StepLR's `step_size` epochs become
`step_size × steps_per_epoch` steps (the article's per-epoch StepLR, the same lr per epoch), and
cosine and one-cycle change smoothly every step. A schedule that runs to an end (cosine,
one-cycle) is planned over the whole run; when a resumed run is given more epochs, `resize`
stretches what is left of the plan over the new length: the next step's learning rate is the one
the old plan gave, and the end value is reached at the new last step (no jump, no warm-up again).
"""

import inspect
import logging
import math

from hydra.utils import get_class, instantiate
from omegaconf import OmegaConf
from torch import nn
from torch.optim import Optimizer, lr_scheduler

from cnntrain.core.errors import UserError
from cnntrain.models.head import head_parameter_names

log = logging.getLogger(__name__)
# BatchNorm*, SyncBatchNorm and InstanceNorm* all derive from _NormBase (no public base class).
NORM_LAYERS = (nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm)


def build_optimizer(optimizer_cfg, model: nn.Module, fused: bool = False) -> Optimizer:
    """The optimizer `optimizer_cfg` names, over the trainable parameters (frozen ones stay out:
    no update, no weight decay).

    With `norm_lr_scale` ≠ 1, normalization layers' parameters form a second group at
    `lr × norm_lr_scale` and `weight_decay / norm_lr_scale` (the same shrinkage per step): with a
    frozen BN scale (FastNet) the shifts must move fast, as in the public CIFAR-10 speed runs.
    With `head_lr_scale` ≠ 1, the classification head (models/head.py) forms the last group at
    `lr × head_lr_scale`, weight decay unchanged: a new head on a pretrained body learns faster.
    Group 0 always holds the rest (it may be empty, as with model.freeze=backbone).
    `fused`: the fused implementation, where the class has one (fp16 needs it: engine.py).
    """
    options = OmegaConf.to_container(optimizer_cfg)
    norm_scale = options.pop("norm_lr_scale", 1.0)
    head_scale = options.pop("head_lr_scale", 1.0)
    lr, decay = options["lr"], options.get("weight_decay", 0.0)
    trainable = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    head = head_parameter_names(model) if head_scale != 1.0 else set()
    norm = set()
    if norm_scale != 1.0:
        norm = {
            id(p) for m in model.modules() if isinstance(m, NORM_LAYERS) for p in m.parameters()
        }
    groups = [{"params": [p for n, p in trainable if n not in head and id(p) not in norm]}]
    if norm_scale != 1.0:
        in_norm = [p for n, p in trainable if n not in head and id(p) in norm]
        groups.append(
            {"params": in_norm, "lr": lr * norm_scale, "weight_decay": decay / norm_scale}
        )
    if head_scale != 1.0:
        groups.append({"params": [p for n, p in trainable if n in head], "lr": lr * head_scale})
    # _convert_="all": plain lists (betas) in param_groups, so checkpoints load weights_only.
    build = instantiate(options, _convert_="all")
    if fused and "fused" in inspect.signature(build.func).parameters:
        return build(groups, fused=True)
    return build(groups)


def build_scheduler(scheduler_cfg, optimizer: Optimizer, epochs: int, steps_per_epoch: int):
    """The schedule `scheduler_cfg` names (its `_target_`), planned over `epochs` epochs."""
    options = OmegaConf.to_container(scheduler_cfg)
    options.pop("name", None)  # the option's name, for people and sweep tables
    make = instantiate(options, _convert_="all")
    return make(optimizer, total_steps=epochs * steps_per_epoch, steps_per_epoch=steps_per_epoch)


def check_scheduler_name(scheduler_cfg) -> None:
    """`scheduler.name` must be the name of the class `scheduler._target_` builds."""
    built = getattr(get_class(scheduler_cfg._target_), "name", None)
    if scheduler_cfg.get("name", built) != built:
        raise UserError(
            f"scheduler.name={scheduler_cfg.name!r} does not match scheduler._target_ "
            f"({scheduler_cfg._target_}, a {built!r} schedule); choose one with scheduler=OPTION"
        )


class Schedule(lr_scheduler.LRScheduler):
    """A learning rate per optimizer step, `rate(base_lr, planned_step)`; subclasses give `rate`.

    `planned_step` is where in its plan of `planned_steps` steps the run is. It equals the step
    count until `resize` stretches the rest of a run (`stretches`: schedules that run to an end).
    Everything here is plain numbers, so the state dict loads with `weights_only=True`.
    """

    name = ""
    stretches = False

    def __init__(self, optimizer, *, total_steps: int, steps_per_epoch: int, warmup_epochs=0.0):
        self.total_steps = total_steps  # optimizer steps in the whole run
        self.planned_steps = total_steps  # steps the plan was made for
        self.anchor = (0, 0.0)  # (step, planned step): steps after it map linearly to the end
        self.warmup_steps = min(total_steps - 1, round(warmup_epochs * steps_per_epoch))
        self.steps_per_epoch = steps_per_epoch
        super().__init__(optimizer)

    def planned_step(self, step: int) -> float:
        if not self.stretches:
            return float(step)
        start, planned = self.anchor  # then the last step of the run is the plan's last step
        left = self.total_steps - 1 - start
        return planned + (step - start) * (self.planned_steps - 1 - planned) / max(1, left)

    def get_lr(self) -> list[float]:
        step = self.planned_step(self.last_epoch)
        return [self.rate(base, step) for base in self.base_lrs]

    def warmup_factor(self, step: float) -> float:
        """Linear ramp from 1/W to 1 over the W warm-up steps (torch's LinearLR), then 1."""
        w = self.warmup_steps
        return 1.0 if step >= w else 1 / w + (1 - 1 / w) * step / w

    def resize(self, total_steps: int) -> None:
        """On resume with another `trainer.epochs`: the run now has `total_steps` steps."""
        if total_steps == self.total_steps:
            return
        step = self.last_epoch
        if self.stretches:
            self.anchor = (step, self.planned_step(step))
            log.info(
                "%s schedule stretched: from step %d it reaches its end at step %d instead of %d",
                self.name, step, total_steps, self.total_steps,
            )  # fmt: skip
        self.total_steps = total_steps

    def take_back(self, steps: int) -> None:
        """The optimizer skipped the last `steps` of the steps counted (fp16 overflows): count
        them out, so the plan follows the steps taken, and set the learning rates again."""
        self.last_epoch -= steps
        self._last_lr = self.get_lr()
        for group, lr in zip(self.optimizer.param_groups, self._last_lr, strict=True):
            group["lr"] = lr

    def rate(self, base: float, step: float) -> float:
        raise NotImplementedError


class Constant(Schedule):
    """The optimizer's lr throughout, after the optional warm-up."""

    name = "none"

    def rate(self, base: float, step: float) -> float:
        return base * self.warmup_factor(step)


class Step(Schedule):
    """The article's StepLR: lr × gamma every `step_size` epochs (counted after the warm-up)."""

    name = "step"

    def __init__(self, optimizer, *, step_size: int, gamma: float, **schedule):
        self.step_size, self.gamma = step_size, gamma  # epochs, factor
        super().__init__(optimizer, **schedule)

    def rate(self, base: float, step: float) -> float:
        if step < self.warmup_steps:
            return base * self.warmup_factor(step)
        decays = (step - self.warmup_steps) // (self.step_size * self.steps_per_epoch)
        return base * self.gamma**decays


class Cosine(Schedule):
    """Warm-up, then cosine decay from the optimizer's lr to `min_lr` at the run's last step."""

    name = "cosine"
    stretches = True

    def __init__(self, optimizer, *, min_lr: float = 0.0, **schedule):
        self.min_lr = min_lr
        super().__init__(optimizer, **schedule)

    def rate(self, base: float, step: float) -> float:
        if step < self.warmup_steps:
            return base * self.warmup_factor(step)
        span = max(1, self.planned_steps - self.warmup_steps)  # torch's T_max after warm-up
        done = (step - self.warmup_steps) / span
        return self.min_lr + (base - self.min_lr) * (1 + math.cos(math.pi * done)) / 2


class OneCycle(Schedule):
    """One-cycle (Smith 2018), as torch's OneCycleLR without momentum cycling: from lr/div_factor
    up to lr over `pct_start` of the run, then down to lr/(div_factor·final_div_factor)."""

    name = "onecycle"
    stretches = True

    def __init__(
        self, optimizer, *, pct_start, div_factor, final_div_factor, anneal_strategy, **schedule
    ):
        self.pct_start, self.div_factor = pct_start, div_factor
        self.final_div_factor, self.anneal_strategy = final_div_factor, anneal_strategy
        super().__init__(optimizer, **schedule)

    def rate(self, base: float, step: float) -> float:
        start, end = base / self.div_factor, base / (self.div_factor * self.final_div_factor)
        peak_step = self.pct_start * self.planned_steps - 1  # torch's phase boundary
        if step <= peak_step:
            return self.anneal(start, base, step / max(peak_step, 1e-9))
        last = self.planned_steps - 1
        return self.anneal(base, end, (step - peak_step) / max(last - peak_step, 1e-9))

    def anneal(self, start: float, end: float, done: float) -> float:
        done = min(1.0, max(0.0, done))
        if self.anneal_strategy == "linear":
            return start + (end - start) * done
        return end + (start - end) * (1 + math.cos(math.pi * done)) / 2


class Triangle(OneCycle):
    """airbench's linear warm-up and decay: from lr × `start_factor` up to lr over `pct_start` of
    the run, then down to lr × `end_factor` at its last step (a linear one-cycle, in factors)."""

    name = "triangle"

    def __init__(self, optimizer, *, start_factor, pct_start, end_factor, **schedule):
        super().__init__(optimizer, pct_start=pct_start, div_factor=1 / start_factor,
                         final_div_factor=start_factor / end_factor, anneal_strategy="linear",
                         **schedule)  # fmt: skip
