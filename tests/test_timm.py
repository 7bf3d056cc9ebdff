"""model=timm: timm's models sized for the data, pretrained weights from a local Hugging Face
cache the tests write (the network is off: any attempt fails loudly), freezing, and a run."""

import json
import shutil
import socket

import pytest
import torch

from cnntrain.core.errors import UserError
from cnntrain.models import InputSpec, build_model, data_defaults, head_name
from cnntrain.models.registry import build_architecture
from cnntrain.trained.load import load_trained
from tests.conftest import make_image_folder, run_cli, train_here

timm = pytest.importorskip("timm")
safetensors_torch = pytest.importorskip("safetensors.torch")

SPEC = InputSpec(3, 32, 32, 7)
COMMIT = "0123456789abcdef0123456789abcdef01234567"


@pytest.fixture(autouse=True)
def no_network(monkeypatch):
    def refuse(*args, **kwargs):
        raise OSError("network is off in tests")

    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    monkeypatch.setattr(socket.socket, "connect", refuse)


@pytest.fixture
def hf_cache(tmp_path, monkeypatch):
    """An empty Hugging Face hub cache (what HF_HUB_CACHE names), and an empty torch hub."""
    import huggingface_hub.constants

    cache = tmp_path / "hf" / "hub"
    cache.mkdir(parents=True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    return cache


def write_hub_weights(cache, name: str) -> dict:
    """Random 1000-class weights of timm's `name` (arch.tag) where the hub keeps its
    model.safetensors: models--timm--NAME/snapshots/COMMIT/, with refs/main naming COMMIT."""
    state = timm.create_model(name.partition(".")[0], num_classes=1000).state_dict()
    repo = cache / f"models--timm--{name}"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(COMMIT)
    snapshot = repo / "snapshots" / COMMIT
    snapshot.mkdir(parents=True)
    safetensors_torch.save_file({k: v.contiguous() for k, v in state.items()},
                                str(snapshot / "model.safetensors"))  # fmt: skip
    return state


def timm_cfg(arch="resnet18", weights=None, freeze="none") -> dict:
    return {"name": "timm", "arch": arch, "weights": weights, "freeze": freeze}


@pytest.mark.parametrize(
    "arch, side", [("resnet18", 32), ("convnext_atto", 32), ("vit_tiny_patch16_224", 224)]
)
def test_timm_models_give_one_logit_per_class_from_their_classifier(arch, side):
    spec = InputSpec(3, side, side, 7)
    model = build_model(timm_cfg(arch), spec).eval()
    with torch.no_grad():
        assert model(torch.randn(2, 3, side, side)).shape == (2, 7)
    assert head_name(model) == model.pretrained_cfg["classifier"]  # head.py finds timm's head


def test_a_vit_built_for_224_px_refuses_32_px_images_in_one_line():
    with pytest.raises(UserError) as raised:
        build_model(timm_cfg("vit_tiny_patch16_224"), SPEC)
    message = str(raised.value)
    assert message.startswith("model.arch=vit_tiny_patch16_224 cannot take 32×32 images")
    assert message.endswith("set data.image_size=224") and "\n" not in message


def test_pretrained_weights_come_from_the_local_hugging_face_cache(hf_cache):
    saved = write_hub_weights(hf_cache, "resnet18.a1_in1k")
    for weights in ("a1_in1k", "DEFAULT"):  # DEFAULT: timm's default tag, a1_in1k
        model = build_model(timm_cfg(weights=weights), SPEC)
        state = model.state_dict()
        body = [k for k in saved if not k.startswith("fc.")]
        assert all(torch.equal(state[k], saved[k]) for k in body)
        assert state["fc.weight"].shape == (7, 512)  # a fresh head for 7 classes
    assert data_defaults(timm_cfg(weights="a1_in1k")) == {
        "channels": 3, "image_size": (224, 224), "resize": 235,  # ⌊224 / crop_pct 0.95⌋
        "interpolation": "bicubic", "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225],
    }  # fmt: skip


def test_missing_pretrained_weights_name_the_repository_and_file_to_fetch(hf_cache):
    with pytest.raises(UserError) as raised:
        build_model(timm_cfg(weights="a2_in1k"), SPEC)
    message = str(raised.value)
    assert "\n" not in message
    assert message.startswith("model.weights: timm's resnet18.a2_in1k weights are not in")
    assert "model.safetensors of the Hugging Face repository timm/resnet18.a2_in1k" in message
    assert str(hf_cache) in message


def test_a_corrupt_cached_copy_is_named(hf_cache):
    write_hub_weights(hf_cache, "resnet18.a1_in1k")
    copy = next(hf_cache.glob("models--timm--resnet18.a1_in1k/snapshots/*/model.safetensors"))
    copy.write_bytes(b"not safetensors")
    with pytest.raises(UserError, match=f"{copy} could not be read as timm's resnet18.a1_in1k"):
        build_model(timm_cfg(weights="a1_in1k"), SPEC)


def test_freeze_backbone_trains_the_head_only(hf_cache):
    write_hub_weights(hf_cache, "resnet18.a1_in1k")
    model = build_model(timm_cfg(weights="a1_in1k", freeze="backbone"), SPEC)
    assert [n for n, p in model.named_parameters() if p.requires_grad] == ["fc.weight", "fc.bias"]


def test_a_state_dict_file_loads_and_a_misfit_is_refused(tmp_path):
    source = build_model(timm_cfg(), SPEC)
    torch.save(source.state_dict(), tmp_path / "mine.pt")
    model = build_model(timm_cfg(weights=str(tmp_path / "mine.pt")), SPEC)
    mine, theirs = model.state_dict(), source.state_dict()
    assert all(torch.equal(mine[k], theirs[k]) for k in theirs)
    torch.save(build_model(timm_cfg("resnet34"), SPEC).state_dict(), tmp_path / "other.pt")
    with pytest.raises(UserError, match="does not fit timm's resnet18"):
        build_model(timm_cfg(weights=str(tmp_path / "other.pt")), SPEC)


@pytest.mark.parametrize(
    "arch, weights, message",
    [
        ("resnet18x", None, "model.arch='resnet18x' is not a timm model; close matches: "),
        ("resnet18.a1_in1k", None, "use model.arch=resnet18 model.weights=a1_in1k"),
        ("resnet18", "a9_in1k", "is neither a pretrained tag of timm's resnet18 (DEFAULT, a1_in1k"),
    ],
)
def test_bad_arch_or_weights_are_refused_in_one_line(arch, weights, message):
    with pytest.raises(UserError, match=message.replace("(", r"\(").replace(".", r"\.")):
        build_model(timm_cfg(arch, weights), SPEC)


def test_a_timm_model_trains_from_cached_weights_with_a_frozen_backbone(hf_cache, tmp_path):
    write_hub_weights(hf_cache, "resnet18.a1_in1k")
    data = make_image_folder(tmp_path / "data", per_class=8, mode="RGB", size=(16, 16))
    run = tmp_path / "run"
    results = train_here("data=imagefolder", f"data.root={data}", "model=timm",
                         "model.weights=a1_in1k", "model.freeze=backbone", "data.image_size=32",
                         "data.batch_size=8", "trainer.epochs=1", "logger=none",
                         "trainer.plots=false", output_dir=run)  # fmt: skip
    assert results["model"] == "timm" and results["epochs"] == 1
    saved = torch.load(run / "checkpoints" / "last.pt", weights_only=True)
    assert saved["trainable"] == ["fc.weight", "fc.bias"]
    assert saved["config"]["model"]["arch"] == "resnet18"
    assert json.loads((run / "results.json").read_text())["test/acc"] >= 0
    # The run folder on a machine without the weights in its cache: used as it is (it needed
    # the cache and read the weights only to overwrite them).
    shutil.rmtree(hf_cache / "models--timm--resnet18.a1_in1k")
    trained = load_trained(run)
    best = torch.load(run / "checkpoints" / "best.pt", weights_only=True)["model"]
    assert all(torch.equal(t, best[k]) for k, t in trained.network.state_dict().items())


def test_a_run_from_a_weights_file_is_rebuilt_and_resumed_without_it(tmp_path):
    gone = tmp_path / "mine.pt"  # trained from it on another machine: not here
    network = build_architecture(timm_cfg(weights=str(gone)), SPEC)
    assert network.state_dict().keys() == build_model(timm_cfg(), SPEC).state_dict().keys()
    torch.save(network.state_dict(), gone)
    data = make_image_folder(tmp_path / "data", per_class=8, mode="RGB", size=(16, 16))
    run = tmp_path / "run"
    train_here("data=imagefolder", f"data.root={data}", "model=timm", f"model.weights={gone}",
               "data.image_size=32", "data.batch_size=8", "trainer.epochs=1", "logger=none",
               "trainer.plots=false", output_dir=run)  # fmt: skip
    gone.unlink()  # was: "model.weights=… is neither a pretrained tag … nor an existing file"
    run_cli(f"resume={run}", "trainer.epochs=2", cwd=tmp_path)
    assert json.loads((run / "results.json").read_text())["epochs"] == 2
