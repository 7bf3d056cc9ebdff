"""Progress bars (tqdm, on stderr): shown for a terminal in a single run, or as `trainer.progress`
says."""

import sys

from tqdm import tqdm


def progress_bar(total: int, desc: str, enabled: bool, initial: int = 0):
    return tqdm(
        total=total,
        desc=desc,
        initial=initial,
        disable=not enabled,
        leave=False,
        file=sys.stderr,
        dynamic_ncols=True,
    )


def progress_bars_enabled(cfg) -> bool:
    """tqdm bars: on for a terminal in a single run (`auto`), or as `trainer.progress` says."""
    setting = cfg.trainer.progress
    if setting != "auto":
        return bool(setting)
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    multirun = HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN
    return sys.stderr.isatty() and not multirun
