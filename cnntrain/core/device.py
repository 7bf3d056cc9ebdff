"""The training device: `trainer.device` checked and chosen; does it compute bf16 natively?"""

import torch

from cnntrain.core.errors import UserError


def check_device(name: str) -> None:
    """Refuse a `trainer.device` this machine does not have (before any work)."""
    if not name.startswith("cuda"):
        return
    if not torch.cuda.is_available():
        raise UserError(f"trainer.device={name} but no CUDA GPU is available; use auto or cpu")
    index = int(name.partition(":")[2] or 0)
    if index >= torch.cuda.device_count():
        raise UserError(
            f"trainer.device={name} but this machine has {torch.cuda.device_count()} GPU(s) "
            f"(cuda:0 to cuda:{torch.cuda.device_count() - 1}); use one of those, auto or cpu"
        )


def select_device(name: str) -> torch.device:
    """The training device `trainer.device` names (`auto`: the GPU when there is one)."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    check_device(name)
    return torch.device(name)


def native_bf16(device: torch.device) -> bool:
    """Does the hardware compute bf16 natively (not by emulation in fp32)?"""
    if device.type == "cuda":
        with torch.cuda.device(device):  # the training GPU's, not the current one's
            return torch.cuda.is_bf16_supported(including_emulation=False)
    if device.type == "cpu":  # AVX512-BF16 or AMX tiles (Intel Cooper Lake, Sapphire Rapids+)
        cpu = torch.cpu
        return cpu._is_avx512_bf16_supported() or cpu._is_amx_tile_supported()
    return False
