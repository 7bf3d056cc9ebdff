"""What trackers record of a run besides its metrics: its config as the flat `section.key: value`
pairs they show as hyper-parameters, and the sweep it is a job of."""

import json
from pathlib import Path

from omegaconf import OmegaConf

SKIPPED = ("callbacks", "logger")  # how the run is watched, not how it trains


def flat_config(cfg) -> dict[str, str | int | float | bool]:
    """`optimizer.lr: 0.05`, `model.name: 'cifar10cnn'`, …; lists and null as JSON text."""
    flat = {}

    def walk(node, prefix: str) -> None:
        for key, value in node.items():
            if prefix == "" and key in SKIPPED:
                continue
            name = f"{prefix}{key}"
            if isinstance(value, dict):
                walk(value, f"{name}.")
            elif isinstance(value, str | int | float | bool):
                flat[name] = value
            else:  # None, lists
                flat[name] = json.dumps(value)

    walk(OmegaConf.to_container(cfg, resolve=True), "")
    return flat


def sweep_folder() -> str | None:
    """The sweep folder when this run is a job of a Hydra multirun, else None."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    if HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN:
        return str(Path(HydraConfig.get().sweep.dir).resolve())
    return None
