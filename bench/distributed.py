"""Training images/s of one process against several on this machine (`trainer.devices`), the
same recipe and global batch: on a CPU each process gets its share of the cores (cores / W
threads, cnntrain/distributed/), on GPUs one GPU each. Prints one JSON line.

    CNNTRAIN_DATA_DIR=../shared/datasets python -m bench.distributed \
        --train-samples 4096 --epochs 2 --devices 1 2
"""

import argparse
import json

from bench.common import cnntrain, machine, metrics, results, work_folder


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="simplecnn")
    ap.add_argument("--train-samples", type=int, default=4096)
    ap.add_argument("--batch", type=int, default=128)  # global: every world size trains alike
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--devices", type=int, nargs="+", default=[1, 2])
    args = ap.parse_args()
    work = work_folder("bench-distributed-")
    recipe = [f"model={args.model}", f"data.max_train_samples={args.train_samples}",
              f"data.batch_size={args.batch}", "data.max_eval_samples=1024", "logger=none",
              "trainer.plots=false"]  # fmt: skip
    cnntrain([*recipe, "trainer.epochs=1"], work)  # warm the caches
    figures = {}
    for devices in args.devices:
        command = [*recipe, f"trainer.epochs={args.epochs}", f"trainer.devices={devices}"]
        wall, run = cnntrain(command, work)
        speeds = [row["train/images_per_s"] for row in metrics(run)]
        done = results(run)
        figures[str(devices)] = {
            "images_per_s": speeds,  # per epoch; the first includes warm-up
            "last_epoch_images_per_s": speeds[-1],
            "final_val_acc": done["final_val/acc"],
            "backend": done["backend"],
            "wall_s": round(wall, 2),
        }
    base = figures[str(args.devices[0])]["last_epoch_images_per_s"]
    speedup = {d: round(f["last_epoch_images_per_s"] / base, 3) for d, f in figures.items()}
    recipe.append(f"trainer.epochs={args.epochs}")
    print(json.dumps({"bench": "distributed", "recipe": recipe, "processes": figures,
                      "speedup": speedup, "machine": machine()}))  # fmt: skip


if __name__ == "__main__":
    main()
