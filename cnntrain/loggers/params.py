"""A run's config as the flat `section.key: value` pairs that trackers show as hyper-parameters."""

import json

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
