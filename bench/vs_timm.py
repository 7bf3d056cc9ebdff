"""cnntrain `model=timm` against timm's own train.py on the same photo-like folder (CPU), side by
side: whole-process wall time of each command (measured from outside), test accuracy on the same
held-out images, per seed and their spread, and the ratio cnntrain / timm (the goal: ≤ 0.7 at an
accuracy at least timm's, within noise). Prints one JSON line.

    CNNTRAIN_DATA_DIR=../shared/datasets python -m bench.vs_timm [--seeds 0 1 2] [--quick]

The folder (bench/photo_folder.py: CIFAR-10 training images upscaled to varied sizes and aspect
ratios, JPEG/PNG/WEBP, some grayscale, some EXIF-rotated, a few nested, a 1600×1200 JPEG first) is
made once per set of parameters and kept in `--folder-cache`. cnntrain trains on it flat
(`data=imagefolder data.root=FOLDER`), splitting it itself (seeded, stratified) and writing
splits.csv; that split is laid out for timm with hard links (train/ and test/), and timm's
train.py (`--timm-script`, run as it ships, never copied here) trains on train/ and evaluates
`--val-split test`: both report on the same test images. The split is the same for every seed
(`data.split_seed` fixed); the seeds vary the weights, data order and augmentation of both.

What each side is given, so both train the same recipe (timm's defaults that differ from
cnntrain's are set explicitly; cnntrain's speed choices, e.g. channels-last and its loader, stay
its own, as timm's do; the values are Recipe's):

what               cnntrain                                   timm train.py
network            model=timm model.arch (random init)        --model, --num-classes
channels           data.channels=3 (grayscale repeated)       RGB, its default
crop size          data.image_size                            --img-size
evaluation         data.resize=floor(size / pct), centre crop --crop-pct pct
resize filter      data.interpolation                         --interpolation, --train-interpolation
                                                                (its default: random per image)
random crop        data.augment.random_resized_crop.enabled,  --scale, --ratio
                     .scale, .ratio
flip               data.augment.hflip=true (p 0.5)            --hflip 0.5, --vflip 0
colour jitter      off (its default)                          --color-jitter 0 (its default: 0.4)
off on both        erasing, mixup, cutmix, dropout (defaults) --reprob 0 --mixup 0 --cutmix 0
                                                                --drop 0
normalization      data.mean, data.std = ImageNet's           --mean, --std (resnet18's default)
batch              data.batch_size (last partial one dropped) -b (last partial one dropped)
optimizer          optimizer=sgd .lr .momentum .nesterov=true --opt sgd (Nesterov), --lr, --momentum
weight decay       .weight_decay, on every parameter          --weight-decay, --opt-kwargs
                                                                filter_bias_and_bn=False (its
                                                                default: none on biases, norms)
schedule           scheduler=cosine .min_lr=0, every step     --sched cosine --min-lr 0
                                                                --sched-on-updates (default: epochs)
warm-up            .warmup_epochs=W: lr/S to lr over its S    --warmup-epochs W --warmup-prefix
                     steps, then cosine over the rest           --warmup-lr lr/S (its default: 5
                                                                epochs from 1e-5, inside --epochs)
epochs             trainer.epochs=E                           --epochs E−W (+ W of warm-up)
label smoothing    loss.label_smoothing                       --smoothing (its default: 0.1)
arithmetic         trainer.precision=32 (--precision bf16:    no --amp (fp32); --amp --amp-dtype
                     trainer.precision=bf16)                    bfloat16 with --precision bf16
device             trainer.device=cpu                         --device cpu --no-prefetcher
loader processes   data.num_workers                           --workers (its default: 4)
seed               trainer.seed                               --seed
split              data.val_split, .test_split, .split_seed   train/ and test/ (--val-split test)
                     (it writes splits.csv)                     hard-linked from splits.csv
reported           test/acc of the last epoch's weights       eval_top1 of the last epoch
                     (trainer.save_top_k=0)

What differs, unavoidably: cnntrain's random resized crop draws its box from the centre region
it stored at data.resize (square), timm's from the whole image (these photos' aspect ratios run
0.6–1.8, so cnntrain never crops from their far ends). cnntrain evaluates the validation images
every epoch and the test images once; timm evaluates the test images every epoch (equal counts:
val_split = test_split). timm's reader ignores EXIF Orientation (it trains on the turned pixels
of those few images) and skips .webp files: the WEBPs are handed to it as PNGs of the same
pixels. Random streams differ, so single runs differ; the seeds' spread is the noise. cnntrain's
final test uses the last weights (save_top_k=0, no best.pt written), as timm's last epoch does;
both still write a checkpoint every epoch (timm keeps up to 10).

`--cache cold` (default) gives every cnntrain run an empty cache dir (its decoded images and
statistics): a first run on a new folder, as timm's every run is. `--cache warm` shares one,
filled by an untimed short run first.
"""

