"""Fine-tuning: any torchvision classifier, pretrained weights from torch hub's cache (written by
the tests into a temporary TORCH_HOME; the network is off), freezing, head learning rate, and
starting from another run (model.init_from)."""

import re
import socket
from pathlib import Path
from urllib.parse import urlparse

import pytest
import torch
from torch import nn
from torch.nn.modules.module import register_module_forward_hook
from torchvision import models as tv
from torchvision.models import regnet

from cnntrain.config.rules import validate
from cnntrain.core.checkpoint import load_checkpoint, save_checkpoint
from cnntrain.core.errors import UserError
from cnntrain.data.loaders import BatchPrep, TensorLoader
from cnntrain.models import (
    InputSpec,
    build_model,
    check_model_options,
    data_defaults,
    head_name,
    head_parameter_names,
    init_from,
    train_mode,
)
from cnntrain.models.registry import build_architecture
from cnntrain.models.torchvision import ARCHS
from cnntrain.trained.load import load_trained
from cnntrain.training.optim import build_optimizer
from cnntrain.training.precision import Arithmetic
from cnntrain.training.step import StepParts, Totals
from tests.conftest import compose_config, make_image_folder, train_epoch, train_here

SPEC = InputSpec(3, 32, 32, 7)


@pytest.fixture(autouse=True)
def no_network(monkeypatch):
    """Any attempt to reach the network fails at once, loudly."""

    def refuse(*args, **kwargs):
        raise OSError("network is off in tests")

    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    monkeypatch.setattr(socket.socket, "connect", refuse)


@pytest.fixture
def hub_cache(tmp_path, monkeypatch) -> Path:
    """An empty torch hub cache: $TORCH_HOME/hub/checkpoints, where torchvision looks first."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    folder = Path(torch.hub.get_dir()) / "checkpoints"
    assert folder == tmp_path / "torch" / "hub" / "checkpoints"
    folder.mkdir(parents=True)
    return folder


def cache_file(folder: Path, weights) -> Path:
    """Where torch hub keeps `weights`: the URL's file name. Its hash prefix is checked only on
    download, not when the file is already there, so a test's own tensors load."""
    return folder / Path(urlparse(weights.url).path).name


def write_imagenet_weights(folder: Path, arch: str, weights, **options) -> dict:
    """Random-init 1000-class weights for `arch`, saved where torch hub looks for `weights`."""
    state = tv.get_model(arch, num_classes=1000, **options).state_dict()
    torch.save(state, cache_file(folder, weights))
    return state


# -- every registered classifier ------------------------------------------------------------


@pytest.fixture
def buildable_on_meta(monkeypatch):
    """RegNet's builder computes its block widths with tensor ops and reads them back (.tolist):
    on the meta device there is nothing to read, so those few ops run on the CPU."""
    compute = regnet.BlockParams.from_init_params.__func__

    def on_cpu(cls, *args, **kwargs):
        with torch.device("cpu"):
            return compute(cls, *args, **kwargs)

    monkeypatch.setattr(regnet.BlockParams, "from_init_params", classmethod(on_cpu))


def test_the_registered_classifiers_are_torchvisions_classification_models():
    assert len(ARCHS) >= 80 and {"resnet50", "vit_b_16", "squeezenet1_1"} <= set(ARCHS)
    assert not {"fasterrcnn_resnet50_fpn", "r3d_18", "fcn_resnet50", "raft_small"} & set(ARCHS)


@pytest.mark.parametrize("arch", ARCHS)
def test_every_torchvision_classifier_gives_batch_by_classes(arch, buildable_on_meta):
    # cnntrain's builder, on the meta device: shapes without arithmetic, so all ~80 (up to 640M
    # parameters) take seconds. The builder runs the network once on one image of the data's
    # size (its input-size check); global forward hooks watch that run.
    runs = []  # (module, output shape), in the order the modules finish

    def watch(module, args, output):
        if torch.is_tensor(output):
            runs.append((module, tuple(output.shape)))

    hook = register_module_forward_hook(watch)
    try:
        with torch.device("meta"):
            model = build_model({"name": "torchvision", "arch": arch}, InputSpec(3, 224, 224, 7))
    finally:
        hook.remove()
    assert [shape for module, shape in runs if module is model] == [(1, 7)]
    weighted = [module for module, _ in runs if isinstance(module, nn.Linear | nn.Conv2d)]
    assert weighted[-1] is model.get_submodule(head_name(model))  # the head gives the logits


