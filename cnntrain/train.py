"""train(cfg): build data, model, optimizer and schedule; train, test, and fill the run folder.

The run folder (`paths.output_dir`) gets checkpoints/{last,best}.pt, metrics.jsonl/.csv,
results.json and train.log (the latter from Hydra's logging). A run can be resumed in place
(`resume=`) and ends bitwise identical on CPU to one that was never interrupted.
"""

import logging
import math
import random
import resource
import signal
import sys
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from cnntrain.config import validate
from cnntrain.data import DataBundle, load_data
from cnntrain.data.splits import seeded_subset
from cnntrain.engine import (
    EMA,
    Arithmetic,
    Diverged,
    StepParts,
    Totals,
    autocast_dtype,
    evaluate,
    select_device,
    train_one_epoch,
)
from cnntrain.errors import UserError
from cnntrain.models import build_model
from cnntrain.optim import build_optimizer, build_scheduler
from cnntrain.outputs.checkpoint import check_compatible, load_checkpoint, save_checkpoint
from cnntrain.outputs.files import write_json
from cnntrain.outputs.metrics import MetricsLog
from cnntrain.outputs.plots import per_class_accuracy, write_run_plots
from cnntrain.outputs.report import write_run_report
from cnntrain.outputs.summary import summarize_model, write_summary

log = logging.getLogger("cnntrain")
RESUMABLE_KEYS = ("trainer.epochs", "trainer.device", "trainer.progress")
IMBALANCE_RATIO = 1.5  # largest class / smallest class above which the data counts as imbalanced


@dataclass
class Progress:
    """Where the run is: saved in every checkpoint, restored on resume."""

    epoch: int = 0  # epochs completed
    step: int = 0  # batches done of epoch+1 (non-zero only after an interruption)
    totals: dict | None = None  # Totals of the unfinished epoch
    epoch_time_s: float = 0.0  # time spent in the unfinished epoch
    elapsed_s: float = 0.0  # training time so far (s), excluding start-up and final test
    best_acc: float = -1.0
    best_epoch: int = 0
    rows: list[dict] = field(default_factory=list)


def train(cfg: DictConfig) -> float:
    """Train as `cfg` says; return the final validation accuracy (a fraction in [0, 1]).

    With `cfg.resume` set, continue that run from its checkpoint with `cfg` as given; the CLI
    passes `resumed_config(...)`, the saved config with the changes a resume allows.
    """
    started = time.perf_counter()
    validate(cfg)
    run_dir = Path(cfg.paths.output_dir)
    saved, resume_path = None, None
    if cfg.resume:
        resume_path = checkpoint_to_resume(cfg.resume)
        saved = load_checkpoint(resume_path)
        log.info(
            "resuming %s from epoch %d, step %d",
            run_dir,
            saved["progress"]["epoch"],
            saved["progress"]["step"],
        )
    t = cfg.trainer
    seed_everything(t.seed)
    device = select_device(t.device)
    data = load_data(cfg, device, t.channels_last)
    model = build_model(cfg.model, data.spec)
    if saved is None:
        init_from_training_images(model, data.train, t.seed)
    model.to(
        device, memory_format=torch.channels_last if t.channels_last else torch.preserve_format
    )
    arithmetic = Arithmetic(device, autocast_dtype(t.precision, device), tta=t.tta)
    parts = build_step_parts(cfg, model, data, arithmetic)
    progress = Progress()
    if saved is not None:
        check_compatible(saved, model, resume_path)
        progress = restore(saved, model, parts)
        for torn in (run_dir / "checkpoints").glob(".*.tmp"):  # writes cut short by a crash
            torn.unlink()
    log_start(cfg, data, model, arithmetic, run_dir)
    counts = class_counts(data)
    log_class_balance(counts)
    write_summary(
        summarize_model(model, (data.spec.channels, data.spec.height, data.spec.width)), run_dir
    )
    metrics = MetricsLog(run_dir, progress.rows)
    metrics.write()  # on resume: drop rows written after the checkpoint we continue from
    run = Run(cfg, run_dir, model, parts, data, progress, metrics)
    if saved is not None:
        run.heal_best()
    run.fit()
    results, test_out, net = run.test()
    results["train/class_counts"] = counts
    results.update(peak_memory(run.parts.arithmetic.device))
    results["total_time_s"] = round(time.perf_counter() - started, 3)
    write_json(run_dir / "results.json", results)
    test = data.test
    write_run_plots(run_dir, progress.rows, data.classes, test_out["logits"], test_out["targets"],
                    test.images_at, test.prep, net, counts)  # fmt: skip
    write_run_report(run_dir)
    log.info(
        "test accuracy %.2f%% (%s split, best epoch %d); results in %s",
        100 * results["test/acc"],
        data.test_name,
        results["best_epoch"],
        run_dir,
    )
    return progress.rows[-1]["val/acc"] if progress.rows else float("nan")