import argparse
import csv
import json
import math
import os
import shutil
import sys
import tempfile
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from bench.common import REPO, machine, mean, results, run_choices, std, timed, work_folder
from bench.photo_folder import make_photo_folder, read_splits, timm_tree

TIMM_SCRIPT = REPO.parent / "shared" / "peers" / "timm-train.py"
FOLDER_VERSION = 1  # bump when photo_folder's output changes: a new cache key
IMAGENET_MEAN = (0.485, 0.456, 0.406)  # timm's resnet18 pretrained_cfg, its default normalization
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class Recipe:
    """The run both sides make; sized for a few minutes a side on 2 CPU cores (fp32)."""

    classes: int = 10
    per_class: int = 200  # images per class: 2,000 in all; 1,400 train, 300 val, 300 test
    folder_seed: int = 0
    arch: str = "resnet18"
    image_size: int = 96  # px, the crop fed to the network
    crop_pct: float = 0.95  # evaluation: resize the short side to floor(size / pct), centre crop
    interpolation: str = "bicubic"  # timm's default for resnet18
    scale: tuple[float, float] = (0.08, 1.0)  # random resized crop: area fraction
    ratio: tuple[float, float] = (3 / 4, 4 / 3)  # and aspect
    hflip: float = 0.5
    batch: int = 32
    epochs: int = 5
    warmup_epochs: int = 1
    lr: float = 0.05
    momentum: float = 0.9
    weight_decay: float = 5e-4
    smoothing: float = 0.1
    workers: int = 2
    val_split: float = 0.15
    test_split: float = 0.15
    split_seed: int = 0
    precision: str = "32"  # both sides: "32" (fp32) or "bf16" (autocast, where the CPU has it)

    @property
    def resize(self) -> int:
        """The short side evaluation resizes to before its centre crop, as timm computes it."""
        return math.floor(self.image_size / self.crop_pct)


# a smoke run: both commands end to end in seconds (the numbers mean nothing)
QUICK = Recipe(classes=2, per_class=10, image_size=64, epochs=1, warmup_epochs=0, batch=4,
               val_split=0.2, test_split=0.2)  # fmt: skip


def photo_folder(recipe: Recipe, cache: Path) -> tuple[Path, dict]:
    """The flat photo folder for `recipe` (made once, kept under `cache`), and what it holds."""
    key = f"photos-c{recipe.classes}-n{recipe.per_class}-s{recipe.folder_seed}-v{FOLDER_VERSION}"
    folder, info = cache / key, cache / f"{key}.json"
    if not info.exists():
        part = cache / f"{key}.part"
        shutil.rmtree(part, ignore_errors=True)
        summary = make_photo_folder(part, classes=recipe.classes, per_class=recipe.per_class,
                                    seed=recipe.folder_seed)  # fmt: skip
        shutil.rmtree(folder, ignore_errors=True)
        part.rename(folder)
        info.write_text(json.dumps(summary))  # last: the folder is whole
    return folder, json.loads(info.read_text())


def num(value: float) -> str:
    """A float as written on a command line, in full (the shortest text that reads back exact)."""
    return repr(float(value))


def floats(values) -> str:
    return "[" + ",".join(num(v) for v in values) + "]"


def cnntrain_overrides(recipe: Recipe, root: Path, seed: int) -> list[str]:
    """cnntrain's command line for `recipe` on the flat folder `root` (see the table above)."""
    r = recipe
    rrc = "data.augment.random_resized_crop"
    return [
        "data=imagefolder", f"data.root={root}", "data.channels=3",
        f"data.val_split={r.val_split}", f"data.test_split={r.test_split}",
        f"data.split_seed={r.split_seed}",
        f"data.image_size={r.image_size}", f"data.resize={r.resize}",
        f"data.interpolation={r.interpolation}",
        f"{rrc}.enabled=true", f"{rrc}.scale={floats(r.scale)}", f"{rrc}.ratio={floats(r.ratio)}",
        f"data.augment.hflip={'true' if r.hflip else 'false'}",
        f"data.mean={floats(IMAGENET_MEAN)}", f"data.std={floats(IMAGENET_STD)}",
        f"data.batch_size={r.batch}", f"data.num_workers={r.workers}",
        "model=timm", f"model.arch={r.arch}",
        "optimizer=sgd", f"optimizer.lr={r.lr}", f"optimizer.momentum={r.momentum}",
        "optimizer.nesterov=true", f"optimizer.weight_decay={r.weight_decay}",
        "scheduler=cosine", f"scheduler.warmup_epochs={r.warmup_epochs}", "scheduler.min_lr=0",
        f"loss.label_smoothing={r.smoothing}",
        f"trainer.epochs={r.epochs}", "trainer.device=cpu", f"trainer.precision={r.precision}",
        f"trainer.seed={seed}", "trainer.save_top_k=0",
    ]  # fmt: skip


