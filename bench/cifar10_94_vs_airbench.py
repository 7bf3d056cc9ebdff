"""`cnntrain experiment=cifar10_94` against airbench94's own published code on the same JPEG copy
of CIFAR-10, side by side on the same machine and precision policy: whole-process wall time of
each (measured from outside), training time, test accuracy with 1 view and with airbench's 6
views, and the ratio cnntrain / airbench (the goal: ≤ 0.8 at accuracy ≥ airbench's). Prints one
JSON line.

    pip install --no-deps --target ../airbench-pkg airbench==0.1.8
    CNNTRAIN_DATA_DIR=../shared/datasets python -m bench.cifar10_94_vs_airbench \
        --airbench-dir ../airbench-pkg [--repeats 1]

airbench runs through `../shared/peers/airbench-on-jpeg.py` (its code unmodified, patched only to
run on a CPU), from where it lies. Each side runs its own defaults: cnntrain holds out 5% for
validation and evaluates it with 6 views after every epoch; airbench trains on all 50,000 and
evaluates the test split with 1 view after every epoch. Both first run once briefly, so that each
one's decoded-image cache is warm and no side pays for decoding the archive in the timed runs.
cnntrain's 1-view figure comes from `cnntrain-eval RUN trainer.tta=false` (not timed).
"""

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

from bench.common import REPO, cnntrain, machine, mean, results, run_choices, timed, work_folder

PEER = REPO.parent / "shared" / "peers" / "airbench-on-jpeg.py"


def airbench(args: list[str], peer: Path, airbench_dir: str | None) -> tuple[float, dict]:
    """Run airbench-on-jpeg.py with `args`; (whole-process wall seconds, its JSON line)."""
    extra = ["--airbench-dir", airbench_dir] if airbench_dir else []
    wall, out = timed([sys.executable, str(peer), *args, *extra], cwd=peer.parent,
                      env={**os.environ, "PYTHONPATH": ""})  # fmt: skip
    return wall, json.loads(out.strip().splitlines()[-1])


def one_view_acc(run: Path) -> float:
    """test/acc of `run`'s best weights with a single view, through cnntrain-eval."""
    cmd = [sys.executable, "-m", "cnntrain.cli.eval", str(run), "trainer.tta=false"]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=True)
    folder = Path(proc.stdout.strip().splitlines()[-1])
    return json.loads((folder / "results.json").read_text())["test/acc"]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=1, help="runs of each, alternating")
    ap.add_argument("--seed", type=int, default=0, help="the first run's seed (then +1, …)")
    ap.add_argument("--peer", type=Path, default=PEER, help="airbench-on-jpeg.py")
    ap.add_argument("--airbench-dir", default=None, help="folder holding the airbench package")
    args = ap.parse_args()
    work = work_folder("bench-airbench-vs-")
    # warm both decoded-image caches, and learn the precision cnntrain's auto policy picks here
    _, warm = cnntrain(["experiment=cifar10_94", "trainer.epochs=1", "data.max_train_samples=2048",
                        "data.max_eval_samples=512", "trainer.plots=false"], work)  # fmt: skip
    bf16 = results(warm)["precision"] == "bfloat16"
    precision = ["--precision", "bf16" if bf16 else "fp32"]  # airbench: the same policy
    airbench(["--epochs", "0.1", "--test-subset", "2000", *precision], args.peer, args.airbench_dir)
    ours, theirs = [], []
    for seed in range(args.seed, args.seed + args.repeats):
        wall, run = cnntrain(["experiment=cifar10_94", f"trainer.seed={seed}"], work)
        r = results(run)
        ours.append({"seed": seed, "wall_s": round(wall, 2), "test_acc_6_views": r["test/acc"],
                     "test_acc_1_view": one_view_acc(run), "train_time_s": r["train_time_s"],
                     **run_choices(run)})  # fmt: skip
        wall, ab = airbench(["--seed", str(seed), *precision], args.peer, args.airbench_dir)
        theirs.append({"seed": seed, "wall_s": round(wall, 2), "test_acc_6_views": ab["acc_tta2"],
                       "test_acc_1_view": ab["acc_tta0"], "train_time_s": ab["train_time_s"],
                       "precision": ab["precision"], "epochs": ab["epochs"]})  # fmt: skip

    def summary(runs: list[dict]) -> dict:
        keys = ("wall_s", "train_time_s", "test_acc_1_view", "test_acc_6_views")
        return {"runs": runs, **{k: round(mean([r[k] for r in runs]), 4) for k in keys}}

    a, b = summary(ours), summary(theirs)
    print(json.dumps({
        "bench": "cifar10_94_vs_airbench",
        "cnntrain": a,
        "airbench": b,
        "wall_ratio": round(a["wall_s"] / b["wall_s"], 3),  # cnntrain / airbench; goal ≤ 0.8
        "train_time_ratio": round(a["train_time_s"] / b["train_time_s"], 3),
        "machine": machine(ours[0]["device"]),
    }))  # fmt: skip


if __name__ == "__main__":
    main()
