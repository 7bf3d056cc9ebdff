"""Start-up cost: `cnntrain experiment=smoke` against `python -c "import torch, torchvision"` side
by side (the goal: smoke ≤ 2× the import), plus `cnntrain --help`, `--cfg job`, a config error
and `cnntrain-predict RUN one.jpg` (goals ≤ 1.3×), each whole process, repeated and alternated
(median and min); and the 15 modules that cost most import time of their own in
`python -X importtime -c "import cnntrain.cli.train"`. One JSON line.

    CNNTRAIN_DATA_DIR=../shared/datasets python -m bench.startup [--repeats 5]
"""

import argparse
import json
import subprocess
import sys
from collections import Counter

from PIL import Image

from bench.common import REPO, cnntrain, machine, median_min, run_choices, timed, work_folder

CLI = [sys.executable, "-m", "cnntrain"]
COMMANDS = {  # name: (command, its exit code)
    "import torch, torchvision": ([sys.executable, "-c", "import torch, torchvision"], 0),
    "cnntrain --help": ([*CLI, "--help"], 0),
    "cnntrain --cfg job": ([*CLI, "--cfg", "job"], 0),
    "cnntrain trainer.epoch=3 (config error)": ([*CLI, "trainer.epoch=3"], 2),
}


def parse_importtime(stderr: str) -> list[dict]:
    """The rows of `python -X importtime` output: module, self and cumulative time (ms)."""
    rows = []
    for line in stderr.splitlines():
        if not line.startswith("import time:") or "[us]" in line:  # not a row, or the header
            continue
        self_us, cumulative_us, module = line.removeprefix("import time:").split("|", 2)
        rows.append({"module": module.strip(), "self_ms": int(self_us) / 1000,
                     "cumulative_ms": int(cumulative_us) / 1000})  # fmt: skip
    return rows


def import_summary(rows: list[dict], module: str, top: int) -> dict:
    """Total import time of `module`, the `top` modules by self time, and the self time summed
    per package (first two name parts, e.g. torch._dynamo): steadier than single modules."""
    total = next(r["cumulative_ms"] for r in rows if r["module"] == module)
    packages = Counter()
    for r in rows:
        packages[".".join(r["module"].split(".")[:2])] += r["self_ms"]
    return {"module": module, "total_ms": total,
            "top_self": sorted(rows, key=lambda r: -r["self_ms"])[:top],
            "top_packages_self_ms": {name: round(ms, 1)
                                     for name, ms in packages.most_common(top)}}  # fmt: skip


def importtime(module: str, top: int) -> dict:
    proc = subprocess.run([sys.executable, "-X", "importtime", "-c", f"import {module}"],
                          cwd=REPO, capture_output=True, text=True, check=True)  # fmt: skip
    return import_summary(parse_importtime(proc.stderr), module, top)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    work = work_folder("bench-startup-")
    _, warm = cnntrain(["experiment=smoke"], work)  # unpacks and decodes into the cache once
    choices = run_choices(warm)
    Image.new("RGB", (640, 480), (200, 120, 40)).save(work / "one.jpg")  # a photo's size
    commands = {
        **COMMANDS,
        "cnntrain-predict RUN one.jpg": (
            [sys.executable, "-m", "cnntrain.cli.predict", str(warm), "one.jpg", "--overwrite"],
            0,
        ),
    }
    walls = {"cnntrain experiment=smoke": [], **{name: [] for name in commands}}
    for _ in range(args.repeats):  # alternate, so drifts of the machine hit all alike
        walls["cnntrain experiment=smoke"].append(cnntrain(["experiment=smoke"], work)[0])
        for name, (cmd, rc) in commands.items():
            walls[name].append(timed(cmd, cwd=work, expect_rc=rc)[0])
    figures = {name: median_min(values) for name, values in walls.items()}
    imports = figures["import torch, torchvision"]
    over_import = {name: {stat: round(f[stat] / imports[stat], 2) for stat in ("median", "min")}
                   for name, f in figures.items() if f is not imports}  # fmt: skip
    print(json.dumps({
        "bench": "startup",
        "repeats": args.repeats,
        "wall_s": figures,
        # each command's; goals: smoke ≤ 2, the others ≤ 1.3; min: the least disturbed by others
        "over_import": over_import,
        "importtime": importtime("cnntrain.cli.train", top=15),
        **choices,
        "machine": machine(choices["device"]),
    }))  # fmt: skip


if __name__ == "__main__":
    main()
