"""How steps compute: the autocast dtype `trainer.precision` asks for on this device, fp16 loss
scaling, CUDA's math flags, and the test-time views of evaluation (Arithmetic)."""

import contextlib
import logging
from dataclasses import dataclass, field

import torch
from torch import nn

from cnntrain.core.device import native_bf16

log = logging.getLogger("cnntrain")


def autocast_dtype(
    precision, device: torch.device, hazard: str | None = None
) -> torch.dtype | None:
    """The autocast dtype for `trainer.precision`, None for plain fp32. `hazard`: a convolution
    whose bf16 weight gradient the CPU computes wrongly (bf16_gradient_hazard): `auto` trains it
    in fp32 instead, an explicit `bf16` is warned about."""
    precision = str(precision)
    if precision == "auto":
        if not native_bf16(device):
            return None
        if device.type == "cpu" and hazard:
            log.warning("precision auto: float32, not bf16: %s", hazard_line(hazard))
            return None
        return torch.bfloat16
    if precision == "bf16" and device.type == "cpu" and hazard:
        log.warning(
            "trainer.precision=bf16: %s; trainer.precision=32 avoids it", hazard_line(hazard)
        )
    return {"32": None, "tf32": None, "bf16": torch.bfloat16, "16": torch.float16}[precision]


def hazard_line(conv: str) -> str:
    return (
        f"convolution {conv} is strided over an input narrower than its stride, where oneDNN's "
        "bf16 weight gradient on CPUs returns garbage (measured with torch 2.14.1)"
    )


@torch.no_grad()
def bf16_gradient_hazard(model: nn.Module, shape: tuple[int, int, int]) -> str | None:
    """The first Conv2d of `model` (on an input of `shape` (C, H, W)) whose bf16 weight gradient
    oneDNN gets wrong on CPUs, or None. Measured with torch 2.14.1 on an AVX512-BF16 CPU: when a
    kernel wider than 1 px strides over an input side shorter than the stride (ResNet's last
    stage on 16 px images), the gradient entries that see only padding come back as garbage
    (up to 1e28) in most steps; fp32 and wider inputs are exact."""
    found = []

    def check(name):
        def hook(conv, args):
            sides, kernel, stride = args[0].shape[-2:], conv.kernel_size, conv.stride
            if any(k > 1 and s > n for n, k, s in zip(sides, kernel, stride, strict=True)):
                found.append(name)

        return hook

    convs = [(n, m) for n, m in model.named_modules() if isinstance(m, nn.Conv2d)]
    hooks = [m.register_forward_pre_hook(check(n)) for n, m in convs]
    was_training = model.training
    try:
        model.eval()(torch.zeros(1, *shape, device=next(model.parameters()).device))
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)
    return found[0] if found else None


def set_cuda_math(precision, device: torch.device) -> None:
    """On a GPU: cuDNN benchmarks its convolution algorithms once per shape and keeps the fastest
    (a run's shapes are fixed); fp32 matmuls and convolutions (outside autocast) use TF32 — a
    10-bit mantissa on tensor cores — except under `trainer.precision=32`, which is IEEE fp32."""
    if device.type != "cuda":
        return
    torch.backends.cudnn.benchmark = True
    mode = "ieee" if str(precision) == "32" else "tf32"
    torch.backends.cuda.matmul.fp32_precision = mode
    torch.backends.cudnn.conv.fp32_precision = mode


@dataclass
class Arithmetic:
    """How steps compute: autocast dtype, fp16 loss scaling, test-time views at evaluation."""

    device: torch.device
    dtype: torch.dtype | None
    tta: bool | str = False  # trainer.tta: model_logits' views
    scaler: torch.amp.GradScaler = field(init=False)

    def __post_init__(self):
        # Loss scaling keeps small fp16 gradients from flushing to zero; bf16 has fp32's range.
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.scaled)

    @classmethod
    def for_trainer(cls, trainer, device: torch.device, hazard: str | None = None) -> "Arithmetic":
        """As `trainer.precision` and `trainer.tta` say, on `device` (set_cuda_math too);
        `hazard`: see autocast_dtype."""
        set_cuda_math(trainer.precision, device)
        return cls(device, autocast_dtype(trainer.precision, device, hazard), trainer.tta)

    @property
    def scaled(self) -> bool:
        """fp16: losses are scaled, and the optimizer must be a fused one, which skips a step
        whose gradients overflowed on the device (GradScaler otherwise reads a flag per step)."""
        return self.dtype == torch.float16

    def autocast(self):
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.dtype)
