"""The benchmark instruments: what machine() records, the import-time parser, the Fashion-MNIST
layout of the hand-written loop, the GPU-utilisation sampler and the GPU suite's CPU dry run."""

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from bench.common import CPU_FLAGS, machine, machine_class
from bench.fashion_loop import torchvision_root
from bench.gpu_suite import Utilisation
from bench.startup import import_summary, parse_importtime
from tests.conftest import FASHION_DIR, REPO, needs_cifar, needs_fashion


def cpu_class(**flags) -> dict:
    """A machine() dict with only the fields machine_class reads."""
    return {"gpu": None, "isa_limits": {}, "cpu_flags": {f: flags.get(f, False) for f in CPU_FLAGS}}


@pytest.mark.skipif(not Path("/proc/cpuinfo").exists(), reason="no /proc/cpuinfo")
def test_machine_records_the_cpu_flags_and_torchs_view():
    flags = set(re.findall(r"\w+", re.search(r"^flags\s*:(.*)$", Path("/proc/cpuinfo").read_text(),
                                             re.MULTILINE).group(1)))  # fmt: skip
    m = machine("cpu")
    assert m["cpu_flags"] == {f: f in flags for f in CPU_FLAGS}
    assert m["torch_cpu"]["capability"] == torch.backends.cpu.get_cpu_capability()
    assert m["threads"] == torch.get_num_threads() and m["cores"] == os.cpu_count()
    assert m["gpu"] is None and m["machine_class"] == machine_class(m)
    if "avx512f" in flags and "avx512_bf16" not in flags and "amx_tile" not in flags:
        assert m["machine_class"] == "avx512 (no bf16)"


def test_machine_class_names_the_widest_isa():
    assert machine_class(cpu_class(avx2=True)) == "avx2"
    assert machine_class(cpu_class(avx2=True, avx512f=True)) == "avx512 (no bf16)"
    assert machine_class(cpu_class(avx2=True, avx512f=True, avx512_bf16=True)) == "avx512-bf16"
    assert machine_class(cpu_class(avx512f=True, avx512_bf16=True, amx_tile=True)) == "amx"
    assert machine_class(cpu_class(avx2=True) | {"gpu": "NVIDIA H200"}) == "gpu:NVIDIA H200"


def test_an_isa_limit_is_recorded_and_named_in_the_class(monkeypatch):
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX2")
    m = machine("cpu")
    assert m["isa_limits"] == {"ONEDNN_MAX_CPU_ISA": "AVX2"}
    assert m["machine_class"].endswith(", limited by ONEDNN_MAX_CPU_ISA=AVX2")


def test_parse_importtime_reads_real_output():
    proc = subprocess.run([sys.executable, "-X", "importtime", "-c", "import json"],
                          capture_output=True, text=True, check=True, timeout=60)  # fmt: skip
    rows = parse_importtime(proc.stderr)
    by_name = {r["module"]: r for r in rows}
    assert len(rows) == proc.stderr.count("import time:") - 1  # every row but the header
    assert {"json", "json.decoder", "json.scanner"} <= set(by_name)
    assert all(0 <= r["self_ms"] <= r["cumulative_ms"] for r in rows)
    assert by_name["json"]["cumulative_ms"] >= by_name["json.decoder"]["cumulative_ms"]
    summary = import_summary(rows, "json", top=3)
    assert summary["total_ms"] == by_name["json"]["cumulative_ms"]
    top = [r["self_ms"] for r in summary["top_self"]]
    assert top == sorted((r["self_ms"] for r in rows), reverse=True)[:3]


def test_import_summary_sums_self_time_per_package():
    rows = [{"module": m, "self_ms": ms, "cumulative_ms": 9.0} for m, ms in
            [("torch", 1.0), ("torch._dynamo", 2.0), ("torch._dynamo.guards", 3.0), ("json", 0.5),
             ("hydra.conf", 1.5)]]  # fmt: skip
    packages = import_summary(rows, "torch", top=3)["top_packages_self_ms"]
    assert packages == {"torch._dynamo": 5.0, "hydra.conf": 1.5, "torch": 1.0}


@needs_fashion
def test_fashion_loop_reads_the_shared_idx_files_through_torchvisions_layout(tmp_path):
    from torchvision.datasets import FashionMNIST

    root = torchvision_root(FASHION_DIR, tmp_path)
    raw = root / "FashionMNIST" / "raw"
    assert all((raw / name).is_symlink() for name, _ in FashionMNIST.resources)  # no copies
    train, test = FashionMNIST(str(root), train=True), FashionMNIST(str(root), train=False)
    assert (len(train), len(test)) == (60000, 10000)
    assert train.data.shape == (60000, 28, 28) and set(train.targets.tolist()) == set(range(10))


def test_utilisation_samples_in_a_thread_and_summarises_the_busy_window():
    with Utilisation(("fake", lambda: 40.0), period=0.01) as util:
        time.sleep(0.2)
    assert util.samples and set(util.samples) == {40.0}
    util.samples = [0.0, 0.0, 50.0, 0.0, 100.0, 0.0]
    s = util.summary()
    assert (s["source"], s["mean"], s["max"], s["active_mean"]) == ("fake", 25.0, 100.0, 50.0)
    assert Utilisation(None).summary() is None


@pytest.mark.slow
@needs_cifar
def test_gpu_suite_dry_run_prints_one_json_line_of_the_figures():
    proc = subprocess.run(
        [sys.executable, "-m", "bench.gpu_suite", "--dry-run", "trainer.channels_last=false"],
        cwd=REPO, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.strip().splitlines()
    assert len(lines) == 1
    out = json.loads(lines[0])
    assert out["bench"] == "gpu_suite" and out["dry_run"] is True
    seed = out["seed_recipe"]
    for side in ("cnntrain", "article"):
        assert seed[side]["train_images_per_s"] > 0 and 0 <= seed[side]["test_acc"] <= 1
        assert seed[side]["device"] == "cpu" and seed[side]["precision"] in ("float32", "bfloat16")
        assert seed[side]["gpu_util"] is None and seed[side]["peak_device_memory_mb"] is None
    ratio = seed["cnntrain"]["train_images_per_s"] / seed["article"]["train_images_per_s"]
    assert seed["images_per_s_ratio"] == pytest.approx(ratio, abs=0.01)
    assert seed["cnntrain"]["channels_last"] is True and seed["article"]["channels_last"] is False
    fast = out["cifar10_94"]
    assert set(fast["reached"]) == {"0.93", "0.94"} and len(fast["epoch_time_s"]) == 1
    assert fast["overrides"] == ["trainer.channels_last=false"]
    assert fast["channels_last"] is False  # read back from the run's own config
    assert out["machine"]["machine_class"] == machine_class(out["machine"])
    assert set(out["machine"]["cpu_flags"]) == set(CPU_FLAGS)
