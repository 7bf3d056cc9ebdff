"""`trainer.time_budget`: the budget's forms, the plan and its one re-plan, a real run that ends
within its budget with the schedule at its end value, and a resumed run that keeps its plan."""

import logging
from types import SimpleNamespace

import pytest
import torch

from cnntrain.config.rules import validate
from cnntrain.core.errors import UserError
from cnntrain.training.budget import NAME, TimeBudget, budget_seconds
from cnntrain.training.state import RunState
from tests.conftest import compose_config, make_image_folder, train_here

MIN_LR = 0.002  # the cosine schedule's end value in the runs here
FAULT = ("+callbacks.fault._target_=tests.faults.Fault", "+callbacks.fault.at=sigint-step:2:1")


@pytest.mark.parametrize(
    ("value", "seconds"), [("90s", 90), ("10m", 600), ("1.5h", 5400), (120, 120), ("45", 45)]
)
def test_a_budget_is_seconds_or_a_number_with_a_unit(value, seconds):
    assert budget_seconds(value) == seconds
    validate(compose_config(f"trainer.time_budget={value}", output_dir="unused"))


@pytest.mark.parametrize("value", ["10 min", "0", "-5s", "2d", "fast", "true"])
def test_another_budget_is_refused_in_one_line_naming_the_forms(value):
    with pytest.raises(UserError) as e:
        validate(compose_config(f"trainer.time_budget={value}", output_dir="unused"))
    message = str(e.value)
    assert message.startswith("trainer.time_budget=") and "'90s', '10m' or '1.5h'" in message
    assert "\n" not in message


def fake_loop(done: int = 1, epochs: int = 50) -> SimpleNamespace:
    """What TimeBudget reads of a Loop: 10 steps an epoch, 50 validation and 100 test images."""
    loop = SimpleNamespace(
        cfg=SimpleNamespace(trainer=SimpleNamespace(epochs=epochs, plots=False)),
        epochs=epochs, is_main=True, shared_eval=False, state=RunState(epoch=done), resized=[],
        data=SimpleNamespace(train=[None] * 10, val=SimpleNamespace(count=50),
                             test=SimpleNamespace(count=100)),
    )  # fmt: skip
    loop.parts = SimpleNamespace(
        accumulate=1, scheduler=SimpleNamespace(resize=loop.resized.append)
    )
    loop.stop = lambda reason: setattr(loop.state, "stopped_by", reason)
    return loop


def started(budget: TimeBudget, loop, used_s: float) -> TimeBudget:
    """`budget` as on_fit_start leaves it, having used `used_s` (s) of the run's time."""
    budget.on_fit_start(loop)
    budget.used_before_s = used_s
    return budget


def test_the_plan_fits_the_epochs_left_and_one_drift_re_plans_it():
    loop = fake_loop()
    budget = started(TimeBudget("100s"), loop, used_s=10)  # epoch 1 took 10 s
    # Reserve: the final test (1 s × 100/50 test/val images) and the calibration (1 s): 3 s.
    budget.judge(loop, 1, epoch_s=10, eval_s=1)
    budget.follow(loop)
    assert (budget.planned, loop.epochs, loop.resized) == (9, 9, [90])  # 1 + ⌊(100−10−3)/10⌋
    for epoch in (2, 3, 4, 5):  # 13 s each: a 30% drift, judged from half the plan (4.5) on
        budget.used_before_s += 13
        budget.judge(loop, epoch, epoch_s=13, eval_s=1)
    assert (budget.planned, budget.replanned, budget.pace_s) == (7, True, 13)  # 5 + ⌊35/13⌋
    budget.follow(loop)
    assert (loop.epochs, loop.resized[-1]) == (7, 70)
    loop.state.epoch = 7
    budget.follow(loop)
    assert loop.state.stopped_by == NAME  # the plan ends the run before trainer.epochs


def test_when_one_epoch_does_not_fit_the_run_stops_after_it_with_a_warning(caplog):
    loop = fake_loop()
    budget = started(TimeBudget(30), loop, used_s=40)
    with caplog.at_level(logging.WARNING, "cnntrain"):
        budget.judge(loop, 1, epoch_s=40, eval_s=1)
        budget.follow(loop)
    assert (budget.planned, loop.state.stopped_by) == (1, NAME)
    assert "time budget 30, planned: " in caplog.text and "over the budget" in caplog.text