@pytest.mark.parametrize("arch", ["googlenet", "inception_v3"])
def test_random_init_networks_with_auxiliary_heads_give_plain_logits_in_train_mode(arch):
    with torch.device("meta"):
        model = build_model({"name": "torchvision", "arch": arch}, InputSpec(3, 224, 224, 7))
        logits = model.train()(torch.empty(2, 3, 224, 224))
    assert torch.is_tensor(logits) and logits.shape == (2, 7)  # not (logits, aux2, aux1)
    assert not [name for name in model.state_dict() if "aux" in name.lower()]


@pytest.mark.parametrize("arch", ["squeezenet1_1", "mobilenet_v3_small"])  # conv, Linear
def test_the_found_head_gives_the_logits_on_the_cpu(arch):
    model = build_model({"name": "torchvision", "arch": arch}, InputSpec(3, 64, 64, 5)).eval()
    with torch.no_grad():
        assert model(torch.randn(2, 3, 64, 64)).shape == (2, 5)
        for p in model.get_submodule(head_name(model)).parameters():
            p.zero_()
        assert torch.count_nonzero(model(torch.randn(2, 3, 64, 64))) == 0


def test_an_input_size_the_network_cannot_take_is_one_line():
    with pytest.raises(UserError) as e:
        build_model({"name": "torchvision", "arch": "vit_b_16"}, SPEC)
    message = str(e.value)
    assert "vit_b_16" in message and "32×32" in message and "data.image_size=224" in message
    assert "\n" not in message


def test_grayscale_is_given_as_rgb_and_one_channel_is_refused():
    assert data_defaults({"name": "torchvision", "arch": "resnet18"})["channels"] == 3
    with pytest.raises(UserError, match=r"data\.channels=1"):
        build_model({"name": "torchvision", "arch": "resnet18"}, InputSpec(1, 32, 32, 7))


def test_an_unknown_arch_lists_close_matches():
    with pytest.raises(UserError) as e:
        build_model({"name": "torchvision", "arch": "resnet5"}, SPEC)
    assert "'resnet5'" in str(e.value) and "resnet50" in str(e.value)


def test_an_unknown_weights_name_lists_the_known_ones():
    with pytest.raises(UserError) as e:  # config.rules' check, before any work
        check_model_options({"name": "torchvision", "arch": "resnet18", "weights": "IMAGENET1K_V9"})
    assert "IMAGENET1K_V9" in str(e.value) and "DEFAULT, IMAGENET1K_V1" in str(e.value)


# -- pretrained weights, through torch hub's cache --------------------------------------------


@pytest.mark.parametrize("name", ["IMAGENET1K_V1", "DEFAULT"])
def test_pretrained_weights_load_from_torch_hubs_cache(hub_cache, name):
    file = write_imagenet_weights(hub_cache, "resnet18", tv.ResNet18_Weights.IMAGENET1K_V1)
    cfg = {"name": "torchvision", "arch": "resnet18", "weights": name}
    model = build_model(cfg, SPEC)
    state = model.state_dict()
    for key, tensor in file.items():
        if not key.startswith("fc."):
            assert torch.equal(state[key], tensor), key
    assert state["fc.weight"].shape == (7, 512)  # a new head for the dataset's 7 classes
    assert not torch.equal(state["fc.weight"], file["fc.weight"][:7])
    assert isinstance(model.conv1, nn.Conv2d) and model.conv1.kernel_size == (7, 7)  # own stem
    # torchvision's own key names: loads strictly into torchvision's model for 7 classes
    tv.get_model("resnet18", num_classes=7).load_state_dict(state, strict=True)
    assert [p.name for p in hub_cache.iterdir()] == ["resnet18-f37072fd.pth"]  # nothing else


def test_pretrained_googlenet_drops_its_auxiliary_heads(hub_cache):
    weights = tv.GoogLeNet_Weights.IMAGENET1K_V1
    write_imagenet_weights(hub_cache, "googlenet", weights, aux_logits=True, init_weights=False)
    model = build_model({"name": "torchvision", "arch": "googlenet", "weights": "DEFAULT"}, SPEC)
    assert model.aux1 is None and model.transform_input  # as torchvision builds it for weights
    strict = tv.get_model("googlenet", num_classes=7, aux_logits=False, init_weights=False)
    strict.load_state_dict(model.state_dict(), strict=True)
    assert model.train()(torch.randn(2, 3, 32, 32)).shape == (2, 7)  # logits, not a tuple


