"""Peak memory of cnntrain runs: resident host memory of the process (and allocated GPU memory on
a GPU), from each run's results.json, for the tensor and DataLoader paths. Prints one JSON line.

    CNNTRAIN_DATA_DIR=../shared/datasets python -m bench.peak_memory
"""

import json

from bench.common import cnntrain, machine, results, run_choices, work_folder

CASES = {
    "seed_cifar10 tensor": ["experiment=seed_cifar10", "data.loader=tensor"],
    "seed_cifar10 dataloader": ["experiment=seed_cifar10", "data.loader=dataloader"],
    "cifar10_94 tensor": ["experiment=cifar10_94"],
    "fashion_mnist tensor": ["experiment=fashion_mnist"],
}


def main() -> None:
    work = work_folder("bench-mem-")
    short = ["trainer.epochs=1", "data.max_train_samples=8192", "data.max_eval_samples=2048"]
    cnntrain(["experiment=smoke"], work)  # warm the caches
    figures = {}
    for name, overrides in CASES.items():
        wall, run = cnntrain([*overrides, *short], work)
        r = results(run)
        figures[name] = {k: r[k] for k in r if k.startswith("peak_")} | {"wall_s": round(wall, 2)}
        figures[name] |= run_choices(run)
    print(json.dumps({"bench": "peak_memory", "overrides": short, "runs": figures,
                      "machine": machine(r["device"])}))  # fmt: skip


if __name__ == "__main__":
    main()
