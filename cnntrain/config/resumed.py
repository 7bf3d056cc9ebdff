"""The config a resumed run continues with: the saved run's, changed only where a resume may change
it, composed with today's config files for keys added since."""

import functools
import logging
from pathlib import Path

import yaml
from hydra.errors import HydraException
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from cnntrain.config.compose import compose_config
from cnntrain.core.checkpoint import (
    LAST,
    checkpoint_file,
    load_checkpoint,
    run_folder,
    saved_config,
)
from cnntrain.core.overrides import override_key

log = logging.getLogger(__name__)


# Keys a resumed run may change on the command line: train longer, move (to more or fewer
# processes too), show bars or not.
RESUMABLE_KEYS = ("trainer.epochs", "trainer.device", "trainer.devices", "trainer.progress")


# Groups a resumed run takes from its own command line, not from the saved run: they watch the
# training (trackers, callbacks) without changing it.
WATCHING_GROUPS = ("logger", "callbacks")


def may_change_on_resume(key: str) -> bool:
    """Whether a command-line `key=value` may go with `resume=`."""
    group = key.split(".", 1)[0]
    return key in RESUMABLE_KEYS or group in WATCHING_GROUPS or group in ("hydra", "resume")


def resumed_config(cfg: DictConfig, overrides: list[str]) -> DictConfig:
    """The config to continue `cfg.resume` with: the saved run's, changed only by those of
    `overrides` (command-line `key=value`s) that name RESUMABLE_KEYS; this machine's paths, and
    the trackers and callbacks of this command. Keys this version has and the saved run did not
    (it was started by an older cnntrain) take today's defaults for the run's own command line."""
    saved = saved_config(load_checkpoint(checkpoint_file(cfg.resume, LAST, "resume")))
    changes = [o.lstrip("+") for o in overrides if override_key(o) in RESUMABLE_KEYS]
    base = composed_like(run_folder(cfg.resume)) or OmegaConf.create()
    resumed = OmegaConf.merge(base, OmegaConf.create(saved), OmegaConf.from_dotlist(changes))
    resumed.paths = cfg.paths
    for group in WATCHING_GROUPS:
        resumed[group] = cfg.get(group) or {}
    resumed.resume = cfg.resume
    return resumed


def composed_like(folder: Path) -> DictConfig | None:
    """The config the run's own command line (`.hydra/overrides.yaml`) composes to with today's
    config files; None when that file is gone or its overrides no longer compose. Composed once
    per process and version of the file (the CLI asks before Hydra starts and again in its job);
    callers merge it, never change it."""
    path = folder / ".hydra" / "overrides.yaml"
    if not path.is_file():
        return None
    return composed_from(str(path.resolve()), path.stat().st_mtime_ns)


@functools.lru_cache(maxsize=8)
def composed_from(path: str, mtime_ns: int) -> DictConfig | None:
    """composed_like's work, for the file at `path` as it was at `mtime_ns`."""
    text = Path(path).read_text()
    overrides = [o for o in yaml.safe_load(text) or [] if not o.startswith("hydra.")]
    try:
        base = compose_config(overrides)
    except (HydraException, OmegaConfBaseException) as e:
        log.warning("resume: %s no longer composes (%s); using the saved config alone", path, e)
        return None
    OmegaConf.set_struct(base, False)  # the saved run may hold keys this version dropped
    return base
