"""`cnntrain`: train one run, or sweep with `-m`; a thin Hydra main over train()."""

import math
import os
import sys
import warnings
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

from cnntrain.cli.common import CONF_PATH, fail, preflight
from cnntrain.config import register_resolvers
from cnntrain.errors import UserError
from cnntrain.outputs.console import config_tree, console
from cnntrain.outputs.files import write_text
from cnntrain.resume import RESUMABLE_KEYS, WATCHING_GROUPS, may_change_on_resume, resumed_config
from cnntrain.sweep_jobs import sweep_job
from cnntrain.train import train


def check_resume_arguments(args: list[str]) -> None:
    """Before Hydra makes any folder: `resume=` must name a run, and change only what may change."""
    resume = [a.split("=", 1)[1] for a in args if a.startswith("resume=")]
    if not resume or not resume[0]:
        return
    if "-m" in args or "--multirun" in args:
        fail("resume= continues one run; it cannot be combined with -m/--multirun")
    if not Path(resume[0]).expanduser().exists():
        fail(
            f"resume={resume[0]!r} does not exist; give a run folder (outputs/…) or its checkpoint"
        )
    for arg in args:
        key = arg.split("=", 1)[0].lstrip("+~")
        if "=" in arg and not may_change_on_resume(key):
            allowed = ", ".join((*RESUMABLE_KEYS, *(f"{g}.*" for g in WATCHING_GROUPS)))
            fail(
                f"resume: {key} cannot change when continuing a run (only {allowed}); "
                "start a new run instead"
            )


def run(cfg: DictConfig) -> float:
    """Hydra's task function: one run, or one job of a sweep. A plain module-level function (the
    decorated `hydra_main` wraps it) so that launchers running jobs in other processes (joblib,
    submitit) send it by name."""
    multirun = HydraConfig.get().mode == RunMode.MULTIRUN
    try:
        if multirun:
            with sweep_job(cfg) as job_cfg:
                return train(job_cfg)
        if cfg.resume:
            cfg = resumed_config(cfg, list(HydraConfig.get().overrides.task))
        console.print(config_tree(cfg))
        return train(cfg)
    except UserError as e:
        if os.environ.get("HYDRA_FULL_ERROR") == "1":
            raise
        if not multirun:
            fail(str(e))
        # In a sweep one bad combination must not end the others: record it, go on.
        write_text(Path(HydraConfig.get().runtime.output_dir) / "error.txt", f"{e}\n")
        print(f"cnntrain: job {HydraConfig.get().job.num} failed: {e}", file=sys.stderr, flush=True)
        return math.nan


hydra_main = hydra.main(version_base="1.3", config_path=str(CONF_PATH), config_name="config")(run)
# Here rather than in main(): a sweep worker process imports this module, never runs main().
register_resolvers()
# conf/hydra/launcher/submitit_*.yaml keep the plugin's own names (the commands its users know),
# so Hydra merges the plugin's schema into them, which checks their keys, and warns that it does.
warnings.filterwarnings(
    "ignore", message=r"\s*'hydra/launcher/submitit_\w+' is validated against ConfigStore schema"
)


def main() -> None:
    """The `cnntrain` console script."""
    check_resume_arguments(sys.argv[1:])
    args = sys.argv[1:]
    # -m sweeps, --help, --cfg…: Hydra's own; each sweep job still validates in train().
    if os.environ.get("HYDRA_FULL_ERROR") != "1" and not any(a.startswith("-") for a in args):
        preflight(args)
    hydra_main()
