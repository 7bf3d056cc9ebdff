"""The checkpoint file: its format, where a run keeps it, saving it atomically, loading it safely,
and what must match to load its weights.

A checkpoint is a plain dict of tensors and Python containers, loaded with
`torch.load(path, weights_only=True)`: loading one never runs code from the file. A run folder
holds checkpoints/last.pt (what a resume continues) and checkpoints/best.pt (the weights a
trained run is used with: eval, predict, export, model.init_from), and with
`trainer.save_top_k` > 1 the other best epochs as checkpoints/best-epoch<N>.pt.
"""

import logging
import pickle
import zipfile
from pathlib import Path

import torch

from cnntrain.core.errors import UserError
from cnntrain.core.files import atomic_write
from cnntrain.core.schema import check_received

log = logging.getLogger("cnntrain")

FORMAT = "cnntrain-checkpoint/1"
LAST, BEST = "last.pt", "best.pt"  # under RUN_DIR/checkpoints/
BEST_OF_EPOCH = "best-epoch{}.pt"  # one of the trainer.save_top_k best epochs but the best
# What a checkpoint must carry to be used without its run's data (written since this format).
USE_KEYS = ("spec", "classes", "normalization", "config")
# `_target_`s that saved configs hold and that have moved since, old → new (resume builds them).
MOVED_TARGETS = {
    f"cnntrain.optim.{name}": f"cnntrain.training.schedules.{name}"
    for name in ("Constant", "Step", "Cosine", "OneCycle", "Triangle")
} | {"cnntrain.pruning.OptunaPruning": "cnntrain.sweeps.pruning.OptunaPruning"}


# What cnntrain writes in a run folder (README "The run folder"), and in a sweep folder beside its
# job folders (0, 1, …: run folders): what must hold no link before a command writes into an
# existing one (core.files.refuse_links), and no more (a folder that is not cnntrain's, such as
# the one holding a downloaded checkpoint, is not walked).
RUN_ENTRIES = (".hydra", "checkpoints", "plots", "tensorboard", "wandb", "eval", "export",
               "train.log", "metrics.jsonl", "metrics.csv", "results.json", "report.html",
               "summary.json", "summary.txt", "error.txt", ".job.lock", "splits.csv",
               "bad_rows.csv", "test_predictions.csv")  # fmt: skip
SWEEP_ENTRIES = ("multirun.yaml", "optuna.db", "summary.csv", "best.yaml", ".optuna.lock", ".gpus")


def written_entries(folder: Path) -> list[str]:
    """The entries of `folder` (a run or a sweep folder) that cnntrain writes into."""
    jobs = (
        [p.name for p in Path(folder).iterdir() if p.name.isdigit()]
        if Path(folder).is_dir()
        else []
    )
    return [*RUN_ENTRIES, *SWEEP_ENTRIES, *sorted(jobs)]


def checkpoint_path(run_dir: Path, name: str) -> Path:
    """Where run folder `run_dir` keeps checkpoint `name` (LAST or BEST)."""
    return Path(run_dir) / "checkpoints" / name


def run_folder(source) -> Path:
    """The run folder that `source` names: the folder itself, or the one holding a checkpoint."""
    path = Path(str(source)).expanduser()
    if path.is_file():
        path = path.parent.parent if path.parent.name == "checkpoints" else path.parent
    return path


def checkpoint_file(source, name: str, what: str) -> Path:
    """The checkpoint `source` names: a .pt file itself, or a run folder's checkpoints/`name`
    (LAST or BEST; BEST is LAST in a run that keeps no best one); `what` names `source` in the
    error when there is none (the key, or the command's argument)."""
    path = Path(str(source)).expanduser()
    if path.is_dir():
        last = checkpoint_path(path, LAST)
        path = checkpoint_path(path, name)
        if name == BEST and not path.is_file() and last.is_file():
            # A run that keeps no best checkpoint (trainer.save_top_k=0) was tested, and is
            # used, with its last weights.
            log.info("%s has no %s (trainer.save_top_k=0): using %s", source, BEST, last)
            path = last
    if not path.is_file():
        raise UserError(
            f"{what}={str(source)!r}: no checkpoint at {path}; "
            "give a cnntrain run folder or a .pt checkpoint"
        )
    return path


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


def saved_config(state: dict, path: Path) -> dict:
    """The run's config as the checkpoint at `path` saved it, checked as data (check_received:
    its trackers and callbacks dropped), with `_target_`s that have moved since named as they
    are now (MOVED_TARGETS)."""

    def renamed(node):
        if isinstance(node, dict):
            return {k: MOVED_TARGETS.get(v, v) if k == "_target_" and isinstance(v, str)
                    else renamed(v) for k, v in node.items()}  # fmt: skip
        return [renamed(v) for v in node] if isinstance(node, list) else node

    return check_received(renamed(state.get("config")), f"checkpoint {path}")


