"""FastNet: a network designed for time-to-accuracy on small images (the `cifar10_94` recipe).

Ideas from the public CIFAR-10 speed runs (e.g. KellerJordan/cifar10-airbench), arranged here:
a frozen 2×2 patch-whitening stem initialised from the training data, three conv groups that
pool early (most FLOPs run at low resolution), BatchNorm without learned scale, GELU, a global
max-pool and a bias-free linear head whose logits are scaled down so a high learning rate is safe.
"""

import torch
from torch import nn

from cnntrain.core.errors import UserError
from cnntrain.core.spec import InputSpec
from cnntrain.models.registry import register


def batch_norm(channels: int, momentum: float) -> nn.BatchNorm2d:
    # Only the shift is learned: a learned scale adds little after a conv and slows early steps.
    bn = nn.BatchNorm2d(channels, momentum=momentum, eps=1e-12)
    bn.weight.requires_grad_(False)
    return bn


class ConvGroup(nn.Module):
    """conv 3×3 → max-pool 2 → BN → GELU → conv 3×3 → BN → GELU; halves H and W."""

    def __init__(self, in_channels: int, out_channels: int, bn_momentum: float):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False)
        self.pool = nn.MaxPool2d(2)
        self.bn1 = batch_norm(out_channels, bn_momentum)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False)
        self.bn2 = batch_norm(out_channels, bn_momentum)
        self.act = nn.GELU()
        # Start as (partly) the identity: the first in_channels filters pass their input through,
        # so signal flows through the whole depth from the first step.
        for conv in (self.conv1, self.conv2):
            nn.init.dirac_(conv.weight.data[: conv.in_channels])

    def forward(self, x):
        x = self.act(self.bn1(self.pool(self.conv1(x))))
        return self.act(self.bn2(self.conv2(x)))


class WhiteningConv(nn.Conv2d):
    """The 2×2 stem. Its weight is frozen from the start (init_from_data sets it; not frozen there
    because a resumed run skips the data-dependent init, and its optimizer must see the same
    trainable parameters as the saved one). Its bias learns until `bias_frozen` (airbench freezes
    it after a few epochs), then is cut out of the graph: no gradient, so the optimizer skips it —
    not requires_grad, so the trainable set and the optimizer's groups never change."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__(in_channels, out_channels, kernel_size=2)
        self.weight.requires_grad_(False)
        self.bias_frozen = False

    def forward(self, x):
        bias = self.bias.detach() if self.bias_frozen else self.bias
        return self._conv_forward(x, self.weight, bias)


class FastNet(nn.Module):
    def __init__(self, in_channels, num_classes, widths, logit_scale, bn_momentum,
                 whiten_bias_epochs=None):  # fmt: skip
        super().__init__()
        # 2×2 patches of C channels span 4C dimensions; the stem keeps each whitened direction
        # and its negation so the GELU after it loses nothing: 8C output channels (24 for RGB).
        patch_dims = 4 * in_channels
        self.whiten = WhiteningConv(in_channels, 2 * patch_dims)  # H → H-1
        self.whiten_bias_epochs = whiten_bias_epochs  # then its bias is frozen (None: never)
        self.act = nn.GELU()
        groups, in_ch = [], 2 * patch_dims
        for width in widths:
            groups.append(ConvGroup(in_ch, width, bn_momentum))
            in_ch = width
        self.groups = nn.Sequential(*groups)
        self.pool = nn.AdaptiveMaxPool2d(1)
        self.head = nn.Linear(in_ch, num_classes, bias=False)
        self.logit_scale = logit_scale

    @torch.no_grad()
    def init_from_data(self, images: torch.Tensor, eps: float = 5e-4) -> None:
        """Set the (frozen) stem to whiten 2×2 patches of `images` (N, C, H, W, normalized)."""
        c = images.shape[1]
        patches = images.float().unfold(2, 2, 1).unfold(3, 2, 1)  # (N, C, H-1, W-1, 2, 2)
        patches = patches.permute(0, 2, 3, 1, 4, 5).reshape(-1, c * 4)  # rows laid out (C, 2, 2)
        patches = patches - patches.mean(0)
        cov = patches.T @ patches / len(patches)
        eigenvalues, eigenvectors = torch.linalg.eigh(cov)  # ascending, (4C,), (4C, 4C)
        # One filter per eigenvector, scaled to give unit variance: (4C, C, 2, 2) conv weights.
        filters = (eigenvectors.T / torch.sqrt(eigenvalues + eps)[:, None]).reshape(-1, c, 2, 2)
        self.whiten.weight.copy_(torch.cat([filters, -filters]).to(self.whiten.weight))

    def set_epoch(self, epoch: int) -> None:
        """Before training epoch `epoch` (from 1; callbacks.ModelEpoch calls it, also on resume)."""
        limit = self.whiten_bias_epochs
        self.whiten.bias_frozen = limit is not None and epoch > limit

    def forward(self, x):  # (N, C, H, W)
        x = self.act(self.whiten(x))  # (N, 8C, H-1, W-1)
        x = self.groups(x)  # (N, widths[-1], ~H/8, ~W/8)
        x = torch.flatten(self.pool(x), 1)
        return self.head(x) * self.logit_scale  # (N, classes)


def check_options(whiten_bias_epochs, **_) -> None:
    bad = whiten_bias_epochs is not None and (
        not isinstance(whiten_bias_epochs, int) or isinstance(whiten_bias_epochs, bool)
        or whiten_bias_epochs < 0
    )  # fmt: skip
    if bad:
        raise UserError(
            f"model.whiten_bias_epochs={whiten_bias_epochs!r} is not valid; use null (the bias "
            "always learns) or a number of epochs ≥ 0 after which it is frozen"
        )


@register("fastnet", check=check_options)
def fastnet(
    spec: InputSpec, widths=(64, 256, 256), logit_scale: float = 1 / 9, bn_momentum: float = 0.4,
    whiten_bias_epochs: int | None = None,
) -> nn.Module:  # fmt: skip
    return FastNet(spec.channels, spec.num_classes, tuple(widths), logit_scale, bn_momentum,
                   whiten_bias_epochs)  # fmt: skip
