"""CIFAR-10's test images with a near duplicate in train, as `cnntrain-audit` finds them on the
shared JPEG copy, against ciFAIR's 3.3% (Barz & Denzler 2020, "Do we train on test data?").

One JSON line per --near-bits value: images, test images with an exact or near duplicate in
train (count and %), exact and near pairs, the threshold, the whole process's seconds and the
CPU. The first run reads and hashes every image; later thresholds reuse its scan.npz (seconds).

    CNNTRAIN_DATA_DIR=../shared/datasets python -m bench.audit_cifar [--out DIR] [--near-bits 4 6]
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.common import REPO, cpuinfo
from bench.photo_folder import archive_path

CPU_CLASS_FLAGS = ("avx2", "avx512f", "avx512_bf16", "amx_tile")
CIFAIR_PERCENT = 3.3  # of CIFAR-10's 10,000 test images: near duplicates of training images


def audit(out: Path, bits: int) -> tuple[dict, float]:
    """(summary.json, whole-process seconds) of cnntrain-audit on the CIFAR-10 archive."""
    data = ["data=imagefolder", f"data.root={archive_path()}"]
    options = ["--out", str(out), "--near-bits", str(bits)]
    command = [sys.executable, "-m", "cnntrain.cli.audit", *data, *options]
    started = time.perf_counter()
    subprocess.run(command, cwd=REPO, check=True, stdout=subprocess.DEVNULL)
    seconds = time.perf_counter() - started
    return json.loads((out / "summary.json").read_bytes()), seconds


def result_line(summary: dict, seconds: float) -> dict:
    cpu, flags = cpuinfo()
    return {
        "images": summary["images"],
        "test_images": summary["test_images"],
        "test_with_train_duplicate": summary["test_with_train_near_duplicate"],
        "test_with_train_duplicate_percent": summary["test_with_train_near_duplicate_percent"],
        "test_with_train_exact_duplicate": summary["test_with_train_exact_duplicate"],
        # ciFAIR's training set is all 50,000: the tool's train and the val it carves from it
        "test_with_train_or_val_duplicate": summary["test_with_train_or_val_near_duplicate"],
        "test_with_train_or_val_duplicate_percent": summary[
            "test_with_train_or_val_near_duplicate_percent"
        ],
        "cifair_percent": CIFAIR_PERCENT,
        "exact_pairs": summary["exact_pairs"],
        "near_pairs": summary["near_pairs"],
        "near_pairs_by_splits": summary["near_pairs_by_splits"],
        "near_bits": summary["near_bits"],
        "seconds": round(seconds, 1),
        "audit_time_s": summary["time_s"],
        "workers": summary["workers"],
        "cpu": cpu,
        "cpu_class": sorted(f for f in CPU_CLASS_FLAGS if flags and f in flags),
        "cores": os.cpu_count(),
        "load_avg": [round(x, 2) for x in os.getloadavg()],  # above `cores`: shared, slower
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, help="the audit folder (default: a temporary one)")
    parser.add_argument("--near-bits", type=int, nargs="+", default=[4])
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        out = args.out or Path(scratch) / "audit"
        for bits in args.near_bits:
            print(json.dumps(result_line(*audit(out, bits))), flush=True)


if __name__ == "__main__":
    main()