def timm_command(
    recipe: Recipe, data_dir: Path, seed: int, output: Path, name: str, train_images: int,
    script: Path = TIMM_SCRIPT,
) -> list[str]:  # fmt: skip
    """timm train.py's command line for `recipe` on `data_dir` (train/, test/ as its val split)
    holding `train_images` training images (see the table above)."""
    r = recipe
    steps = train_images // r.batch  # per epoch: both drop the last partial batch
    warmup = ["--warmup-epochs", str(r.warmup_epochs)]
    if r.warmup_epochs:
        # cnntrain's warm-up: linear from lr/W to lr over W steps, then the cosine over the
        # remaining steps; timm's warm-up prefix does that with its cosine over --epochs after it
        warmup += ["--warmup-prefix", "--warmup-lr", num(r.lr / (r.warmup_epochs * steps))]
    return [
        sys.executable, str(script), "--device", "cpu", "--no-prefetcher",
        "--data-dir", str(data_dir), "--train-split", "train", "--val-split", "test",
        "--model", r.arch, "--num-classes", str(r.classes),
        "--img-size", str(r.image_size), "--crop-pct", num(r.crop_pct),
        "--interpolation", r.interpolation, "--train-interpolation", r.interpolation,
        "--mean", *map(num, IMAGENET_MEAN), "--std", *map(num, IMAGENET_STD),
        "--scale", *map(num, r.scale), "--ratio", *map(num, r.ratio),
        "--hflip", num(r.hflip), "--vflip", "0", "--color-jitter", "0",
        "--reprob", "0", "--mixup", "0", "--cutmix", "0", "--drop", "0",
        "--smoothing", num(r.smoothing),
        "-b", str(r.batch), "--epochs", str(r.epochs - r.warmup_epochs),
        "--opt", "sgd", "--lr", num(r.lr), "--momentum", num(r.momentum),
        "--weight-decay", num(r.weight_decay), "--opt-kwargs", "filter_bias_and_bn=False",
        "--sched", "cosine", "--sched-on-updates", "--min-lr", "0", *warmup,
        "--workers", str(r.workers), "--seed", str(seed),
        "--output", str(output), "--experiment", name,
        *(["--amp", "--amp-dtype", "bfloat16"] if r.precision == "bf16" else []),
    ]  # fmt: skip


def timm_epochs(output_dir: Path) -> list[dict]:
    """timm's summary.csv rows: epoch, train_loss, eval_loss, eval_top1 (%), eval_top5, lr."""
    with open(output_dir / "summary.csv", newline="") as f:
        return [{k: float(v) for k, v in row.items()} for row in csv.DictReader(f)]


def run_cnntrain(recipe: Recipe, root: Path, seed: int, work: Path, cache: Path,
                 extra: list[str] = ()) -> dict:  # fmt: skip
    run_dir = work / f"cnntrain-seed{seed}"
    env = os.environ | {"CNNTRAIN_CACHE_DIR": str(cache)}
    cmd = [sys.executable, "-m", "cnntrain", *cnntrain_overrides(recipe, root, seed), *extra,
           f"hydra.run.dir={run_dir}", "trainer.progress=false"]  # fmt: skip
    wall, _ = timed(cmd, cwd=work, env=env)
    r = results(run_dir)
    return {"seed": seed, "wall_s": round(wall, 2), "test_acc": r["test/acc"],
            "total_time_s": r.get("total_time_s"),
            "run_dir": str(run_dir), **run_choices(run_dir)}  # fmt: skip


def run_timm(recipe: Recipe, data_dir: Path, seed: int, work: Path, train_images: int,
             script: Path) -> dict:  # fmt: skip
    name = f"timm-seed{seed}"
    cmd = timm_command(recipe, data_dir, seed, work, name, train_images, script)
    wall, _ = timed(cmd, cwd=work)
    rows = timm_epochs(work / name)
    return {"seed": seed, "wall_s": round(wall, 2), "test_acc": rows[-1]["eval_top1"] / 100,
            "epochs": len(rows), "eval_top1_per_epoch": [row["eval_top1"] for row in rows],
            "output_dir": str(work / name)}  # fmt: skip


def same_split(first: Path, other: Path) -> None:
    """Every seed must train and test on the one split laid out for timm."""
    if read_splits(first) != read_splits(other):
        raise SystemExit(f"{other} is not the split of {first}: data.split_seed is not honoured")


def side(runs: list[dict]) -> dict:
    accs = [r["test_acc"] for r in runs]
    return {"runs": runs, "wall_s": round(mean([r["wall_s"] for r in runs]), 2),
            "test_acc": round(mean(accs), 4), "test_acc_std": round(std(accs), 4),
            "test_acc_min": min(accs), "test_acc_max": max(accs)}  # fmt: skip


