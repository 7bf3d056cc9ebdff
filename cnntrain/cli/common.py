"""What every command-line entry point shares: one-line errors and config composition."""

import argparse
import atexit
import difflib
import gc
import logging
import re
import sys

from hydra import compose, initialize_config_dir
from hydra.errors import HydraException
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException
from rich.console import Console
from rich.logging import RichHandler

from cnntrain.config.rules import unknown_keys, validate
from cnntrain.core.errors import UserError
from cnntrain.core.overrides import is_group_choice
from cnntrain.core.schema import CONF_DIR
from cnntrain.distributed import rank_prefix

# At exit, the objects left are frozen: the interpreter's closing garbage collections then skip
# them. Over torch's object graph those collections were the slowest part of a short command's
# exit (`python -c "import torch, torchvision"`: 3.4 s, 2.55 s when it freezes them; docs A.17).
# Registered on import, before the trackers' own exit handlers, so it runs after them. What it
# gives up: finalizers of objects in reference cycles are not run at exit (files are closed by
# the code that wrote them, trackers when the run ends).
atexit.register(gc.freeze)


def fail(message: str, status: int = 2):
    """A user error: one line on stderr, no traceback (HYDRA_FULL_ERROR=1 re-raises instead);
    marked `[rank N]` on the ranks other than 0 of a torchrun job."""
    print(f"{rank_prefix()}cnntrain: error: {message}", file=sys.stderr, flush=True)
    raise SystemExit(status)


def warn(message: str) -> None:
    """A warning for the user: one line on stderr; the command goes on."""
    print(f"cnntrain: warning: {message}", file=sys.stderr, flush=True)


class ArgumentParser(argparse.ArgumentParser):
    """argparse whose refusals are one line, `cnntrain: error: …` with exit status 2, as all."""

    def error(self, message: str):
        fail(f"{self.prog}: {message} (see {self.prog} --help)")


def log_to_console() -> None:
    """The library's log lines (what is decoded, cached, skipped) on stderr, formatted as
    `cnntrain` shows them through Hydra's job logging (conf/hydra/job_logging/rich.yaml); stdout
    keeps only the command's answer."""
    handler = RichHandler(console=Console(stderr=True), show_path=False, log_time_format="[%X]")
    handler.setFormatter(logging.Formatter("%(message)s"))
    logging.basicConfig(level=logging.WARNING, handlers=[handler])  # unless already set up
    logging.getLogger("cnntrain").setLevel(logging.INFO)  # cnntrain's info lines, others' warnings


def hydra_error_line(error: Exception) -> str:
    """Hydra's multi-line composition errors, as one line that says what to do."""
    text = str(error)
    missing = re.search(r"Could not find '([\w/]+)/(\w+)'", text)
    if missing:
        group, option = missing.groups()
        choices = sorted(p.stem for p in (CONF_DIR / group).glob("*.yaml"))
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
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        # The reference (the same groups, no values) names the known keys; it is composed only
        # when needed: for an error, or when a `+key` may have added a key that does not exist.
        def reference() -> DictConfig:
            return compose_or_fail([a for a in args if is_group_choice(a)])

        try:
            cfg = compose("config", overrides=args)
        except (HydraException, OmegaConfBaseException) as e:
            unknown = re.search(r"Could not override '([\w.]+)'", str(e))
            fail(unknown_key_line(unknown[1], reference()) if unknown else hydra_error_line(e))
        if any(a.startswith("+") for a in args):
            known = reference()
            if unknown := unknown_keys(cfg, known):
                fail(unknown_key_line(unknown[0], known))
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