def test_missing_weights_offline_is_one_line_naming_file_url_and_folder(hub_cache):
    with pytest.raises(UserError) as e:
        build_model({"name": "torchvision", "arch": "resnet18", "weights": "DEFAULT"}, SPEC)
    message = str(e.value)
    url = "https://download.pytorch.org/models/resnet18-f37072fd.pth"
    assert "resnet18-f37072fd.pth" in message and url in message and str(hub_cache) in message
    assert "network is off in tests" in message and "\n" not in message


class Payload:
    """Not a tensor: torch.load(weights_only=True) refuses to build it."""


def test_cached_weights_are_loaded_weights_only(hub_cache):
    torch.save(Payload(), cache_file(hub_cache, tv.ResNet18_Weights.IMAGENET1K_V1))
    with pytest.raises(UserError, match=r"could not be read as resnet18's weights .*; delete it"):
        build_model({"name": "torchvision", "arch": "resnet18", "weights": "DEFAULT"}, SPEC)


def test_pretrained_data_defaults_are_the_weights_preprocessing():
    assert data_defaults({"name": "torchvision", "arch": "resnet18", "weights": "DEFAULT"}) == {
        "channels": 3,
        "image_size": (224, 224),
        "resize": 256,  # the short side, before the centre crop
        "interpolation": "bilinear",
        "mean": [0.485, 0.456, 0.406],
        "std": [0.229, 0.224, 0.225],
    }
    swag = {"name": "torchvision", "arch": "vit_b_16", "weights": "IMAGENET1K_SWAG_E2E_V1"}
    assert [data_defaults(swag)[k] for k in ("image_size", "resize", "interpolation")] == [
        (384, 384), 384, "bicubic"
    ]  # fmt: skip
    assert data_defaults({"name": "torchvision", "arch": "resnet18", "weights": None}) == {
        "channels": 3, "image_size": None, "resize": None, "interpolation": None, "mean": None,
        "std": None,
    }  # fmt: skip
    assert data_defaults({"name": "cifar10cnn"}) is None


def test_weights_from_a_state_dict_file(tmp_path):
    imagenet = tv.get_model("resnet18", num_classes=1000).state_dict()
    torch.save(imagenet, tmp_path / "plain.pt")
    model = build_model(
        {"name": "torchvision", "arch": "resnet18", "weights": str(tmp_path / "plain.pt")}, SPEC
    )
    assert torch.equal(
        model.state_dict()["layer4.1.conv2.weight"], imagenet["layer4.1.conv2.weight"]
    )
    assert model.fc.out_features == 7
    # a cnntrain checkpoint's `model`, of the same class count: the head is loaded too
    save_checkpoint(tmp_path / "run.pt", {"model": model.state_dict()})
    again = build_model(
        {"name": "torchvision", "arch": "resnet18", "weights": str(tmp_path / "run.pt")}, SPEC
    )
    assert torch.equal(again.fc.weight, model.fc.weight)
    torch.save(tv.get_model("resnet34").state_dict(), tmp_path / "other.pt")
    with pytest.raises(UserError, match="does not fit torchvision's resnet18"):
        build_model(
            {"name": "torchvision", "arch": "resnet18", "weights": str(tmp_path / "other.pt")}, SPEC
        )


# -- freezing and the head's learning rate ---------------------------------------------------


def train_steps(model: nn.Module, steps: int = 3) -> None:
    """`steps` real training steps: the training step, SGD with momentum and weight decay."""
    cfg = compose_config("optimizer=sgd", "optimizer.lr=0.1")
    optimizer = build_optimizer(cfg.optimizer, model)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _: 1.0)
    arithmetic = Arithmetic(torch.device("cpu"), None)
    parts = StepParts(model, optimizer, scheduler, nn.CrossEntropyLoss(), arithmetic)
    images = torch.randint(0, 256, (8 * steps, 3, 32, 32), dtype=torch.uint8)
    targets = torch.arange(8 * steps) % 7
    prep = BatchPrep([0.5] * 3, [0.25] * 3, torch.device("cpu"), False)
    train_epoch(parts, TensorLoader(images, targets, 8, True, 0, prep), 1, Totals.zeros("cpu"))


def changed_tensors(model: nn.Module, before: dict) -> list[str]:
    return [k for k, v in model.state_dict().items() if not torch.equal(v, before[k])]


