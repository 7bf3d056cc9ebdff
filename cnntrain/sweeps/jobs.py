"""A sweep job's share of the machine and its life on a cluster: its CPU threads, a GPU of its own
while jobs run side by side, and its own run picked up again after a requeue."""

import contextlib
import logging
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import torch
from filelock import FileLock, Timeout
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from cnntrain.config.resumed import resumed_config
from cnntrain.core.checkpoint import (
    LAST,
    RUN_ENTRIES,
    checkpoint_path,
    load_checkpoint,
    run_folder,
    saved_config,
)
from cnntrain.core.errors import UserError
from cnntrain.core.files import refuse_links

log = logging.getLogger("cnntrain")
JOB_LOCK = ".job.lock"  # in the job folder, held while the job runs (the OS drops it if it dies)
GPU_LOCKS = ".gpus"  # <sweep folder>/.gpus/<index>.lock, held by the running job using that GPU


@contextlib.contextmanager
def sweep_job(cfg: DictConfig) -> Iterator[DictConfig]:
    """The config to train one sweep job with, for as long as it runs: its own unfinished run
    continued when asked (`resume=`) or when submitit requeued it, its share of the cores, and
    its own GPU."""
    hydra_cfg = HydraConfig.get()
    job_dir = Path(hydra_cfg.runtime.output_dir)
    at_once = jobs_at_once(hydra_cfg.launcher)
    refuse_links(job_dir, RUN_ENTRIES)  # a requeued or retried job writes into its folder again
    with FileLock(job_dir / JOB_LOCK), requeue_when_preempted():
        cfg = continued(cfg, job_dir, list(hydra_cfg.overrides.task))
        limit_cpu_share(cfg, cpu_share(hydra_cfg.launcher, at_once))
        with own_gpu(cfg, Path(hydra_cfg.sweep.dir), at_once):
            yield cfg


def job_is_running(job_dir: Path) -> bool:
    """Does a live process hold this job folder (a job still running, e.g. left by a dead sweep)?"""
    lock = FileLock(Path(job_dir) / JOB_LOCK)
    try:
        lock.acquire(timeout=0)
    except Timeout:
        return True
    lock.release()
    return False


# ---- picking up a job's own run ----


def requeued(job_dir: Path) -> bool:
    """A submitit job that finds an unfinished run in its folder was requeued (after a preemption,
    or at its time limit): the run is its own, from before."""
    return (
        "SUBMITIT_EXECUTOR" in os.environ
        and checkpoint_path(job_dir, LAST).is_file()
        and not (job_dir / "results.json").exists()
    )


def continued(cfg: DictConfig, job_dir: Path, overrides: list[str]) -> DictConfig:
    """The config of the run to continue, when there is one: `resume=` (a sweeper retrying a
    trial in its folder), a requeued submitit job, or the job's own run of the same settings
    left in its folder by an earlier launch of the sweep (finished: tested again, not trained
    again; unfinished: continued); else `cfg` itself."""
    if not cfg.resume and requeued(job_dir):
        log.info("requeued: continuing %s from its last checkpoint", job_dir)
        cfg.resume = str(job_dir)
    elif not cfg.resume and same_run_in(job_dir, cfg):
        done = (job_dir / "results.json").exists()
        log.info("%s holds this job's run with the same settings (%s): %s", job_dir,
                 "finished" if done else "unfinished",
                 "tested again, not trained again" if done else "continued")  # fmt: skip
        cfg.resume = str(job_dir)
    if not cfg.resume:
        return cfg
    refuse_links(
        run_folder(cfg.resume), RUN_ENTRIES
    )  # `resume=` may name a folder other than the job's
    return resumed_config(cfg, overrides)


# What makes two runs the same run: every group but where they ran and how they report.
RUN_GROUPS = ("data", "model", "optimizer", "scheduler", "loss", "trainer", "optimized_metric")
WHERE_KEYS = ("device", "devices", "progress", "progress_every_s")  # trainer's, left out


def same_run_in(job_dir: Path, cfg: DictConfig) -> bool:
    """Does `job_dir` hold a run (its last.pt) of `cfg`'s settings? Its saved config is read as
    received data (core/schema.py); an unreadable one is no match (the job trains anew)."""
    path = checkpoint_path(job_dir, LAST)
    if not path.is_file():
        return False
    try:
        saved = saved_config(load_checkpoint(path), path)
    except UserError:
        return False
    return settings(saved, cfg.trainer.get("monitor")) == settings(
        OmegaConf.to_container(cfg, resolve=True), cfg.trainer.get("monitor")
    )


