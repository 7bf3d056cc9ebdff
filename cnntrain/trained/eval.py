"""cnntrain-eval's work: a trained run's best weights tested on its own test split, or on other
labelled data, into RUN_DIR/eval/<YYYY-MM-DD_HH-MM-SS>/ (results.json, plots/, report.html)."""

import datetime
import time
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf

from cnntrain.core.checkpoint import run_folder
from cnntrain.core.device import select_device
from cnntrain.core.errors import UserError
from cnntrain.core.files import refuse_links, write_json
from cnntrain.core.overrides import override_key
from cnntrain.data import load_evaluation_split
from cnntrain.data.split_table import run_split_table
from cnntrain.reporting.calibration_plots import write_calibration_plots
from cnntrain.reporting.multilabel_plots import write_multilabel_plots
from cnntrain.reporting.plots import write_test_plots
from cnntrain.reporting.predictions import (
    image_names,
    multilabel_columns,
    multilabel_prediction_rows,
    prediction_rows,
    write_predictions,
)
from cnntrain.reporting.progress import progress_bars_enabled
from cnntrain.reporting.report import write_eval_report
from cnntrain.trained.load import TrainedModel, load_trained
from cnntrain.training.evaluate import evaluate
from cnntrain.training.precision import Arithmetic
from cnntrain.training.thresholds import fitted_test_results

# Keys an evaluation may set besides `data=NAME`, `data.*` and `paths.*`: how it computes, not
# what network it tests.
EVAL_KEYS = ("trainer.device", "trainer.precision", "trainer.tta", "trainer.progress")


def check_eval_overrides(overrides: list[str]) -> None:
    """Refuse, before any work, an override that would change the network rather than the data."""
    for override in overrides:
        key = override_key(override)
        if "=" not in override or not (key.split(".")[0] in ("data", "paths") or key in EVAL_KEYS):
            raise UserError(
                f"cnntrain-eval: {override!r} cannot be set; the network, its input size and "
                "normalization are the run's; give data=NAME, data.KEY=VALUE, paths.KEY=VALUE or "
                f"{', '.join(k + '=…' for k in EVAL_KEYS)}"
            )


def eval_config(saved: dict, fresh: DictConfig, overrides: list[str]) -> DictConfig:
    """The config to evaluate a run with: its saved config, with `overrides` applied to it;
    `data=NAME` replaces the run's data by that group. Values come from `fresh`, the overrides
    composed (and checked) over the defaults; the paths are always this machine's (fresh's)."""
    cfg = OmegaConf.create(saved)
    keys = [override_key(o) for o in overrides]
    if "data" in keys:
        cfg.data = OmegaConf.to_container(fresh.data, resolve=True)
    for key in keys:
        if "." in key:
            OmegaConf.update(cfg, key, OmegaConf.select(fresh, key), merge=False)
    cfg.paths = OmegaConf.to_container(fresh.paths, resolve=True)
    return cfg


# Keys that name the data itself: overriding one evaluates on other data than the run's.
SOURCE_KEYS = ("data", "data.name", "data.root", "data.labels", "data.splits")


def use_run_split(cfg: DictConfig, run_dir: Path, overrides: list[str]) -> None:
    """On the run's own data, test on the split it trained with: its splits.csv (when the tool
    made or reused a split; the table's paths only pick among the files the data holds)."""
    table = run_split_table(run_dir)
    if table and not any(override_key(o) in SOURCE_KEYS for o in overrides):
        cfg.data.splits = table


def evaluate_run(source, fresh: DictConfig, overrides: list[str]) -> Path:
    """Test the run folder (or checkpoint) `source` on the data `overrides` give (its own test
    split when none); the new folder RUN_DIR/eval/<time>/ holding what was written."""
    started = time.perf_counter()
    check_eval_overrides(overrides)
    refuse_links(run_folder(source), ["eval"])  # a received run's eval/ may be a link out of it
    trained = load_trained(source)
    cfg = eval_config(trained.config, fresh, overrides)
    use_run_split(cfg, run_folder(source), overrides)
    device = select_device(cfg.trainer.device)
    arithmetic = Arithmetic.for_trainer(cfg.trainer, device)
    split = load_evaluation_split(cfg, device, trained.spec, trained.mean, trained.std,
                                  trained.classes, trained.multi_label)  # fmt: skip
    if split.loader.count == 0:
        raise UserError(f"no readable image to evaluate on in {split.origin}")
    layout = torch.channels_last if cfg.trainer.channels_last else torch.preserve_format
    network = trained.network.to(device, memory_format=layout)
    bars = progress_bars_enabled(cfg)
    out = evaluate(network, split.loader, arithmetic, bars, "eval", keep_outputs=True)
    results = {
        **fitted_test_results(
            out, trained.classes, trained.thresholds or trained.temperature, split.name
        ),
        "test/split": split.name,
        "test/class_counts": split.counts,
        "dataset": cfg.data.name,
        "data": split.origin,
        "checkpoint": str(trained.checkpoint.resolve()),
        "model": cfg.model.name,
        "classes": trained.classes,
        "tta": cfg.trainer.tta,  # false, true (flip) or flip_translate
        "device": str(device),
        "precision": str(arithmetic.dtype or torch.float32).removeprefix("torch."),
        "eval_time_s": round(time.perf_counter() - started, 3),
    }
    folder = new_eval_folder(trained)
    write_json(folder / "results.json", results)
    names = image_names(split.files, split.origin, split.loader.count)
    write_test_outputs(folder, out, trained, names, split.loader.images_at)
    write_eval_report(folder)
    return folder


def write_test_outputs(folder: Path, out: dict, trained: TrainedModel, names: list[str],
                       images_at) -> None:  # fmt: skip
    """test_predictions.csv and the test's figures into `folder` (plots/)."""
    logits, targets, classes = out["logits"], out["targets"], trained.classes
    if trained.multi_label:
        thresholds = trained.thresholds.tensor()
        rows = multilabel_prediction_rows(logits, targets, classes, names, thresholds)
        write_predictions(folder, rows, multilabel_columns(classes))
        write_multilabel_plots(folder / "plots", logits, targets, thresholds, classes, images_at,
                               names)  # fmt: skip
        return
    write_predictions(folder, prediction_rows(logits, targets, classes, names))
    write_test_plots(folder / "plots", logits, targets, classes)
    write_calibration_plots(folder / "plots", logits, targets, trained.temperature)


def new_eval_folder(trained: TrainedModel) -> Path:
    """RUN_DIR/eval/<YYYY-MM-DD_HH-MM-SS>/, made now; `-2`, `-3`… follow the time when an
    evaluation of the same second already has that folder (nothing is overwritten)."""
    stamp = f"{datetime.datetime.now():%Y-%m-%d_%H-%M-%S}"
    parent = run_folder(str(trained.checkpoint)) / "eval"
    for n in range(1, 1000):
        folder = parent / (stamp if n == 1 else f"{stamp}-{n}")
        try:
            folder.mkdir(parents=True)
            return folder
        except FileExistsError:
            continue
        except OSError as e:
            raise UserError(f"could not make {folder}: {e.strerror or e}; fix permissions") from e
    raise UserError(f"{parent} has 999 evaluations of {stamp}; wait a second and try again")
