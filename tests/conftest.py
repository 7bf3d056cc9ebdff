"""Shared test fixtures: the shared datasets, a per-session cache, config composition, the CLI."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from filelock import FileLock
from hydra import compose, initialize_config_dir
from PIL import Image

from cnntrain.config.resolvers import register_resolvers

REPO = Path(__file__).resolve().parent.parent
CONF = REPO / "conf"
DATA_DIR = Path(os.environ.get("CNNTRAIN_DATA_DIR", REPO.parent / "shared" / "datasets")).resolve()
CIFAR_ARCHIVE = DATA_DIR / "cifar10-jpeg.tar.gz"
FASHION_DIR = DATA_DIR / "fashion-mnist"

needs_cifar = pytest.mark.skipif(not CIFAR_ARCHIVE.exists(), reason=f"no {CIFAR_ARCHIVE}")
# The slice of the default job that `finished_run` trains: 2 epochs, 512 / 256 images.
DEFAULT_JOB_SLICE = ("trainer.epochs=2", "data.max_train_samples=512", "data.max_eval_samples=256")
needs_fashion = pytest.mark.skipif(not FASHION_DIR.exists(), reason=f"no {FASHION_DIR}")


def shared_dir(tmp_path_factory) -> Path:
    """A folder every pytest-xdist worker of this session shares (the session's own without
    xdist): what one worker builds there, under a lock, the others reuse."""
    base = tmp_path_factory.getbasetemp()
    return base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base


@pytest.fixture(scope="session", autouse=True)
def session_env(tmp_path_factory):
    """One decoded-image cache for the whole session, shared by its workers: CIFAR-10 is
    unpacked and decoded once (the cache builds each entry once under a lock)."""
    cache = os.environ.get("CNNTRAIN_TEST_CACHE") or str(shared_dir(tmp_path_factory) / "cache")
    os.environ["CNNTRAIN_CACHE_DIR"] = cache
    os.environ["CNNTRAIN_DATA_DIR"] = str(DATA_DIR)
    register_resolvers()
    return cache


@pytest.fixture(scope="session")
def finished_run(tmp_path_factory, session_env) -> Path:
    """The README's default job (`cnntrain model=cifar10cnn optimizer=sgd`) on a slice of
    CIFAR-10, 2 epochs, run once per session by the real command with every output: tests that
    need a finished run folder read it, or change a copy of it (`copied_run`)."""
    if not CIFAR_ARCHIVE.exists():
        pytest.skip(f"no {CIFAR_ARCHIVE}")
    where = shared_dir(tmp_path_factory) / "finished_run"
    with FileLock(f"{where}.lock"):
        if not (where / "done").exists():
            shutil.rmtree(where, ignore_errors=True)
            where.mkdir()
            run_cli("model=cifar10cnn", "optimizer=sgd", *DEFAULT_JOB_SLICE, cwd=where)
            (where / "done").touch()
    (run,) = run_folders(where)
    return run


@pytest.fixture
def copied_run(finished_run, tmp_path) -> Path:
    """A copy of `finished_run` of this test's own, to change."""
    return Path(shutil.copytree(finished_run, tmp_path / finished_run.name))


def compose_config(*overrides: str, output_dir: Path | None = None):
    """The config `cnntrain *overrides` would run, without starting Hydra's app."""
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        extra = [f"paths.output_dir={output_dir}"] if output_dir else []
        return compose("config", overrides=[*overrides, *extra])


def run_cli(*args: str, cwd: Path, check: bool = True, timeout: int = 600, env=None):
    """Run the real `cnntrain` command (as `python -m cnntrain`) in `cwd`."""
    proc = subprocess.run(
        [sys.executable, "-m", "cnntrain", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})},
    )
    if check and proc.returncode != 0:
        raise AssertionError(
            f"cnntrain {' '.join(args)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}"
        )
    return proc


def run_with_fault(fault: str, *args: str, cwd: Path) -> subprocess.CompletedProcess:
    """The real `cnntrain *args` with tests/faults.py's Fault callback injecting `fault`."""
    fault_args = ("+callbacks.fault._target_=tests.faults.Fault", f"+callbacks.fault.at={fault}")
    return run_cli(*args, *fault_args, cwd=cwd, check=False, env={"PYTHONPATH": str(REPO)})


def run_folders(cwd: Path) -> list[Path]:
    """Single-run folders under cwd/outputs/<date>/<time>_<token>/, oldest first."""
    return sorted(
        p.parent for p in (cwd / "outputs").glob("*/*/.hydra") if "multirun" not in p.parts
    )


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.fixture(scope="module")
def image_root(tmp_path_factory) -> Path:
    """A small ImageFolder (train/ and val/, 2 classes × 60 PNGs each) for one test module:
    the trackers' tests train on it."""
    return make_image_folder(tmp_path_factory.mktemp("data") / "shapes", per_class=60)


def make_image_folder(
    root: Path,
    splits=("train", "val"),
    classes=("class a", "class b"),
    per_class=12,
    mode="L",
    size=(20, 24),
    seed=0,
) -> Path:
    """An ImageFolder of PNGs whose classes differ in brightness and stripe direction.

    `per_class`: images per class and split, or one count per class (an imbalanced folder).
    """
    counts = per_class if isinstance(per_class, list | tuple) else [per_class] * len(classes)

    rng = np.random.default_rng(seed)
    h, w = size
    for split in splits:
        for c, name in enumerate(classes):
            folder = root / split / name
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(counts[c]):
                stripes = np.indices((h, w))[c % 2] % 4 < 2  # horizontal or vertical stripes
                pixels = 60 + 120 * stripes + 40 * c + rng.integers(0, 30, (h, w))
                img = Image.fromarray(pixels.clip(0, 255).astype(np.uint8), "L").convert(mode)
                img.save(folder / f"img {i:03d}.png")
    return root


def load_run_data(cfg, device="cpu", **options):
    """load_data as train() calls it: data.augment read once, and what the model wants of its
    data (pretrained weights' size and statistics)."""
    from cnntrain.data import load_data
    from cnntrain.data.augment.options import read_options
    from cnntrain.models import data_defaults

    augment = read_options(cfg.data.augment)
    return load_data(cfg, torch.device(device), augment, data_defaults(cfg.model) or {}, **options)


def train_epoch(parts, loader, epoch: int, totals, start: int = 0) -> int:
    """The epoch loop's training steps alone (training/loop.py without events, bars or stops):
    batches `start`… of `loader` through train_batch, then the end-of-epoch checks; the next
    batch index."""
    from cnntrain.models.freeze import train_mode
    from cnntrain.training.step import settle, train_batch

    train_mode(parts.model)
    for step, (x, y) in enumerate(loader.batches(epoch, start), start):
        train_batch(parts, x, y, epoch, step, len(loader), totals)
    settle(parts, totals, epoch)
    return len(loader)


def train_here(*overrides: str, output_dir: Path, resume: Path | None = None) -> dict:
    """`cnntrain *overrides` in this process (no start-up cost); its results.json.

    With `resume`, continue that run as `cnntrain resume=RUN *overrides` would.
    """
    from cnntrain.config.resumed import resumed_config
    from cnntrain.train import train

    if resume is None:
        cfg = compose_config(*overrides, output_dir=output_dir)
    else:
        cfg = resumed_config(compose_config(f"resume={resume}", output_dir=output_dir), overrides)
    train(cfg)
    return json.loads((Path(cfg.paths.output_dir) / "results.json").read_text())
