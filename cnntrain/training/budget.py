"""`trainer.time_budget`: plan a run's epochs and its schedule's length to end within a time budget.

After the first whole epoch (training, its evaluation and the callbacks around them) the pace is
known: the run plans as many more epochs as fit in what is left of the budget, less a reserve for
the final test, the temperature's fit and the plots, and the learning-rate schedule is re-planned
to end at the plan's last step (schedules.py `resize`). From half the plan on, the mean pace of
the epochs since the plan is compared with the planned one; one drift of more than DRIFT
re-plans once more. The budget is the whole run's: a resumed run carries the time used so far
(saved in checkpoints as this callback's state) and keeps the plan, unless the budget or
`trainer.epochs` changed on resume, which re-plans from the time used.

The budget counts this callback's time: from the start of training (after loading data, building
the model and any torch.compile warm-up) to results.json, the final test and calibration
included, the plots and report not (the reserve holds room for them).
"""

import logging
import math
import re
import time

from cnntrain import distributed
from cnntrain.reporting.formats import duration
from cnntrain.training.events import Callback
from cnntrain.training.step import optimizer_steps

log = logging.getLogger("cnntrain")
NAME = "time_budget"  # the callback's name: in build_callbacks, checkpoints and results
UNITS = {"": 1, "s": 1, "m": 60, "h": 3600}  # seconds per unit of a budget such as "1.5h"
BUDGET = re.compile(r"(\d+(?:\.\d*)?|\.\d+)\s*([smh]?)")
DRIFT = 0.10  # relative change of the pace (s per epoch) that re-plans, once
PLOTS_SHARE, PLOTS_CAP_S = 0.10, 60.0  # the plots and report's reserve: 10% of the budget, ≤ 60 s
ALLOWED = "null (off), a number of seconds > 0, or a string like '90s', '10m' or '1.5h'"


def budget_seconds(value) -> float | None:
    """`trainer.time_budget` in seconds: None (off), a number of seconds, or a number with a unit
    s, m or h ('90s', '10m', '1.5h'). Raises ValueError for anything else."""
    if value is None:
        return None
    if isinstance(value, bool):
        raise ValueError(f"not a time budget: {value!r}")
    if isinstance(value, int | float):
        seconds = float(value)
    else:
        match = BUDGET.fullmatch(str(value).strip())
        if match is None:
            raise ValueError(f"not a time budget: {value!r}")
        seconds = float(match[1]) * UNITS[match[2]]
    if not math.isfinite(seconds) or seconds <= 0:
        raise ValueError(f"not a time budget: {value!r}")
    return seconds


def is_budget(value) -> bool:
    """Does `trainer.time_budget` accept `value`? (config/rules.py's rule)"""
    try:
        budget_seconds(value)
    except ValueError:
        return False
    return True


