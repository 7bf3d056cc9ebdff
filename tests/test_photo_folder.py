"""The photo-like test folder (bench/photo_folder.py) and the command lines bench/vs_timm.py runs:
the folder's formats, sizes, EXIF turns and determinism, timm's layout of a cnntrain split, and
that timm's train.py reads the recipe cnntrain is given (its own parser and scheduler)."""

import csv
import hashlib
import importlib.util
import math
import os
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageOps

from bench.photo_folder import (
    ORIENTATION,
    make_photo_folder,
    plan,
    read_sources,
    render,
    timm_tree,
)
from bench.vs_timm import QUICK, TIMM_SCRIPT, Recipe, cnntrain_overrides, timm_command
from tests.conftest import CIFAR_ARCHIVE, compose_config, needs_cifar

# Shares high enough that 2 classes × 12 images hold every kind of file.
MANY = {"png": 0.25, "webp": 0.25, "gray": 0.3, "rotated": 0.5, "nested": 0.2}
SMALL = {"classes": 2, "per_class": 12, "shares": MANY, "archive": CIFAR_ARCHIVE}
needs_timm_script = pytest.mark.skipif(not TIMM_SCRIPT.exists(), reason=f"no {TIMM_SCRIPT}")


def files_of(root: Path) -> dict[str, str]:
    """{path under root: sha256 of its bytes}."""
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}  # fmt: skip


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    if not CIFAR_ARCHIVE.exists():
        pytest.skip(f"no {CIFAR_ARCHIVE}")
    root = tmp_path_factory.mktemp("photos") / "flat"
    make_photo_folder(root, seed=0, **SMALL)
    return root


@needs_cifar
def test_the_folder_holds_every_kind_of_photo_file(folder):
    files = [p for p in sorted(folder.rglob("*")) if p.is_file()]
    assert len(files) == 24 and sorted(p.name for p in folder.iterdir()) == [
        "airplane",
        "automobile",
    ]
    assert {p.suffix for p in files} == {".jpg", ".png", ".webp"}
    modes, sizes = set(), set()
    for p in files:
        with Image.open(p) as img:
            modes.add(img.mode)
            sizes.add(img.size)
            assert min(img.size) >= 96 and max(img.size) <= 1600
    assert modes == {"RGB", "L"}
    assert len(sizes) > 20  # every image its own size
    assert len({w > h for w, h in sizes}) == 2  # landscape and portrait
    assert any(p.parent.name == "more" for p in files)  # a subfolder inside a class


@needs_cifar
def test_the_first_file_in_sorted_order_is_a_1600_by_1200_jpeg(folder):
    first = min(p for p in folder.rglob("*") if p.is_file())
    assert first.relative_to(folder) == Path("airplane", "0000.jpg")
    with Image.open(first) as img:
        assert (img.format, img.mode, img.size) == ("JPEG", "RGB", (1600, 1200))


@needs_cifar
def test_exif_rotated_files_display_upright_as_the_image_was(folder):
    names = sorted(p.name for p in folder.iterdir())
    sources = read_sources(CIFAR_ARCHIVE, 2, 12, seed=0)
    planned = plan(names, 12, 0, shares=MANY)
    turned = 0
    for name in names:
        for source, (path, look) in zip(sources[name], planned[name], strict=True):
            if look.orientation is None:
                continue
            turned += 1
            upright, _ = render(source, replace(look, orientation=None))
            with Image.open(folder / path) as img:
                assert img.getexif()[ORIENTATION] == look.orientation
                assert img.size == look.size[::-1]  # stored turned a quarter
                shown = ImageOps.exif_transpose(img)
            assert shown.size == look.size == upright.size
            a, b = (np.asarray(x.convert("L"), dtype=float) for x in (shown, upright))
            assert np.abs(a - b).mean() < 6  # JPEG's loss alone
            assert np.abs(a[::-1, ::-1] - b).mean() > np.abs(a - b).mean()  # not upside down
    assert turned >= 2


