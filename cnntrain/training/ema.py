"""`trainer.ema`: an exponential moving average of the weights, which evaluation uses."""

import copy

import torch
from torch import nn


class EMA:
    """Exponential moving average of a model's weights and BatchNorm statistics.

    Not torch.optim.swa_utils.AveragedModel: that reads a device counter every step (a host
    sync) and has no warmup. Here the decay ramps as (1+n)/(10+n) up to `decay`, so the
    average is not dominated by the random initial weights in short runs.
    """

    def __init__(self, model: nn.Module, decay: float):
        self.module = copy.deepcopy(model).eval().requires_grad_(False)
        self.decay, self.updates = decay, 0
        pairs = list(
            zip(self.module.state_dict().values(), model.state_dict().values(), strict=True)
        )
        self.floats = [(e, m) for e, m in pairs if e.is_floating_point()]
        self.counters = [(e, m) for e, m in pairs if not e.is_floating_point()]  # BN batch counts

    @torch.no_grad()
    def update(self, skipped: torch.Tensor | None = None) -> None:
        """Move towards the model's weights; `skipped` (0-dim, on the device): 1 when the
        optimizer skipped this step (fp16 overflow), which then moves nothing, with no sync."""
        self.updates += 1
        decay = min(self.decay, (1 + self.updates) / (10 + self.updates))
        ema, current = zip(*self.floats, strict=True)
        weight = 1 - decay if skipped is None else (1 - skipped) * (1 - decay)
        torch._foreach_lerp_(list(ema), list(current), weight)
        for e, m in self.counters:
            e.copy_(m)

    def state_dict(self) -> dict:
        return {"weights": self.module.state_dict(), "updates": self.updates}

    def load_state_dict(self, state: dict) -> None:
        self.module.load_state_dict(state["weights"])
        self.updates = state["updates"]
