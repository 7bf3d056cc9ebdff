"""Every option of every config group composes, and builds what it describes."""

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from cnntrain.models import InputSpec, build_model, model_names
from cnntrain.training.optim import build_optimizer, build_scheduler
from tests.conftest import CONF, compose_config


def options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF / group).glob("*.yaml"))


def test_groups_have_the_documented_options():
    assert options("data") == [
        "cifar10", "cifar100", "csv", "fashion_mnist", "hf", "imagefolder", "mnist", "mosaic"
    ]  # fmt: skip
    assert options("loss") == ["asl", "default"]
    assert options("optimizer") == ["adam", "adamw", "sgd"]
    assert options("scheduler") == ["cosine", "none", "onecycle", "step", "triangle"]
    assert set(options("model")) == set(model_names())  # one YAML per registered model
    assert {"seed_cifar10", "smoke", "fashion_mnist", "cifar10_94"} <= set(options("experiment"))


def test_default_config_is_cifar10_cnn_with_sgd():
    cfg = compose_config()
    assert (cfg.data.name, cfg.model.name) == ("cifar10", "cifar10cnn")
    assert cfg.optimizer._target_ == "torch.optim.SGD"
    assert cfg.paths.data_dir  # from CNNTRAIN_DATA_DIR in tests


@pytest.mark.parametrize("option", options("data"))
def test_every_data_option_composes(option):
    required = {"imagefolder": "data.root=/some/folder", "hf": "data.root=/some/folder",
                "csv": "data.labels=/some/labels.csv"}  # fmt: skip
    extra = [required[option]] if option in required else []
    cfg = compose_config(f"data={option}", *extra, output_dir="unused")
    assert cfg.data.name == option
    assert OmegaConf.missing_keys(cfg) == set()
    if cfg.data.stats is not None:  # known datasets carry their training-split statistics
        assert len(cfg.data.stats.mean) == len(cfg.data.stats.std)
    assert cfg.data.mean is None and cfg.data.std is None  # the user's, when set


@pytest.mark.parametrize("option", options("model"))
def test_every_model_option_builds(option):
    cfg = compose_config(f"model={option}")
    model = build_model(cfg.model, InputSpec(3, 32, 32, 10))
    assert model(torch.zeros(2, 3, 32, 32)).shape == (2, 10)


def lr_per_step(*overrides: str, epochs: int, steps_per_epoch: int) -> list[float]:
    """The learning rate each optimizer step uses under the composed schedule."""
    cfg = compose_config(*overrides)
    opt = build_optimizer(cfg.optimizer, torch.nn.Linear(2, 2))
    sched = build_scheduler(cfg.scheduler, opt, epochs, steps_per_epoch)
    lrs = []
    for _ in range(epochs * steps_per_epoch):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return lrs


@pytest.mark.parametrize("optimizer", options("optimizer"))
@pytest.mark.parametrize("scheduler", options("scheduler"))
def test_every_optimizer_and_scheduler_builds_and_steps(optimizer, scheduler):
    peak = compose_config(f"optimizer={optimizer}").optimizer.lr
    lrs = lr_per_step(
        f"optimizer={optimizer}", f"scheduler={scheduler}", epochs=3, steps_per_epoch=5
    )
    assert all(lr >= 0 for lr in lrs) and max(lrs) <= peak * 1.0001


def test_step_schedule_matches_the_articles_per_epoch_steplr():
    lrs = lr_per_step("scheduler=step", "scheduler.step_size=2", "optimizer.lr=0.1",
                      epochs=6, steps_per_epoch=4)  # fmt: skip
    assert lrs == pytest.approx(
        [lr for lr in (0.1, 0.1, 0.01, 0.01, 0.001, 0.001) for _ in range(4)]
    )


def test_warmup_ramps_linearly_then_hands_over():
    lrs = lr_per_step("scheduler=cosine", "scheduler.warmup_epochs=1", "optimizer.lr=0.1",
                      epochs=3, steps_per_epoch=4)  # fmt: skip
    assert lrs[:4] == pytest.approx([0.025, 0.04375, 0.0625, 0.08125])  # from lr/4, +3/16 lr a step
    assert lrs[4] == pytest.approx(0.1) and lrs[-1] < 0.01  # then cosine down towards 0


def test_triangle_of_the_fast_recipe_warms_up_from_0_2_of_peak_then_ends_at_0_07_of_it():
    lrs = lr_per_step("experiment=cifar10_94", epochs=10, steps_per_epoch=10)
    peak = max(lrs)
    assert peak == pytest.approx(1.5) and lrs.index(peak) == 22  # 23% of 100 steps
    assert lrs[0] == pytest.approx(0.2 * peak) and lrs[-1] == pytest.approx(0.07 * peak)
    rises, falls = np.diff(lrs[:23]), np.diff(lrs[22:])  # linear both ways
    assert rises == pytest.approx(np.full(22, rises[0])) and falls == pytest.approx(
        np.full(77, falls[0])
    )


@pytest.mark.parametrize("experiment", options("experiment"))
def test_every_experiment_composes(experiment):
    cfg = compose_config(f"experiment={experiment}", output_dir="unused")
    assert OmegaConf.missing_keys(cfg) == set()
    assert cfg.model.name in model_names()


def test_seed_experiment_is_the_articles_recipe():
    cfg = compose_config("experiment=seed_cifar10")
    assert (cfg.model.name, cfg.data.name, cfg.data.batch_size) == ("cifar10cnn", "cifar10", 128)
    o = cfg.optimizer
    assert (o._target_, o.lr, o.momentum, o.nesterov, o.weight_decay) == (
        "torch.optim.SGD",
        0.01,
        0.9,
        False,
        5e-4,
    )
    assert (cfg.scheduler.name, cfg.scheduler.step_size, cfg.scheduler.gamma) == ("step", 20, 0.1)
    assert (cfg.trainer.epochs, cfg.trainer.target_accuracy) == (50, 0.9)
    a = cfg.data.augment
    assert (a.hflip, a.crop_padding, a.rotation) == (True, 4, 15)
    assert a.color_jitter.brightness > 0


def test_norm_lr_scale_puts_normalization_parameters_in_their_own_group():
    cfg = compose_config("optimizer=sgd", "optimizer.lr=0.5", "optimizer.weight_decay=1e-3",
                         "optimizer.norm_lr_scale=64")  # fmt: skip
    model = build_model({"name": "fastnet"}, InputSpec(3, 32, 32, 10))
    plain, norm = build_optimizer(cfg.optimizer, model).param_groups
    assert (plain["lr"], plain["weight_decay"]) == (0.5, 1e-3)
    assert (norm["lr"], norm["weight_decay"]) == (32.0, 1e-3 / 64)
    bn_shifts = {id(m.bias) for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)}
    assert {id(p) for p in norm["params"]} == bn_shifts  # BN scales are frozen in FastNet
    trainable = {id(p) for p in model.parameters() if p.requires_grad}
    assert {id(p) for p in plain["params"]} | bn_shifts == trainable
    assert not {id(p) for p in plain["params"]} & bn_shifts


def test_without_norm_lr_scale_there_is_one_group():
    cfg = compose_config("optimizer=adamw")
    model = build_model({"name": "simplecnn"}, InputSpec(3, 32, 32, 10))
    (group,) = build_optimizer(cfg.optimizer, model).param_groups
    assert len(group["params"]) == len(list(model.parameters()))
