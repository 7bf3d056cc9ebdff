"""Training pieces on their own: EMA and its warm-up, flip TTA, Totals, the loop's event guard,
evaluation mode, BatchNorm folding, and bf16's CPU hazard."""

import logging
import subprocess
import sys
from types import SimpleNamespace

import pytest
import torch
from omegaconf import OmegaConf
from torch import nn

from cnntrain.metrics import hits
from cnntrain.training import callbacks
from cnntrain.training.ema import EMA
from cnntrain.training.evaluate import evaluate
from cnntrain.training.events import Callback
from cnntrain.training.loop import Loop
from cnntrain.training.precision import Arithmetic
from cnntrain.training.state import RunState
from cnntrain.training.step import Totals


def test_ema_decay_warms_up_as_1_plus_n_over_10_plus_n_then_holds():
    model = nn.Linear(1, 1, bias=False)
    nn.init.zeros_(model.weight)
    ema = EMA(model, decay=0.5)
    average = 0.0
    for n, value in enumerate([1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0, 10.0, 11.0], 1):
        with torch.no_grad():
            model.weight.fill_(value)
        ema.update()
        decay = min(0.5, (1 + n) / (10 + n))  # 2/11, 3/12, … then 0.5 from n = 8
        average = decay * average + (1 - decay) * value
        assert ema.module.weight.item() == pytest.approx(average, rel=1e-6), n
    assert ema.updates == 11


def test_ema_copies_batchnorm_counters_and_round_trips_its_state():
    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2))
    ema = EMA(model, decay=0.9)
    model(torch.randn(4, 1, 5, 5))  # one BN update: num_batches_tracked 1
    ema.update()
    assert ema.module[1].num_batches_tracked.item() == 1
    assert not ema.module.training and not any(p.requires_grad for p in ema.module.parameters())
    other = EMA(model, decay=0.9)
    other.load_state_dict(ema.state_dict())
    assert other.updates == 1
    for a, b in zip(other.module.state_dict().values(), ema.module.state_dict().values(),
                    strict=True):  # fmt: skip
        assert torch.equal(a, b)


class ListLoader:
    """What evaluate() needs of a loader: len() and batches()."""

    def __init__(self, batches):
        self.items = batches

    def __len__(self):
        return len(self.items)

    def batches(self, epoch=0, start=0):
        yield from self.items


def test_flip_tta_averages_the_logits_of_each_image_and_its_mirror():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(2 * 3, 4))  # not mirror-symmetric
    x, y = torch.randn(5, 1, 2, 3), torch.tensor([0, 1, 2, 3, 0])
    loader = ListLoader([(x, y)])
    plain = evaluate(model, loader, Arithmetic(torch.device("cpu"), None), keep_outputs=True)
    tta = evaluate(model, loader, Arithmetic(torch.device("cpu"), None, tta=True),
                   keep_outputs=True)  # fmt: skip
    expected = (model(x) + model(x.flip(-1))) / 2
    assert torch.allclose(tta["logits"], expected)
    assert not torch.allclose(plain["logits"], tta["logits"])
    loss = nn.functional.cross_entropy(expected, y).item()
    assert tta["loss"] == pytest.approx(loss, rel=1e-6) and tta["count"] == 5


def test_totals_sum_losses_weighted_by_batch_size_and_find_the_first_bad_step():
    totals = Totals.zeros("cpu")
    logits = torch.tensor([[2.0, 0.0], [0.0, 2.0], [2.0, 0.0]])
    totals.add(torch.tensor(1.0), hits(logits[:2], torch.tensor([0, 0])), step=0)  # 1 of 2 right
    totals.add(torch.tensor(4.0), hits(logits[2:], torch.tensor([0])), step=1)  # 1 of 1 right
    assert totals.read() == pytest.approx(((1.0 * 2 + 4.0 * 1) / 3, 2 / 3))
    assert int(totals.first_bad_step) == -1
    totals.add(torch.tensor(float("nan")), hits(logits[:1], torch.tensor([0])), step=2)
    totals.add(torch.tensor(float("inf")), hits(logits[:1], torch.tensor([0])), step=3)
    assert int(totals.first_bad_step) == 2  # the first, not the latest
    restored = Totals.from_state(totals.state_dict(), "cpu")
    assert restored.count == 5 and torch.equal(restored.correct, totals.correct)


