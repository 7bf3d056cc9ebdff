"""Checkpoints: everything needed to continue a run exactly, saved atomically, loaded safely.

A checkpoint is a plain dict of tensors and Python containers, loaded with
`torch.load(path, weights_only=True)`: loading one never runs code from the file.
"""

import pickle
import zipfile
from pathlib import Path

import torch

from cnntrain.errors import UserError
from cnntrain.outputs.files import atomic_write

FORMAT = "cnntrain-checkpoint/1"


def save_checkpoint(path: Path, state: dict) -> None:
    atomic_write(path, lambda tmp: torch.save({"format": FORMAT, **state}, tmp))


def load_checkpoint(path: Path, map_location="cpu") -> dict:
    """The checkpoint at `path`; a missing, truncated, corrupt or foreign file is a UserError."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"checkpoint {path} does not exist")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except (RuntimeError, pickle.UnpicklingError, zipfile.BadZipFile, EOFError, ValueError) as e:
        reason = (str(e).splitlines() or [type(e).__name__])[0][:160]
        raise UserError(
            f"checkpoint {path} is truncated, corrupt or not a cnntrain checkpoint ({reason})"
        ) from e
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise UserError(f"checkpoint {path} is not a cnntrain checkpoint (no '{FORMAT}' marker)")
    return state


def check_compatible(state: dict, model: torch.nn.Module, path: Path) -> None:
    """Refuse weights of another architecture or class count, naming the first mismatch."""
    own = model.state_dict()
    saved = state["model"]
    missing, unexpected = sorted(own.keys() - saved.keys()), sorted(saved.keys() - own.keys())
    if missing or unexpected:
        names = ", ".join((missing + unexpected)[:3])
        raise UserError(f"checkpoint {path} is of another architecture (layers differ: {names})")
    for key, tensor in own.items():
        if saved[key].shape != tensor.shape:
            raise UserError(
                f"checkpoint {path} does not fit this model: {key} is {tuple(saved[key].shape)} "
                f"there, {tuple(tensor.shape)} here (another class count or input size?)"
            )


def evaluated_weights(saved: dict) -> dict:
    """The weights a loaded checkpoint evaluates with: its EMA weights when the run had EMA."""
    return saved["ema"]["weights"] if saved.get("ema") else saved["model"]


def best_weights(path: Path) -> dict:
    """The weights the checkpoint at `path` evaluates with (evaluated_weights)."""
    return evaluated_weights(load_checkpoint(path))
