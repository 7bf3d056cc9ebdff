"""Learning-rate schedules: each option's shape, and a resumed run given more epochs follows the
plan made for its new length from where it is (timm's rule): its added epochs train, decaying
to the end value at the new last step, with no second warm-up."""

import io
import itertools
import logging

import pytest
import torch

from cnntrain.training.optim import build_optimizer, build_scheduler
from tests.conftest import compose_config, make_image_folder, read_jsonl, train_here

STEPS = 10  # optimizer steps per epoch


def schedule(option: str, epochs: int, *overrides: str):
    cfg = compose_config(f"scheduler={option}", "optimizer.lr=0.1", *overrides)
    optimizer = build_optimizer(cfg.optimizer, torch.nn.Linear(2, 2))
    return optimizer, build_scheduler(cfg.scheduler, optimizer, epochs, STEPS)


def rates(optimizer, scheduler, steps: int) -> list[float]:
    """The lr each of the next `steps` optimizer steps uses."""
    used = []
    for _ in range(steps):
        used.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    return used


def resumed(option: str, first_epochs: int, done: int, epochs: int, *overrides: str):
    """A run of `first_epochs` checkpointed after `done` steps, resumed with `epochs`: the lrs of
    the steps before and after the checkpoint."""
    optimizer, scheduler = schedule(option, first_epochs, *overrides)
    before = rates(optimizer, scheduler, done)
    buffer = io.BytesIO()
    torch.save({"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict()}, buffer)
    buffer.seek(0)
    saved = torch.load(buffer, weights_only=True)  # as a checkpoint is loaded
    optimizer, scheduler = schedule(option, epochs, *overrides)  # rebuilt for the new length
    optimizer.load_state_dict(saved["optimizer"])
    scheduler.load_state_dict(saved["scheduler"])
    scheduler.resize(epochs * STEPS)
    return before, rates(optimizer, scheduler, epochs * STEPS - done)


@pytest.mark.parametrize("option", ["cosine", "onecycle", "triangle"])
@pytest.mark.parametrize("done", [15, 2 * STEPS])  # stopped in epoch 2 of 2, or finished
def test_a_longer_resumed_run_follows_the_plan_for_its_new_length(option, done, caplog):
    _, short = schedule(option, 2)
    _, long = schedule(option, 4)
    planned = rates(long.optimizer, long, 4 * STEPS)
    with caplog.at_level(logging.INFO):
        before, after = resumed(option, first_epochs=2, done=done, epochs=4)
    assert before == pytest.approx(rates(short.optimizer, short, 2 * STEPS)[:done])
    assert after == pytest.approx(planned[done:])  # the 4-epoch plan, from where the run is
    assert after[0] > 0.2 * max(planned)  # the added epochs train…
    assert all(b <= a + 1e-12 for a, b in itertools.pairwise(after))  # …decaying, no warm-up
    assert f"re-planned for {4 * STEPS} steps (was {2 * STEPS}): at step {done}" in caplog.text


def test_a_warm_up_longer_than_half_the_run_is_cut_to_half_of_it(caplog):
    with caplog.at_level(logging.INFO):
        optimizer, scheduler = schedule("cosine", 2, "scheduler.warmup_epochs=5")
    used = rates(optimizer, scheduler, 2 * STEPS)
    assert scheduler.warmup_steps == STEPS and max(used) == pytest.approx(0.1)
    assert used[-1] < 0.01  # the run ends decayed, not at the peak learning rate
    assert (
        "warmup_epochs=5 does not fit a run of 2 epoch(s): warming up over its first half "
        "(10 of its 20 steps)" in caplog.text
    )


@pytest.mark.parametrize("option", ["step", "none"])
def test_schedules_without_an_end_continue_as_a_longer_run_would(option):
    overrides = ("scheduler.step_size=1", "scheduler.warmup_epochs=1") if option == "step" else ()
    before, after = resumed(option, 2, 15, 4, *overrides)
    optimizer, scheduler = schedule(option, 4, *overrides)
    assert before + after == pytest.approx(rates(optimizer, scheduler, 4 * STEPS))


def test_the_same_length_changes_nothing():
    before, after = resumed("onecycle", 3, 12, 3)
    _, plan = schedule("onecycle", 3)
    assert before + after == pytest.approx(rates(plan.optimizer, plan, 3 * STEPS))


@pytest.mark.slow
@pytest.mark.parametrize("loader", ["tensor", "dataloader"])
@pytest.mark.parametrize("option", ["cosine", "onecycle", "step", "none"])
def test_a_run_resumed_with_more_epochs_continues_its_schedule(option, loader, tmp_path, caplog):
    """Stopped by SIGINT mid-epoch 2 of 2, resumed with trainer.epochs=4: no error, and the
    per-epoch learning rate goes on as the plan for 4 epochs says (down after the warm-up)."""
    root = make_image_folder(tmp_path / "data", per_class=16)
    run = tmp_path / "run"
    step_size = ["scheduler.step_size=1"] if option == "step" else []  # epochs
    overrides = ("data=imagefolder", f"data.root={root}", "model=lenet5", f"scheduler={option}",
                 f"data.loader={loader}", "data.batch_size=8", "data.num_workers=0",
                 "trainer.epochs=2", *step_size, "logger=none", "trainer.plots=false")  # fmt: skip
    fault = ("+callbacks.fault._target_=tests.faults.Fault", "+callbacks.fault.at=sigint-step:2:1")
    with pytest.raises(SystemExit):
        train_here(*overrides, *fault, output_dir=run)
    with caplog.at_level(logging.INFO):
        results = train_here("trainer.epochs=4", output_dir=run, resume=run)
    lrs = [row["lr"] for row in read_jsonl(run / "metrics.jsonl")]
    assert results["epochs"] == 4 and len(lrs) == 4
    if option == "none":
        assert lrs == [lrs[0]] * 4
    elif option == "step":
        assert lrs == pytest.approx([lrs[0] * 0.1**e for e in range(4)])  # γ = 0.1 every epoch
    else:
        assert all(b < a for a, b in itertools.pairwise(lrs[1:]))  # past the warm-up: down only
        # 4 steps an epoch: stopped after step 1 of epoch 2, i.e. 6 steps done of 8 planned.
        assert "schedule re-planned for 16 steps (was 8): at step 6" in caplog.text
