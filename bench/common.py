"""Shared by the benchmark scripts: the machine, timed subprocess runs, run folders."""

import atexit
import datetime
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import torchvision
import yaml

REPO = Path(__file__).resolve().parent.parent
# the CPU flags that decide our kernels' speed, as /proc/cpuinfo names them
CPU_FLAGS = ("avx2", "avx512f", "avx512_bf16", "amx_tile", "amx_bf16")
# Environment variables that cap the instruction set the kernels use: oneDNN (convolutions), ATen
# (its vectorised element-wise, norm and pooling kernels), MKL (the GEMMs of linear layers).
ISA_LIMITS = ("ONEDNN_MAX_CPU_ISA", "ATEN_CPU_CAPABILITY", "MKL_ENABLE_INSTRUCTIONS")


def cpuinfo() -> tuple[str, set[str] | None]:
    """(CPU model name, its feature flags), from /proc/cpuinfo; flags None where there is none."""
    path = Path("/proc/cpuinfo")
    if not path.exists():
        return platform.processor() or platform.machine(), None
    fields = dict(
        line.split(":", 1) for line in path.read_text().split("\n\n")[0].splitlines() if ":" in line
    )
    fields = {key.strip(): value.strip() for key, value in fields.items()}
    return fields.get("model name", platform.machine()), set(fields.get("flags", "").split())


def machine(device: str | None = None) -> dict:
    """What the figures were measured on; `device` is the run's (results.json), cuda:0 if None."""
    cpu, flags = cpuinfo()
    gpus = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    used = torch.device(device or ("cuda" if gpus else "cpu"))
    m = {
        "cpu": cpu,
        "cpu_flags": {f: None if flags is None else f in flags for f in CPU_FLAGS},
        "torch_cpu": {  # what torch itself detects, which is what its kernels dispatch on
            "capability": torch.backends.cpu.get_cpu_capability(),
            "avx512_bf16": torch.cpu._is_avx512_bf16_supported(),
            "amx_tile": torch.cpu._is_amx_tile_supported(),
        },
        "isa_limits": {name: os.environ[name] for name in ISA_LIMITS if name in os.environ},
        "cores": os.cpu_count(),
        "threads": torch.get_num_threads(),
        # 1/5/15-minute load, read as the script ends (its own work included): above the core
        # count, other processes shared the cores and the figures are low
        "load_avg": [round(x, 2) for x in os.getloadavg()],
        "gpu": torch.cuda.get_device_name(used.index or 0) if used.type == "cuda" else None,
        "gpus": gpus,
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "python": platform.python_version(),
        "date": datetime.date.today().isoformat(),
    }
    return m | {"machine_class": machine_class(m)}


def machine_class(m: dict) -> str:
    """The class docs/benchmarks.md groups figures by: the GPU, else the CPU's widest vector ISA."""
    if m["gpu"]:
        return f"gpu:{m['gpu']}"
    f = m["cpu_flags"]
    if f["amx_tile"]:
        name = "amx"
    elif f["avx512_bf16"]:
        name = "avx512-bf16"
    elif f["avx512f"]:
        name = "avx512 (no bf16)"
    elif f["avx2"]:
        name = "avx2"
    else:
        name = "unknown cpu flags" if f["avx2"] is None else "pre-avx2"
    limits = " ".join(f"{k}={v}" for k, v in m["isa_limits"].items())
    return f"{name}, limited by {limits}" if limits else name


def work_folder(prefix: str, keep: bool = False) -> Path:
    """A fresh folder under the system's temporary folder for one benchmark's runs, removed when
    the script exits (runs of the big networks leave gigabytes of checkpoints); kept where `keep`
    (the script prints paths into it) or CNNTRAIN_BENCH_KEEP=1 is set, to read the runs after."""
    work = Path(tempfile.mkdtemp(prefix=prefix))
    if not (keep or os.environ.get("CNNTRAIN_BENCH_KEEP") == "1"):
        atexit.register(shutil.rmtree, work, ignore_errors=True)
    return work


def timed(cmd: list[str], cwd: Path, expect_rc: int = 0, env: dict | None = None):
    """(whole-process wall seconds, stdout) of `cmd`; raises with its output on another exit."""
    began = time.perf_counter()
    proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, env=env)
    wall = time.perf_counter() - began
    if proc.returncode != expect_rc:
        raise SystemExit(f"{' '.join(cmd)} exited {proc.returncode}, not {expect_rc}:\n"
                         f"{proc.stdout}\n{proc.stderr}")  # fmt: skip
    return wall, proc.stdout


def cnntrain(overrides: list[str], work: Path) -> tuple[float, Path]:
    """Run `cnntrain overrides…` into a fresh folder under `work`; (wall seconds, run folder)."""
    run_dir = work / f"run{len(list(work.glob('run*')))}"
    wall, _ = timed([sys.executable, "-m", "cnntrain", *overrides, f"hydra.run.dir={run_dir}",
                     "trainer.progress=false"], cwd=work)  # fmt: skip
    return wall, run_dir


def bench_script(module: str, args: list[str]) -> tuple[float, dict]:
    """Run `python -m bench.<module> args…` from the repository; (wall seconds, its JSON line)."""
    wall, out = timed([sys.executable, "-m", f"bench.{module}", *args], cwd=REPO)
    return wall, json.loads(out.strip().splitlines()[-1])


def results(run_dir: Path) -> dict:
    return json.loads((run_dir / "results.json").read_text())


def metrics(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def run_choices(run_dir: Path) -> dict:
    """What a cnntrain run ran on and chose: device, precision, memory layout, loader."""
    r = results(run_dir)
    cfg = yaml.safe_load((run_dir / ".hydra" / "config.yaml").read_text())
    return {"device": r["device"], "precision": r["precision"],
            "channels_last": cfg["trainer"]["channels_last"], "loader": r["loader"]}  # fmt: skip


def train_images_per_s(run_dir: Path) -> float:
    """Training images per second of training time over a whole run (all epochs)."""
    rows = metrics(run_dir)
    images = sum(row["train/images_per_s"] * row["epoch_time_s"] for row in rows)
    return round(images / sum(row["epoch_time_s"] for row in rows), 1)


def mean(values: list[float]) -> float:
    return sum(values) / len(values)


def std(values: list[float]) -> float:
    m = mean(values)
    return (sum((v - m) ** 2 for v in values) / max(1, len(values) - 1)) ** 0.5


def median_min(values: list[float]) -> dict:
    return {"median": round(statistics.median(values), 3), "min": round(min(values), 3),
            "runs": [round(v, 3) for v in values]}  # fmt: skip
