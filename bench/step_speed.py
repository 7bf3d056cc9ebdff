"""Step speed of CIFAR10CNN in fp32 on this CPU: training steps (SGD, batch 128) and eval-mode
forward passes (as written, and with BatchNorm folded as evaluate() runs them), images/s, in
NCHW and channels-last, on random 3×32×32 inputs (the arithmetic is that of real images). Prints
one JSON line.

    python -m bench.step_speed [--batch 128 --steps 30 --warmup 5]
    python -m bench.step_speed --vs-avx2 [--repeats 2]

--vs-avx2 runs the measurement in child processes, alternating, as the machine is and with the
instruction set of every kernel library capped at AVX2 (AVX2_LIMITS), and reports which ISA
oneDNN dispatched its convolutions to in each (from ONEDNN_VERBOSE): an emulation of an AVX2-only
CPU's instruction set on this one, not of its caches, clocks or memory.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

import torch
from torch import nn

from bench.common import REPO, machine
from cnntrain.models.article import CIFAR10CNN
from cnntrain.models.fold import folded

LAYOUTS = ("nchw", "channels_last")
MEASURES = ("train_images_per_s", "eval_images_per_s", "eval_folded_images_per_s")
AVX2_LIMITS = {"ONEDNN_MAX_CPU_ISA": "AVX2", "ATEN_CPU_CAPABILITY": "avx2",
               "MKL_ENABLE_INSTRUCTIONS": "AVX2"}  # fmt: skip
ONE_CONV = (  # a training step of one convolution per layout, to see which kernels oneDNN picks
    "import torch\n"
    "for layout in (torch.contiguous_format, torch.channels_last):\n"
    "    conv = torch.nn.Conv2d(3, 64, 3, padding=1).to(memory_format=layout)\n"
    "    conv(torch.randn(8, 3, 32, 32).to(memory_format=layout)).sum().backward()\n"
)


def images_per_s(step, batch: int, steps: int, warmup: int) -> dict:
    """Images/s over `steps` timed steps after `warmup`, and at the median step's time (which
    other processes sharing the cores now and then disturb less)."""
    for _ in range(warmup):
        step()
    times = []
    for _ in range(steps):
        began = time.perf_counter()
        step()
        times.append(time.perf_counter() - began)
    return {"mean": round(batch * steps / sum(times), 1),
            "median_step": round(batch / statistics.median(times), 1)}  # fmt: skip


def measure(channels_last: bool, batch: int, steps: int, warmup: int) -> dict:
    """Training-step and eval-forward images/s of CIFAR10CNN in one memory layout."""
    layout = torch.channels_last if channels_last else torch.contiguous_format
    torch.manual_seed(0)
    model = CIFAR10CNN().to(memory_format=layout)
    images = torch.randn(batch, 3, 32, 32).to(memory_format=layout)  # (N, C, H, W)
    labels = torch.randint(0, 10, (batch,))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
    criterion = nn.CrossEntropyLoss()

    def train_step():
        optimizer.zero_grad(set_to_none=True)
        criterion(model(images), labels).backward()
        optimizer.step()

    def eval_step():
        with torch.no_grad():
            model(images)

    model.train()
    train = images_per_s(train_step, batch, steps, warmup)
    model.eval()
    evaluated = images_per_s(eval_step, batch, steps, warmup)
    model = folded(model)  # eval_step now runs what evaluate() runs: BatchNorm folded
    return {"train_images_per_s": train, "eval_images_per_s": evaluated,
            "eval_folded_images_per_s": images_per_s(eval_step, batch, steps, warmup)}  # fmt: skip


def onednn_isa(env: dict) -> dict:
    """oneDNN's ISA and the convolution kernels it ran for ONE_CONV under `env` (ONEDNN_VERBOSE)."""
    proc = subprocess.run([sys.executable, "-c", ONE_CONV], env={**env, "ONEDNN_VERBOSE": "1"},
                          capture_output=True, text=True, check=True)  # fmt: skip
    fields = [line.split(",") for line in proc.stdout.splitlines()]
    isa = next(f[-1].removeprefix("isa:") for f in fields if f[-1].startswith("isa:"))
    conv = ["exec", "cpu", "convolution"]  # onednn_verbose,v1,primitive,exec,cpu,convolution,KERNEL
    kernels = sorted({f[6] for f in fields if len(f) > 6 and f[3:6] == conv})
    return {"onednn_isa": isa, "conv_kernels": kernels}


def child(args, extra_env: dict) -> dict:
    env = {**os.environ, **extra_env}
    cmd = [sys.executable, "-m", "bench.step_speed", "--batch", str(args.batch),
           "--steps", str(args.steps), "--warmup", str(args.warmup)]  # fmt: skip
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, check=True)
    return json.loads(proc.stdout.strip().splitlines()[-1])


def vs_avx2(args) -> dict:
    """The same measurement as the machine is and capped at AVX2, alternating, in children."""
    sides = {"native": {}, "avx2_limited": AVX2_LIMITS}
    runs = {name: [] for name in sides}
    for _ in range(args.repeats):
        for name, extra in sides.items():
            runs[name].append(child(args, extra))
    return {name: {"median": median_over_runs(runs[name]),
                   "runs": [{layout: r[layout] for layout in LAYOUTS} for r in runs[name]],
                   "torch_capability": runs[name][0]["machine"]["torch_cpu"]["capability"],
                   "env": extra, **onednn_isa({**os.environ, **extra})}
            for name, extra in sides.items()}  # fmt: skip


def median_over_runs(runs: list[dict]) -> dict:
    """Per layout and kind of step, the median over runs of the median-step images/s."""
    return {layout: {kind: round(statistics.median(r[layout][kind]["median_step"] for r in runs), 1)
                     for kind in MEASURES}
            for layout in LAYOUTS}  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--steps", type=int, default=30, help="timed steps, after the warm-up")
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--vs-avx2", action="store_true", help="native against AVX2-capped children")
    ap.add_argument("--repeats", type=int, default=2, help="children per side with --vs-avx2")
    args = ap.parse_args()
    settings = {"model": "cifar10cnn", "precision": "float32", "batch": args.batch,
                "steps": args.steps, "warmup": args.warmup}  # fmt: skip
    if args.vs_avx2:
        figures = vs_avx2(args)
    else:
        figures = {layout: measure(layout == "channels_last", args.batch, args.steps, args.warmup)
                   for layout in LAYOUTS}  # fmt: skip
    print(json.dumps({"bench": "step_speed", **settings, **figures, "machine": machine("cpu")}))


if __name__ == "__main__":
    main()
