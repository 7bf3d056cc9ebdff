"""train(cfg): build data, model, optimizer and callbacks; fit; test; fill the run folder.

The run folder (`paths.output_dir`) gets checkpoints/{last,best}.pt, metrics.jsonl/.csv,
results.json, plots/, report.html, summary.txt/.json, the trackers' files and train.log (the
latter from Hydra's logging). A run can be resumed in place (`resume=`) and ends bitwise
identical on CPU to one that was never interrupted. Under torchrun every rank calls train(cfg)
and rank 0 alone fills the run folder (distributed/).
"""

import logging
import math
import time
from pathlib import Path

import numpy as np
import torch
from omegaconf import DictConfig

from cnntrain import distributed
from cnntrain.core.checkpoint import LAST, checkpoint_file, load_checkpoint
from cnntrain.core.device import select_device
from cnntrain.core.files import write_json
from cnntrain.core.safe_text import printable
from cnntrain.core.seeds import seed_everything
from cnntrain.data import DataBundle, load_data
from cnntrain.data.augment.options import Options, read_options
from cnntrain.data.split_table import write_records
from cnntrain.data.splits import seeded_subset
from cnntrain.metrics import class_counts
from cnntrain.models import build_model, data_defaults, init_from
from cnntrain.models.transfer import architecture
from cnntrain.reporting.cam import SplitImages
from cnntrain.reporting.layer_table import summarize_layers, write_layer_summary
from cnntrain.reporting.predictions import (
    image_names,
    multilabel_columns,
    multilabel_prediction_rows,
    prediction_rows,
    write_predictions,
)
from cnntrain.reporting.progress import progress_bars_enabled
from cnntrain.reporting.report import write_run_report
from cnntrain.reporting.run_figures import write_figures, write_multilabel_figures
from cnntrain.training.budget import budget_results, resumed_epochs
from cnntrain.training.calibrate import fit_on_validation
from cnntrain.training.callbacks import build_callbacks
from cnntrain.training.compiling import compile_mode, compiled, warm_up
from cnntrain.training.ema import EMA
from cnntrain.training.fits import check_fits
from cnntrain.training.loop import Loop
from cnntrain.training.losses import build_loss
from cnntrain.training.memory import peak_memory, reset_peak_memory
from cnntrain.training.mixing import batch_mix
from cnntrain.training.optim import build_optimizer, build_scheduler
from cnntrain.training.precision import Arithmetic, bf16_gradient_hazard
from cnntrain.training.resume import restore, restore_trainable
from cnntrain.training.state import check_optimized_metric, chosen_monitor
from cnntrain.training.step import StepParts, optimizer_steps
from cnntrain.training.thresholds import Thresholds, fit_thresholds, fitted_test_results

log = logging.getLogger("cnntrain")
IMBALANCE_RATIO = 1.5  # largest class / smallest class above which the data counts as imbalanced


