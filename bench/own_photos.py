"""The README's own-data line on a folder of mixed-size photos (bench/photo_folder.py: CIFAR-10
images upscaled, short sides 96-480 px, the first file a 1600×1200 JPEG): `cnntrain
data=imagefolder data.root=FOLDER trainer.epochs=1`, the default model (cifar10cnn, data.batch_size
128). Records the run's peak resident memory (the child's, getrusage RUSAGE_CHILDREN, and the
run's own results.json figure), the image size it chose, and the whole wall time. Prints one JSON
line; extra arguments are more overrides (`trainer.precision=32`, `data.image_size=128`).

    CNNTRAIN_DATA_DIR=../shared/datasets python -m bench.own_photos [--layout split] [OVERRIDE…]
"""

import argparse
import json
import re
import resource

import yaml

from bench.common import cnntrain, machine, results, run_choices, work_folder
from bench.photo_folder import make_photo_folder

CHOSEN = re.compile(r"image size (\d+)×(\d+) \(H×W")  # shape.py's line in train.log


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    layouts = "split: train|val|test/<class>/…; flat: <class>/… (cnntrain splits it)"
    parser.add_argument("--layout", choices=("split", "flat"), default="flat", help=layouts)
    parser.add_argument("--classes", type=int, default=10)
    parser.add_argument("--per-class", type=int, default=60)
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args()
    work = work_folder("bench-photos-")
    folder = work / "photos"
    made = make_photo_folder(folder, classes=args.classes, per_class=args.per_class,
                             layout=args.layout)  # fmt: skip
    line = ["data=imagefolder", f"data.root={folder}", "trainer.epochs=1", *args.overrides]
    wall, run = cnntrain(line, work)
    child_peak_kib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss  # Linux: KiB
    r = results(run)
    chosen = CHOSEN.search((run / "train.log").read_text())
    if chosen:
        size = [int(chosen[1]), int(chosen[2])]
    else:  # data.image_size was set
        size = yaml.safe_load((run / ".hydra" / "config.yaml").read_text())["data"]["image_size"]
    print(json.dumps({
        "bench": "own_photos",
        "overrides": line[2:],
        "folder": {"layout": args.layout, **made},
        "image_size": size,  # chosen from the photos, or data.image_size
        "peak_rss_mb": round(child_peak_kib / 2**10, 1),
        **{k: r[k] for k in r if k.startswith("peak_")},
        "wall_s": round(wall, 2),
        "train_time_s": r["train_time_s"],
        "test/acc": r["test/acc"],
        **run_choices(run),
        "machine": machine(r["device"]),
    }))  # fmt: skip


if __name__ == "__main__":
    main()