def check_usable(state: dict, path: Path) -> None:
    """Refuse a checkpoint that cannot be used without its run's data (USE_KEYS)."""
    missing = [key for key in USE_KEYS if key not in state]
    if missing:
        raise UserError(
            f"checkpoint {path} has no {', '.join(missing)}: it was written by an older cnntrain; "
            "train the run again to use it"
        )


def check_compatible(state: dict, model: torch.nn.Module, path: Path) -> None:
    """Refuse weights that are not `model`'s own, naming the first mismatch: the checkpoint's
    `model` entry, and its EMA's weights where it kept an EMA (what evaluation loads). `model`
    may be on the meta device: only its names, shapes and dtypes are read."""
    own, source = model.state_dict(), f"checkpoint {path}"
    check_weights(weight_dict(state["model"], source, "model"), own, source, "model")
    if state.get("ema"):
        check_weights(received_weights(state, path), own, source, "ema.weights")


def received_weights(state: dict, path: Path) -> dict:
    """The weights a received checkpoint evaluates with (evaluated_weights: its EMA's where it
    kept one), checked to be what saving a network gives (weight_dict)."""
    ema = state.get("ema")
    if not ema:
        return weight_dict(state["model"], f"checkpoint {path}", "model")
    weights = ema.get("weights") if isinstance(ema, dict) else None
    return weight_dict(weights, f"checkpoint {path}", "ema.weights")


def weight_dict(saved, source: str, entry: str) -> dict:
    """`saved` (`source`'s `entry`) if it is what a network's state_dict gives: names to plain
    tensors (dense, with values: not sparse, quantized, nested or on the meta device); else
    one line says it is not."""
    plain = isinstance(saved, dict) and all(
        isinstance(k, str)
        and isinstance(t, torch.Tensor)
        and t.layout == torch.strided
        and not (t.is_meta or t.is_quantized or t.is_nested)
        for k, t in saved.items()
    )
    if not plain:
        raise UserError(
            f"{source}: {entry} is not a network's weights (layer names to tensors); use the "
            "run's own checkpoint, or train it again"
        )
    return saved


def check_weights(saved, own: dict, source: str, entry: str) -> None:
    """`saved` (`source`'s `entry`, a weight_dict) has `own`'s names, shapes and kind of
    number (floating or not), or one line names the first difference."""
    missing, unexpected = sorted(own.keys() - saved.keys()), sorted(saved.keys() - own.keys())
    if missing or unexpected:
        names = ", ".join((missing + unexpected)[:3])
        raise UserError(f"{source} is of another architecture ({entry}'s layers differ: {names})")
    for key, tensor in own.items():
        theirs = saved[key]
        if theirs.shape != tensor.shape:
            raise UserError(
                f"{source} does not fit this model: {entry} {key} is {tuple(theirs.shape)} there, "
                f"{tuple(tensor.shape)} here (another class count or input size?)"
            )
        if theirs.dtype.is_floating_point != tensor.dtype.is_floating_point:
            raise UserError(
                f"{source} does not fit this model: {entry} {key} is {theirs.dtype} there, "
                f"{tensor.dtype} here"
            )


def add_entry(path: Path, key: str, value, state: dict | None = None) -> None:
    """Add `key: value` to the checkpoint at `path`, rewritten atomically (what training learns
    after its last epoch: a temperature, the labels' thresholds). `state`: that checkpoint as
    already loaded, else it is read."""
    state = load_checkpoint(path) if state is None else state
    state[key] = value
    save_checkpoint(path, state)


def evaluated_weights(saved: dict) -> dict:
    """The weights a loaded checkpoint evaluates with: its EMA weights when the run had EMA."""
    return saved["ema"]["weights"] if saved.get("ema") else saved["model"]


def best_weights(path: Path) -> dict:
    """The weights the checkpoint at `path` evaluates with (evaluated_weights)."""
    return evaluated_weights(load_checkpoint(path))


def remove_torn_writes(folder: Path) -> None:
    """Temporary files of writes a crash cut short (the files they replace are intact)."""
    for torn in folder.glob(".*.tmp"):
        torn.unlink()


def saved_epoch(path: Path) -> int | None:
    """The epoch the checkpoint at `path` holds; None when there is none (or the run died while
    writing it)."""
    try:
        return load_checkpoint(path)["progress"]["epoch"]
    except UserError:
        return None