class TimeBudget(Callback):
    """Plans `loop.epochs` (at most `trainer.epochs`) and the schedule's length to end the run
    within `budget` (as `trainer.time_budget` gives it); stops it (`stopped_by: time_budget`) at
    the plan's last epoch when that comes before `trainer.epochs`. Rank 0 measures and plans;
    every rank follows its plan."""

    def __init__(self, budget):
        self.text = str(budget)  # as the config gives it ("10m"), for the log lines
        self.budget_s = budget_seconds(budget)
        self.planned: int | None = None  # epochs of the plan (None: not planned yet)
        self.planned_for: list | None = None  # [budget s, trainer.epochs] the plan was made for
        self.pace_s: float | None = None  # s per epoch the plan assumes
        self.reserve_s = 0.0  # s kept for the final test, calibration and plots
        self.since_plan: list[float] = []  # s of each whole epoch after the one that planned
        self.replanned = False
        self.used_before_s: float | None = None  # budget used by earlier processes of the run

    def on_fit_start(self, loop) -> None:
        self.started = self.mark = time.perf_counter()  # mark: the last epoch's end
        self.whole = loop.state.step == 0  # a resumed mid-epoch start does not time an epoch
        if self.used_before_s is None:  # no state: new, or resumed from a run without a budget
            self.used_before_s = loop.state.elapsed_s  # its training time, at least
        self.steps_per_epoch = optimizer_steps(len(loop.data.train), loop.parts.accumulate)
        if self.planned is None:
            return
        changed = self.planned_for != [self.budget_s, loop.cfg.trainer.epochs]
        if changed and loop.is_main:  # an unfinished epoch is one of the plan's
            self.plan(loop, loop.state.epoch + bool(loop.state.step), "re-planned on resume")
        self.follow(loop)

    def on_train_epoch_end(self, loop, epoch: int) -> None:
        self.evaluation_began = time.perf_counter()

    def on_epoch_end(self, loop, row: dict) -> None:
        now = time.perf_counter()
        epoch_s, eval_s = now - self.mark, now - self.evaluation_began
        if loop.is_main and self.whole:
            self.judge(loop, row["epoch"], epoch_s, eval_s)
        self.mark, self.whole = now, True
        self.follow(loop)

    def judge(self, loop, epoch: int, epoch_s: float, eval_s: float) -> None:
        """Plan after the first whole epoch; from half the plan on, re-plan once on a drift."""
        if self.planned is None:
            self.pace_s, self.reserve_s = epoch_s, self.reserve(loop, eval_s)
            self.plan(loop, epoch, "planned")
            return
        self.since_plan.append(epoch_s)
        pace = sum(self.since_plan) / len(self.since_plan)
        drift = pace / self.pace_s - 1
        if not self.replanned and epoch >= self.planned / 2 and abs(drift) > DRIFT:
            self.pace_s, self.replanned = pace, True
            self.plan(loop, epoch, f"re-planned (the pace drifted by {drift:+.0%})")

    def reserve(self, loop, eval_s: float) -> float:
        """Seconds for what follows the last epoch: the final test (the validation's time scaled
        by the test/validation sizes; none when validation ran on the test split, whose outputs
        it reuses), the temperature's fit (one more validation) and, with `trainer.plots`, the
        plots and report (PLOTS_SHARE of the budget, at most PLOTS_CAP_S)."""
        evaluations = 0.0
        if not loop.shared_eval:
            evaluations = eval_s * (loop.data.test.count / max(1, loop.data.val.count) + 1)
        plots = min(PLOTS_SHARE * self.budget_s, PLOTS_CAP_S) if loop.cfg.trainer.plots else 0.0
        return evaluations + plots

    def plan(self, loop, done: int, how: str) -> None:
        """Plan the epochs that fit what is left of the budget after `done` epochs."""
        most = loop.cfg.trainer.epochs
        left = self.budget_s - self.used_s() - self.reserve_s
        more = math.floor(left / self.pace_s) if left > 0 else 0
        self.planned = min(most, done + more)
        self.planned_for = [self.budget_s, most]
        if left < 0 and done == self.planned:
            log.warning(
                "time budget %s, %s: %d epoch(s) and the final test and report (~%s) take %s, "
                "over the budget: training stops here (give trainer.time_budget more time, or "
                "train a smaller model or data.max_train_samples)", self.text, how, done,
                duration(self.reserve_s), duration(self.used_s() + self.reserve_s),
            )  # fmt: skip
            return
        log.info(
            "time budget %s, %s: %d of at most %d epochs, ~%s each (%s used; the final test "
            "and report ~%s)", self.text, how, self.planned, most, duration(self.pace_s),
            duration(self.used_s()), duration(self.reserve_s),
        )  # fmt: skip

    def follow(self, loop) -> None:
        """Every rank takes rank 0's plan: the loop's epochs, the schedule's length, the stop."""
        self.planned = distributed.from_main(self.planned)
        if self.planned is None:
            return
        if loop.epochs != self.planned:
            loop.epochs = self.planned
            loop.parts.scheduler.resize(self.planned * self.steps_per_epoch)
        ends_early = self.planned < loop.cfg.trainer.epochs
        if ends_early and loop.state.epoch >= self.planned and loop.state.stopped_by is None:
            loop.stop(NAME)

    def used_s(self) -> float:
        """Seconds of the budget used so far, by this process and the run's earlier ones."""
        return self.used_before_s + time.perf_counter() - self.started

    def state_dict(self) -> dict:
        return {
            "planned": self.planned,
            "planned_for": self.planned_for,
            "pace_s": self.pace_s,
            "reserve_s": self.reserve_s,
            "since_plan": self.since_plan,
            "replanned": self.replanned,
            "used_s": self.used_s(),
        }

    def load_state_dict(self, state: dict) -> None:
        self.planned, self.planned_for = state["planned"], state["planned_for"]
        self.pace_s, self.reserve_s = state["pace_s"], state["reserve_s"]
        self.since_plan, self.replanned = list(state["since_plan"]), state["replanned"]
        self.used_before_s = state["used_s"]


def resumed_epochs(saved: dict, cfg) -> int:
    """The epochs a resumed run's schedule is restored for: the saved run's time-budget plan when
    it followed one and still has a budget (at most `trainer.epochs`), else `trainer.epochs`."""
    plan = (saved.get("callbacks") or {}).get(NAME, {}).get("planned")
    if cfg.trainer.get("time_budget") is None or plan is None:
        return cfg.trainer.epochs
    return min(plan, cfg.trainer.epochs)


def budget_results(loop) -> dict:
    """results.json's time-budget fields, null when `trainer.time_budget` is off: the budget
    (s), the epochs of the plan followed and the budget used up to results.json (s)."""
    budget = loop.callbacks.get(NAME)
    if budget is None:
        return {"time_budget_s": None, "planned_epochs": None, "budget_used_s": None}
    return {
        "time_budget_s": budget.budget_s,
        "planned_epochs": budget.planned,
        "budget_used_s": round(budget.used_s(), 3),
    }