class Broken(Callback):
    def __init__(self, is_tracker: bool):
        self.is_tracker = is_tracker

    def on_epoch_end(self, loop, row):
        raise ConnectionError("server went away")


def loop_with(callbacks: dict) -> Loop:
    loop = Loop.__new__(Loop)  # emit() needs only the callbacks
    loop.callbacks = callbacks
    return loop


def test_a_tracker_failing_mid_run_is_dropped_with_a_warning_and_training_goes_on(caplog):
    loop = loop_with({"mlflow": Broken(is_tracker=True)})
    with caplog.at_level(logging.WARNING):
        loop.emit("on_epoch_end", {"epoch": 1})
    assert loop.callbacks == {}
    assert "mlflow stopped tracking at on_epoch_end (server went away)" in caplog.text


def test_any_other_callback_failing_ends_the_run():
    loop = loop_with({"checkpoints": Broken(is_tracker=False)})
    with pytest.raises(ConnectionError):
        loop.emit("on_epoch_end", {"epoch": 1})


class Recorder(nn.Module):
    """Notes, at each forward pass, whether it ran in train mode and with gradients."""

    def __init__(self):
        super().__init__()
        self.linear = nn.Linear(6, 4)
        self.seen = []

    def forward(self, x):
        self.seen.append((self.training, torch.is_grad_enabled()))
        return self.linear(x.flatten(1))


def test_evaluation_runs_in_eval_mode_without_gradients_and_restores_the_mode():
    model = Recorder().train()
    loader = ListLoader([(torch.randn(3, 1, 2, 3), torch.tensor([0, 1, 2]))] * 2)
    evaluate(model, loader, Arithmetic(torch.device("cpu"), None, tta=True))
    assert model.seen == [(False, False)] * 4  # two batches, each with its mirror
    assert model.training  # back in train mode for the next epoch


JOB_AFTER_A_BIG_ONE = """
import numpy as np, torch
from cnntrain.training.memory import host_peak_kib, reset_peak_memory
big = np.ones(300 * 2**20 // 8)  # 300 MiB, touched
del big
before = host_peak_kib()
reset_peak_memory(torch.device("cpu"))
print(before, host_peak_kib())
"""


def test_peak_memory_is_this_jobs_not_the_process_lifetimes():
    # In a fresh process: in a test worker the resident set left by earlier tests (heaps that
    # are freed but kept) can exceed the 300 MiB peak, hiding the reset.
    out = subprocess.run([sys.executable, "-c", JOB_AFTER_A_BIG_ONE], capture_output=True,
                         text=True, check=True, timeout=120).stdout  # fmt: skip
    before, after = map(float, out.split())
    assert after < before - 200 * 2**10  # the 300 MiB of an earlier job are forgotten


