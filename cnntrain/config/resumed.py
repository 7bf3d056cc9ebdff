"""The config a resumed run continues with: the saved run's, changed only where a resume may change
it, composed with today's config files for keys added since."""

import functools

import yaml
from omegaconf import DictConfig, OmegaConf

from cnntrain.config.compose import compose_config
from cnntrain.core.checkpoint import (
    LAST,
    checkpoint_file,
    load_checkpoint,
    run_folder,
    saved_config,
)
from cnntrain.core.overrides import override_key
from cnntrain.core.schema import CONF_DIR, WATCHING_GROUPS
from cnntrain.data.split_table import run_split_table

# Keys a resumed run may change on the command line: train longer, or within another time
# budget (re-planned from the time used), stop early sooner or later (counted from the run's
# rows: the rule applies to the epochs so far too), move (to more or fewer processes too), show
# bars or not.
RESUMABLE_KEYS = ("trainer.epochs", "trainer.time_budget", "trainer.early_stopping.patience",
                  "trainer.early_stopping.min_delta", "trainer.device", "trainer.devices",
                  "trainer.progress", "trainer.progress_every_s")  # fmt: skip


def may_change_on_resume(key: str) -> bool:
    """Whether a command-line `key=value` may go with `resume=`."""
    group = key.split(".", 1)[0]
    return key in RESUMABLE_KEYS or group in WATCHING_GROUPS or group in ("hydra", "resume")


def resumed_config(cfg: DictConfig, overrides: list[str]) -> DictConfig:
    """The config to continue `cfg.resume` with: the saved run's (checked as data: see
    core/schema.py), changed only by those of `overrides` (command-line `key=value`s) that name
    RESUMABLE_KEYS; this machine's paths, the callbacks of this command and the trackers of
    `trackers`. Keys this version has and the saved run did not (it was started by an older
    cnntrain) take today's defaults of the groups it chose. The run's splits.csv, when it has
    one, becomes data.splits: a resumed run trains on the split it started with (the table's
    paths only pick among the files the data holds). Nothing else of the run folder is read:
    its .hydra/ files are what anyone could have written."""
    path = checkpoint_file(cfg.resume, LAST, "resume")
    state = load_checkpoint(path)
    saved = saved_config(state, path)
    changes = [o.lstrip("+") for o in overrides if override_key(o) in RESUMABLE_KEYS]
    base = composed_with(tuple(chosen_options(saved)))
    resumed = OmegaConf.merge(base, OmegaConf.create(saved), OmegaConf.from_dotlist(changes))
    resumed.paths = cfg.paths
    resumed.logger = trackers(cfg, overrides, state["config"].get("logger"))
    resumed.callbacks = cfg.get("callbacks") or {}
    resumed.resume = cfg.resume
    resumed.data.splits = run_split_table(run_folder(path)) or resumed.data.get("splits")
    return resumed


def trackers(cfg: DictConfig, overrides: list[str], saved_logger):
    """The trackers a resumed run reports to: those its command line names (`logger=…`,
    `logger.*=…`; `logger=none` turns them off), else the saved run's own (`saved_logger`), so
    that `cnntrain resume=RUN`, as the interrupt message says, goes on tracking where the run
    did. Of a saved run only the options' names are read, and each is set up as today's
    conf/logger/ file sets it on this machine: a received file's tracker settings (an MLflow
    tracking URI) would send the run elsewhere."""
    if any(override_key(o).split(".", 1)[0] == "logger" for o in overrides):
        return cfg.get("logger") or {}
    known = {path.stem for path in (CONF_DIR / "logger").glob("*.yaml")} - {"none"}
    names = sorted(n for n in saved_logger if n in known) if isinstance(saved_logger, dict) else []
    if not names:
        return {}
    chosen = composed_with((f"logger=[{','.join(names)}]",)).logger
    return OmegaConf.to_container(chosen, resolve=False)  # interpolations resolve in the run's


# The groups a saved config names its option of, and the key that names it there.
NAMING_KEYS = {"data": "name", "model": "name", "optimizer": "_target_", "scheduler": "name",
               "loss": "name"}  # fmt: skip


def chosen_options(saved: dict) -> list[str]:
    """`data=cifar10`, `model=resnet`…: the options of today's config files whose naming key
    (NAMING_KEYS) holds what the saved config holds there; a group whose option is gone keeps
    its default."""
    named = {group: str(saved.get(group, {}).get(key)) for group, key in NAMING_KEYS.items()}
    return [f"{group}={options_by(group)[value]}" for group, value in named.items()
            if value in options_by(group)]  # fmt: skip


@functools.cache
def options_by(group: str) -> dict:
    """{naming value: option} of conf/<group>/*.yaml."""
    named = {}
    for path in sorted((CONF_DIR / group).glob("*.yaml")):
        content = yaml.safe_load(path.read_text()) or {}
        named.setdefault(str(content.get(NAMING_KEYS[group])), path.stem)
    return named


@functools.lru_cache(maxsize=8)
def composed_with(choices: tuple[str, ...]) -> DictConfig:
    """The config `choices` compose to with today's config files (once per process: the CLI
    asks before Hydra starts and again in its job); callers merge it, never change it."""
    base = compose_config(list(choices))
    OmegaConf.set_struct(base, False)  # the saved run may hold keys this version dropped
    return base