def checkpoint_to_resume(resume: str) -> Path:
    path = Path(resume).expanduser()
    if path.is_dir():
        path = path / "checkpoints" / "last.pt"
    if not path.is_file():
        raise UserError(
            f"resume={resume!r}: no checkpoint at {path}; give a run folder or a .pt file"
        )
    return path


def resumed_config(cfg: DictConfig, overrides: list[str]) -> DictConfig:
    """The config to continue `cfg.resume` with: the saved run's, changed only by those of
    `overrides` (command-line `key=value`s) that name RESUMABLE_KEYS; this machine's paths."""
    saved = load_checkpoint(checkpoint_to_resume(cfg.resume))["config"]
    changes = [
        o.lstrip("+") for o in overrides if o.split("=", 1)[0].lstrip("+~") in RESUMABLE_KEYS
    ]
    resumed = OmegaConf.merge(OmegaConf.create(saved), OmegaConf.from_dotlist(changes))
    resumed.paths = cfg.paths
    resumed.resume = cfg.resume
    return resumed


def init_from_training_images(model, train, seed: int, count: int = 5000) -> None:
    """Data-dependent init (FastNet's whitening stem), for models that have one, from `count`
    unaugmented training images drawn at random: a folder's split is sorted by class."""
    if hasattr(model, "init_from_data"):
        sample = seeded_subset(np.arange(train.count), count, seed)
        model.init_from_data(train.prep(train.images_at(sample)).cpu())


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)  # also seeds every CUDA device


