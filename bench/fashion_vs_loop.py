"""`cnntrain experiment=fashion_mnist` against a plain hand-written PyTorch loop
(bench/fashion_loop.py), side by side on the same machine: whole-process wall time of each,
measured from outside, both test accuracies, and the ratio cnntrain / loop (the goal: ≤ 0.6 at
≥ 93%). Prints one JSON line.

    CNNTRAIN_DATA_DIR=../shared/datasets python -m bench.fashion_vs_loop [--repeats 1]
"""

import argparse
import json
import os
from pathlib import Path

from bench.common import bench_script, cnntrain, machine, mean, results, run_choices, work_folder
from bench.fashion_loop import torchvision_root


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=1, help="runs of each, alternating")
    args = ap.parse_args()
    work = work_folder("bench-fashion-")
    # the loop reads torchvision's layout, made once here as its own first run would leave it
    root = torchvision_root(Path(os.environ.get("CNNTRAIN_DATA_DIR", "data")) / "fashion-mnist",
                            work / "torchvision")  # fmt: skip
    cnntrain(["experiment=fashion_mnist", "trainer.epochs=1", "data.max_train_samples=256"], work)
    ours, theirs = [], []
    for _ in range(args.repeats):
        wall, run = cnntrain(["experiment=fashion_mnist"], work)
        r = results(run)
        ours.append({"wall_s": round(wall, 2), "test_acc": r["test/acc"],
                     "train_time_s": r["train_time_s"], **run_choices(run)})  # fmt: skip
        wall, loop = bench_script("fashion_loop", ["--root", str(root)])
        theirs.append({"wall_s": round(wall, 2), "test_acc": loop["test_acc"],
                       "train_time_s": loop["train_time_s"],
                       "test_acc_per_epoch": [e["test_acc"] for e in loop["epochs"]]})  # fmt: skip
    cnntrain_wall = mean([r["wall_s"] for r in ours])
    loop_wall = mean([r["wall_s"] for r in theirs])
    print(json.dumps({
        "bench": "fashion_vs_loop",
        "cnntrain": {"runs": ours, "wall_s": round(cnntrain_wall, 2),
                     "test_acc": round(mean([r["test_acc"] for r in ours]), 4)},
        "loop": {"runs": theirs, "wall_s": round(loop_wall, 2),
                 "test_acc": round(mean([r["test_acc"] for r in theirs]), 4)},
        "wall_ratio": round(cnntrain_wall / loop_wall, 3),  # cnntrain / loop; goal ≤ 0.6
        "machine": machine(ours[0]["device"]),
    }))  # fmt: skip


if __name__ == "__main__":
    main()
