"""airbench94's pieces in cnntrain (experiment=cifar10_94): Lookahead weight averaging, the
alternating flip on both data paths, six-view test-time augmentation, FastNet's whitening bias
frozen after N epochs, the triangle schedule; the recipe resuming exactly with them all on."""

import io
import itertools
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from cnntrain.config.rules import validate
from cnntrain.core.errors import UserError
from cnntrain.core.spec import InputSpec
from cnntrain.data.augment.flip import AlternatingFlip
from cnntrain.data.splits import epoch_order
from cnntrain.models import build_model
from cnntrain.training.callbacks import Lookahead
from cnntrain.training.evaluate import evaluate
from cnntrain.training.precision import Arithmetic
from cnntrain.training.schedules import Triangle
from tests.conftest import compose_config, load_run_data, make_image_folder, train_here
from tests.test_data import CPU, folder_config
from tests.test_resume_every import FAULT, QUIET, assert_same_run
from tests.test_training import ListLoader

# --- Lookahead -----------------------------------------------------------------------------------

STEPS, EPOCHS = 5, 4  # optimizer steps per epoch, epochs
EVERY, DECAY, POWER, AFTER = 3, 0.9, 3.0, 1  # every 3rd step: mid-epoch and at epoch 3's end


def averaged_model() -> nn.Module:
    """Weights and BatchNorm statistics (floating point: averaged) and a step counter (not)."""
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(3, 2), nn.BatchNorm1d(2))


def increments() -> list[dict]:
    """What each optimizer step of the run adds to every tensor of the model's state."""
    g = torch.Generator().manual_seed(1)
    shapes = {k: v.shape for k, v in averaged_model().state_dict().items()}
    return [{k: torch.randn(s, generator=g) for k, s in shapes.items()}
            for _ in range(STEPS * EPOCHS)]  # fmt: skip


@torch.no_grad()
def optimizer_step(model: nn.Module, increment: dict) -> None:
    for k, v in model.state_dict().items():
        v.add_(increment[k] if v.is_floating_point() else 1)


@torch.no_grad()
def airbench_lookahead(model: nn.Module) -> dict:
    """airbench94.py's loop, as written there (0-based epochs, a step counter, LookaheadState)."""
    state, current, total = None, 0, STEPS * EPOCHS
    floats = {k: v for k, v in model.state_dict().items() if v.is_floating_point()}
    for epoch in range(EPOCHS):
        for _ in range(STEPS):
            optimizer_step(model, increments()[current])
            current += 1
            if epoch >= AFTER and current % EVERY == 0:
                if state is None:
                    state = {k: v.clone() for k, v in floats.items()}
                else:
                    rho = DECAY**EVERY * (current / total) ** POWER
                    for k, v in floats.items():
                        state[k].lerp_(v, 1 - rho)
                        v.copy_(state[k])
        if state is not None:
            for k, v in floats.items():
                v.copy_(state[k])
    return state


def fake_loop(model: nn.Module) -> SimpleNamespace:
    """What Lookahead reads of the loop: the model, the batches per epoch, the run's epochs."""
    return SimpleNamespace(model=model, data=SimpleNamespace(train=[None] * STEPS),
                           parts=SimpleNamespace(accumulate=1), epochs=EPOCHS)  # fmt: skip


def run_lookahead(model, callback, start=(1, 0), stop=(EPOCHS + 1, 0)) -> None:
    """The loop's events from (epoch, step) `start` up to, not including, `stop`."""
    loop = fake_loop(model)
    callback.on_fit_start(loop)
    for epoch in range(start[0], EPOCHS + 1):
        for step in range(start[1] if epoch == start[0] else 0, STEPS):
            if (epoch, step) == stop:
                return
            callback.on_batch_start(loop, epoch, step)
            optimizer_step(model, increments()[(epoch - 1) * STEPS + step])
        callback.on_train_epoch_end(loop, epoch)


