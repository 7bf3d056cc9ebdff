"""`cnntrain experiment=mosaic_multilabel` against a plain hand-written BCE loop
(bench/mosaic_loop.py: the same mosaics, network, epochs, batch size, optimizer and schedule),
side by side on the same machine: whole-process wall time of each, measured from outside, both
test mAPs, and the ratio cnntrain / loop (the goal: cnntrain's mAP at least the loop's, in at most
its time). Prints one JSON line.

    CNNTRAIN_DATA_DIR=../shared/datasets python -m bench.mosaic_vs_loop [--repeats 1] [OVERRIDES…]

OVERRIDES (cnntrain's, e.g. `trainer.epochs=2 data.mosaics.train=1024`) go to both sides. The
mosaics are built into the cache once before anything is timed: both sides then read them.
"""

import argparse
import json

from bench.common import bench_script, cnntrain, machine, mean, results, run_choices, work_folder
from bench.mosaic_loop import EXPERIMENT, recipe
from cnntrain.data.known import open_splits


def build_mosaics(overrides: list[str]) -> None:
    """Build (or find) the cached mosaics both sides read, untimed."""
    cfg = recipe(overrides)
    open_splits(cfg.data, cfg.paths.data_dir, cfg.paths.cache_dir)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("overrides", nargs="*", help="cnntrain overrides, given to both sides")
    ap.add_argument("--repeats", type=int, default=1, help="runs of each, alternating")
    args = ap.parse_args()
    work = work_folder("bench-mosaic-")
    build_mosaics(args.overrides)
    ours, theirs = [], []
    for _ in range(args.repeats):
        wall, run = cnntrain([f"experiment={EXPERIMENT}", *args.overrides], work)
        r = results(run)
        ours.append({"wall_s": round(wall, 2), "test_mAP": r["test/mAP"],
                     "train_time_s": r["train_time_s"], **run_choices(run)})  # fmt: skip
        wall, loop = bench_script("mosaic_loop", args.overrides)
        theirs.append({"wall_s": round(wall, 2), "test_mAP": loop["test_mAP"],
                       "train_time_s": loop["train_time_s"],
                       "train_images_per_s": loop["train_images_per_s"]})  # fmt: skip
    summary = {
        side: {"runs": runs, "wall_s": round(mean([r["wall_s"] for r in runs]), 2),
               "test_mAP": round(mean([r["test_mAP"] for r in runs]), 4)}
        for side, runs in (("cnntrain", ours), ("loop", theirs))
    }  # fmt: skip
    ratio = summary["cnntrain"]["wall_s"] / summary["loop"]["wall_s"]
    print(json.dumps({
        "bench": "mosaic_vs_loop",
        "overrides": args.overrides,
        **summary,
        "wall_ratio": round(ratio, 3),  # cnntrain / loop; goal ≤ 1
        "goal_met": ratio <= 1 and summary["cnntrain"]["test_mAP"] >= summary["loop"]["test_mAP"],
        "machine": machine(ours[0]["device"]),
    }))  # fmt: skip


if __name__ == "__main__":
    main()
