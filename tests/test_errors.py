"""Bad input: one line naming the key, value or path and the fix; exit 2; no traceback."""

import errno
import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image

from cnntrain.cli import train as cli_train
from cnntrain.config.rules import validate
from cnntrain.core import checkpoint, extras
from cnntrain.core.checkpoint import check_compatible, load_checkpoint, save_checkpoint
from cnntrain.core.errors import UserError
from cnntrain.core.spec import MAX_SIDE
from cnntrain.models import InputSpec, build_model
from cnntrain.models.registry import build_architecture
from cnntrain.trained import load
from tests.conftest import REPO, compose_config, run_cli, run_folders, train_here


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("optimizer.lr=0", "optimizer.lr=0 is not valid; use a learning rate > 0"),
        ("optimizer.lr=-0.1", "optimizer.lr=-0.1 is not valid; use a learning rate > 0"),
        ("data.batch_size=0", "data.batch_size=0 is not valid; use an integer ≥ 1"),
        ("trainer.epochs=0", "trainer.epochs=0 is not valid; use an integer ≥ 1"),
        ("data.val_split=1.0", "data.val_split=1.0 is not valid; use a fraction in [0, 1)"),
        ("data.val_split=-0.1", "data.val_split=-0.1 is not valid; use a fraction in [0, 1)"),
        (
            "data.max_train_samples=0",
            "data.max_train_samples=0 is not valid; use null or an integer ≥ 1",
        ),
        (
            "data.max_eval_samples=-5",
            "data.max_eval_samples=-5 is not valid; use null or an integer ≥ 1",
        ),
        (
            "trainer.target_accuracy=0",
            "trainer.target_accuracy=0 is not valid; use null or a fraction in (0, 1]",
        ),
        (
            "trainer.target_accuracy=90",
            "trainer.target_accuracy=90 is not valid; use null or a fraction in (0, 1]",
        ),
        ("trainer.device=tpu", "trainer.device='tpu' is not valid; use auto, cpu, cuda or cuda:N"),
        ("trainer.precision=8", "trainer.precision=8 is not valid; use auto, 32, tf32, bf16 or 16"),
        ("data.loader=gpu", "data.loader='gpu' is not valid; use auto, tensor or dataloader"),
        ("loss.label_smoothing=1", "loss.label_smoothing=1 is not valid; use a fraction in [0, 1)"),
        ("trainer.ema=1.5", "trainer.ema=1.5 is not valid; use null or a decay in (0, 1)"),
        (
            "data.image_size=[32]",
            "data.image_size=[32] is not valid; use null, a side in px, or [H, W]; 1 to 8192 px",
        ),
        (
            "data.image_size=[32,9000]",
            "data.image_size=[32, 9000] is not valid; use null, a side in px, or [H, W]; 1 to "
            "8192 px",
        ),
        (
            "data.resize=9000",
            "data.resize=9000 is not valid; use null or the short side's px before the crop, 1 "
            "to 8192",
        ),
    ],
)
def test_invalid_values_are_refused_with_key_value_and_what_is_allowed(override, message):
    with pytest.raises(UserError) as e:
        validate(compose_config(override, output_dir="unused"))
    assert str(e.value) == message


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_cuda_without_a_gpu_is_refused():
    with pytest.raises(UserError) as e:
        validate(compose_config("trainer.device=cuda", output_dir="unused"))
    assert str(e.value) == "trainer.device=cuda but no CUDA GPU is available; use auto or cpu"


def test_bad_augmentation_value_is_refused_by_name():
    with pytest.raises(UserError) as e:
        validate(compose_config("data.augment.crop_padding_mode=wrap", output_dir="unused"))
    assert str(e.value).startswith("data.augment.crop_padding_mode='wrap' is not valid")