@needs_cifar
def test_the_folder_is_a_function_of_its_seed(folder, tmp_path):
    make_photo_folder(tmp_path / "again", seed=0, **SMALL)
    make_photo_folder(tmp_path / "other", seed=1, **SMALL)
    assert files_of(tmp_path / "again") == files_of(folder)
    assert files_of(tmp_path / "other") != files_of(folder)


def test_the_split_layout_keeps_the_fractions_and_the_first_file_in_train():
    planned = plan(["a", "b"], 20, 0, layout="split", splits=(0.1, 0.2))
    for name, images in planned.items():
        parts = [path.parts[0] for path, _ in images]
        assert {p: parts.count(p) for p in set(parts)} == {"train": 14, "val": 2, "test": 4}
        assert all(path.parts[1] == name for path, _ in images)
    assert planned["a"][0][0] == Path("train", "a", "0000.jpg")
    assert planned["a"][0][1].size == (1600, 1200)


@needs_cifar
def test_timms_tree_holds_a_splits_csv_with_links_flat_classes_and_no_webp(folder, tmp_path):
    rows = []
    for i, p in enumerate(sorted(p for p in folder.rglob("*") if p.is_file())):
        split = ("train", "val", "test")[i % 3]
        rows.append({"path": str(p.relative_to(folder)), "class": p.relative_to(folder).parts[0],
                     "split": split})  # fmt: skip
    table = tmp_path / "splits.csv"
    with open(table, "w", newline="") as f:
        writer = csv.DictWriter(f, ["path", "class", "split"])
        writer.writeheader()
        writer.writerows(rows)
    counts = timm_tree(folder, table, tmp_path / "timm")
    assert counts == {"train": 8, "val": 8, "test": 8}
    for row in rows:
        source = folder / row["path"]
        name = "__".join(Path(row["path"]).parts[1:])
        target = tmp_path / "timm" / row["split"] / row["class"] / name
        if source.suffix == ".webp":  # timm skips .webp: the same pixels as a PNG
            with Image.open(source) as a, Image.open(target.with_suffix(".png")) as b:
                assert np.array_equal(np.asarray(a), np.asarray(b))
        else:
            assert os.stat(target).st_ino == os.stat(source).st_ino  # a hard link
    # every image directly in its class folder: timm labels by the folder's own name
    assert {p.parent.parent.parent for p in (tmp_path / "timm").rglob("*.*")} == {tmp_path / "timm"}


