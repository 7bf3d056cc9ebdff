"""The one-command GPU suite: sized to finish in under 8 minutes on one H100/H200, start-up
included. Measures, on full CIFAR-10 (test split evaluated after every epoch):
- the seed recipe's training images/s, cnntrain (`experiment=seed_cifar10`) against the
  article's loop (bench/article_loop.py), 2 epochs each (the goal: ≥ 10×);
- `experiment=cifar10_94`'s training time to 93% and 94% test accuracy, and the first epoch's
  overhead (compile, cuDNN autotuning, lazy start-up: its time minus the median of the others);
- GPU utilisation sampled while each trains (NVML, else nvidia-smi) and peak GPU memory;
- checks of what only a GPU can show (gpu_checks: fp16 steps without a host sync, …).
Prints one JSON line. bench/GPU.md says how to run it on a machine without hydra-core.

    CNNTRAIN_DATA_DIR=../shared/datasets python -m bench.gpu_suite [--dry-run] [OVERRIDE…]

OVERRIDE: extra cnntrain overrides for the cifar10_94 run (e.g. trainer.compile=true).
--dry-run runs the same steps on the CPU at tiny sizes (128 images, 1 epoch), for the tests.
"""

import argparse
import json
import statistics
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from omegaconf import OmegaConf

from bench.common import (
    bench_script,
    cnntrain,
    machine,
    metrics,
    results,
    run_choices,
    train_images_per_s,
    work_folder,
)
from bench.seed_vs_article import cifar_folder
from bench.time_to_accuracy import first_reaching

TARGETS = (0.93, 0.94)


@dataclass(frozen=True)
class Sizes:
    device: str  # trainer.device and the article loop's --device
    seed_epochs: int
    samples: int | None  # training and test images per run; None = the whole splits
    cifar10_94_epochs: int | None  # None = the recipe's


FULL = Sizes(device="auto", seed_epochs=2, samples=None, cifar10_94_epochs=None)
DRY_RUN = Sizes(device="cpu", seed_epochs=1, samples=128, cifar10_94_epochs=1)


class Utilisation:
    """Utilisation (%) sampled every `period` s in a thread while in a `with` block.

    `reader`: (source name, a function returning the utilisation now), or None to sample nothing.
    """

    def __init__(self, reader: tuple[str, Callable[[], float]] | None, period: float = 0.2):
        self.source, self.read = reader or (None, None)
        self.period, self.samples, self.stopping = period, [], threading.Event()
        self.thread = threading.Thread(target=self.sample, daemon=True)

    def sample(self) -> None:
        while not self.stopping.wait(self.period):
            self.samples.append(self.read())

    def __enter__(self):
        if self.read:
            self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stopping.set()
        if self.read:
            self.thread.join()

    def summary(self) -> dict | None:
        """Mean and max over the run, and the mean from the first to the last busy sample."""
        if not self.read:
            return None
        busy = [i for i, u in enumerate(self.samples) if u > 0]
        active = self.samples[busy[0] : busy[-1] + 1] if busy else [0.0]
        return {"source": self.source, "period_s": self.period, "samples": len(self.samples),
                "mean": round(statistics.mean(self.samples or [0.0]), 1),
                "max": max(self.samples, default=0.0),
                "active_mean": round(statistics.mean(active), 1)}  # fmt: skip


def gpu_reader() -> tuple[str, Callable[[], float]]:
    """(source name, a function returning GPU 0's utilisation %): NVML, else nvidia-smi."""
    try:
        import pynvml  # from nvidia-ml-py
    except ImportError:
        return "nvidia-smi", smi_utilisation
    pynvml.nvmlInit()
    handle = pynvml.nvmlDeviceGetHandleByIndex(0)
    return "nvml", lambda: float(pynvml.nvmlDeviceGetUtilizationRates(handle).gpu)


def smi_utilisation() -> float:
    query = ["nvidia-smi", "--id=0", "--query-gpu=utilization.gpu", "--format=csv,noheader,nounits"]
    return float(subprocess.run(query, capture_output=True, text=True, check=True).stdout)


