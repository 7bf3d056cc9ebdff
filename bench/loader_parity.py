"""The tensor path and the DataLoader path give the same accuracy for the same recipe: test
accuracy over several seeds for each, with mean ± std and the difference. Prints one JSON line.

    CNNTRAIN_DATA_DIR=../shared/datasets python -m bench.loader_parity \
        --train-samples 8192 --epochs 4
"""

import argparse
import json

from bench.common import cnntrain, machine, mean, results, run_choices, std, work_folder


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--experiment", default="seed_cifar10")
    ap.add_argument("--train-samples", type=int, default=8192)
    ap.add_argument("--epochs", type=int, default=4)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    args = ap.parse_args()
    work = work_folder("bench-parity-")
    recipe = [f"experiment={args.experiment}", f"trainer.epochs={args.epochs}",
              f"data.max_train_samples={args.train_samples}"]  # fmt: skip
    cnntrain(["experiment=smoke"], work)  # warm the caches
    figures = {}
    for loader in ("tensor", "dataloader"):
        accs, walls = [], []
        for seed in args.seeds:
            wall, run = cnntrain([*recipe, f"data.loader={loader}", f"trainer.seed={seed}"], work)
            accs.append(results(run)["test/acc"])
            walls.append(round(wall, 2))
        figures[loader] = {"test_acc": accs, "mean": round(mean(accs), 4),
                           "std": round(std(accs), 4), "wall_s": walls,
                           **run_choices(run)}  # fmt: skip
    diff = figures["tensor"]["mean"] - figures["dataloader"]["mean"]
    print(json.dumps({"bench": "loader_parity", "recipe": recipe, **figures,
                      "difference": round(diff, 4),
                      "machine": machine(figures["tensor"]["device"])}))  # fmt: skip


if __name__ == "__main__":
    main()
