"""The search space from Hydra's sweep syntax (choice, range, interval, tag(log, …)) as Optuna
distributions, and the study's direction and sampler."""

import math
import re

import optuna
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import Override, Transformer
from omegaconf import OmegaConf
from optuna.distributions import (
    BaseDistribution,
    CategoricalDistribution,
    FloatDistribution,
    IntDistribution,
)

from cnntrain.core.errors import UserError
from cnntrain.sweeps.pruning import named_object

SAMPLERS = {
    "tpe": "optuna.samplers.TPESampler",
    "random": "optuna.samplers.RandomSampler",
    "cmaes": "optuna.samplers.CmaEsSampler",
    "grid": "optuna.samplers.GridSampler",
}


MINIMIZED = ("test/loss", "train_time_s")  # optimized_metric values where lower is better


PLAIN_VALUE = re.compile(r"[\w.+\-/:@]+")  # an override value needing no quotes


def flat_params(params) -> list[str]:
    """`hydra.sweeper.params` as overrides; nested keys (`params.optimizer.lr=…` typed on the
    command line nests) are joined with dots."""
    container = OmegaConf.to_container(params) if OmegaConf.is_config(params) else params or {}

    def walk(node: dict, prefix: str):
        for key, value in node.items():
            if isinstance(value, dict):
                yield from walk(value, f"{prefix}{key}.")
            else:
                yield f"{prefix}{key}={value}"

    return list(walk(container, ""))


def search_space(overrides: list[str]) -> tuple[dict[str, BaseDistribution], list[str]]:
    """Hydra sweep syntax to Optuna distributions, as hydra-optuna-sweeper reads it: `choice(…)`
    or `a,b` categorical, `range(start, stop[, step])` integers or steps (stop excluded, as in
    Hydra), `interval(lo, hi)` uniform floats, `tag(log, interval(lo, hi))` log-uniform. Plain
    `key=value` overrides are passed to every trial."""
    try:
        parsed = OverridesParser.create().parse_overrides(overrides)
    except Exception as e:
        raise UserError(f"the search space cannot be read: {e}") from e
    space, fixed = {}, []
    for override in parsed:
        if override.is_sweep_override():
            space[override.get_key_element()] = distribution(override)
        else:
            fixed.append(override.input_line)
    if not space:
        raise UserError(
            "hydra/sweeper=optuna needs a search space: hydra.sweeper.params.KEY=… in a config, "
            "or KEY=choice(…)/range(…)/interval(…) on the command line"
        )
    return space, fixed


def distribution(override: Override) -> BaseDistribution:
    value = override.value()
    try:
        if override.is_interval_sweep():
            return FloatDistribution(value.start, value.end, log="log" in value.tags)
        values = list(override.sweep_iterator(transformer=Transformer.encode))
        if override.is_range_sweep() and not value.shuffle and len(values) > 1:
            step = values[1] - values[0]
            if all(isinstance(v, int) for v in values):
                return IntDistribution(values[0], values[-1], step=step)
            return FloatDistribution(values[0], values[-1], step=step)
        return CategoricalDistribution(values)
    except ValueError as e:
        raise UserError(f"{override.input_line}: {e}") from e


def override_value(value) -> str:
    """A trial's parameter value as the command line would give it."""
    if isinstance(value, str) and not PLAIN_VALUE.fullmatch(value):
        return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"
    return str(value)


def study_direction(direction: str, metric: str) -> str:
    if direction == "auto":
        return "minimize" if metric in MINIMIZED else "maximize"
    if direction not in ("maximize", "minimize"):
        raise UserError(
            f"hydra.sweeper.direction={direction!r} is not valid; use maximize, minimize or auto"
        )
    return direction


def build_sampler(spec, seed, space: dict[str, BaseDistribution]):
    """A sampler by name, seeded with `seed`, or from a {_target_: …} mapping."""
    if spec == "grid":
        return optuna.samplers.GridSampler(grid_points(space), seed=seed)
    return named_object("hydra.sweeper.sampler", spec, SAMPLERS, seed=seed)


def grid_points(space: dict[str, BaseDistribution]) -> dict[str, list]:
    """Every value of each discrete distribution, for the grid sampler."""
    points = {}
    for key, dist in space.items():
        if isinstance(dist, CategoricalDistribution):
            points[key] = list(dist.choices)
        elif dist.step is not None:
            count = round((dist.high - dist.low) / dist.step) + 1
            points[key] = [dist.low + i * dist.step for i in range(count)]
        else:
            raise UserError(
                f"hydra.sweeper.sampler=grid needs discrete values, but {key} is an interval; "
                "give it as choice(…) or range(…)"
            )
    return points


def grid_size(space: dict[str, BaseDistribution]) -> int:
    return math.prod(len(values) for values in grid_points(space).values())
