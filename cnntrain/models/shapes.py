"""Shapes without memory: a module run on the meta device, its own weights left untouched."""

import torch
from torch import nn


def meta_output(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """`module`(x) on the meta device: the output's shape and dtype for an input of any size,
    nothing allocated; `module`'s parameters and buffers are read for their shapes only."""
    meta = {
        name: torch.empty_like(t, device="meta")
        for name, t in [*module.named_parameters(), *module.named_buffers()]
    }
    with torch.device("meta"):
        return torch.func.functional_call(module, meta, (x.to("meta"),))
