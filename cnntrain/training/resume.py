"""What a checkpoint holds, writing one (write_checkpoint) and how a run continues from one: the
state, the RNGs, the weights' trainability, the progress and the callbacks' states."""

import logging
from dataclasses import asdict
from pathlib import Path

import torch
from omegaconf import OmegaConf

from cnntrain.core.checkpoint import check_compatible, save_checkpoint
from cnntrain.core.seeds import rng_states, set_rng_states
from cnntrain.training.state import RunState

log = logging.getLogger(__name__)


def checkpoint_state(loop) -> dict:
    """Everything needed to continue `loop`'s run exactly, and to rebuild its model alone."""
    parts, data = loop.parts, loop.data
    states = {name: cb.state_dict() for name, cb in loop.callbacks.items()}
    return {
        "model": loop.model.state_dict(),
        "trainable": [name for name, p in loop.model.named_parameters() if p.requires_grad],
        "optimizer": parts.optimizer.state_dict(),
        "scheduler": parts.scheduler.state_dict(),
        "scaler": parts.arithmetic.scaler.state_dict(),
        "ema": parts.ema.state_dict() if parts.ema is not None else None,
        "epoch": loop.state.epoch,
        "progress": asdict(loop.state),  # the RunState, under its first name
        "world_size": loop.world.size,  # processes that trained it (the state is the same file)
        "rng": rng_states(parts.arithmetic.device),
        "config": OmegaConf.to_container(loop.cfg, resolve=True),
        "metrics": loop.state.rows,
        "spec": data.spec.to_dict(),
        "classes": data.classes,
        "normalization": {"mean": data.mean, "std": data.std},
        "callbacks": {name: state for name, state in states.items() if state is not None},
        **({"multi_label": True} if data.multi_label else {}),  # sigmoid outputs, one per label
    }


def write_checkpoint(loop, name: str) -> None:
    """checkpoints/`name` of `loop`'s run, written atomically; then the callbacks hear of it."""
    path = loop.checkpoint_path(name)
    save_checkpoint(path, checkpoint_state(loop))
    loop.emit("on_checkpoint", name, path)


def restore_trainable(model: torch.nn.Module, saved: dict) -> None:
    """Freeze what the saved run had frozen (before the optimizer is built over the rest)."""
    if "trainable" not in saved:
        return
    trainable = set(saved["trainable"])
    for name, p in model.named_parameters():
        p.requires_grad_(name in trainable)


def restore(saved: dict, path: Path, loop, total_steps: int) -> None:
    """Put `saved` back into `loop`: weights, optimizer, schedule (re-planned for `total_steps`
    when the run got another length), loss scaler, EMA, RNGs, progress and callbacks' states."""
    parts = loop.parts
    check_compatible(saved, loop.model, path)
    loop.model.load_state_dict(saved["model"])
    parts.optimizer.load_state_dict(saved["optimizer"])
    parts.scheduler.load_state_dict(saved["scheduler"])
    parts.scheduler.resize(total_steps)
    if saved["scaler"]:  # a disabled scaler (no fp16) saves an empty state
        parts.arithmetic.scaler.load_state_dict(saved["scaler"])
    if parts.ema is not None:
        parts.ema.load_state_dict(saved["ema"])
    set_rng_states(saved["rng"], parts.arithmetic.device)  # every rank draws alike (dropout)
    loop.state = RunState.from_progress(saved["progress"])
    note_world_change(saved.get("world_size", 1), loop)
    for name, state in saved.get("callbacks", {}).items():
        if name in loop.callbacks:
            loop.callbacks[name].load_state_dict(state)


def note_world_change(saved_size: int, loop) -> None:
    """Say so when a run continues with another number of processes. Its place stays valid:
    the global batches, their order and each image's augmentation do not depend on the world
    size; only sums run in another order (and, without sync_bn, BatchNorm sees other batches)."""
    p = loop.state
    if saved_size != loop.world.size and loop.is_main:
        log.warning(
            "the checkpoint was written by %d process(es), this run has %d: it continues at "
            "epoch %d, step %d with the same global batches (data.batch_size), so it matches "
            "an unchanged run up to rounding",
            saved_size, loop.world.size, p.epoch + 1, p.step,
        )  # fmt: skip
