"""Model registry: `model.name` in the config names a builder that sizes a network for the data."""

import inspect
from collections.abc import Callable

from torch import nn

from cnntrain.errors import UserError
from cnntrain.spec import InputSpec

ModelBuilder = Callable[..., nn.Module]
_REGISTRY: dict[str, ModelBuilder] = {}


def register(name: str) -> Callable[[ModelBuilder], ModelBuilder]:
    """Decorator: make `builder(spec, **options)` available as `model.name: <name>`."""

    def add(builder: ModelBuilder) -> ModelBuilder:
        _REGISTRY[name] = builder
        return builder

    return add


def model_names() -> list[str]:
    return sorted(_REGISTRY)


def check_model_options(model_cfg) -> tuple[ModelBuilder, dict]:
    """The builder for `model_cfg.name` and its options; a UserError for unknown names/options."""
    options = dict(model_cfg)
    name = options.pop("name", None)
    if name not in _REGISTRY:
        raise UserError(
            f"model.name={name!r} is not a known model; use one of: {', '.join(model_names())}"
        )
    builder = _REGISTRY[name]
    try:
        inspect.signature(builder).bind(None, **options)
    except TypeError as e:  # an unknown or missing option, named by Python's message
        raise UserError(f"model {name!r}: {e}; check the keys under model.") from e
    return builder, options


def build_model(model_cfg, spec: InputSpec) -> nn.Module:
    """Build the registered model `model_cfg.name`; every other key of `model_cfg` is an option."""
    builder, options = check_model_options(model_cfg)
    return builder(spec, **options)
