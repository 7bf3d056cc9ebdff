"""Time for a recipe to reach target test accuracies on full CIFAR-10. Prints one JSON line.

The run evaluates on the test split after every epoch (data.val_split=0), so each epoch's row in
metrics.jsonl holds its test accuracy and the training time so far (elapsed_s: the optimisation
steps only) — the usual convention of CIFAR-10 speed runs. Whole-process wall time is reported too.

    CNNTRAIN_DATA_DIR=../shared/datasets python -m bench.time_to_accuracy \
        --experiment cifar10_94 --targets 0.85 0.90 0.93 0.94 [extra overrides…]
"""

import argparse
import json

from bench.common import cnntrain, machine, metrics, results, run_choices, work_folder


def first_reaching(rows: list[dict], target: float) -> dict | None:
    row = next((r for r in rows if r["val/acc"] >= target), None)
    return row and {"epoch": row["epoch"], "train_time_s": row["elapsed_s"]}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--experiment", required=True)
    ap.add_argument("--targets", type=float, nargs="+", required=True)
    ap.add_argument("overrides", nargs="*", help="extra cnntrain overrides")
    args = ap.parse_args()
    work = work_folder("bench-tta-")
    base = [f"experiment={args.experiment}", "data.val_split=0"]
    cnntrain([*base, "trainer.epochs=1", "data.max_train_samples=256"], work)  # warm the caches
    wall, run = cnntrain([*base, *args.overrides], work)
    rows, r = metrics(run), results(run)
    print(json.dumps({
        "bench": "time_to_accuracy",
        "experiment": args.experiment,
        "overrides": args.overrides,
        "reached": {str(t): first_reaching(rows, t) for t in args.targets},
        "final_test_acc": rows[-1]["val/acc"],
        "best_test_acc": max(row["val/acc"] for row in rows),
        "epochs": len(rows),
        "train_time_s": r["train_time_s"],
        "wall_s": round(wall, 2),
        "train_images_per_s": rows[-1]["train/images_per_s"],
        **run_choices(run),
        "machine": machine(r["device"]),
    }))  # fmt: skip


if __name__ == "__main__":
    main()
