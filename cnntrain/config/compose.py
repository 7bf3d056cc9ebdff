"""The config files (conf/), and composing a config from override strings in or out of Hydra."""

from omegaconf import DictConfig

from cnntrain.core.schema import CONF_DIR


def compose_config(overrides: list[str]) -> DictConfig:
    """The config `cnntrain *overrides` composes to (Hydra's compose API, inside or outside a
    running Hydra app)."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    if GlobalHydra.instance().is_initialized():
        return compose("config", overrides=overrides)
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose("config", overrides=overrides)