def test_lookahead_averages_and_resets_the_weights_as_airbench():
    reference, model = averaged_model(), averaged_model()
    expected = airbench_lookahead(reference)
    callback = Lookahead(every=EVERY, decay=DECAY, power=POWER, after_epochs=AFTER)
    run_lookahead(model, callback)
    plain = averaged_model()
    for increment in increments():
        optimizer_step(plain, increment)
    for (name, got), want, free in zip(model.state_dict().items(), reference.state_dict().values(),
                                       plain.state_dict().values(), strict=True):  # fmt: skip
        assert torch.allclose(got, want, rtol=1e-6, atol=1e-7), name
        if got.is_floating_point():
            assert torch.allclose(callback.average[name], expected[name], rtol=1e-6, atol=1e-7)
            assert not torch.allclose(got, free), name  # the averaging changed the weights
        else:
            assert torch.equal(got, free)  # BatchNorm's step counter is not averaged


def test_lookahead_state_round_trips_through_a_checkpoint_mid_epoch():
    whole, resumed = averaged_model(), averaged_model()
    run_lookahead(whole, Lookahead(every=EVERY, decay=DECAY, power=POWER, after_epochs=AFTER))
    first = Lookahead(every=EVERY, decay=DECAY, power=POWER, after_epochs=AFTER)
    run_lookahead(resumed, first, stop=(3, 2))  # interrupted before batch 2 of epoch 3
    buffer = io.BytesIO()
    torch.save({"model": resumed.state_dict(), "lookahead": first.state_dict()}, buffer)
    buffer.seek(0)
    saved = torch.load(buffer, weights_only=True)  # as checkpoints are read
    model, second = averaged_model(), Lookahead(every=EVERY, decay=DECAY, power=POWER,
                                                after_epochs=AFTER)  # fmt: skip
    model.load_state_dict(saved["model"])
    second.load_state_dict(saved["lookahead"])
    run_lookahead(model, second, start=(3, 2))
    for name, tensor in whole.state_dict().items():
        assert torch.equal(tensor, model.state_dict()[name]), name


# --- Alternating flip ----------------------------------------------------------------------------


def test_alternating_flip_mirrors_a_random_half_then_toggles_every_image_each_epoch():
    flip, index = AlternatingFlip(seed=3, count=1000), torch.arange(1000)
    first = flip.mirrored(index, 1)
    assert 450 < int(first.sum()) < 550  # a random half
    for epoch in (2, 4, 6):
        assert torch.equal(flip.mirrored(index, epoch), ~first)
    assert torch.equal(flip.mirrored(index, 3), first)
    assert not torch.equal(AlternatingFlip(seed=4, count=1000).mirrored(index, 1), first)
    assert bool(flip.mirrored(7, 2)) == bool(~first[7])  # one image, as the DataLoader path asks
    x = torch.arange(2 * 3 * 4).view(2, 1, 3, 4)
    out = flip(x, torch.tensor([7, 8]), 1)
    for image, i in zip(out, (7, 8), strict=True):
        assert torch.equal(image, x[i - 7].flip(-1) if first[i] else x[i - 7])


def mirrored_in(batches, data, epoch: int) -> dict[int, bool]:
    """{image index: shown mirrored?} of an epoch's training batches on the tensor path (no
    other augmentation), read off the pixels."""
    order = epoch_order(data.train.count, 42, epoch)  # trainer.seed's order of the epoch
    shown = torch.cat([x for x, _ in batches])  # drop_last: the order's tail is not shown
    stored = data.val.prep(data.train.images)  # (N, C, H, W) as decoded, normalized
    mirrors = {}
    for i, x in zip(order.tolist(), shown, strict=False):
        mirrors[i] = torch.allclose(x, stored[i].flip(-1))
        assert mirrors[i] or torch.allclose(x, stored[i])
    return mirrors