def test_a_resumed_run_keeps_its_plan_unless_its_budget_changed():
    first = started(TimeBudget("100s"), fake_loop(), used_s=10)
    first.judge(fake_loop(), 1, epoch_s=10, eval_s=1)
    saved = first.state_dict()
    same, loop = TimeBudget("100s"), fake_loop(done=3)
    same.load_state_dict(saved)
    same.on_fit_start(loop)
    assert (loop.epochs, loop.resized, same.used_s() >= 10) == (9, [90], True)
    more, loop = TimeBudget("200s"), fake_loop(done=3)
    more.load_state_dict(saved)
    more.on_fit_start(loop)
    assert more.planned == 3 + (200 - 10 - 3) // 10  # from where it is, with the time used


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return make_image_folder(tmp_path_factory.mktemp("data") / "shapes", per_class=48)


def budget_run(root, budget: str, *extra: str, epochs: int = 50) -> tuple[str, ...]:
    return ("data=imagefolder", f"data.root={root}", "model=simplecnn", f"trainer.epochs={epochs}",
            f"trainer.time_budget={budget}", "data.batch_size=16", "scheduler=cosine",
            f"scheduler.min_lr={MIN_LR}", "scheduler.warmup_epochs=0", "logger=none",
            "trainer.plots=false", "trainer.device=cpu", "trainer.precision=32",
            *extra)  # fmt: skip


def saved_plan(run) -> tuple[dict, dict]:
    """checkpoints/last.pt's scheduler state and the time budget's."""
    last = torch.load(run / "checkpoints" / "last.pt", weights_only=True)
    return last["scheduler"], last["callbacks"][NAME]


def test_a_run_its_budget_ended_trains_on_when_resumed_without_one(folder, tmp_path):
    run = tmp_path / "run"
    first = train_here(*budget_run(folder, "0.001s", epochs=3), output_dir=run)
    assert (first["stopped_by"], first["epochs"]) == ("time_budget", 1)  # over it after epoch 1
    results = train_here("trainer.time_budget=null", output_dir=run, resume=run)
    assert (results["stopped_by"], results["epochs"]) == ("epochs", 3)
    assert results["time_budget_s"] is None
    # the schedule, resized to the plan's 1 epoch, restored for trainer.epochs, and ended
    scheduler = torch.load(run / "checkpoints" / "last.pt", weights_only=True)["scheduler"]
    assert scheduler["last_epoch"] == scheduler["total_steps"] == 3 * scheduler["steps_per_epoch"]


@pytest.mark.slow
def test_a_run_ends_within_its_budget_with_the_schedule_at_its_end(folder, tmp_path):
    results = train_here(*budget_run(folder, "2s"), output_dir=tmp_path / "run")
    scheduler, plan = saved_plan(tmp_path / "run")
    assert results["time_budget_s"] == 2 and results["planned_epochs"] == plan["planned"]
    assert results["epochs"] == results["planned_epochs"] < 50
    assert results["stopped_by"] == "time_budget"
    longest_epoch = max([plan["pace_s"], *plan["since_plan"]])  # s, as the run measured them
    assert results["budget_used_s"] <= 2 + longest_epoch
    steps = scheduler["steps_per_epoch"]
    assert scheduler["last_epoch"] == scheduler["total_steps"] == results["epochs"] * steps
    assert scheduler["_last_lr"][0] == pytest.approx(MIN_LR)


@pytest.mark.slow
def test_a_resumed_run_keeps_the_plan_and_the_whole_runs_budget(folder, tmp_path, caplog):
    run = tmp_path / "run"
    with pytest.raises(SystemExit):
        train_here(*budget_run(folder, "3s"), *FAULT, output_dir=run)
    _, before = saved_plan(run)
    with caplog.at_level(logging.INFO, "cnntrain"):
        results = train_here(output_dir=run, resume=run)
    scheduler, after = saved_plan(run)
    assert "re-planned on resume" not in caplog.text
    if not before["replanned"] and after["replanned"]:  # a drift re-planned it once, after resume
        assert "pace drifted" in caplog.text
    else:  # restored for its plan: the schedule was not re-planned for trainer.epochs
        assert "schedule re-planned" not in caplog.text
        assert results["planned_epochs"] == before["planned"]
    assert results["budget_used_s"] > before["used_s"] > 0
    assert scheduler["total_steps"] == results["planned_epochs"] * scheduler["steps_per_epoch"]
