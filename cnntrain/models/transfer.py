"""model.init_from: start a network from another cnntrain run's weights, tensor by tensor."""

import logging
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from cnntrain.core.checkpoint import (
    BEST,
    checkpoint_file,
    load_checkpoint,
    received_weights,
    saved_config,
)
from cnntrain.core.errors import UserError
from cnntrain.models.head import head_parameter_names

log = logging.getLogger("cnntrain")


@dataclass
class Transfer:
    """How a source state dict maps onto a model's, by state-dict name."""

    loaded: list[str]  # same name and shape: copied
    skipped: list[str]  # same name, another shape (a head for another class count): as built
    new: list[str]  # not in the source: as built
    unused: list[str]  # in the source only
    head: set[str]  # the model's head tensors (head.py)

    def describe(self, source: Path) -> list[str]:
        """Log lines: the counts, then the tensors of each kind by name."""
        head = " (the head: re-initialised for this class count)" if self.head_skipped() else ""
        lines = [
            f"model.init_from {source}: loaded {len(self.loaded)} tensors, re-initialised "
            f"{len(self.skipped)} of another shape{head}, {len(self.new)} new, "
            f"{len(self.unused)} of the checkpoint unused"
        ]
        for kind, names in (("loaded", self.loaded), ("re-initialised (another shape)",
                            self.skipped), ("new", self.new)):  # fmt: skip
            if names:
                lines.append(f"model.init_from {kind}: {', '.join(names)}")
        return lines

    def head_skipped(self) -> bool:
        return bool(self.head) and self.head <= set(self.skipped)


def match_tensors(own: dict, saved: dict, model: nn.Module) -> Transfer:
    """Compare `model`'s state dict `own` with `saved`, tensor by tensor."""
    return Transfer(
        loaded=[k for k in own if k in saved and saved[k].shape == own[k].shape],
        skipped=[k for k in own if k in saved and saved[k].shape != own[k].shape],
        new=[k for k in own if k not in saved],
        unused=[k for k in saved if k not in own],
        head=head_parameter_names(model),
    )


def architecture(model_cfg) -> str:
    """What must agree for tensors to mean the same: the model name (and torchvision's or timm's
    arch)."""
    name = model_cfg.get("name")
    return f"{name} {model_cfg.get('arch')}" if name in ("torchvision", "timm") else str(name)


@torch.no_grad()
def init_from(model: nn.Module, source, model_cfg) -> Transfer:
    """Copy into `model` (built from `model_cfg`) every tensor of the run or checkpoint `source`
    with the same name and shape: its EMA weights when that run kept an EMA, else its weights.

    The others keep the values the model was built with: a head for another class count is
    thus re-initialised. Logs and returns what was loaded, re-initialised and new; a checkpoint
    of another architecture, or with no parameter in common outside the head, is a UserError.
    """
    path = checkpoint_file(source, BEST, "model.init_from")
    saved = load_checkpoint(path)  # torch.load(weights_only=True)
    theirs, ours = architecture(saved_config(saved, path)["model"]), architecture(model_cfg)
    if theirs != ours:
        raise UserError(
            f"model.init_from={str(source)!r} is a {theirs} run and this run builds {ours}; "
            "init_from needs the same architecture"
        )
    weights = received_weights(saved, path)
    transfer = match_tensors(model.state_dict(), weights, model)
    body = {name for name, _ in model.named_parameters()} - transfer.head
    if not body & set(transfer.loaded):
        raise UserError(
            f"model.init_from={str(source)!r}: no parameter of {path} but the head's has this "
            f"model's name and shape (another {ours} configuration?)"
        )
    model.load_state_dict({name: weights[name] for name in transfer.loaded}, strict=False)
    for line in transfer.describe(path):
        log.info(line)
    return transfer