def test_freeze_backbone_trains_only_the_head_and_keeps_batchnorm_statistics(hub_cache):
    write_imagenet_weights(hub_cache, "resnet18", tv.ResNet18_Weights.IMAGENET1K_V1)
    cfg = {"name": "torchvision", "arch": "resnet18", "weights": "DEFAULT", "freeze": "backbone"}
    model = build_model(cfg, SPEC)
    assert [n for n, p in model.named_parameters() if p.requires_grad] == ["fc.weight", "fc.bias"]
    before = {k: v.clone() for k, v in model.state_dict().items()}
    train_steps(model)
    assert changed_tensors(model, before) == ["fc.weight", "fc.bias"]  # running stats included
    assert model.training and not any(
        m.training for m in model.modules() if isinstance(m, nn.BatchNorm2d)
    )


def test_freeze_prefixes_fix_those_layers_and_their_batchnorm():
    cfg = {"name": "cifar10cnn", "freeze": ["features.0", "features.1"]}
    model = build_model(cfg, SPEC)
    frozen = {n for n, p in model.named_parameters() if not p.requires_grad}
    assert frozen == {
        "features.0.weight",
        "features.0.bias",
        "features.1.weight",
        "features.1.bias",
    }
    before = {k: v.clone() for k, v in model.state_dict().items()}
    train_steps(model)
    changed = changed_tensors(model, before)
    assert not [k for k in changed if k.startswith(("features.0.", "features.1."))]
    assert "features.4.running_mean" in changed and "features.3.weight" in changed
    assert not model.features[1].training and model.features[4].training


def test_train_mode_keeps_only_fully_frozen_batchnorm_in_eval():
    model = build_model({"name": "fastnet"}, SPEC)  # BN scales frozen, shifts trained
    assert all(m.training for m in train_mode(model).modules())
    model.requires_grad_(False).head.requires_grad_(True)
    assert not any(m.training for m in train_mode(model).modules() if isinstance(m, nn.BatchNorm2d))


def test_a_freeze_prefix_is_a_module_name_not_a_string_prefix():
    model = build_model({"name": "resnet", "depth": 56, "freeze": ["layers.1"]}, SPEC)
    frozen = {n.split(".")[1] for n, p in model.named_parameters() if not p.requires_grad}
    assert frozen == {"1"}  # layers.1.*, not layers.10 … layers.19


def test_a_freeze_prefix_that_names_nothing_lists_the_top_level_modules():
    with pytest.raises(UserError) as e:
        build_model({"name": "cifar10cnn", "freeze": ["feature"]}, SPEC)
    assert "'feature'" in str(e.value) and "features, classifier" in str(e.value)
    with pytest.raises(UserError, match="leaves no parameter to train"):
        build_model({"name": "simplecnn", "freeze": ["conv1", "bn1", "conv2", "bn2", "conv3",
                                                     "bn3", "fc1", "fc2"]}, SPEC)  # fmt: skip


def test_head_lr_scale_gives_the_head_its_own_group_beside_the_norm_group():
    cfg = compose_config("optimizer=sgd", "optimizer.lr=0.1", "optimizer.weight_decay=1e-3",
                         "optimizer.norm_lr_scale=4", "optimizer.head_lr_scale=10")  # fmt: skip
    model = build_model({"name": "cifar10cnn"}, SPEC)
    rest, norm, head = build_optimizer(cfg.optimizer, model).param_groups
    names = {id(p): n for n, p in model.named_parameters()}
    assert {names[id(p)] for p in head["params"]} == {"classifier.3.weight", "classifier.3.bias"}
    assert (head["lr"], head["weight_decay"]) == (pytest.approx(1.0), 1e-3)
    assert (norm["lr"], norm["weight_decay"]) == (0.4, 1e-3 / 4)
    assert all(names[id(p)].startswith("features.") for p in norm["params"])
    groups = [{id(p) for p in g["params"]} for g in (rest, norm, head)]
    assert sum(map(len, groups)) == len(set.union(*groups)) == len(names)  # each once, all


def test_head_lr_scale_with_a_frozen_backbone_trains_the_head_alone():
    cfg = compose_config("optimizer=adamw", "optimizer.head_lr_scale=10")
    model = build_model({"name": "torchvision", "arch": "resnet18", "freeze": "backbone"}, SPEC)
    rest, head = build_optimizer(cfg.optimizer, model).param_groups
    assert rest["params"] == [] and [p.shape for p in head["params"]] == [(7, 512), (7,)]
    assert head["lr"] == pytest.approx(10 * cfg.optimizer.lr)
    assert head_parameter_names(model) == {"fc.weight", "fc.bias"}


