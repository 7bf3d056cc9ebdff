"""`experiment=cifar10_resnet18_sota` against the same network without the recipe's pieces (no
policy, random erasing, MixUp/CutMix, label smoothing or EMA; the same crop + flip, optimizer,
schedule, subset and epochs), on the shared CIFAR-10. Prints one JSON line: per arm the test
accuracy, best validation accuracy, final training loss, training time and images/s.

    CNNTRAIN_DATA_DIR=../shared/datasets python -m bench.recipe_effect \
        --train-samples 10000 --epochs 3

A short run: the warm-up is 1 epoch in both arms (the recipe's 5 would outlast it). The recipe
is built for long schedules; a few epochs say what its pieces cost early, not where they end.
"""

import argparse
import json
from pathlib import Path

from bench.common import cnntrain, machine, metrics, results, work_folder

WITHOUT_PIECES = [
    "data.augment.policy=none",
    "data.augment.random_erasing=0",
    "data.augment.mixup=0",
    "data.augment.cutmix=0",
    "loss.label_smoothing=0",
    "trainer.ema=null",
]


def arm(overrides: list[str], work: Path) -> dict:
    wall, run_dir = cnntrain(overrides, work)
    out, rows = results(run_dir), metrics(run_dir)
    return {
        "test_acc": out["test/acc"],
        "best_val_acc": out["best_val/acc"],
        "final_train_loss": round(rows[-1]["train/loss"], 4),
        "train_time_s": out["train_time_s"],
        "images_per_s": round(sum(r["train/images_per_s"] for r in rows) / len(rows), 1),
        "process_wall_s": round(wall, 1),
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--train-samples", type=int, default=10_000)
    ap.add_argument("--eval-samples", type=int, default=None, help="cap val and test (None: all)")
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    work = work_folder("bench-recipe-")
    common = ["experiment=cifar10_resnet18_sota", f"trainer.epochs={args.epochs}",
              f"data.max_train_samples={args.train_samples}", "scheduler.warmup_epochs=1",
              f"trainer.seed={args.seed}", "logger=none", "trainer.plots=false"]  # fmt: skip
    if args.eval_samples:
        common.append(f"data.max_eval_samples={args.eval_samples}")
    recipe = arm(common, work)
    baseline = arm([*common, *WITHOUT_PIECES], work)
    print(json.dumps({
        "bench": "recipe_effect",
        "recipe": "experiment=cifar10_resnet18_sota",
        "train_samples": args.train_samples,
        "epochs": args.epochs,
        "seed": args.seed,
        "with_pieces": recipe,
        "without_pieces": baseline,
        "test_acc_gain": round(recipe["test_acc"] - baseline["test_acc"], 4),
        "time_ratio": round(recipe["train_time_s"] / baseline["train_time_s"], 3),
        "machine": machine(),
    }))  # fmt: skip


if __name__ == "__main__":
    main()