def train(cfg: DictConfig) -> float:
    """Train as `cfg` says; return results.json's `cfg.optimized_metric` (what sweeps optimize).

    `cfg` is a checked config (config.rules.validate), as the CLI passes it. With `cfg.resume`
    set, continue that run from its checkpoint with `cfg` as given; the CLI passes
    `resumed_config(...)`, the saved config with the changes a resume allows.
    """
    started = time.perf_counter()
    world = distributed.world()
    distributed.check_devices(cfg.trainer.devices)
    distributed.check_batch_size(cfg.data.batch_size, world.size)
    run_dir = Path(cfg.paths.output_dir)
    if world.is_main:  # first, before the data is read (minutes on a cold cache)
        log.info("run folder %s: %s on %s, trainer.device=%s (the whole config: %s)", run_dir,
                 architecture(cfg.model), cfg.data.name, cfg.trainer.device,
                 run_dir / ".hydra" / "config.yaml")  # fmt: skip
    resume_path = checkpoint_file(cfg.resume, LAST, "resume") if cfg.resume else None
    saved = load_checkpoint(resume_path) if resume_path else None
    seed_everything(cfg.trainer.seed)  # the same on every rank: dropout draws alike everywhere
    device = select_device(cfg.trainer.device)
    distributed.start(device)  # joins the process group once (the CLI has, before Hydra)
    device = distributed.local_device(device)
    reset_peak_memory(device)
    augment = read_options(cfg.data.augment)  # read once: both data paths and MixUp/CutMix
    wanted = data_defaults(cfg.model) or {}  # e.g. pretrained weights' size, RGB and statistics
    data = load_data(cfg, device, augment, wanted, channels_last=cfg.trainer.channels_last,
                     world=world)  # fmt: skip
    if world.is_main:  # splits.csv (a split the tool made or reused), bad_rows.csv
        write_records(data.records, run_dir)
    cfg.trainer.monitor = chosen_monitor(cfg.trainer.monitor, data.multi_label)  # auto: resolved
    check_optimized_metric(cfg.optimized_metric, data.multi_label)
    check_fits(cfg, data, device, world)  # one line, not the kernel's OOM killer
    # resumed: the weights come from the run's checkpoint; its starting weights are not read
    # (a pretrained cache or a file that another machine may not have)
    model = build_model(cfg.model, data.spec, weights_read=saved is None)
    if saved is None:
        init_from_training_images(model, data.train, cfg.trainer.seed)
        if cfg.model.init_from:  # after the data init: the other run's tensors win
            init_from(model, cfg.model.init_from, cfg.model)
    else:
        restore_trainable(model, saved)
    shape = (data.spec.channels, data.spec.height, data.spec.width)
    hazard = bf16_gradient_hazard(model, shape) if device.type == "cpu" else None
    if distributed.use_sync_bn(cfg.trainer.sync_bn):
        model = distributed.sync_batchnorm(model, device)
    layout = torch.channels_last if cfg.trainer.channels_last else torch.preserve_format
    model.to(device, memory_format=layout)
    arithmetic = Arithmetic.for_trainer(cfg.trainer, device, hazard)
    loop = Loop(cfg=cfg, run_dir=run_dir, model=model, data=data,
                parts=build_step_parts(cfg, model, data, arithmetic, augment),
                callbacks=build_callbacks(cfg, world.is_main),
                show_bars=progress_bars_enabled(cfg) and world.is_main)  # fmt: skip
    if saved is not None:
        log.info("resuming %s from epoch %d, step %d", run_dir, saved["progress"]["epoch"],
                 saved["progress"]["step"])  # fmt: skip
        steps = optimizer_steps(len(data.train), cfg.trainer.accumulate)
        restore(saved, resume_path, loop, resumed_epochs(saved, cfg) * steps)
    if compile_mode(cfg.trainer.compile):
        loop.compile_s = warm_up(loop.parts, loop.eval_model, data, cfg, world.size)
    counts = class_counts(data.train.targets, data.classes)
    if world.is_main:  # once, not once per process
        log_start(cfg, data, model, arithmetic, run_dir)
        targets = data.train.targets
        log_class_balance(counts, int((targets.sum(1) == 0).sum()) if data.multi_label else None)
    if world.is_main:
        write_layer_summary(summarize_layers(model, shape), run_dir)
    try:
        results = fit_and_test(loop, counts, started)
    except BaseException as e:
        interrupted = loop.interrupted or isinstance(e, SystemExit | KeyboardInterrupt)
        loop.emit("on_close", "interrupted" if interrupted else "failed")
        raise
    loop.emit("on_close", "finished")
    weights = (f"best epoch {results['best_epoch']}" if cfg.trainer.save_top_k
               else f"epoch {results['epochs']}'s weights: trainer.save_top_k=0")  # fmt: skip
    headline = "mAP" if data.multi_label else "acc"
    log.info("test %s %.2f%% (%s split, %s); results in %s",
             "mAP" if data.multi_label else "accuracy", 100 * results[f"test/{headline}"],
             data.test_name, weights, run_dir)  # fmt: skip
    return results[cfg.optimized_metric]


def fit_and_test(loop: Loop, counts: dict[str, int], started: float) -> dict:
    """Train, test the best weights, write results.json, the plots and the report (unless
    `trainer.plots` is false); the results (rank 0's, on every rank).

    `started`: time.perf_counter() at the process's start of this run (for total_time_s)."""
    loop.fit()
    out, net = loop.test()
    # every rank evaluates; rank 0 fits and saves: the labels' thresholds, or a temperature
    fitted = (fit_thresholds if loop.data.multi_label else fit_on_validation)(loop, net)
    results = write_results(loop, out, net, counts, started, fitted) if loop.is_main else None
    results = distributed.from_main(results)
    loop.emit("on_fit_end", results)
    return results