def test_evaluation_folds_batchnorm_into_convolutions_with_the_same_outputs():
    from cnntrain.config.compose import compose_config
    from cnntrain.core.spec import InputSpec
    from cnntrain.models import build_model
    from cnntrain.models.fold import folded

    model = build_model(compose_config(["model=cifar10cnn"]).model, InputSpec(3, 32, 32, 10))
    model = model.to(memory_format=torch.channels_last)
    with torch.no_grad():  # BatchNorm statistics that are not the identity
        for bn in (m for m in model.modules() if isinstance(m, nn.BatchNorm2d)):
            bn.running_mean.uniform_(-1, 1)
            bn.running_var.uniform_(0.5, 2)
    x = torch.randn(6, 3, 32, 32).to(memory_format=torch.channels_last)
    model.eval()
    net = folded(model)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in net.modules())
    assert any(isinstance(m, nn.BatchNorm2d) for m in model.modules())  # the model is untouched
    conv = next(p for p in net.parameters() if p.dim() == 4)
    assert conv.is_contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        torch.testing.assert_close(net(x), model(x), rtol=1e-5, atol=1e-5)

    class Untraceable(nn.Module):  # control flow on a tensor's value: torch.fx cannot trace it
        def __init__(self):
            super().__init__()
            self.conv, self.bn = nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4)

        def forward(self, x):
            return self.bn(self.conv(x)) if x.sum() > 0 else x

    untraceable = Untraceable().eval()
    assert folded(untraceable) is untraceable
    assert folded(model.train()) is model  # only an eval-mode model is folded


def test_a_conv_strided_past_a_narrow_input_keeps_auto_precision_off_bf16_on_cpus(caplog):
    """oneDNN's bf16 weight gradient is garbage for such a conv on AVX512-BF16 CPUs (torch
    2.14.1): ResNet-18's last stage on 16 px images. `auto` then trains in float32."""
    from cnntrain.core.device import native_bf16
    from cnntrain.training.precision import autocast_dtype, bf16_gradient_hazard

    narrow = nn.Sequential(nn.Conv2d(3, 8, 3, stride=4, padding=1), nn.Conv2d(8, 8, 3, 2, 1))
    assert bf16_gradient_hazard(narrow, (3, 4, 4)) == "1"  # 1×1 input, stride 2
    assert bf16_gradient_hazard(narrow, (3, 8, 8)) is None  # 2×2 input, stride 2
    pointwise = nn.Sequential(nn.Conv2d(3, 8, 1, stride=4))  # a 1×1 kernel sees no padding
    assert bf16_gradient_hazard(pointwise, (3, 2, 2)) is None
    assert narrow.training  # its mode is left as it was
    cpu = torch.device("cpu")
    assert autocast_dtype("auto", cpu, "1") is None
    assert autocast_dtype("auto", cpu) == (torch.bfloat16 if native_bf16(cpu) else None)
    assert autocast_dtype("bf16", cpu, "1") == torch.bfloat16  # asked for: kept, with a warning
    assert "convolution 1 is strided" in caplog.text


def test_without_bars_progress_lines_say_the_epochs_and_the_runs_eta(monkeypatch, caplog):
    """No terminal (nohup, `| tee`, Slurm): a line at most every progress_every_s seconds, at the
    loop's loss reads, with images/s and the epoch's and the whole run's ETA."""
    now = [0.0]
    monkeypatch.setattr(callbacks.time, "monotonic", lambda: now[0])
    loop = SimpleNamespace(show_bars=False, state=RunState(), epochs=3,
                           data=SimpleNamespace(train=[None] * 200),
                           cfg=OmegaConf.create({"data": {"batch_size": 64}}))  # fmt: skip
    lines = callbacks.ProgressLines(every_s=30)
    with caplog.at_level(logging.INFO, logger="cnntrain"):
        lines.on_fit_start(loop)
        for seconds, step in ((25.0, 49), (50.0, 99)):  # 0.5 s a step
            now[0] = seconds
            lines.on_step(loop, 1, step, 1.23456, 0.1)
    assert [r.getMessage() for r in caplog.records] == [
        "epoch 1/3 step 100/200  loss 1.2346  lr 1.00e-01  128 img/s  epoch ETA 50.0 s  "
        "run ETA 4m 10s"
    ]  # 25 s had passed at step 50: under 30 s, no line yet
    caplog.clear()
    loop.show_bars = True  # a terminal: the bars say it
    lines.on_fit_start(loop)
    now[0] = 100.0
    lines.on_step(loop, 1, 149, 1.0, 0.1)
    assert not caplog.records
