"""How numbers read in log lines, tables and the report: seconds as durations, finite numbers.
Light on purpose (no plotting library): the training loop's callbacks and config checks use it."""

import math


def is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def duration(seconds) -> str:
    """`12.3 s`, `4m 05s` or `1h 02m 03s`; `—` for what is not a finite number."""
    if not is_number(seconds):
        return "—"
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, s = divmod(round(seconds), 60)
    hours, m = divmod(minutes, 60)
    return f"{hours}h {m:02d}m {s:02d}s" if hours else f"{m}m {s:02d}s"
