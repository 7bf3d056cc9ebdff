"""`cnntrain`: train one run, or sweep with `-m`; a thin Hydra main over train().

Under torchrun every rank runs this; before Hydra starts, the ranks join their process group
and take rank 0's run folder (cnntrain/distributed/). `trainer.devices=N` starts the command
N times through torch's elastic launcher instead of training here.
"""

import contextlib
import logging
import math
import os
import sys
import warnings
from pathlib import Path

import hydra
from hydra import compose, initialize_config_dir
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

from cnntrain import distributed
from cnntrain.cli.common import fail, preflight
from cnntrain.config.compose import compose_config
from cnntrain.config.resolvers import register_resolvers
from cnntrain.config.resumed import (
    RESUMABLE_KEYS,
    WATCHING_GROUPS,
    may_change_on_resume,
    resumed_config,
)
from cnntrain.config.rules import validate
from cnntrain.core.checkpoint import run_folder, written_entries
from cnntrain.core.device import select_device
from cnntrain.core.errors import UserError
from cnntrain.core.extras import require
from cnntrain.core.files import refuse_links, write_text
from cnntrain.core.overrides import override_key, override_value, quoted
from cnntrain.core.schema import CONF_DIR
from cnntrain.sweeps.jobs import sweep_job


def check_resume_arguments(args: list[str]) -> None:
    """Before Hydra makes any folder: `resume=` must name a run, and change only what may change."""
    resume = [override_value(a) for a in args if override_key(a) == "resume" and "=" in a]
    if not resume or not resume[0]:
        return
    if "-m" in args or "--multirun" in args:
        fail("resume= continues one run; it cannot be combined with -m/--multirun")
    if not Path(resume[0]).expanduser().exists():
        fail(
            f"resume={resume[0]!r} does not exist; give a run folder (outputs/…) or its checkpoint"
        )
    for arg in args:
        key = override_key(arg)
        if "=" in arg and not may_change_on_resume(key):
            allowed = ", ".join((*RESUMABLE_KEYS, *(f"{g}.*" for g in WATCHING_GROUPS)))
            fail(
                f"resume: {key} cannot change when continuing a run (only {allowed}); "
                "start a new run instead"
            )


# Overrides naming an existing folder the command writes into: the run it continues, or a run
# or sweep folder given outright.
WRITTEN_FOLDERS = ("resume", "hydra.run.dir", "hydra.sweep.dir")


def check_written_folders(args: list[str]) -> None:
    """Before Hydra opens train.log there: refuse an existing folder this command writes into
    that holds a link (core.files.refuse_links); a received run folder is untrusted input."""
    for arg in args:
        value = override_value(arg)
        if override_key(arg) in WRITTEN_FOLDERS and value:
            try:
                refuse_links(run_folder(value), written_entries(run_folder(value)))
            except UserError as e:
                fail(str(e))


# Hydra plugins a command line may choose, the module each needs, and the extra holding it.
PLUGINS = {
    "hydra/launcher=joblib": ("hydra_plugins.hydra_joblib_launcher", "sweeps"),
    "hydra/launcher=submitit_local": ("hydra_plugins.hydra_submitit_launcher", "sweeps"),
    "hydra/launcher=submitit_slurm": ("hydra_plugins.hydra_submitit_launcher", "sweeps"),
    "hydra/sweeper=optuna": ("optuna", "sweeps"),
    "hparams_search=fashion_optuna": ("optuna", "sweeps"),  # its sweeper is Optuna
}


def check_plugins(args: list[str]) -> None:
    """Before Hydra looks for them: a launcher or sweeper whose package is missing is one line
    naming the pip command (Hydra says "Could not find 'hydra/launcher/joblib'" or "Unknown
    plugin class")."""
    for arg in args:
        if arg.lstrip("+") in PLUGINS:
            module, extra = PLUGINS[arg.lstrip("+")]
            try:
                require(module, extra, arg.lstrip("+"))
            except UserError as e:
                fail(str(e))


