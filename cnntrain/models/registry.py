"""Model registry: `model.name` in the config names a builder that sizes a network for the data."""

import inspect
from collections.abc import Callable
from dataclasses import dataclass

from torch import nn

from cnntrain.core.errors import UserError
from cnntrain.core.spec import InputSpec
from cnntrain.models.freeze import freeze

ModelBuilder = Callable[..., nn.Module]
# Keys every model takes (defaults in conf/config.yaml under `model:`), not builder options:
# freeze is applied by build_model, init_from by the training run (models/transfer.py).
SHARED_KEYS = ("freeze", "init_from")


@dataclass(frozen=True)
class Entry:
    builder: ModelBuilder
    check: Callable[..., None] | None  # check(**options): refuse bad values before any work
    data_defaults: Callable[..., dict] | None  # data_defaults(**options): what the data must be
    architecture: ModelBuilder | None  # architecture(spec, **options): `builder`'s network, no file


_REGISTRY: dict[str, Entry] = {}


def register(
    name: str, check=None, data_defaults=None, architecture=None
) -> Callable[[ModelBuilder], ModelBuilder]:
    """Decorator: make `builder(spec, **options)` available as `model.name: <name>`.

    `check` and `data_defaults`, if given, are called with every option of the builder (the
    config's values, the builder's defaults for the others). `architecture`, for a builder that
    reads files (pretrained weights), builds the same network without reading them.
    """

    def add(builder: ModelBuilder) -> ModelBuilder:
        _REGISTRY[name] = Entry(builder, check, data_defaults, architecture)
        return builder

    return add


def model_names() -> list[str]:
    return sorted(_REGISTRY)


def check_model_options(model_cfg, weights_read: bool = True) -> tuple[ModelBuilder, dict]:
    """The builder for `model_cfg.name` and its options; a UserError for unknown names/options.
    `weights_read` False (a resumed run: its network comes from its checkpoint): the options
    are not checked against files (a starting weights file may be on another machine)."""
    entry, options, _ = registered(model_cfg, check=weights_read)
    return entry.builder, options


def entry_of(model_cfg) -> tuple[Entry, dict]:
    """The registry entry of `model_cfg.name` and its builder options as given."""
    options = {k: v for k, v in dict(model_cfg).items() if k not in SHARED_KEYS}
    name = options.pop("name", None)
    if name not in _REGISTRY:
        raise UserError(
            f"model.name={name!r} is not a known model; use one of: {', '.join(model_names())}"
        )
    return _REGISTRY[name], options


def registered(model_cfg, check: bool = True) -> tuple[Entry, dict, dict]:
    """The registry entry of `model_cfg.name`, its builder options as given, and all of them
    with the builder's defaults filled in (checked by the entry's `check` unless `check` is
    False)."""
    entry, options = entry_of(model_cfg)
    name = model_cfg.get("name")
    try:
        bound = inspect.signature(entry.builder).bind(None, **options)
    except TypeError as e:  # an unknown or missing option, named by Python's message
        raise UserError(f"model {name!r}: {e}; check the keys under model.") from e
    bound.apply_defaults()
    every = dict(list(bound.arguments.items())[1:])  # all but the first argument, spec
    if check and entry.check is not None:
        entry.check(**every)
    return entry, options, every


def data_defaults(model_cfg) -> dict | None:
    """What the model needs of the data, for the keys `data.*` leaves null; None: nothing.

    A dict with `channels` (int), `image_size` ((H, W) px), `mean` and `std` (per channel), each
    None where the data's own value (or the training split's statistics) is right.
    """
    entry, _, every = registered(model_cfg, check=False)  # config.rules checked the options
    return None if entry.data_defaults is None else entry.data_defaults(**every)


def build_model(model_cfg, spec: InputSpec, weights_read: bool = True) -> nn.Module:
    """Build the registered model `model_cfg.name`; the keys but SHARED_KEYS are its options.

    `model.freeze` (none | backbone | [module-name prefixes]) is applied to the built network.
    `weights_read` False: its architecture alone (build_architecture), for weights that a
    checkpoint is about to replace.
    """
    entry, options, _ = registered(model_cfg, check=weights_read)
    model = entry.builder(spec, **options) if weights_read else build_architecture(model_cfg, spec)
    freeze(model, dict(model_cfg).get("freeze") or "none")
    return model


def build_architecture(model_cfg, spec: InputSpec) -> nn.Module:
    """The network a run of `model_cfg` trained, sized by `spec`, freshly initialised and built
    without reading any file: what that run's checkpoint weights load into strictly.

    `model.weights` is not read (only the architecture it implies), nor `model.init_from`; no
    parameter is frozen. For a trained run's saved config, which was checked when it ran.
    """
    entry, options = entry_of(model_cfg)
    return (entry.architecture or entry.builder)(spec, **options)