def size_overrides(sizes: Sizes) -> list[str]:
    # A dry run checks the suite's steps, not the runs' files: no plots, no tracker.
    caps = [f"data.max_train_samples={sizes.samples}", f"data.max_eval_samples={sizes.samples}",
            "trainer.plots=false", "logger=none"]  # fmt: skip
    return [f"trainer.device={sizes.device}", *(caps if sizes.samples else [])]


def gpu_utilisation(gpu: bool) -> Utilisation:
    """A sampler of GPU 0 when the runs train on a GPU, else one that samples nothing."""
    return Utilisation(gpu_reader() if gpu else None)


def seed_recipe(sizes: Sizes, work: Path, gpu: bool) -> dict:
    recipe = ["experiment=seed_cifar10", "data.val_split=0", f"trainer.epochs={sizes.seed_epochs}"]
    with gpu_utilisation(gpu) as util:
        wall, run = cnntrain([*recipe, *size_overrides(sizes)], work)
    r = results(run)
    cfg = OmegaConf.load(run / ".hydra" / "config.yaml")
    root = cifar_folder(cfg.paths.cache_dir, cfg.paths.data_dir)  # the article loop's copy
    ours = {"train_images_per_s": train_images_per_s(run), "test_acc": r["test/acc"],
            "wall_s": round(wall, 2), "peak_device_memory_mb": r.get("peak_device_memory_mb"),
            "gpu_util": util.summary(), **run_choices(run)}  # fmt: skip
    caps = ["--train-samples", str(sizes.samples), "--test-samples", str(sizes.samples)]
    with gpu_utilisation(gpu) as util:
        wall, a = bench_script("article_loop", ["--root", root, "--device", sizes.device,
                                                "--epochs", str(sizes.seed_epochs),
                                                *(caps if sizes.samples else [])])  # fmt: skip
    theirs = {"train_images_per_s": a["train_images_per_s"], "test_acc": a["test_acc"],
              "wall_s": round(wall, 2), "peak_device_memory_mb": a["peak_device_memory_mb"],
              "gpu_util": util.summary(), "device": a["device"], "precision": a["precision"],
              "channels_last": a["channels_last"]}  # fmt: skip
    ratio = ours["train_images_per_s"] / theirs["train_images_per_s"]
    return {"epochs": sizes.seed_epochs, "cnntrain": ours, "article": theirs,
            "images_per_s_ratio": round(ratio, 2)}  # fmt: skip


def cifar10_94(sizes: Sizes, work: Path, overrides: list[str], gpu: bool) -> dict:
    epochs = [f"trainer.epochs={sizes.cifar10_94_epochs}"] if sizes.cifar10_94_epochs else []
    cmd = ["experiment=cifar10_94", "data.val_split=0", *epochs, *size_overrides(sizes)]
    with gpu_utilisation(gpu) as util:
        wall, run = cnntrain([*cmd, *overrides], work)
    rows, r = metrics(run), results(run)
    times = [row["epoch_time_s"] for row in rows]
    overhead = round(times[0] - statistics.median(times[1:]), 3) if len(times) > 1 else None
    reached = {}
    for target in TARGETS:
        hit = first_reaching(rows, target)
        if hit and overhead is not None:
            hit["train_time_without_overhead_s"] = round(hit["train_time_s"] - overhead, 3)
        reached[str(target)] = hit
    return {"overrides": overrides, "reached": reached, "first_epoch_overhead_s": overhead,
            "epoch_time_s": times, "test_acc_per_epoch": [row["val/acc"] for row in rows],
            "final_test_acc": r["test/acc"], "train_time_s": r["train_time_s"],
            "compile_s": r.get("compile_s"),  # with trainer.compile: apart from train_time_s
            "wall_s": round(wall, 2), "peak_device_memory_mb": r.get("peak_device_memory_mb"),
            "gpu_util": util.summary(), **run_choices(run)}  # fmt: skip


