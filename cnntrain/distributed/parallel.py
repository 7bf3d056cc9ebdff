"""The model a training step runs with several processes: DistributedDataParallel, and the network
inside it."""

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from cnntrain.distributed.group import world


def parallel(model: nn.Module, device: torch.device) -> nn.Module:
    """The model a training step runs: in DistributedDataParallel (gradients averaged over the
    ranks; rank 0's buffers, e.g. BatchNorm statistics, sent to the others at every step) when
    there are several."""
    if world().size == 1:
        return model
    return DistributedDataParallel(
        model, device_ids=[device.index] if device.type == "cuda" else None
    )


def unwrap(step_model: nn.Module) -> nn.Module:
    """The network inside a (compiled) DistributedDataParallel; any other model as it is."""
    inner = getattr(step_model, "_orig_mod", step_model)
    return inner.module if isinstance(inner, DistributedDataParallel) else step_model
