"""What each airbench94 piece of `experiment=cifar10_94` is worth: the recipe, then the recipe with
one piece taken out (Lookahead, alternating flips, the whitening bias frozen after 3 epochs, the
schedule ending at 0.07 of its peak), same training subset, epochs and seed, evaluated on the test
split after every epoch; and the test-time views, by evaluating the full recipe's best weights
with each `trainer.tta` (cnntrain-eval). Prints one JSON line.

    CNNTRAIN_DATA_DIR=../shared/datasets python -m bench.airbench_pieces [--run RUN_DIR]

--run: a finished full-size `cifar10_94` run whose weights the views are measured on as well.
By default every arm is the full recipe (50,000 images, 10 epochs: about 27 minutes per arm on a
2-core CPU in fp32, seconds on a GPU). --train-samples caps the training set, but the recipe's
batch of 1,024 leaves a few thousand images only a handful of steps per epoch, too few for the
pieces to show: 4,096 images gave 4 steps per epoch and about 50% accuracy.
"""

import argparse
import json
import subprocess
import sys
from pathlib import Path

from bench.common import cnntrain, machine, metrics, results, work_folder

WITHOUT = {
    "lookahead": ["trainer.lookahead=null"],
    "alternating_flip": ["data.augment.hflip=true"],  # a fresh coin per image and epoch
    "whitening_bias_freeze": ["model.whiten_bias_epochs=null"],  # its bias learns throughout
    "end_at_0.07": ["scheduler.end_factor=0.001"],  # the decay runs down to ~0
}
VIEWS = ("false", "true", "flip_translate")  # trainer.tta: 1, 2 and 6 views


def arm(overrides: list[str], work: Path) -> tuple[dict, Path]:
    wall, run = cnntrain(overrides, work)
    rows, out = metrics(run), results(run)
    return {
        "test_acc": out["test/acc"],  # the best epoch's weights, with the recipe's 6 views
        "test_acc_per_epoch": [row["val/acc"] for row in rows],  # per epoch, 1 view
        "train_time_s": out["train_time_s"],
        "process_wall_s": round(wall, 1),
    }, run


def views(run: Path) -> dict:
    """test/acc of `run`'s best weights with each trainer.tta, through cnntrain-eval."""
    accs = {}
    for tta in VIEWS:
        proc = subprocess.run(
            [sys.executable, "-m", "cnntrain.cli.eval", str(run), f"trainer.tta={tta}"],
            capture_output=True, text=True,
        )  # fmt: skip
        if proc.returncode != 0:  # say so in the figures; the trainings above are not lost
            accs[tta] = f"failed: {proc.stderr.strip().splitlines()[-1:]}"
            continue
        folder = Path(proc.stdout.strip().splitlines()[-1])
        accs[tta] = json.loads((folder / "results.json").read_text())["test/acc"]
    return accs


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--train-samples", type=int, default=None, help="default: all")
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--eval-samples", type=int, default=None, help="test images per epoch")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--run", type=Path, default=None, help="a full cifar10_94 run's folder")
    args = ap.parse_args()
    work = work_folder("bench-airbench-")
    common = ["experiment=cifar10_94", "data.val_split=0", f"trainer.epochs={args.epochs}",
              f"data.max_train_samples={args.train_samples or 'null'}", f"trainer.seed={args.seed}",
              f"data.max_eval_samples={args.eval_samples or 'null'}",
              "logger=none", "trainer.plots=false"]  # fmt: skip
    recipe, recipe_run = arm(common, work)
    arms = {"recipe": recipe}
    for piece, overrides in WITHOUT.items():
        arms[f"without_{piece}"] = arm([*common, *overrides], work)[0]
    for figures in arms.values():  # what taking the piece out cost, in test accuracy
        figures["effect"] = round(recipe["test_acc"] - figures["test_acc"], 4)
    print(json.dumps({
        "bench": "airbench_pieces",
        "train_samples": args.train_samples,
        "epochs": args.epochs,
        "eval_samples": args.eval_samples,
        "seed": args.seed,
        "arms": arms,
        "views": {"subset_run": views(recipe_run),
                  **({"full_run": views(args.run)} if args.run else {})},
        "machine": machine("cpu"),
    }))  # fmt: skip


if __name__ == "__main__":
    main()