def run(cfg: DictConfig) -> float:
    """Hydra's task function: one run, or one job of a sweep. A plain module-level function (the
    decorated `hydra_main` wraps it) so that launchers running jobs in other processes (joblib,
    submitit) send it by name."""
    from cnntrain.train import train  # the training stack: not for --help or a refused config

    multirun = HydraConfig.get().mode == RunMode.MULTIRUN
    try:
        if multirun:  # each job's values are its own: no preflight saw them
            with sweep_job(cfg) as job_cfg:
                validate(job_cfg)
                return train(job_cfg)
        if cfg.resume:  # the saved run's config, read back (main() checked it too, unless an
            cfg = resumed_config(cfg, list(HydraConfig.get().overrides.task))  # -flag skipped it)
            validate(cfg)
        return train(cfg)
    except UserError as e:
        if os.environ.get("HYDRA_FULL_ERROR") == "1":
            raise
        record_in_train_log(str(e))
        if not multirun:
            fail(str(e))
        # In a sweep one bad combination must not end the others: record it, go on.
        with contextlib.suppress(UserError):  # a full disk: the line below says it all the same
            write_text(Path(HydraConfig.get().runtime.output_dir) / "error.txt", f"{e}\n")
        print(f"cnntrain: job {HydraConfig.get().job.num} failed: {e}", file=sys.stderr, flush=True)
        return math.nan
    except Exception as e:  # under torchrun: this rank stops because another one did
        if not distributed.is_peer_failure(e) or os.environ.get("HYDRA_FULL_ERROR") == "1":
            raise
        fail(distributed.peer_failure_line(e), status=1)


def record_in_train_log(message: str) -> None:
    """The error that ends a run, in its train.log too (the console gets it from fail()): the
    folder a failed run leaves says why it failed."""
    record = logging.LogRecord("cnntrain", logging.ERROR, __file__, 0, message, None, None)
    for handler in logging.getLogger().handlers:
        if isinstance(handler, logging.FileHandler):
            handler.handle(record)


def run_config(args: list[str]) -> DictConfig:
    """The config `cnntrain args` runs with, checked before Hydra makes any folder (one-line
    errors; as composed with HYDRA_FULL_ERROR=1): a resumed run's own, as far as it matters to
    how processes are started (trainer.devices, trainer.device)."""
    if os.environ.get("HYDRA_FULL_ERROR") == "1":
        cfg = compose_config(args)
        validate(cfg)
    else:
        cfg = preflight(args)
    if not cfg.resume:
        return cfg
    try:
        resumed = resumed_config(cfg, args)
        validate(resumed)  # the saved run's config, read back: the same rules as a command line's
    except UserError as e:
        if os.environ.get("HYDRA_FULL_ERROR") == "1":
            raise
        fail(str(e))
    return resumed


def join_the_job(args: list[str], cfg: DictConfig) -> list[str]:
    """Under torchrun: join the process group; `args` with the overrides that give every rank
    rank 0's run folder and keep the other ranks from writing in it (no .hydra/, no train.log:
    their warnings and errors go to the console, marked with the rank)."""
    try:
        distributed.start(select_device(cfg.trainer.device))
    except UserError as e:
        fail(str(e))
    w = distributed.world()
    run_dir = distributed.from_main(resolved_run_dir(args) if w.is_main else None)
    own = {"hydra.run.dir": quoted(run_dir)}
    if not w.is_main:
        own |= {"hydra.output_subdir": "null", "hydra/job_logging": "rank"}
    kept = [a for a in args if override_key(a) not in own]
    return [*kept, *(f"{key}={value}" for key, value in own.items())]


def resolved_run_dir(args: list[str]) -> str:
    """The run folder Hydra would make for `cnntrain args` in this process (its clock, its
    token; or the resumed run's folder)."""
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose("config", overrides=args, return_hydra_config=True)
    return str(cfg.hydra.run.dir)


hydra_main = hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="config")(run)
# Here rather than in main(): a sweep worker process imports this module, never runs main().
register_resolvers()
# conf/hydra/launcher/submitit_*.yaml keep the plugin's own names (the commands its users know),
# so Hydra merges the plugin's schema into them, which checks their keys, and warns that it does.
warnings.filterwarnings(
    "ignore", message=r"\s*'hydra/launcher/submitit_\w+' is validated against ConfigStore schema"
)


def main() -> None:
    """The `cnntrain` console script."""
    args = sys.argv[1:]
    check_plugins(args)
    check_resume_arguments(args)
    check_written_folders(args)
    if distributed.world().size > 1 and ("-m" in args or "--multirun" in args):
        fail("-m under torchrun would run the whole sweep in every process; sweep without torchrun")
    # -m sweeps, --help, --cfg…: Hydra's own; each sweep job still validates in train().
    if not any(a.startswith("-") for a in args):
        cfg = run_config(args)
        if cfg.trainer.devices > 1 and not distributed.launched():
            try:
                distributed.check_batch_size(cfg.data.batch_size, cfg.trainer.devices)
            except UserError as e:
                fail(str(e))
            distributed.launch(cfg.trainer.devices, args)
            return
        if distributed.world().size > 1:
            args = join_the_job(args, cfg)
    sys.argv = [sys.argv[0], *args]
    hydra_main()
    distributed.stop()
