"""Command-line entry points: `cnntrain` trains (`-m` sweeps), a thin Hydra main over train()."""

import difflib
import math
import os
import re
import sys
from pathlib import Path

import hydra
from hydra import compose, initialize_config_dir
from hydra.core.hydra_config import HydraConfig
from hydra.errors import HydraException
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from cnntrain.config import register_resolvers, unknown_keys, validate
from cnntrain.data import input_spec
from cnntrain.errors import UserError
from cnntrain.models import build_model
from cnntrain.outputs.console import config_tree, console
from cnntrain.outputs.files import write_text
from cnntrain.outputs.report import build_report, is_sweep_folder
from cnntrain.outputs.summary import summarize_model, summary_table
from cnntrain.outputs.sweep import write_sweep_summary
from cnntrain.train import RESUMABLE_KEYS, resumed_config, train

# The repository's conf/, through the cnntrain/conf link (a copy of it in an installed wheel).
CONF_PATH = Path(__file__).resolve().parent / "conf"


def fail(message: str, status: int = 2):
    """A user error: one line on stderr, no traceback (HYDRA_FULL_ERROR=1 re-raises instead)."""
    print(f"cnntrain: error: {message}", file=sys.stderr, flush=True)
    raise SystemExit(status)


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
        if (
            "=" in arg
            and key != "resume"
            and key not in RESUMABLE_KEYS
            and not key.startswith("hydra.")
        ):
            allowed = ", ".join(RESUMABLE_KEYS)
            fail(
                f"resume: {key} cannot change when continuing a run (only {allowed}); "
                "start a new run instead"
            )


def is_group_choice(override: str) -> bool:
    """`model=resnet`, `+experiment=smoke`: picks a config file rather than setting a value."""
    key = override.split("=", 1)[0].lstrip("+~")
    return "." not in key and key != "resume"


def hydra_error_line(error: Exception) -> str:
    """Hydra's multi-line composition errors, as one line that says what to do."""
    text = str(error)
    missing = re.search(r"Could not find '([\w/]+)/(\w+)'", text)
    if missing:
        group, option = missing.groups()
        choices = sorted(p.stem for p in (CONF_PATH / group).glob("*.yaml"))
        return f"{group}={option} is not an option of {group}; use one of: {', '.join(choices)}"
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return "; ".join(lines[:3])


def unknown_key_line(key: str, reference: DictConfig) -> str:
    parent, _, name = key.rpartition(".")
    node = OmegaConf.select(reference, parent) if parent else reference
    known = [str(k) for k in node] if isinstance(node, DictConfig) else []
    hint = difflib.get_close_matches(name, known, n=1)
    did_you_mean = f"; did you mean {parent + '.' if parent else ''}{hint[0]}?" if hint else ""
    where = parent or "the root"
    return f"{key} is not a known key{did_you_mean} (keys under {where}: {', '.join(known)})"


def preflight(args: list[str]) -> DictConfig:
    """Compose and check a single run's config before Hydra makes its folder: one-line errors."""
    with initialize_config_dir(config_dir=str(CONF_PATH), version_base="1.3"):
        reference = compose_or_fail([a for a in args if is_group_choice(a)])
        try:
            cfg = compose("config", overrides=args)
        except (HydraException, OmegaConfBaseException) as e:
            unknown = re.search(r"Could not override '([\w.]+)'", str(e))
            fail(unknown_key_line(unknown[1], reference) if unknown else hydra_error_line(e))
    unknown = unknown_keys(cfg, reference)
    if unknown:
        fail(unknown_key_line(unknown[0], reference))
    try:
        validate(cfg)
    except UserError as e:
        fail(str(e))
    return cfg


def compose_or_fail(overrides: list[str]) -> DictConfig:
    try:
        return compose("config", overrides=overrides)
    except (HydraException, OmegaConfBaseException) as e:
        fail(hydra_error_line(e))


@hydra.main(version_base="1.3", config_path=str(CONF_PATH), config_name="config")
def hydra_main(cfg: DictConfig) -> float:
    multirun = HydraConfig.get().mode == RunMode.MULTIRUN
    try:
        if cfg.resume:
            cfg = resumed_config(cfg, list(HydraConfig.get().overrides.task))
        if not multirun:
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


def main() -> None:
    """The `cnntrain` console script."""
    check_resume_arguments(sys.argv[1:])
    register_resolvers()
    args = sys.argv[1:]
    # -m sweeps, --help, --cfg…: Hydra's own; each sweep job still validates in train().
    if os.environ.get("HYDRA_FULL_ERROR") != "1" and not any(a.startswith("-") for a in args):
        preflight(args)
    hydra_main()


def report_main() -> None:
    """`cnntrain-report PATH`: (re)build report.html of a run or sweep folder, finished or not."""
    if len(sys.argv) != 2 or sys.argv[1].startswith("-"):
        fail("usage: cnntrain-report PATH (a run folder, or a multirun sweep folder)")
    try:
        if is_sweep_folder(Path(sys.argv[1])):
            write_sweep_summary(Path(sys.argv[1]))
        console.print(f"report: {build_report(Path(sys.argv[1]))}")
    except UserError as e:
        fail(str(e))


def summary_main() -> None:
    """`cnntrain-summary [overrides…]`: the layer table of the model the config would train."""
    register_resolvers()
    cfg = preflight([*sys.argv[1:], "paths.output_dir=unused"])
    try:
        spec, _ = input_spec(cfg)
        model = build_model(cfg.model, spec)
    except UserError as e:
        fail(str(e))
    console.print(summary_table(summarize_model(model, (spec.channels, spec.height, spec.width))))
