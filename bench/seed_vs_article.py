"""cnntrain's `experiment=seed_cifar10` against the article's own loop: same machine, same training
subset, same epochs, each evaluated after every epoch on `--test-samples` test images (a seeded
subset each; 0 = all 10,000). Prints one JSON line:
whole-process wall time, training images/s, test accuracy (per seed and mean ± std) and the ratio.

    CNNTRAIN_DATA_DIR=../shared/datasets python -m bench.seed_vs_article \
        --train-samples 4096 --epochs 3 --test-samples 1000 [--seeds 0 1 2]
"""

import argparse
import json

from omegaconf import OmegaConf

from bench.common import (
    bench_script,
    cnntrain,
    machine,
    mean,
    results,
    run_choices,
    std,
    train_images_per_s,
    work_folder,
)
from cnntrain.data.known import open_splits


def cifar_folder(cache_dir: str, data_dir: str) -> str:
    """The ImageFolder copy of CIFAR-10 that cnntrain uses (unpacked once into its cache)."""
    d = OmegaConf.create({"name": "cifar10", "root": None, "download": False})
    return open_splits(d, data_dir, cache_dir).origin


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--train-samples", type=int, default=4096)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--test-samples", type=int, default=1000)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    args = ap.parse_args()
    work = work_folder("bench-seed-")
    recipe = ["experiment=seed_cifar10", f"trainer.epochs={args.epochs}", "data.val_split=0",
              f"data.max_train_samples={args.train_samples}",
              f"data.max_eval_samples={args.test_samples or 'null'}"]  # fmt: skip
    cnntrain([*recipe, "trainer.epochs=1", "data.max_train_samples=256"], work)  # warm the caches
    cfg = OmegaConf.load(work / "run0" / ".hydra" / "config.yaml")
    root = cifar_folder(cfg.paths.cache_dir, cfg.paths.data_dir)
    test_caps = ["--test-samples", str(args.test_samples)] if args.test_samples else []
    ours, theirs = [], []
    for seed in args.seeds:  # alternate, so drifts of the machine hit both alike
        wall, run = cnntrain([*recipe, f"trainer.seed={seed}"], work)
        ours.append({"seed": seed, "wall_s": round(wall, 2), "test_acc": results(run)["test/acc"],
                     "train_images_per_s": train_images_per_s(run),
                     **run_choices(run)})  # fmt: skip
        wall, a = bench_script("article_loop", ["--root", root, "--epochs", str(args.epochs),
                                                "--train-samples", str(args.train_samples),
                                                *test_caps,
                                                "--seed", str(seed)])  # fmt: skip
        theirs.append({"seed": seed, "wall_s": round(wall, 2), "test_acc": a["test_acc"],
                       "train_images_per_s": a["train_images_per_s"]})  # fmt: skip
    summary = {}
    for name, runs in (("cnntrain", ours), ("article", theirs)):
        summary[name] = {
            "runs": runs,
            "wall_s": round(mean([r["wall_s"] for r in runs]), 2),
            "train_images_per_s": round(mean([r["train_images_per_s"] for r in runs]), 1),
            "test_acc": round(mean([r["test_acc"] for r in runs]), 4),
            "test_acc_std": round(std([r["test_acc"] for r in runs]), 4),
        }
    print(json.dumps({
        "bench": "seed_vs_article",
        "train_samples": args.train_samples,
        "epochs": args.epochs,
        "test_samples": args.test_samples or 10000,
        **summary,
        "speedup_wall": round(summary["article"]["wall_s"] / summary["cnntrain"]["wall_s"], 2),
        "machine": machine(ours[0]["device"]),
    }))  # fmt: skip


if __name__ == "__main__":
    main()