def class_weights(targets: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Inverse class frequency, scaled so the average weight over images is 1."""
    counts = torch.bincount(targets, minlength=num_classes).double().clamp_min(1)
    return (len(targets) / (num_classes * counts)).float()


def build_step_parts(cfg, model, data: DataBundle, arithmetic: Arithmetic) -> StepParts:
    t = cfg.trainer
    weights = None
    if cfg.loss.class_weights == "auto":
        weights = class_weights(data.train.targets.cpu(), data.spec.num_classes).to(
            arithmetic.device
        )
    loss_fn = torch.nn.CrossEntropyLoss(weight=weights, label_smoothing=cfg.loss.label_smoothing)
    optimizer = build_optimizer(cfg.optimizer, model)
    scheduler = build_scheduler(cfg.scheduler, optimizer, t.epochs, len(data.train))
    step_model = torch.compile(model) if t.compile else model
    ema = EMA(model, t.ema) if t.ema else None
    return StepParts(step_model, optimizer, scheduler, loss_fn, arithmetic, t.grad_clip, ema)


def rng_states() -> dict:
    np_state = np.random.get_state()
    return {
        "python": random.getstate(),
        "numpy": (np_state[0], torch.from_numpy(np_state[1].copy()), *np_state[2:]),
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def set_rng_states(states: dict) -> None:
    random.setstate(states["python"])
    numpy = states["numpy"]
    np.random.set_state((numpy[0], numpy[1].numpy(), *numpy[2:]))
    torch.set_rng_state(states["torch"])
    if states["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])


def restore(saved: dict, model, parts: StepParts) -> Progress:
    model.load_state_dict(saved["model"])
    parts.optimizer.load_state_dict(saved["optimizer"])
    parts.scheduler.load_state_dict(saved["scheduler"])
    if saved["scaler"]:  # a disabled scaler (no fp16) saves an empty state
        parts.arithmetic.scaler.load_state_dict(saved["scaler"])
    if parts.ema is not None:
        parts.ema.module.load_state_dict(saved["ema"]["weights"])
        parts.ema.updates = saved["ema"]["updates"]
    set_rng_states(saved["rng"])
    return Progress(**saved["progress"])


def log_start(cfg, data: DataBundle, model, arithmetic: Arithmetic, run_dir: Path) -> None:
    sizes = (
        f"{data.train.count:,} train / {data.val.count:,} {data.val_name} / "
        f"{data.test.count:,} {data.test_name}"
    )
    log.info("data: %s from %s (%s); %s loader", cfg.data.name, data.origin, sizes, data.loader)
    params = sum(p.numel() for p in model.parameters())
    dtype = str(arithmetic.dtype).removeprefix("torch.") if arithmetic.dtype else "float32"
    log.info(
        "model: %s, %s parameters; device %s, %s; run folder %s",
        cfg.model.name,
        f"{params:,}",
        arithmetic.device,
        dtype,
        run_dir,
    )


def peak_memory(device: torch.device) -> dict:
    """Peak resident memory of this process (MiB) and, on a GPU, peak allocated device memory."""
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
    peak = {"peak_host_memory_mb": round(rss / (2**20 if sys.platform == "darwin" else 2**10), 1)}
    if device.type == "cuda":
        peak["peak_device_memory_mb"] = round(torch.cuda.max_memory_allocated(device) / 2**20, 1)
    return peak


def class_counts(data: DataBundle) -> dict[str, int]:
    """Training images per class name."""
    counts = torch.bincount(data.train.targets.cpu(), minlength=data.spec.num_classes)
    return dict(zip(data.classes, counts.tolist(), strict=True))


def log_class_balance(counts: dict[str, int]) -> None:
    """Print the class histogram; warn (naming the remedies) when the data is imbalanced."""
    log.info("training images per class: %s", ", ".join(f"{c} {n:,}" for c, n in counts.items()))
    largest, smallest = max(counts, key=counts.get), min(counts, key=counts.get)
    if counts[largest] > IMBALANCE_RATIO * max(1, counts[smallest]):
        log.warning(
            "imbalanced training data: %r has %d images, %r only %d (%.1f×); remedies: "
            "loss.class_weights=auto (inverse-frequency loss weights) or data.sampler=balanced "
            "(every class drawn equally often); judge by test/balanced_acc in results.json",
            largest, counts[largest], smallest, counts[smallest],
            counts[largest] / max(1, counts[smallest]),
        )  # fmt: skip


def progress_bars_enabled(setting) -> bool:
    """tqdm bars: on for a terminal in a single run (`auto`), or as `trainer.progress` says."""
    if setting != "auto":
        return bool(setting)
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    multirun = HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN
    return sys.stderr.isatty() and not multirun


class StopSignal:
    """First SIGINT/SIGTERM: finish the current step, checkpoint, exit. A second: exit at once."""

    def __init__(self):
        self.signum = None

    def __enter__(self):
        self.previous = {}
        if threading.current_thread() is threading.main_thread():  # signals need the main thread
            for s in (signal.SIGINT, signal.SIGTERM):
                self.previous[s] = signal.signal(s, self.handle)
        return self

    def handle(self, signum, frame):
        if self.signum is not None:
            raise SystemExit(128 + signum)
        self.signum = signum
        log.warning(
            "%s received: stopping after this step (again to quit now)", signal.Signals(signum).name
        )

    def requested(self) -> bool:
        return self.signum is not None

    def __exit__(self, *exc):
        for s, handler in self.previous.items():
            signal.signal(s, handler)


class Run:
    """One training run's loop over epochs, and its checkpoints."""

    def __init__(
        self, cfg, run_dir, model, parts: StepParts, data: DataBundle, progress: Progress, metrics
    ):
        self.cfg, self.run_dir, self.model, self.parts = cfg, run_dir, model, parts
        self.data, self.progress, self.metrics = data, progress, metrics
        self.show_bars = progress_bars_enabled(cfg.trainer.progress)
        # When per-epoch evaluation runs on the test loader itself (data.val_split=0), the best
        # epoch's outputs are the final test's: kept, so the test set is not evaluated twice.
        self.shared_eval = data.val is data.test
        self.best_outputs = None

    @property
    def eval_model(self):
        return self.parts.ema.module if self.parts.ema is not None else self.parts.model

    def fit(self) -> None:
        t, p = self.cfg.trainer, self.progress
        with StopSignal() as stop:
            while p.epoch < t.epochs and not self.reached_target():
                self.train_epoch(p.epoch + 1, stop)

    def reached_target(self) -> bool:
        target = self.cfg.trainer.target_accuracy
        rows = self.progress.rows
        return target is not None and bool(rows) and rows[-1]["val/acc"] >= target

    def train_epoch(self, epoch: int, stop: StopSignal) -> None:
        p, device = self.progress, self.parts.arithmetic.device
        totals = Totals.from_state(p.totals, device) if p.step else Totals.zeros(device)
        began = time.perf_counter()
        try:
            next_step = train_one_epoch(
                self.parts, self.data.train, epoch, totals, p.step, stop.requested, self.show_bars
            )
        except Diverged as e:
            raise self.divergence(str(e)) from e
        seconds = time.perf_counter() - began
        p.epoch_time_s += seconds
        p.elapsed_s += seconds
        if next_step < len(self.data.train):  # interrupted mid-epoch
            p.step, p.totals = next_step, totals.state_dict()
            self.save("last.pt")
            self.exit_interrupted(stop.signum, f"epoch {epoch}, step {next_step}")
        self.end_epoch(epoch, totals)
        if stop.requested():
            self.save("last.pt")
            self.exit_interrupted(stop.signum, f"the end of epoch {epoch}")

    def end_epoch(self, epoch: int, totals: Totals) -> None:
        p, t = self.progress, self.cfg.trainer
        train_loss, train_acc = totals.read()
        val = evaluate(self.eval_model, self.data.val, self.parts.arithmetic, self.show_bars, "val",
                       keep_outputs=self.shared_eval)  # fmt: skip
        if not math.isfinite(val["loss"]):  # finite training losses, broken weights: don't save
            raise self.divergence(f"validation loss is not finite after epoch {epoch}")
        row = {
            "epoch": epoch,
            "train/loss": train_loss,
            "train/acc": train_acc,
            "val/loss": val["loss"],
            "val/acc": val["acc"],
            "val/split": self.data.val_name,  # what val/* measured: "test" when val_split=0
            "lr": totals.lr,  # of the epoch's last step
            "epoch_time_s": round(p.epoch_time_s, 3),
            "elapsed_s": round(p.elapsed_s, 3),
            "train/images_per_s": round(totals.count / max(p.epoch_time_s, 1e-9), 1),
        }
        p.epoch, p.step, p.totals, p.epoch_time_s = epoch, 0, None, 0.0
        p.rows.append(row)
        improved = val["acc"] > p.best_acc
        if improved:
            p.best_acc, p.best_epoch = val["acc"], epoch
            self.best_outputs = val if self.shared_eval else None
        self.metrics.append(row)
        log_epoch(row, t.epochs, self.data.val_name)
        if epoch % t.checkpoint_every == 0 or epoch == t.epochs or self.reached_target():
            self.save("last.pt")
        if improved:  # after last.pt: a crash in between is healed by heal_best() on resume
            self.save("best.pt")

    def divergence(self, what: str) -> UserError:
        last = self.run_dir / "checkpoints" / "last.pt"
        where = (
            f"the last good checkpoint is {last}" if last.exists() else "no checkpoint was written"
        )
        return UserError(
            f"{what}: training diverged; {where} "
            "(start a new run with a lower optimizer.lr or with trainer.grad_clip set)"
        )

    def heal_best(self) -> None:
        """On resume: rewrite best.pt if the run died while writing it (it is then this epoch's)."""
        p, path = self.progress, self.run_dir / "checkpoints" / "best.pt"
        if p.best_epoch != p.epoch or p.step:
            return
        try:
            intact = load_checkpoint(path)["progress"]["epoch"] == p.epoch
        except UserError:
            intact = False
        if not intact:
            self.save("best.pt")

    def exit_interrupted(self, signum: int, where: str) -> None:
        log.warning("interrupted at %s; checkpoint saved", where)
        print(f"continue with: cnntrain resume={self.run_dir}", file=sys.stderr, flush=True)
        raise SystemExit(128 + signum)

    def state(self) -> dict:
        parts = self.parts
        ema = None
        if parts.ema is not None:
            ema = {"weights": parts.ema.module.state_dict(), "updates": parts.ema.updates}
        return {
            "model": self.model.state_dict(),
            "optimizer": parts.optimizer.state_dict(),
            "scheduler": parts.scheduler.state_dict(),
            "scaler": parts.arithmetic.scaler.state_dict(),
            "ema": ema,
            "epoch": self.progress.epoch,
            "progress": asdict(self.progress),
            "rng": rng_states(),
            "config": OmegaConf.to_container(self.cfg, resolve=True),
            "metrics": self.progress.rows,
            "classes": self.data.classes,
            "normalization": {"mean": self.data.mean, "std": self.data.std},
        }

    def save(self, name: str) -> None:
        save_checkpoint(self.run_dir / "checkpoints" / name, self.state())

    def test(self) -> tuple[dict, dict, torch.nn.Module]:
        """Evaluate the best checkpoint's weights on the test split (or reuse that evaluation).

        Returns the results.json fields, the test outputs (logits, targets) and the network,
        left holding the best weights (the run is over: nothing trains it again).
        """
        best = load_checkpoint(self.run_dir / "checkpoints" / "best.pt")
        weights = best["ema"]["weights"] if best["ema"] else best["model"]
        net = self.parts.ema.module if self.parts.ema is not None else self.model  # not compiled
        net.load_state_dict(weights)
        out = self.best_outputs or evaluate(
            net, self.data.test, self.parts.arithmetic, self.show_bars, "test", keep_outputs=True
        )
        p = self.progress
        per_class = per_class_accuracy(out["logits"], out["targets"], self.data.classes)
        present = [a for a in per_class.values() if a is not None]
        results = {
            "test/acc": out["acc"],
            "test/loss": out["loss"],
            "test/balanced_acc": sum(present) / len(present),
            "test/per_class_acc": per_class,
            "test/split": self.data.test_name,
            "test/count": out["count"],
            "best_epoch": p.best_epoch,
            "best_val/acc": p.best_acc,
            "final_val/acc": p.rows[-1]["val/acc"],
            "epochs": p.epoch,
            "stopped_by": "target_accuracy" if self.reached_target() else "epochs",
            "train_time_s": round(p.elapsed_s, 3),
            "params": sum(x.numel() for x in self.model.parameters()),
            "model": self.cfg.model.name,
            "dataset": self.cfg.data.name,
            "classes": self.data.classes,
            "device": str(self.parts.arithmetic.device),
            "precision": str(self.parts.arithmetic.dtype or torch.float32).removeprefix("torch."),
            "loader": self.data.loader,
        }
        return results, out, net


def log_epoch(row: dict, epochs: int, val_name: str) -> None:
    log.info(
        "epoch %d/%d  train loss %.4f acc %5.2f%%  %s loss %.4f acc %5.2f%%  lr %.2e  %.1fs  "
        "%s img/s",
        row["epoch"],
        epochs,
        row["train/loss"],
        100 * row["train/acc"],
        val_name,
        row["val/loss"],
        100 * row["val/acc"],
        row["lr"],
        row["epoch_time_s"],
        f"{row['train/images_per_s']:,.0f}",
    )
