"""BatchNorm folded into the convolution before it, for evaluation: one op fewer per layer.

In eval mode a BatchNorm after a convolution is an affine map of each channel, which the
convolution's weights and bias can absorb (torch.fx's conv-BN fusion). CIFAR10CNN's eval-mode
forward at batch 128, channels-last, fp32 on a 2-core AVX-512 CPU: 865 → 925 images/s (+7%), with
the kernels capped at AVX2 477 → 517 (+8%) (bench/step_speed.py, docs/benchmarks.md B.3).
"""

import logging

import torch
from torch import nn
from torch.fx.experimental.optimization import fuse

log = logging.getLogger("cnntrain")


def folded(model: nn.Module) -> nn.Module:
    """A copy of `model` (in eval mode) with each Conv2d → BatchNorm2d pair folded into one
    Conv2d, in the model's memory layout; `model` itself if it is compiled (the compiler fuses)
    or torch.fx cannot trace it (data-dependent control flow): the outputs are the same up to
    float rounding either way."""
    if isinstance(model, torch._dynamo.eval_frame.OptimizedModule) or model.training:
        return model
    if batchnorms(model) == 0:
        return model  # nothing to fold: the model runs as written
    try:
        fused = fuse(model)  # a traced copy; `model` is untouched
    except Exception as e:  # torch.fx raises many kinds on a model it cannot trace
        log.debug("BatchNorm not folded for evaluation (torch.fx: %s)", e)
        return model
    if batchnorms(fused) == batchnorms(model):
        return model  # no BatchNorm follows a convolution alone
    weights = [p for p in model.parameters() if p.dim() == 4]
    if weights and weights[0].is_contiguous(memory_format=torch.channels_last):
        fused = fused.to(memory_format=torch.channels_last)
    return fused


def batchnorms(model: nn.Module) -> int:
    return sum(isinstance(m, nn.BatchNorm2d) for m in model.modules())