@pytest.mark.parametrize(
    ("args", "line"),
    [
        (
            ["optimizer.lr=-1"],
            "cnntrain: error: optimizer.lr=-1 is not valid; use a learning rate > 0",
        ),
        (
            ["trainer.epoch=3"],
            "cnntrain: error: trainer.epoch is not a known key; did you mean trainer.epochs?",
        ),
        (
            ["+trainer.epoch=3"],
            "cnntrain: error: trainer.epoch is not a known key; did you mean trainer.epochs?",
        ),
        (
            ["model=resnet9000"],
            "cnntrain: error: model=resnet9000 is not an option of model; use one of: alexnet,",
        ),
        (
            ["model.name=resnet9000"],
            "cnntrain: error: model.name='resnet9000' is not a known model; use one of:",
        ),
        (["data=imagefolder"], "cnntrain: error: data=imagefolder needs data.root=PATH"),
        (
            ["data.root=/no/such/folder"],
            "cnntrain: error: data.root='/no/such/folder' does not exist",
        ),
        (["resume=/no/such/run"], "cnntrain: error: resume='/no/such/run' does not exist"),
        (
            ["+data.eval_augment.hflip=true"],
            "cnntrain: error: data.eval_augment.hflip=True would make evaluation random "
            "(augmenting the test set); evaluation sees each image as is; for flip test-time "
            "augmentation use trainer.tta=true",
        ),
    ],
)
def test_cli_prints_one_line_exits_2_and_creates_no_run_folder(
    tmp_path, monkeypatch, capsys, args, line
):
    """In this process: these are refused before Hydra starts (the console script itself is
    run as a process by the next test)."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", ["cnntrain", *args])
    with pytest.raises(SystemExit) as exited:
        cli_train.main()
    out, err = capsys.readouterr()
    assert exited.value.code == 2
    assert err.count("\n") == 1 and err.startswith(line), err
    assert "Traceback" not in out + err
    assert not (tmp_path / "outputs").exists()


def test_the_console_script_prints_the_one_line_and_exits_2(tmp_path):
    script = Path(sys.executable).parent / "cnntrain"  # the installed console script
    proc = subprocess.run([script, "optimizer.lr=-1"], cwd=tmp_path, capture_output=True,
                          text=True, timeout=120)  # fmt: skip
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr == "cnntrain: error: optimizer.lr=-1 is not valid; use a learning rate > 0\n"
    assert not (tmp_path / "outputs").exists()


def test_full_traceback_stays_available(tmp_path):
    proc = run_cli(
        "data.root=/no/such/folder", cwd=tmp_path, check=False, env={"HYDRA_FULL_ERROR": "1"}
    )
    assert proc.returncode != 0 and "Traceback" in proc.stderr and "UserError" in proc.stderr


def test_resume_refuses_to_change_anything_but_epochs_and_device(tmp_path):
    (tmp_path / "run").mkdir()
    proc = run_cli("resume=run", "optimizer.lr=0.5", cwd=tmp_path, check=False)
    assert proc.returncode == 2
    assert proc.stderr.startswith(
        "cnntrain: error: resume: optimizer.lr cannot change when continuing a run"
    )


def write_fake(path, content: bytes):
    path.write_bytes(content)
    return path


def test_truncated_corrupt_and_foreign_checkpoints_are_refused(tmp_path):
    model = build_model({"name": "simplecnn"}, InputSpec(3, 32, 32, 10))
    good = tmp_path / "good.pt"
    save_checkpoint(good, {"model": model.state_dict()})
    raw = good.read_bytes()
    cases = {
        write_fake(
            tmp_path / "truncated.pt", raw[: len(raw) // 2]
        ): "is truncated, corrupt or not a cnntrain",
        write_fake(
            tmp_path / "garbage.pt", b"\x00garbage" * 100
        ): "is truncated, corrupt or not a cnntrain",
        write_fake(tmp_path / "empty.pt", b""): "is truncated, corrupt or not a cnntrain",
    }
    foreign = tmp_path / "foreign.pt"
    torch.save({"state_dict": model.state_dict()}, foreign)
    cases[foreign] = "is not a cnntrain checkpoint"
    for path, message in cases.items():
        with pytest.raises(UserError, match=message) as e:
            load_checkpoint(path)
        assert str(path) in str(e.value)


def test_a_received_checkpoints_input_spec_is_checked():
    spec = InputSpec(3, 96, 128, 5, resize=110, interpolation="bicubic")
    assert InputSpec.from_dict(spec.to_dict(), "checkpoint a.pt") == spec
    older = {"channels": 1, "height": 28, "width": 28, "num_classes": 10}  # before `resize`
    assert InputSpec.from_dict(older, "checkpoint a.pt").squash is True
    shape = r"^checkpoint a\.pt: its input spec \(.*\) is not one cnntrain writes"
    values = r"^checkpoint a\.pt: its input spec has .*, which no run writes"
    cases = {
        "not a dict": shape,
        str: shape,
        frozenset(older.items()): shape,  # a mapping of another type
    }
    for bad, message in cases.items():
        with pytest.raises(UserError, match=message):
            InputSpec.from_dict(bad, "checkpoint a.pt")
    for change, message in (
        ({"extra": 1}, shape),  # a key of no field: was a TypeError traceback
        ({"channels": None}, values),
        ({"height": 0}, values),
        ({"width": 32.0}, values),
        ({"num_classes": True}, values),
        ({"resize": -1}, values),
        ({"squash": "no"}, values),
        ({"interpolation": 3}, values),
        ({"channels": 10**7}, values),  # was an allocator traceback building the first conv
        ({"channels": 5}, values),  # decoding makes grey or colour only
        ({"height": 10**9}, values),  # was a 65 TB allocation building the network
        ({"width": 8193}, values),
    ):
        with pytest.raises(UserError, match=message):
            InputSpec.from_dict({**older, **change}, "checkpoint a.pt")
    with pytest.raises(UserError, match=shape):
        InputSpec.from_dict({"channels": 3, "height": 32, "width": 32}, "checkpoint a.pt")
    # a resize past MAX_SIDE is one a run writes (pretrained weights' ratio at a large crop):
    # only its crop is ever made (data/geometry.py fit_image)
    assert InputSpec.from_dict({**older, "resize": 10**6}, "checkpoint a.pt").resize == 10**6


def test_code_in_a_checkpoint_is_never_run(tmp_path, monkeypatch):
    marker = tmp_path / "pwned"

    class Exploit:
        def __reduce__(self):  # unpickling with weights_only=False would run this
            return (exec, (f"open({str(marker)!r}, 'w').write('x')",))

    path = tmp_path / "evil.pt"
    torch.save({"format": "cnntrain-checkpoint/1", "model": Exploit()}, path)
    with pytest.raises(UserError, match=r"evil\.pt"):
        load_checkpoint(path)
    assert not marker.exists()
    torch.load(path, weights_only=False)  # the exploit is real: a plain load runs it
    assert marker.exists()


def test_checkpoint_of_another_architecture_or_class_count_is_refused(tmp_path):
    simple = build_model({"name": "simplecnn"}, InputSpec(3, 32, 32, 10))
    path = tmp_path / "simple.pt"
    save_checkpoint(path, {"model": simple.state_dict()})
    state = load_checkpoint(path)
    other = build_model({"name": "cifar10cnn"}, InputSpec(3, 32, 32, 10))
    with pytest.raises(UserError, match="another architecture"):
        check_compatible(state, other, path)
    more_classes = build_model({"name": "simplecnn"}, InputSpec(3, 32, 32, 100))
    with pytest.raises(UserError, match=r"fc2.weight is \(10, 256\) there, \(100, 256\) here"):
        check_compatible(state, more_classes, path)
    weights = state["model"]
    for change, message in (  # each was a TypeError, KeyError or AttributeError traceback
        ({"model": "x"}, "model is not a network's weights"),
        ({"model": {**weights, "fc2.bias": [0.0] * 10}}, "model is not a network's weights"),
        ({"ema": [1, 2]}, "ema.weights is not a network's weights"),
        ({"ema": {"updates": 3}}, "ema.weights is not a network's weights"),
        ({"ema": {"weights": {"fc2.bias": torch.zeros(10)}}}, "ema.weights's layers differ"),
        ({"model": {k: v.long() for k, v in weights.items()}}, "is torch.int64 there"),
        ({"model": {**weights, 3: torch.zeros(1)}}, "model is not a network's weights"),
        ({"model": {**weights, "fc2.bias": weights["fc2.bias"].to_sparse()}}, "model is not"),
        ({"model": {**weights, "fc2.bias": torch.empty(10, device="meta")}}, "model is not"),
    ):
        with pytest.raises(UserError, match=rf"^checkpoint .*simple\.pt.*{message}"):
            check_compatible({**state, **change}, simple, path)
    check_compatible({**state, "ema": {"weights": weights, "updates": 3}}, simple, path)


def test_a_network_is_checked_on_the_meta_device_else_built_then_checked(tmp_path, monkeypatch):
    spec, path = InputSpec(3, 32, 32, 10), tmp_path / "a.pt"
    devices = []  # where each build put its tensors, and when the check ran

    def recorded(model_cfg, spec):
        network = build_architecture(model_cfg, spec)
        devices.append(next(network.parameters()).device.type)
        return network

    monkeypatch.setattr(load, "build_architecture", recorded)
    monkeypatch.setattr(load, "check_compatible", lambda *a: devices.append("checked"))
    simple = build_architecture({"name": "simplecnn"}, spec).state_dict()
    load.checked_network({"name": "simplecnn"}, spec, {"model": simple}, path)
    assert devices == ["meta", "checked", "cpu"]  # shapes checked before any memory is taken
    # torchvision's RegNet reads a value while it is built ("Cannot copy out of meta tensor"):
    # built for real, then checked
    devices.clear()
    regnet = {"name": "torchvision", "arch": "regnet_x_400mf"}
    weights = build_architecture(regnet, spec).state_dict()
    load.checked_network(regnet, spec, {"model": weights}, path)
    assert devices == ["cpu", "checked"]
    monkeypatch.undo()
    other = {"model": {**weights, "fc.bias": torch.zeros(11)}}
    with pytest.raises(UserError, match=r"fc\.bias is \(11,\) there, \(10,\) here"):
        load.checked_network(regnet, spec, other, path)


def test_a_vgg_of_the_largest_side_is_built_and_checked_without_its_memory():
    # VGG's classifier does not depend on the image size: a received spec of 8,192 px passes
    # the shape check, and building the network walked a real 8192² image through its
    # features to size it (17 GB for the first block). Now the walk is on the meta device.
    # Each size is built in a fresh process: its peak memory is that build's alone.
    script = (
        "import sys, torch\n"
        "from cnntrain.models import InputSpec, build_model\n"
        "from cnntrain.training.memory import host_peak_kib\n"
        "side = int(sys.argv[1])\n"
        "with torch.device('meta'):\n"
        "    build_model({'name': 'vgg11'}, InputSpec(3, side, side, 10))\n"
        "build_model({'name': 'vgg11'}, InputSpec(3, side, side, 10))\n"
        "print(host_peak_kib())\n"
    )
    peaks = [
        float(subprocess.run([sys.executable, "-c", script, str(side)], capture_output=True,
                             text=True, check=True, timeout=120, cwd=REPO).stdout)
        for side in (32, MAX_SIDE)
    ]  # fmt: skip
    assert peaks[1] - peaks[0] < 64 * 1024  # KiB: no more than at 32 px


def test_a_failed_write_is_reported_and_the_previous_checkpoint_survives(tmp_path, monkeypatch):
    model = build_model({"name": "simplecnn"}, InputSpec(3, 32, 32, 10))
    path = tmp_path / "checkpoints" / "last.pt"
    save_checkpoint(path, {"model": model.state_dict(), "epoch": 1})

    def disk_full(obj, file):  # writes a little, then the disk is full
        with open(file, "wb") as f:
            f.write(b"partial")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(checkpoint.torch, "save", disk_full)
    with pytest.raises(UserError) as e:
        save_checkpoint(path, {"model": model.state_dict(), "epoch": 2})
    assert (
        str(e.value)
        == f"could not write {path}: No space left on device; free space or fix permissions"
    )
    monkeypatch.undo()
    assert load_checkpoint(path)["epoch"] == 1
    assert [p.name for p in path.parent.iterdir()] == ["last.pt"]  # no temporary file left behind


def test_divergence_stops_the_run_naming_epoch_step_and_that_no_checkpoint_exists(tmp_path):
    args = ("experiment=smoke", "trainer.epochs=3", "scheduler=none", "data.batch_size=32",
            "optimizer.lr=1e4", "logger=none", "trainer.plots=false")  # fmt: skip
    with pytest.raises(UserError) as e:
        train_here(*args, output_dir=tmp_path / "run")
    assert "training diverged" in str(e.value) and "epoch 1" in str(e.value)
    assert "no checkpoint was written" in str(e.value)


@pytest.mark.parametrize("fault", ["nan-step:2:1", "nan-sigint-step:2:1"])
def test_divergence_points_to_the_last_good_checkpoint_and_never_saves_a_nan(tmp_path, fault):
    """With a stop request at the NaN step too, the finite-loss check still runs first: the NaN
    weights must not become last.pt (which the message calls the last good checkpoint)."""
    run = tmp_path / "run"
    args = ("experiment=smoke", "trainer.epochs=3", "data.batch_size=32", "logger=none",
            "trainer.plots=false", "+callbacks.fault._target_=tests.faults.Fault",
            f"+callbacks.fault.at={fault}")  # fmt: skip
    with pytest.raises(UserError) as e:
        train_here(*args, output_dir=run)
    assert str(e.value) == (
        "loss is not finite at epoch 2, step 1: training diverged; the last good "
        f"checkpoint is {run / 'checkpoints' / 'last.pt'} (start a new run with a lower "
        "optimizer.lr or with trainer.grad_clip set)"
    )
    last = torch.load(run / "checkpoints" / "last.pt", weights_only=True)
    assert last["epoch"] == 1 and (last["progress"]["epoch"], last["progress"]["step"]) == (1, 0)
    assert all(torch.isfinite(w).all() for w in last["model"].values())


def test_a_missing_extra_is_one_line_naming_the_pip_command(monkeypatch, capsys, tmp_path):
    """logger=mlflow, a joblib or submitit launcher, the Optuna sweeper without their packages:
    one line naming the pip command that fits the install, before any data or model is built."""
    found = importlib.util.find_spec
    missing = ("mlflow", "optuna", "hydra_plugins.hydra_joblib_launcher")
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name in missing else found(name, *a))  # fmt: skip
    with pytest.raises(UserError, match=r"^logger=mlflow needs mlflow, which is not installed: "
                                        r"pip install -e '\.\[mlflow\]'"):  # fmt: skip
        validate(compose_config("logger=[tensorboard,mlflow]"))
    for args in (["-m", "hydra/launcher=joblib"], ["-m", "hparams_search=fashion_optuna"]):
        with pytest.raises(SystemExit) as stop:
            cli_train.check_plugins(args)
        err = capsys.readouterr().err
        assert stop.value.code == 2 and err.count("\n") == 1 and "[sweeps]" in err, err
    monkeypatch.setattr(extras, "CHECKOUT", tmp_path)  # as installed from a wheel
    assert extras.install_command("onnx") == "pip install 'cnntrain[onnx]'"


def test_a_run_that_fails_after_its_folder_is_made_says_why_in_its_train_log(tmp_path):
    root = tmp_path / "pets"
    for name in ("cat", "dog"):
        (root / "train" / name).mkdir(parents=True)
    Image.new("RGB", (8, 8)).save(root / "train" / "cat" / "a.png")
    (root / "train" / "dog" / "b.png").write_bytes(b"not an image")
    proc = run_cli("data=imagefolder", f"data.root={root}", "logger=none", cwd=tmp_path,
                   check=False)  # fmt: skip
    assert proc.returncode == 2 and "dog" in proc.stderr.strip().splitlines()[-1], proc.stderr
    (run,) = run_folders(tmp_path)
    log = (run / "train.log").read_text()
    assert "[ERROR]" in log and "no readable images: dog" in log