def noise(ours: dict, theirs: dict, seeds: int, test_images: int) -> dict:
    """How far the two mean accuracies may differ by chance: the standard error of the difference
    of the seed means (from the seeds' spread), and the binomial standard deviation of a single
    accuracy measured on `test_images` images (the test set's own sampling noise)."""
    p = (ours["test_acc"] + theirs["test_acc"]) / 2
    se = math.sqrt((ours["test_acc_std"] ** 2 + theirs["test_acc_std"] ** 2) / seeds)
    return {"diff_se": round(se, 4), "binomial_std": round(math.sqrt(p * (1 - p) / test_images), 4)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--quick", action="store_true", help="a smoke run: 2 classes × 10, 1 epoch")
    ap.add_argument("--epochs", type=int, help="override the recipe's epochs")
    ap.add_argument("--per-class", type=int, help="override the recipe's images per class")
    ap.add_argument("--cache", choices=("cold", "warm"), default="cold")
    ap.add_argument("--precision", choices=("32", "bf16"), default="32",
                    help="both sides: fp32, or bf16 autocast (timm: --amp)")  # fmt: skip
    ap.add_argument("--folder-cache", type=Path,
                    default=Path(tempfile.gettempdir()) / "cnntrain-bench")  # fmt: skip
    ap.add_argument("--timm-script", type=Path, default=TIMM_SCRIPT)
    ap.add_argument("--keep", action="store_true", help="keep the run folders (printed)")
    ap.add_argument("overrides", nargs="*", help="extra cnntrain overrides (recorded): keep "
                    "to ones that change no recipe, e.g. trainer.plots=false")  # fmt: skip
    args = ap.parse_args()
    recipe = QUICK if args.quick else Recipe()
    recipe = replace(recipe, **{k: v for k, v in (("epochs", args.epochs),
                                                  ("per_class", args.per_class)) if v})  # fmt: skip
    recipe = replace(recipe, precision=args.precision)
    args.folder_cache.mkdir(parents=True, exist_ok=True)
    root, folder = photo_folder(recipe, args.folder_cache)
    work = work_folder("bench-timm-", keep=True)
    shared_cache = work / "cache"
    if args.cache == "warm":  # fill it: decoded images, statistics (untimed)
        warm = replace(recipe, epochs=1, warmup_epochs=0)
        (work / "warm").mkdir()
        run_cnntrain(warm, root, args.seeds[0], work / "warm", shared_cache, args.overrides)
    ours, theirs, splits, timm_data, counts = [], [], None, work / "timm-data", {}
    for i, seed in enumerate(args.seeds):
        cache = shared_cache if args.cache == "warm" else work / f"cache-seed{seed}"
        ordered = ("cnntrain", "timm") if i % 2 == 0 else ("timm", "cnntrain")  # alternate
        for name in ordered:
            if name == "cnntrain":
                run = run_cnntrain(recipe, root, seed, work, cache, args.overrides)
                run_splits = Path(run["run_dir"]) / "splits.csv"
                if splits is None:  # the first run splits the folder; timm gets that split
                    splits, counts = run_splits, timm_tree(root, run_splits, timm_data)
                same_split(splits, run_splits)
                ours.append(run)
            else:
                theirs.append(run_timm(recipe, timm_data, seed, work, counts["train"],
                                       args.timm_script))  # fmt: skip
    summary = {"cnntrain": side(ours), "timm": side(theirs)}
    ratio = summary["cnntrain"]["wall_s"] / summary["timm"]["wall_s"]
    diff = summary["cnntrain"]["test_acc"] - summary["timm"]["test_acc"]
    spread = noise(summary["cnntrain"], summary["timm"], len(args.seeds), counts["test"])
    print(json.dumps({
        "bench": "vs_timm",
        "recipe": asdict(recipe) | {"resize": recipe.resize, "quick": args.quick},
        "cache": args.cache,
        "cnntrain_extra": args.overrides,
        "folder": {"root": str(root), **folder, "split": counts},
        **summary,
        "wall_ratio": round(ratio, 3),  # cnntrain / timm, whole process; goal ≤ 0.7
        "acc_diff": round(diff, 4),  # cnntrain − timm, mean test accuracy
        "noise": spread,
        # the goals: at most 0.7× timm's time; accuracy no lower than 2 standard errors
        # of the difference (the seeds' spread) below timm's
        "goals_met": {"wall_ratio": ratio <= 0.7, "accuracy": diff >= -2 * spread["diff_se"]},
        "machine": machine("cpu"),
    } | ({"work": str(work)} if args.keep else {})))  # fmt: skip
    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
