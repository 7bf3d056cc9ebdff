"""What a GPU run depends on, checked on CPU where the mechanism allows (bench/gpu_suite.py checks
the rest on a GPU): no CUDA reseeding by the data path, cuDNN and TF32 settings, the training
GPU's bf16, fp16 steps skipped without a host sync, torch.compile warmed up before epoch 1."""

import contextlib

import pytest
import torch
from torch import nn

from cnntrain.core.device import native_bf16
from cnntrain.core.errors import UserError
from cnntrain.data.augment.options import read_options
from cnntrain.data.loaders import SampleDataset
from cnntrain.training import compiling
from cnntrain.training.ema import EMA
from cnntrain.training.mixing import BatchMix
from cnntrain.training.optim import build_optimizer, build_scheduler
from cnntrain.training.precision import Arithmetic, autocast_dtype, set_cuda_math
from cnntrain.training.step import StepParts, Totals, optimizer_step, take_back_skipped_steps
from tests.conftest import compose_config, make_image_folder, read_jsonl, train_here

CPU = torch.device("cpu")


def refuse_cuda_reseeding(monkeypatch):
    def reseed(seed):
        raise AssertionError("the data path reseeded every GPU's generator")

    monkeypatch.setattr(torch.cuda, "manual_seed_all", reseed)


def test_per_image_and_per_batch_draws_leave_the_gpus_generators_alone(tmp_path, monkeypatch):
    from torchvision.transforms import v2

    from cnntrain.data.sources import folder_source

    refuse_cuda_reseeding(monkeypatch)
    root = make_image_folder(tmp_path / "data", splits=("train",), per_class=2)
    source = folder_source(root / "train", {"class a": 0, "class b": 1})
    dataset = SampleDataset(
        source,
        1,
        (20, 24),
        seed=0,
        transform=v2.Compose([v2.RandomCrop(20, padding=2), v2.PILToTensor()]),
    )
    images = torch.rand(4, 3, 8, 8)
    before = torch.get_rng_state()
    image, _ = dataset[(0, 1)]
    assert image.shape[-2:] == (20, 20)
    mix = BatchMix(read_options(compose_config("data.augment.mixup=0.2").data.augment), 10, 0)
    _, soft = mix(images, torch.arange(4), epoch=0, batch=0)
    assert soft.shape == (4, 10) and torch.equal(torch.get_rng_state(), before)


@pytest.fixture
def cuda_math_flags():
    flags = (torch.backends.cudnn.benchmark, torch.backends.cuda.matmul.fp32_precision,
             torch.backends.cudnn.conv.fp32_precision)  # fmt: skip
    yield
    torch.backends.cudnn.benchmark = flags[0]
    torch.backends.cuda.matmul.fp32_precision = flags[1]
    torch.backends.cudnn.conv.fp32_precision = flags[2]


@pytest.mark.parametrize(
    ("precision", "mode"), [("32", "ieee"), ("tf32", "tf32"), ("auto", "tf32")]
)
def test_on_a_gpu_cudnn_autotunes_and_only_precision_32_is_strict_fp32(
    precision, mode, cuda_math_flags
):
    torch.backends.cudnn.benchmark = False
    set_cuda_math(precision, torch.device("cuda:1"))
    assert torch.backends.cudnn.benchmark
    assert torch.backends.cuda.matmul.fp32_precision == torch.backends.cudnn.conv.fp32_precision
    assert torch.backends.cuda.matmul.fp32_precision == mode


def test_precision_tf32_is_plain_fp32_arithmetic_and_a_bad_value_is_named():
    assert autocast_dtype("tf32", CPU) is None
    from cnntrain.config.rules import validate

    with pytest.raises(UserError, match=r"trainer\.precision='fp8'.*tf32"):
        validate(compose_config("trainer.precision=fp8"))
    with pytest.raises(UserError, match=r"trainer\.compile='fast'.*reduce-overhead"):
        validate(compose_config("trainer.compile=fast"))
    validate(compose_config("trainer.compile=max-autotune"))


def test_native_bf16_asks_the_training_gpu_not_the_current_one(monkeypatch):
    entered = []

    @contextlib.contextmanager
    def on_device(device):
        entered.append(torch.device(device).index)
        yield

    monkeypatch.setattr(torch.cuda, "device", on_device)
    monkeypatch.setattr(
        torch.cuda, "is_bf16_supported", lambda including_emulation: entered[-1] == 2
    )
    assert native_bf16(torch.device("cuda:2"))
    assert not native_bf16(torch.device("cuda:0"))