def test_default_head_lr_scale_keeps_one_group():
    for optimizer in ("sgd", "adam", "adamw"):
        cfg = compose_config(f"optimizer={optimizer}")
        assert cfg.optimizer.head_lr_scale == 1.0
        assert (
            len(build_optimizer(cfg.optimizer, build_model({"name": "lenet5"}, SPEC)).param_groups)
            == 1
        )


# -- model.init_from ---------------------------------------------------------------------------


def write_run(folder: Path, model_cfg: dict, spec: InputSpec, ema: bool = False) -> dict:
    """A run folder whose checkpoints/best.pt holds what init_from reads of Run.state()."""
    weights = build_model(model_cfg, spec).state_dict()
    ema_state = None
    if ema:  # EMA weights that differ from the last weights
        shifted = {k: v + 1 if v.is_floating_point() else v for k, v in weights.items()}
        ema_state = {"weights": shifted, "updates": 5}
    state = {"model": weights, "ema": ema_state, "config": {"model": model_cfg}}
    save_checkpoint(folder / "checkpoints" / "best.pt", state)
    return shifted if ema else weights


def test_init_from_a_run_with_other_classes_loads_the_body_and_renews_the_head(tmp_path, caplog):
    cfg = {"name": "cifar10cnn", "dropout": 0.5}
    source = write_run(tmp_path / "run", cfg, InputSpec(3, 32, 32, 10))
    model = build_model(cfg, SPEC)
    fresh_head = model.classifier[3].weight.clone()
    caplog.set_level("INFO", logger="cnntrain")
    transfer = init_from(model, str(tmp_path / "run"), cfg)
    state = model.state_dict()
    assert transfer.skipped == ["classifier.3.weight", "classifier.3.bias"] and transfer.new == []
    assert len(transfer.loaded) == len(state) - 2
    assert all(torch.equal(state[k], source[k]) for k in transfer.loaded)
    assert torch.equal(model.classifier[3].weight, fresh_head)  # as built: 7 classes
    log = caplog.text
    assert "re-initialised 2 of another shape (the head" in log
    assert "classifier.3.weight, classifier.3.bias" in log and "features.0.weight" in log


def test_init_from_uses_the_runs_ema_weights(tmp_path):
    cfg = {"name": "simplecnn"}
    ema = write_run(tmp_path / "run", cfg, SPEC, ema=True)
    model = build_model(cfg, SPEC)
    init_from(model, str(tmp_path / "run" / "checkpoints" / "best.pt"), cfg)
    assert torch.equal(model.fc1.weight, ema["fc1.weight"])


def test_init_from_another_architecture_is_one_line(tmp_path):
    write_run(tmp_path / "run", {"name": "simplecnn"}, SPEC)
    model = build_model({"name": "cifar10cnn"}, SPEC)
    with pytest.raises(UserError, match="is a simplecnn run and this run builds cifar10cnn"):
        init_from(model, str(tmp_path / "run"), {"name": "cifar10cnn"})
    write_run(tmp_path / "narrow", {"name": "resnet", "width": 8}, SPEC)
    with pytest.raises(
        UserError, match=r"no parameter .* but the head's has this model's name and shape"
    ):
        init_from(
            build_model({"name": "resnet"}, SPEC), str(tmp_path / "narrow"), {"name": "resnet"}
        )
    with pytest.raises(UserError, match="no checkpoint at"):
        init_from(model, str(tmp_path / "nowhere"), {"name": "cifar10cnn"})


# -- end to end: training runs, and using them ---------------------------------------------

RUN_QUIETLY = ("trainer.epochs=1", "trainer.device=cpu", "logger=none", "trainer.plots=false")


