"""Value checks: predicates for config values and the one-line refusal that names the key."""

import math
from collections.abc import Callable

from omegaconf import DictConfig, ListConfig, OmegaConf

from cnntrain.core.errors import UserError


def check(key: str, value, valid: Callable, allowed: str, error: type = UserError) -> None:
    """Refuse `value` of `key` unless `valid(value)`: `KEY=VALUE is not valid; use ALLOWED`."""
    if not valid(value):
        raise error(f"{key}={format_value(value)} is not valid; use {allowed}")


def format_value(value) -> str:
    """A value as the command line writes it: strings quoted, containers as plain ones."""
    if isinstance(value, ListConfig | DictConfig):
        return str(OmegaConf.to_container(value))
    return repr(value) if isinstance(value, str) else str(value)


def integer(lo: int, hi: float = math.inf):
    """A whole number (not a bool) in lo..hi."""
    return lambda v: isinstance(v, int) and not isinstance(v, bool) and lo <= v <= hi


def number(lo: float, hi: float = math.inf, lo_open=False, hi_open=False):
    """A real number in the interval lo..hi (open or closed at each end)."""

    def valid(v) -> bool:
        if isinstance(v, bool) or not isinstance(v, int | float) or math.isnan(v):
            return False
        return (v > lo if lo_open else v >= lo) and (v < hi if hi_open else v <= hi)

    return valid


def optional(valid):
    return lambda v: v is None or valid(v)


def one_of(*values):
    return lambda v: str(v) in values


def boolean(v) -> bool:
    return isinstance(v, bool)