def fp16_parts(ema_decay=0.5):
    model = nn.Sequential(nn.Linear(4, 3))
    arithmetic = Arithmetic(CPU, torch.float16)
    cfg = compose_config("optimizer=sgd", "optimizer.lr=0.1", "scheduler=cosine")
    optimizer = build_optimizer(cfg.optimizer, model, fused=arithmetic.scaled)
    scheduler = build_scheduler(cfg.scheduler, optimizer, epochs=1, steps_per_epoch=10)
    return StepParts(model, optimizer, scheduler, nn.CrossEntropyLoss(), arithmetic, None,
                     EMA(model, ema_decay))  # fmt: skip


def backward(parts, overflow: bool):
    parts.optimizer.zero_grad(set_to_none=True)
    x, y = torch.randn(8, 4), torch.randint(3, (8,))
    with parts.arithmetic.autocast():
        loss = parts.loss_fn(parts.model(x).float(), y)
    parts.arithmetic.scaler.scale(loss).backward()
    if overflow:  # what a too-large loss scale does to fp16 gradients
        next(parts.model.parameters()).grad[0, 0] = float("inf")


def snapshot(parts):
    return [t.clone() for t in (*parts.model.state_dict().values(),
                                *parts.ema.module.state_dict().values())]  # fmt: skip


def test_an_overflowed_fp16_step_moves_no_weight_no_average_and_no_schedule(monkeypatch):
    parts, totals = fp16_parts(), Totals.zeros(CPU)
    assert parts.optimizer.defaults["fused"]  # skips on the device: GradScaler reads no flag
    synced = []
    monkeypatch.setattr(torch.Tensor, "item", lambda t: synced.append(t) or t.tolist())
    lr0 = parts.optimizer.param_groups[0]["lr"]
    before = snapshot(parts)
    backward(parts, overflow=True)
    optimizer_step(parts, totals)
    assert not synced  # no host read in the step
    assert all(torch.equal(a, b) for a, b in zip(before, snapshot(parts), strict=True))
    assert parts.scheduler.last_epoch == 1  # moved, to be taken back at the next sync
    take_back_skipped_steps(parts, totals)
    assert parts.scheduler.last_epoch == 0 and parts.optimizer.param_groups[0]["lr"] == lr0
    assert float(totals.skipped) == 0

    backward(parts, overflow=False)
    optimizer_step(parts, totals)
    take_back_skipped_steps(parts, totals)
    after = snapshot(parts)
    weight, average = after[0], after[2]
    assert not torch.equal(weight, before[0]) and not torch.equal(average, before[2])
    reference = fp16_parts().scheduler  # a schedule that took one step
    reference.optimizer.step()  # no gradients: nothing moves, but the order is kept
    reference.step()
    assert parts.scheduler.last_epoch == 1
    assert parts.optimizer.param_groups[0]["lr"] == reference.optimizer.param_groups[0]["lr"] != lr0


def test_every_graph_compiles_before_epoch_1_and_is_timed_apart(tmp_path, monkeypatch):
    from torch._dynamo.testing import CompileCounter

    counter, resets = CompileCounter(), []
    real_reset = torch._dynamo.reset
    monkeypatch.setattr(torch._dynamo, "reset", lambda: resets.append(1) or real_reset())
    # The real warm-up and recompilation rules, with a backend that counts graphs, not inductor.
    real_compile = torch.compile
    monkeypatch.setattr(torch, "compile", lambda model, mode: real_compile(model, backend=counter))
    seen = []
    real_warm_up = compiling.warm_up

    def warm_up(*args):
        seconds = real_warm_up(*args)
        seen.append(counter.frame_count)
        return seconds

    monkeypatch.setattr("cnntrain.train.warm_up", warm_up)
    # 40 training images in batches of 16; 24 val and 24 test images evaluated in batches of
    # 10: a ragged last batch of 4 images.
    root = make_image_folder(tmp_path / "data", splits=("train", "val", "test"), per_class=20)
    run = tmp_path / "run"
    results = train_here("data=imagefolder", f"data.root={root}", "data.max_eval_samples=24",
                         "model=simplecnn", "trainer.epochs=2", "trainer.compile=reduce-overhead",
                         "data.batch_size=16", "data.eval_batch_size=10", "trainer.tta=true",
                         "logger=none", "trainer.plots=false", output_dir=run)  # fmt: skip
    assert resets and seen[0] > 0
    assert counter.frame_count == seen[0]  # nothing compiled inside the epochs
    assert results["compile_s"] > 0
    assert results["train_time_s"] == pytest.approx(
        read_jsonl(run / "metrics.jsonl")[-1]["elapsed_s"]
    )
