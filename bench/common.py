"""Shared by the benchmark scripts: the machine, timed subprocess runs, run folders."""

import datetime
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent


def machine() -> dict:
    """What the figures were measured on."""
    cpu = platform.processor() or platform.machine()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        names = [line.split(":", 1)[1].strip() for line in cpuinfo.read_text().splitlines()
                 if line.startswith("model name")]  # fmt: skip
        cpu = names[0] if names else cpu
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "gpu": gpu,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "date": datetime.date.today().isoformat(),
    }


def timed(cmd: list[str], cwd: Path) -> tuple[float, str]:
    """(whole-process wall seconds, stdout) of `cmd`; raises with its output if it fails."""
    began = time.perf_counter()
    proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True)
    wall = time.perf_counter() - began
    if proc.returncode != 0:
        raise SystemExit(
            f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}"
        )
    return wall, proc.stdout


def cnntrain(overrides: list[str], work: Path) -> tuple[float, Path]:
    """Run `cnntrain overrides…` into a fresh folder under `work`; (wall seconds, run folder)."""
    run_dir = work / f"run{len(list(work.glob('run*')))}"
    wall, _ = timed([sys.executable, "-m", "cnntrain", *overrides, f"hydra.run.dir={run_dir}",
                     "trainer.progress=false"], cwd=work)  # fmt: skip
    return wall, run_dir


def results(run_dir: Path) -> dict:
    return json.loads((run_dir / "results.json").read_text())


def metrics(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def mean(values: list[float]) -> float:
    return sum(values) / len(values)


def std(values: list[float]) -> float:
    m = mean(values)
    return (sum((v - m) ** 2 for v in values) / max(1, len(values) - 1)) ** 0.5
