"""Optional dependencies (pyproject.toml's extras): whether one is installed, and the one line
that says how to add it, in the form that fits how cnntrain itself was installed."""

import importlib.util
from pathlib import Path

from cnntrain.core.errors import UserError

# A checkout installed with `pip install -e .` has its pyproject.toml beside the package.
CHECKOUT = Path(__file__).resolve().parents[2]


def install_command(extra: str) -> str:
    """`pip install -e '.[EXTRA]'` in a checkout (to run there), else (a wheel, an index)
    `pip install 'cnntrain[EXTRA]'`."""
    if (CHECKOUT / "pyproject.toml").is_file() and (CHECKOUT / "cnntrain").is_dir():
        return f"pip install -e '.[{extra}]' (in {CHECKOUT})"
    return f"pip install 'cnntrain[{extra}]'"


def require(module: str, extra: str, what: str) -> None:
    """Refuse `what` (a choice that needs `module`) in one line naming the extra to install,
    before any work, when `module` is not installed."""
    try:
        found = importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:  # a parent package is missing
        found = False
    if not found:
        raise UserError(f"{what} needs {module}, which is not installed: {install_command(extra)}")