def settings(config: dict, monitor) -> dict:
    """RUN_GROUPS of `config`, without WHERE_KEYS (and trainer.monitor when the job's is auto: a
    saved run holds what auto resolved to) and data.splits."""
    chosen = {group: config.get(group) for group in RUN_GROUPS}
    dropped = (*WHERE_KEYS, "monitor") if monitor == "auto" else WHERE_KEYS
    chosen["trainer"] = {k: v for k, v in (chosen["trainer"] or {}).items() if k not in dropped}
    # a resumed run saves data.splits = its own splits.csv (config/resumed.py): the same split
    chosen["data"] = {k: v for k, v in (chosen["data"] or {}).items() if k != "splits"}
    return chosen


def preemption_signal() -> int | None:
    """In a submitit job, the signal it requeues on (SIGUSR2, or $SUBMITIT_PREEMPT_SIGNAL)."""
    if "SUBMITIT_EXECUTOR" not in os.environ:
        return None
    return signal.Signals["SIG" + os.environ.get("SUBMITIT_PREEMPT_SIGNAL", "USR2")]


@contextlib.contextmanager
def requeue_when_preempted() -> Iterator[None]:
    """The loop stops at a preemption signal after the current step, with a checkpoint (exit
    128 + signal); then submitit's own handler for that signal requeues the job, which
    continues from that checkpoint."""
    try:
        yield
    except SystemExit as stop:
        signum = preemption_signal()
        if signum is None or stop.code != 128 + signum:
            raise
        handler = signal.getsignal(signum)
        if callable(handler):
            handler(signum, None)  # submitit's: resubmit this job's call, requeue, exit
        raise


# ---- a share of the machine ----


def usable_cores() -> int:
    """The cores this process may run on (a Slurm allocation or taskset may limit them)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def jobs_at_once(launcher: DictConfig) -> int:
    """How many jobs of the sweep run side by side on this machine: joblib's `n_jobs` (negative
    counts back from the cores, as joblib does), else 1 (the basic launcher runs them one after
    another, submitit each in an allocation of its own)."""
    n_jobs = launcher.get("n_jobs")
    if not isinstance(n_jobs, int) or n_jobs == 0:
        return 1
    return n_jobs if n_jobs > 0 else max(1, usable_cores() + 1 + n_jobs)


def cpu_share(launcher: DictConfig, at_once: int) -> int | None:
    """CPU threads for one job: the launcher's `cpus_per_task` when set (submitit), else the
    cores divided among the jobs running at once; None when the job runs alone."""
    if launcher.get("cpus_per_task"):
        return int(launcher.cpus_per_task)
    return max(1, usable_cores() // at_once) if at_once > 1 else None


def limit_cpu_share(cfg: DictConfig, threads: int | None) -> None:
    """At most `threads` compute threads and as many data workers (each a process of its own)."""
    if threads is None:
        return
    torch.set_num_threads(threads)
    cfg.data.num_workers = min(cfg.data.num_workers, threads)
    log.info("sweep job: %d CPU thread(s), at most %d data worker(s): its share of the machine",
             threads, cfg.data.num_workers)  # fmt: skip


@contextlib.contextmanager
def own_gpu(cfg: DictConfig, sweep_dir: Path, at_once: int) -> Iterator[None]:
    """With jobs side by side and `trainer.device` auto or cuda: train on a GPU no other running
    job of this sweep holds (`job.num % GPUs` would collide once a freed worker takes a later
    job), waiting for one when all are held."""
    shared = at_once > 1 and str(cfg.trainer.device) in ("auto", "cuda")
    if not shared or not torch.cuda.is_available():
        yield
        return
    with free_slot(sweep_dir / GPU_LOCKS, torch.cuda.device_count()) as gpu:
        cfg.trainer.device = f"cuda:{gpu}"
        log.info("sweep job: GPU %d of %d", gpu, torch.cuda.device_count())
        yield


@contextlib.contextmanager
def free_slot(folder: Path, count: int, poll_s: float = 1.0) -> Iterator[int]:
    """The first of slots 0…count-1 that no other process holds, held for the block: a lock file
    per slot in `folder`, which the OS releases if the holder dies."""
    folder.mkdir(parents=True, exist_ok=True)
    waiting = False
    while True:
        for slot in range(count):
            lock = FileLock(folder / f"{slot}.lock")
            try:
                lock.acquire(timeout=0)
            except Timeout:
                continue
            try:
                yield slot
            finally:
                lock.release()
            return
        if not waiting:
            log.info("all %d slots in %s are held by other jobs; waiting for one", count, folder)
            waiting = True
        time.sleep(poll_s)