def test_alternating_flip_is_the_same_per_image_and_epoch_on_both_data_paths(tmp_path):
    root = make_image_folder(tmp_path / "f", per_class=20, size=(6, 7))  # not mirror-symmetric
    loaders = {kind: load_run_data(folder_config(root, f"data.loader={kind}", "data.batch_size=8",
                                             "data.augment.hflip=alternate"), CPU)
               for kind in ("tensor", "dataloader")}  # fmt: skip
    seen = {}
    for epoch in (1, 2, 3):
        t = list(loaders["tensor"].train.batches(epoch))
        f = list(loaders["dataloader"].train.batches(epoch))
        assert all(torch.equal(a, b) for (a, _), (b, _) in zip(t, f, strict=True))
        seen[epoch] = mirrored_in(t, loaders["tensor"], epoch)
    assert 8 < sum(seen[1].values()) < 32  # of 40 images
    common = seen[1].keys() & seen[2].keys()  # drop_last leaves a different tail out each epoch
    assert common and all(seen[1][i] != seen[2][i] for i in common)
    common = seen[1].keys() & seen[3].keys()
    assert all(seen[1][i] == seen[3][i] for i in common)


# --- Test-time augmentation ----------------------------------------------------------------------


def reflect(i: int, size: int) -> int:
    return -i if i < 0 else 2 * (size - 1) - i if i >= size else i


def moved(x: torch.Tensor, d: int) -> torch.Tensor:
    """x (N, C, H, W) with pixel (i, j) showing x's (i - d, j - d), mirrored at the edges."""
    h, w = x.shape[-2:]
    rows = [reflect(i - d, h) for i in range(h)]
    cols = [reflect(j - d, w) for j in range(w)]
    return x[:, :, rows][:, :, :, cols]


def test_flip_translate_tta_weights_six_views_as_airbench():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(2 * 4 * 5, 3))  # sees every pixel's place
    x, y = torch.randn(6, 2, 4, 5), torch.tensor([0, 1, 2, 0, 1, 2])
    out = evaluate(model, ListLoader([(x, y)]), Arithmetic(CPU, None, tta="flip_translate"),
                   keep_outputs=True)  # fmt: skip
    with torch.no_grad():
        pair = {d: (model(moved(x, d)) + model(moved(x, d).flip(-1))) / 2 for d in (0, 1, -1)}
    expected = pair[0] / 2 + pair[1] / 4 + pair[-1] / 4
    assert torch.allclose(out["logits"], expected, atol=1e-6)
    flip = evaluate(model, ListLoader([(x, y)]), Arithmetic(CPU, None, tta=True),
                    keep_outputs=True)  # fmt: skip
    assert torch.allclose(flip["logits"], pair[0], atol=1e-6)
    assert not torch.allclose(out["logits"], pair[0], atol=1e-3)


# --- FastNet's whitening bias ----------------------------------------------------------------


def test_whitening_bias_learns_for_n_epochs_then_no_step_moves_it():
    torch.manual_seed(0)
    model = build_model({"name": "fastnet", "whiten_bias_epochs": 1, "widths": [8, 8, 8]},
                        InputSpec(3, 16, 16, 10))  # fmt: skip
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1,
                                momentum=0.9, weight_decay=0.1)  # fmt: skip
    x, y = torch.randn(8, 3, 16, 16), torch.arange(8)
    bias, head = model.whiten.bias, model.head.weight
    for epoch in (1, 2, 3):
        model.set_epoch(epoch)
        before = bias.detach().clone(), head.detach().clone()
        optimizer.zero_grad(set_to_none=True)
        nn.functional.cross_entropy(model(x), y).backward()
        optimizer.step()
        assert (bias.grad is None) == (epoch > 1), epoch
        assert torch.equal(bias, before[0]) == (epoch > 1), epoch  # momentum and decay too
        assert not torch.equal(head, before[1])
    assert [n for n, p in model.named_parameters() if p.requires_grad] == trainable


def test_triangle_ends_at_its_end_factor_also_when_a_resumed_run_is_longer():
    optimizer = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=2.0)
    schedule = Triangle(optimizer, start_factor=0.2, pct_start=0.23, end_factor=0.07,
                        total_steps=100, steps_per_epoch=10)  # fmt: skip
    lrs = []
    for step in range(160):
        if step == 50:
            schedule.resize(160)  # trainer.epochs raised on resume
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        schedule.step()
    assert lrs[0] == pytest.approx(0.4) and max(lrs) == pytest.approx(2.0)
    assert lrs[-1] == pytest.approx(0.14)  # 0.07 × 2.0 at the run's last step
    assert all(a >= b for a, b in itertools.pairwise(lrs[22:50]))
    assert lrs[50] > lrs[49]  # the plan for 160 steps from step 50: one change, up…
    assert all(a >= b for a, b in itertools.pairwise(lrs[50:]))  # …then down to the end


