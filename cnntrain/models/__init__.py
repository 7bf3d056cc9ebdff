"""Models: the registry (registry.py) and the modules that fill it; importing this fills it."""

from cnntrain.models import article, classic, fast  # noqa: F401  (each registers its models)
from cnntrain.models.registry import build_model, check_model_options, model_names, register
from cnntrain.spec import InputSpec

__all__ = ["InputSpec", "build_model", "check_model_options", "model_names", "register"]