def test_fine_tuning_a_pretrained_resnet_trains_only_its_head(hub_cache, tmp_path):
    file = write_imagenet_weights(hub_cache, "resnet18", tv.ResNet18_Weights.IMAGENET1K_V1)
    root = make_image_folder(tmp_path / "data", classes=("a", "b", "c"), per_class=8, mode="RGB")
    train_here("data=imagefolder", f"data.root={root}", "data.image_size=32", "data.batch_size=8",
               "model=torchvision", "model.arch=resnet18", "model.weights=IMAGENET1K_V1",
               "model.freeze=backbone", *RUN_QUIETLY, output_dir=tmp_path / "run")  # fmt: skip
    saved = load_checkpoint(tmp_path / "run" / "checkpoints" / "best.pt")
    body = {k: v for k, v in saved["model"].items() if not k.startswith("fc.")}
    assert body.keys() == {k for k in file if not k.startswith("fc.")}
    assert all(torch.equal(v, file[k]) for k, v in body.items())  # BN statistics included
    assert saved["model"]["fc.weight"].shape == (3, 512)
    assert saved["trainable"] == ["fc.weight", "fc.bias"]
    assert len(saved["optimizer"]["state"]) == 2  # momentum buffers: the head alone was stepped
    assert saved["normalization"]["mean"] == [0.485, 0.456, 0.406]  # the weights' statistics
    # Used later, the run needs no weights file: the network is rebuilt from its checkpoint.
    cache_file(hub_cache, tv.ResNet18_Weights.IMAGENET1K_V1).unlink()
    rebuilt = load_trained(tmp_path / "run").network.state_dict()
    assert all(torch.equal(rebuilt[k], v) for k, v in saved["model"].items())


def test_init_from_a_run_of_other_classes_end_to_end(tmp_path, caplog):
    three = make_image_folder(
        tmp_path / "three", classes=("a", "b", "c"), mode="RGB", size=(16, 16)
    )
    two = make_image_folder(tmp_path / "two", classes=("x", "y"), mode="RGB", size=(16, 16))
    train_here("data=imagefolder", f"data.root={three}", "model=simplecnn", "trainer.ema=0.9",
               *RUN_QUIETLY, output_dir=tmp_path / "source")  # fmt: skip
    caplog.set_level("INFO", logger="cnntrain")
    train_here("data=imagefolder", f"data.root={two}", "model=simplecnn",
               f"model.init_from={tmp_path / 'source'}", "model.freeze=backbone", *RUN_QUIETLY,
               output_dir=tmp_path / "target")  # fmt: skip
    source = load_checkpoint(tmp_path / "source" / "checkpoints" / "best.pt")["ema"]["weights"]
    target = load_checkpoint(tmp_path / "target" / "checkpoints" / "best.pt")["model"]
    assert target["fc2.weight"].shape == (2, 256) and source["fc2.weight"].shape == (3, 256)
    body = [k for k in target if not k.startswith("fc2.")]
    assert all(torch.equal(target[k], source[k]) for k in body)  # loaded, then kept frozen
    assert "loaded 23 tensors, re-initialised 2 of another shape (the head" in caplog.text
    assert "model.init_from re-initialised (another shape): fc2.weight, fc2.bias" in caplog.text


@pytest.mark.parametrize(
    ("arch", "weights", "side", "attribute", "value"),
    [
        ("googlenet", "DEFAULT", 224, "transform_input", True),  # inputs re-normalized inside
        ("inception_v3", "IMAGENET1K_V1", 299, "transform_input", True),
        ("googlenet", None, 224, "transform_input", False),
        ("vit_b_16", "IMAGENET1K_SWAG_E2E_V1", 384, "image_size", 384),
    ],
)
def test_a_pretrained_network_is_rebuilt_without_its_file_as_torchvision_built_it(
    arch, weights, side, attribute, value
):
    with torch.device("meta"):  # shapes only; no weights file exists in this test
        model = build_architecture(
            {"name": "torchvision", "arch": arch, "weights": weights}, InputSpec(3, side, side, 7)
        )
    assert getattr(model, attribute) == value
    assert not [name for name in model.state_dict() if "aux" in name.lower()]


# -- config ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("override", "key"),
    [
        ("model.freeze=layer1", "model.freeze"),
        ("model.init_from=/no/such/run", "model.init_from"),
        ("optimizer.head_lr_scale=0", "optimizer.head_lr_scale"),
        ("+model.weights=5", "model.weights"),
    ],
)
def test_bad_fine_tuning_values_are_refused_before_any_work(override, key):
    with pytest.raises(UserError, match=rf"^{re.escape(key)}="):
        validate(compose_config(override))


def test_model_keys_every_model_takes_default_to_off():
    cfg = compose_config("model=torchvision", "model.arch=mobilenet_v3_small")
    assert (cfg.model.freeze, cfg.model.init_from, cfg.model.weights) == ("none", None, None)
    validate(cfg)
    with pytest.raises(UserError, match="mobilenet_v3_smal'"):
        validate(compose_config("model=torchvision", "model.arch=mobilenet_v3_smal"))