@pytest.mark.parametrize(
    "override, message",
    [
        ("trainer.lookahead={every:0,decay:0.95,power:3,after_epochs:3}", "trainer.lookahead="),
        ("trainer.lookahead={every:5}", "trainer.lookahead="),
        ("trainer.tta=views", "trainer.tta='views' is not valid"),
        ("model.whiten_bias_epochs=-1", "model.whiten_bias_epochs=-1 is not valid"),
        ("data.augment.hflip=sometimes", "use true, false or alternate"),
        ("scheduler.end_factor=0", "scheduler.end_factor=0 is not valid"),
    ],
)
def test_bad_values_of_the_new_options_are_refused_naming_the_key(override, message):
    with pytest.raises(UserError, match=message):
        validate(compose_config("model=fastnet", "scheduler=triangle", override, output_dir="u"))


# --- The recipe, every piece on, resumes exactly ---------------------------------------------


def test_cifar10_94_with_lookahead_and_frozen_bias_resumes_exactly_mid_epoch(tmp_path):
    root = make_image_folder(tmp_path / "data", per_class=32, mode="RGB", size=(16, 16))
    overrides = ["experiment=cifar10_94", "data=imagefolder", f"data.root={root}",
                 "data.batch_size=16", *QUIET, "trainer.epochs=2", "model.widths=[16,32,32]",
                 "model.whiten_bias_epochs=1",
                 "trainer.lookahead={every:3,decay:0.95,power:3,after_epochs:0}"]  # fmt: skip
    reference, resumed = tmp_path / "reference", tmp_path / "resumed"
    train_here(*overrides, output_dir=reference)
    with pytest.raises(SystemExit):  # SIGINT before batch 1 of epoch 2: the bias frozen, the
        # average taken at step 3 and moved at step 6 (batch 2 of epoch 2, after the resume)
        train_here(*overrides, FAULT, "+callbacks.fault.at=sigint-step:2:1", output_dir=resumed)
    train_here(output_dir=resumed, resume=resumed)
    assert_same_run(reference, resumed)
    saved = [torch.load(r / "checkpoints" / "last.pt", weights_only=True)
             for r in (reference, resumed)]  # fmt: skip
    averages = [s["callbacks"]["lookahead"]["average"] for s in saved]
    assert averages[0].keys() == averages[1].keys()
    assert all(torch.equal(averages[0][k], averages[1][k]) for k in averages[0])
    assert all(torch.equal(averages[0][k], saved[0]["model"][k]) for k in averages[0])  # w = a
    assert saved[0]["model"]["whiten.bias"].abs().sum() > 0  # it learnt in epoch 1


def test_recipe_is_airbench94_translated_to_mean_loss_steps():
    cfg = compose_config("experiment=cifar10_94")
    kilostep = 1 + 1 / (1 - cfg.optimizer.momentum)  # airbench's Nesterov step-size ratio
    assert cfg.optimizer.lr == pytest.approx(11.5 / kilostep, rel=1e-3)  # 11.5 per 1024, ÷ 7.67
    shrink = 0.0153 / kilostep  # its weight decay per 1024 images, as shrinkage per step
    assert cfg.optimizer.lr * cfg.optimizer.weight_decay == pytest.approx(shrink, rel=1e-2)
    assert cfg.model.bn_momentum == pytest.approx(1 - 0.6)  # its momentum convention
    assert (cfg.data.augment.hflip, cfg.trainer.tta) == ("alternate", "flip_translate")
    assert dict(cfg.trainer.lookahead) == {"every": 5, "decay": 0.95, "power": 3,
                                           "after_epochs": 3}  # fmt: skip
    assert cfg.scheduler.name == "triangle" and cfg.trainer.epochs <= 10