def write_results(loop: Loop, out: dict, net, counts: dict[str, int], started: float,
                  fitted: "float | Thresholds | None") -> dict:  # fmt: skip
    """results.json, and the plots and report unless `trainer.plots` is false; the results.
    `fitted`: the temperature fitted on the validation split (None: not fitted), or with
    several labels per image the labels' Thresholds."""
    data, p = loop.data, loop.state
    results = {
        **fitted_test_results(out, data.classes, fitted, data.test_name),
        "test/split": data.test_name,
        "best_epoch": p.best_epoch,  # best.pt's: the best by `monitor`
        "best_val/acc": max(row["val/acc"] for row in p.rows),  # of any epoch, whatever `monitor`
        "monitor": loop.monitor,
        f"best_{loop.monitor}": p.best_value,  # best_val/loss, …: the monitored value at best_epoch
        "final_val/acc": p.rows[-1]["val/acc"],
        **multilabel_bests(p.rows),  # best_val/mAP, final_val/mAP with several labels per image
        "epochs": p.epoch,
        "stopped_by": p.stopped_by or "epochs",
        "train_time_s": round(p.elapsed_s, 3),
        **budget_results(loop),  # trainer.time_budget's: null when off
        "compile_s": round(loop.compile_s, 3),  # torch.compile's warm-up, not in train_time_s
        "params": sum(x.numel() for x in loop.model.parameters()),
        "model": loop.cfg.model.name,
        "dataset": loop.cfg.data.name,
        "classes": data.classes,
        "device": str(loop.parts.arithmetic.device),
        "world_size": loop.world.size,  # processes that trained the run (distributed/)
        "backend": distributed.backend(),  # their process group's: nccl, gloo; null alone
        "precision": str(loop.parts.arithmetic.dtype or torch.float32).removeprefix("torch."),
        "loader": data.loader,
        "train/class_counts": counts,
        **peak_memory(loop.parts.arithmetic.device),
        "total_time_s": round(time.perf_counter() - started, 3),
    }
    write_json(loop.run_dir / "results.json", results)
    names = image_names(data.test_files, data.origin, data.test.count)
    if data.multi_label:
        write_multilabel_outputs(loop, out, net, counts, names, fitted)
        return results
    write_predictions(loop.run_dir, prediction_rows(out["logits"], out["targets"], data.classes,
                                                    names))  # fmt: skip
    if loop.cfg.trainer.plots:
        shown = SplitImages(data.test.images_at, data.test.prep, out["logits"], out["targets"],
                            data.classes, names)  # fmt: skip
        write_figures(loop.run_dir / "plots", p.rows, counts, shown, net, fitted,
                      loop.cfg.trainer.cam, loop.cfg.trainer.cam_layer)  # fmt: skip
        write_run_report(loop.run_dir)
    return results


def multilabel_bests(rows: list[dict]) -> dict:
    """`best_val/mAP` (of any epoch, whatever `monitor`) and `final_val/mAP` of a run with
    several labels per image; nothing for one label per image."""
    if "val/mAP" not in rows[-1]:
        return {}
    return {"best_val/mAP": max(r["val/mAP"] for r in rows), "final_val/mAP": rows[-1]["val/mAP"]}


def write_multilabel_outputs(loop: Loop, out: dict, net, counts: dict[str, int],
                             names: list[str], thresholds: Thresholds) -> None:  # fmt: skip
    """A run with several labels per image: test_predictions.csv, and unless `trainer.plots` is
    false the curves, label counts, feature maps, filters, the multi-label figures, each label's
    class-activation maps and the report."""
    data, logits, targets = loop.data, out["logits"], out["targets"]
    rows = multilabel_prediction_rows(logits, targets, data.classes, names, thresholds.tensor())
    write_predictions(loop.run_dir, rows, multilabel_columns(data.classes))
    if not loop.cfg.trainer.plots:
        return
    shown = SplitImages(data.test.images_at, data.test.prep, logits, targets, data.classes, names)
    write_multilabel_figures(loop.run_dir / "plots", loop.state.rows, counts, shown, net,
                             thresholds.tensor(), loop.cfg.trainer.cam,
                             loop.cfg.trainer.cam_layer)  # fmt: skip
    write_run_report(loop.run_dir)


def init_from_training_images(model, train, seed: int, count: int = 5000) -> None:
    """Data-dependent init (FastNet's whitening stem), for models that have one, from `count`
    unaugmented training images drawn at random: a folder's split is sorted by class."""
    if hasattr(model, "init_from_data"):
        sample = seeded_subset(np.arange(train.count), count, seed)
        model.init_from_data(train.prep(train.images_at(sample)).cpu())


