"""Learning-rate schedules, stepped once per optimizer step and planned over the whole run; a
resumed run given another length follows the plan made for that length from where it is
(`resize`, as timm does)."""

import logging
import math

from torch.optim import lr_scheduler

log = logging.getLogger(__name__)


class Schedule(lr_scheduler.LRScheduler):
    """A learning rate per optimizer step, `rate(base_lr, step)` over a plan of `total_steps`
    steps; subclasses give `rate`. Everything here is plain numbers, so the state dict loads
    with `weights_only=True`.
    """

    name = ""
    runs_to_an_end = False  # the rate depends on the run's length (cosine, one-cycle)

    def __init__(self, optimizer, *, total_steps: int, steps_per_epoch: int, warmup_epochs=0.0):
        self.total_steps = total_steps  # optimizer steps in the whole run
        self.steps_per_epoch = steps_per_epoch
        self.warmup_epochs = warmup_epochs
        self.warmup_steps = self.fitted_warmup()
        super().__init__(optimizer)

    def fitted_warmup(self) -> int:
        """`warmup_epochs` in steps, at most half of the run: a warm-up as long as the run would
        end it at the peak learning rate, never decayed (said in one line)."""
        wanted = round(self.warmup_epochs * self.steps_per_epoch)
        steps = min(wanted, self.total_steps // 2)
        if steps < wanted:
            log.info(  # info: the default 1-epoch warm-up meets every 1-epoch run
                "scheduler.warmup_epochs=%g does not fit a run of %g epoch(s): warming up over "
                "its first half (%d of its %d steps) instead", self.warmup_epochs,
                self.total_steps / self.steps_per_epoch, steps, self.total_steps,
            )  # fmt: skip
        return steps

    def get_lr(self) -> list[float]:
        return [self.rate(base, float(self.last_epoch)) for base in self.base_lrs]

    def warmup_factor(self, step: float) -> float:
        """Linear ramp from 1/W to 1 over the W warm-up steps (torch's LinearLR), then 1."""
        w = self.warmup_steps
        return 1.0 if step >= w else 1 / w + (1 - 1 / w) * step / w

    def resize(self, total_steps: int) -> None:
        """On resume with another `trainer.epochs`: the run now has `total_steps` steps and
        follows the plan made for that length from where it is, as timm does. A schedule that
        runs to an end (cosine, one-cycle) thus changes its rate at this step once, said in one
        line; then it decays over the added epochs to its end value at the new last step (a
        finished run given more epochs trains them, rather than staying at the end value).
        Step and constant schedules go on as a longer run would."""
        if total_steps == self.total_steps:
            return
        was, planned = self.get_lr()[0], self.total_steps
        self.total_steps = total_steps
        self.warmup_steps = self.fitted_warmup()
        self.apply_rates()
        if self.runs_to_an_end:
            log.info(
                "%s schedule re-planned for %d steps (was %d): at step %d the learning rate "
                "goes from %.3g to %.3g, then decays to its end at the new last step",
                self.name, total_steps, planned, self.last_epoch, was,
                self._last_lr[0],
            )  # fmt: skip

    def take_back(self, steps: int) -> None:
        """The optimizer skipped the last `steps` of the steps counted (fp16 overflows): count
        them out, so the plan follows the steps taken, and set the learning rates again."""
        self.last_epoch -= steps
        self.apply_rates()

    def apply_rates(self) -> None:
        """Set the optimizer's learning rates to the plan's at the current step."""
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
    runs_to_an_end = True

    def __init__(self, optimizer, *, min_lr: float = 0.0, **schedule):
        self.min_lr = min_lr
        super().__init__(optimizer, **schedule)

    def rate(self, base: float, step: float) -> float:
        if step < self.warmup_steps:
            return base * self.warmup_factor(step)
        span = max(1, self.total_steps - self.warmup_steps)  # torch's T_max after warm-up
        done = (step - self.warmup_steps) / span
        return self.min_lr + (base - self.min_lr) * (1 + math.cos(math.pi * done)) / 2


class OneCycle(Schedule):
    """One-cycle (Smith 2018), as torch's OneCycleLR without momentum cycling: from lr/div_factor
    up to lr over `pct_start` of the run, then down to lr/(div_factor·final_div_factor)."""

    name = "onecycle"
    runs_to_an_end = True

    def __init__(
        self, optimizer, *, pct_start, div_factor, final_div_factor, anneal_strategy, **schedule
    ):
        self.pct_start, self.div_factor = pct_start, div_factor
        self.final_div_factor, self.anneal_strategy = final_div_factor, anneal_strategy
        super().__init__(optimizer, **schedule)

    def rate(self, base: float, step: float) -> float:
        start, end = base / self.div_factor, base / (self.div_factor * self.final_div_factor)
        peak_step = self.pct_start * self.total_steps - 1  # torch's phase boundary
        if step <= peak_step:
            return self.anneal(start, base, step / max(peak_step, 1e-9))
        last = self.total_steps - 1
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
