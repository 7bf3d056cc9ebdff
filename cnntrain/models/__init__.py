"""Models: the registry (registry.py) and the modules that fill it; importing this fills it."""

from cnntrain.core.spec import InputSpec
from cnntrain.models import article, classic, fast, timm, torchvision  # noqa: F401  (each registers)
from cnntrain.models.freeze import train_mode
from cnntrain.models.head import head_name, head_parameter_names
from cnntrain.models.registry import (
    build_model,
    check_model_options,
    data_defaults,
    model_names,
    register,
)
from cnntrain.models.transfer import init_from

__all__ = [
    "InputSpec",
    "build_model",
    "check_model_options",
    "data_defaults",
    "head_name",
    "head_parameter_names",
    "init_from",
    "model_names",
    "register",
    "train_mode",
]