def build_step_parts(cfg, model, data: DataBundle, arithmetic: Arithmetic,
                     augment: Options) -> StepParts:  # fmt: skip
    trainer = cfg.trainer
    loss_fn = build_loss(cfg.loss, data.multi_label, data.train.targets.cpu(),
                         data.spec.num_classes).to(arithmetic.device)  # fmt: skip
    optimizer = build_optimizer(cfg.optimizer, model, fused=arithmetic.scaled)
    steps_per_epoch = optimizer_steps(len(data.train), trainer.accumulate)
    scheduler = build_scheduler(cfg.scheduler, optimizer, trainer.epochs, steps_per_epoch)
    step_model = distributed.parallel(model, arithmetic.device)
    step_model = compiled(step_model, trainer.compile)
    ema = EMA(model, trainer.ema) if trainer.ema else None
    mix = batch_mix(augment, data.spec.num_classes, trainer.seed)
    if mix is not None:
        log.info("MixUp/CutMix on: train/acc counts a mixed image's label of larger weight")
    if trainer.accumulate > 1:
        log.info("%d batches of %d per optimizer step (%d images), %d steps per epoch",
                 trainer.accumulate, cfg.data.batch_size, trainer.accumulate * cfg.data.batch_size,
                 steps_per_epoch)  # fmt: skip
    return StepParts(step_model, optimizer, scheduler, loss_fn, arithmetic, trainer.grad_clip, ema,
                     trainer.accumulate, mix, data.multi_label)  # fmt: skip


def log_start(cfg, data: DataBundle, model, arithmetic: Arithmetic, run_dir: Path) -> None:
    sizes = (
        f"{data.train.count:,} train / {data.val.count:,} {data.val_name} / "
        f"{data.test.count:,} {data.test_name}"
    )
    log.info("data: %s from %s (%s); %s loader", cfg.data.name, data.origin, sizes, data.loader)
    dtype = str(arithmetic.dtype).removeprefix("torch.") if arithmetic.dtype else "float32"
    log.info("model: %s; device %s, %s; run folder %s", model_line(cfg.model, model),
             arithmetic.device, dtype, run_dir)  # fmt: skip
    world = distributed.world()
    if world.size > 1:
        log.info("%d processes (%d on this machine), backend %s, %d CPU thread(s) each; "
                 "global batch %d = %d per process", world.size, world.local_size,
                 distributed.backend(), torch.get_num_threads(), cfg.data.batch_size,
                 cfg.data.batch_size // world.size)  # fmt: skip


def model_line(model_cfg, model: torch.nn.Module) -> str:
    """`torchvision resnet50 with weights IMAGENET1K_V2, 25,557,032 parameters (2,049,000
    trainable)`: the architecture, the pretrained weights it started from, what trains."""
    weights = model_cfg.get("weights")
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return (f"{architecture(model_cfg)}{f' with weights {weights}' if weights else ''}, "
            f"{total:,} parameters ({trainable:,} trainable)")  # fmt: skip


def imbalanced(counts: dict[str, int]) -> bool:
    """More imbalance than drawing from balanced classes explains: the largest class over
    IMBALANCE_RATIO × the smallest, and apart by more than the range of K class counts drawn at
    random (about 2·√(2 ln K) standard deviations, √ of the mean count; 2 more for margin). A
    random subset of a balanced set (data.max_train_samples: every smoke run draws 41 to 62
    images a class of 512) is not imbalanced; 54 against 11 is."""
    largest, smallest = max(counts.values()), min(counts.values())
    noise = math.sqrt(sum(counts.values()) / len(counts))
    spread = 2 * math.sqrt(2 * math.log(max(2, len(counts)))) + 2
    return largest > IMBALANCE_RATIO * max(1, smallest) and largest - smallest > spread * noise


def log_class_balance(counts: dict[str, int], unlabelled: int | None = None) -> None:
    """Print the class histogram; warn (naming the remedies) when the data is imbalanced. With
    several labels per image (`unlabelled`: the images with none) the labels' histogram alone:
    several labels are imbalanced by nature."""
    shown = ", ".join(f"{printable(c)} {n:,}" for c, n in counts.items())
    if unlabelled is not None:
        log.info("training images per label: %s; %d with no label", shown, unlabelled)
        return
    log.info("training images per class: %s", shown)
    largest, smallest = max(counts, key=counts.get), min(counts, key=counts.get)
    if imbalanced(counts):
        log.warning(
            "imbalanced training data: %r has %d images, %r only %d (%.1f×); remedies: "
            "loss.class_weights=auto (inverse-frequency loss weights) or data.sampler=balanced "
            "(every class drawn equally often); judge by test/balanced_acc in results.json",
            largest, counts[largest], smallest, counts[smallest],
            counts[largest] / max(1, counts[smallest]),
        )  # fmt: skip