def gpu_checks(gpu: bool) -> dict:
    """On the GPU, what tests/test_gpu_ready.py cannot check on a CPU: fp16 optimizer steps,
    one of them overflowed, run without a host sync (CUDA's sync debug mode raises on one); the
    data path's seeded draws leave the GPU's generator as it was; cuDNN autotuning is on and
    only `trainer.precision=32` turns TF32 off; the training GPU's native bf16."""
    if not gpu:
        return {"skipped": "no GPU"}
    from torch import nn

    from cnntrain.config.compose import compose_config
    from cnntrain.core.device import native_bf16
    from cnntrain.data.augment.options import read_options
    from cnntrain.training.ema import EMA
    from cnntrain.training.mixing import BatchMix
    from cnntrain.training.precision import Arithmetic
    from cnntrain.training.schedules import Cosine
    from cnntrain.training.step import StepParts, Totals, optimizer_step

    device = torch.device("cuda")
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.Flatten(), nn.LazyLinear(10)).to(device)
    model(torch.zeros(1, 3, 8, 8, device=device))
    a = Arithmetic.for_trainer(OmegaConf.create({"precision": "16", "tta": False}), device)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, fused=True)
    parts = StepParts(model, optimizer, Cosine(optimizer, total_steps=10, steps_per_epoch=10),
                      nn.CrossEntropyLoss(), a, None, EMA(model, 0.9))  # fmt: skip
    totals, sync = Totals.zeros(device), None
    x, y = torch.randn(16, 3, 8, 8, device=device), torch.randint(10, (16,), device=device)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for step in range(4):
            optimizer.zero_grad(set_to_none=True)
            with a.autocast():
                loss = parts.loss_fn(model(x).float(), y)
            a.scaler.scale(loss * (1e30 if step == 1 else 1)).backward()  # step 1 overflows
            optimizer_step(parts, totals)
    except RuntimeError as e:
        sync = str(e).splitlines()[0]
    finally:
        torch.cuda.set_sync_debug_mode("default")
    cuda_rng = torch.cuda.get_rng_state(device)
    augment = compose_config(["data.augment.mixup=0.2"]).data.augment
    mix = BatchMix(read_options(augment), 10, 0)
    mix(x, y, epoch=0, batch=0)
    tf32 = torch.backends.cuda.matmul.fp32_precision, torch.backends.cudnn.conv.fp32_precision
    return {
        "fp16_step_host_sync": sync,  # None: no sync in 4 steps
        "fp16_skipped_steps": float(totals.skipped),  # 1.0: the overflowed one
        "mixup_leaves_cuda_rng": torch.equal(cuda_rng, torch.cuda.get_rng_state(device)),
        "cudnn_benchmark": torch.backends.cudnn.benchmark,
        "fp32_precision_under_16": tf32,  # tf32: precision 16 lets fp32 layers use TF32
        "native_bf16": native_bf16(device),
    }


def main() -> None:
    began = time.perf_counter()
    ap = argparse.ArgumentParser()
    ap.add_argument("--dry-run", action="store_true", help="tiny sizes on the CPU, for tests")
    ap.add_argument("overrides", nargs="*", help="extra cnntrain overrides for cifar10_94")
    args = ap.parse_args()
    sizes = DRY_RUN if args.dry_run else FULL
    work = work_folder("bench-gpu-")
    gpu = sizes.device != "cpu" and torch.cuda.is_available()  # what trainer.device=auto picks
    if not args.dry_run:  # unpack and decode CIFAR-10 into the cache outside the measured runs
        cnntrain(["experiment=smoke", f"trainer.device={sizes.device}"], work)
    seed = seed_recipe(sizes, work, gpu)
    print(json.dumps({
        "bench": "gpu_suite",
        "dry_run": args.dry_run,
        "checks": gpu_checks(gpu),
        "seed_recipe": seed,
        "cifar10_94": cifar10_94(sizes, work, args.overrides, gpu),
        "suite_wall_s": round(time.perf_counter() - began, 1),
        "machine": machine(seed["cnntrain"]["device"]),
    }))  # fmt: skip


if __name__ == "__main__":
    main()