def timm_script_parser():
    """The argparse parser of timm's train.py, loaded from its file (main() does not run)."""
    spec = importlib.util.spec_from_file_location("timm_train_script", TIMM_SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.parser


@needs_timm_script
def test_timm_reads_cnntrains_recipe_from_the_command_line(tmp_path):
    pytest.importorskip("timm")
    r = Recipe()
    cmd = timm_command(r, tmp_path / "data", seed=3, output=tmp_path, name="x", train_images=1400)
    assert cmd[:2] == [sys.executable, str(TIMM_SCRIPT)]
    args = timm_script_parser().parse_args(cmd[2:])
    steps = 1400 // r.batch
    expected = {
        "device": "cpu", "no_prefetcher": True, "model": "resnet18", "num_classes": 10,
        "pretrained": False, "img_size": 96, "crop_pct": 0.95, "interpolation": "bicubic",
        "train_interpolation": "bicubic", "scale": [0.08, 1.0], "hflip": 0.5, "vflip": 0.0,
        "color_jitter": 0.0, "aa": None, "reprob": 0.0, "mixup": 0.0, "cutmix": 0.0,
        "drop": 0.0, "drop_path": None, "smoothing": 0.1, "batch_size": 32, "opt": "sgd",
        "lr": 0.05, "momentum": 0.9, "weight_decay": 5e-4,
        "opt_kwargs": {"filter_bias_and_bn": False}, "sched": "cosine",
        "sched_on_updates": True, "min_lr": 0.0, "warmup_epochs": 1, "warmup_prefix": True,
        "epochs": 4, "cooldown_epochs": 0, "workers": 2, "seed": 3, "amp": False,
        "model_ema": False, "val_split": "test", "train_split": "train", "channels_last": False,
    }  # fmt: skip
    assert {k: getattr(args, k) for k in expected} == expected
    assert args.ratio == [3 / 4, 4 / 3] and args.warmup_lr == r.lr / steps  # exact
    assert args.mean == [0.485, 0.456, 0.406] and args.std == [0.229, 0.224, 0.225]
    quick = timm_script_parser().parse_args(
        timm_command(QUICK, tmp_path, 0, tmp_path, "q", train_images=12)[2:]
    )
    assert (quick.epochs, quick.warmup_epochs, quick.warmup_prefix) == (1, 0, False)


@needs_timm_script
@pytest.mark.parametrize("recipe", [Recipe(), Recipe(epochs=3, warmup_epochs=0)])
def test_timms_schedule_is_cnntrains_step_for_step(recipe, tmp_path):
    """The learning rate of every optimizer step of the run: timm's scheduler, made from the
    command line as train.py makes it, against cnntrain's scheduler=cosine."""
    pytest.importorskip("timm")
    from timm.scheduler import create_scheduler_v2, scheduler_kwargs

    from cnntrain.training.schedules import Cosine

    train_images = 1400
    steps = train_images // recipe.batch
    cmd = timm_command(recipe, tmp_path, 0, tmp_path, "x", train_images=train_images)
    args = timm_script_parser().parse_args(cmd[2:])

    def optimizer():
        return torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=recipe.lr)

    theirs = optimizer()
    schedule, epochs = create_scheduler_v2(theirs, **scheduler_kwargs(args),
                                           updates_per_epoch=steps)  # fmt: skip
    assert epochs == recipe.epochs
    ours = optimizer()
    cosine = Cosine(ours, total_steps=recipe.epochs * steps, steps_per_epoch=steps,
                    warmup_epochs=recipe.warmup_epochs, min_lr=0.0)  # fmt: skip
    for step in range(recipe.epochs * steps):  # the rate each step runs at
        assert theirs.param_groups[0]["lr"] == pytest.approx(ours.param_groups[0]["lr"], rel=1e-9)
        theirs.step(), ours.step()
        schedule.step_update(num_updates=step + 1)  # as train.py does after each update
        cosine.step()


def test_cnntrains_command_line_composes_to_the_recipe(tmp_path):
    r = Recipe()
    cfg = compose_config(*cnntrain_overrides(r, tmp_path, seed=3))
    d = cfg.data
    assert (d.name, d.root, d.channels, d.image_size) == ("imagefolder", str(tmp_path), 3, 96)
    assert (d.resize, d.interpolation, d.batch_size) == (math.floor(96 / 0.95), "bicubic", 32)
    assert (d.val_split, d.test_split, d.split_seed) == (0.15, 0.15, 0)
    crop = d.augment.random_resized_crop
    assert crop.enabled and list(crop.scale) == [0.08, 1.0]
    assert list(crop.ratio) == [3 / 4, 4 / 3]
    assert d.augment.hflip is True and d.augment.color_jitter.brightness == 0
    assert (cfg.model.name, cfg.model.arch, cfg.model.weights) == ("timm", "resnet18", None)
    o = cfg.optimizer
    assert (o.lr, o.momentum, o.nesterov, o.weight_decay) == (0.05, 0.9, True, 5e-4)
    assert (cfg.scheduler.name, cfg.scheduler.warmup_epochs, cfg.scheduler.min_lr) == (
        "cosine", 1, 0)  # fmt: skip
    assert cfg.loss.label_smoothing == 0.1
    t = cfg.trainer
    assert (t.epochs, t.device, t.precision, t.seed, t.save_top_k) == (5, "cpu", 32, 3, 0)
