"""BatchNorm over the global batch of all ranks: torch's SyncBatchNorm on GPUs, and
GlooSyncBatchNorm (one autograd Function, one all-reduce each way per layer and step) on CPUs."""

import torch
import torch.distributed as dist
from torch import nn

from cnntrain.distributed.collectives import sum_over_ranks
from cnntrain.distributed.group import world


def use_sync_bn(setting) -> bool:
    """`trainer.sync_bn`: auto is on with several processes; one process has nothing to sync."""
    return world().size > 1 and (setting is True or setting == "auto")


def per_channel(t: torch.Tensor) -> torch.Tensor:
    """(C,) sums of a batch (N, C, …) over all but its channels."""
    return t.sum([0, *range(2, t.dim())])


class SyncBatchNormFunction(torch.autograd.Function):
    """BatchNorm over every rank's part of the batch, with torch's SyncBatchNorm's gradients.
    The forward all-reduces each rank's sums of x - K and (x - K)² and its count, K ≈ the mean
    (the running mean, a constant) so that E[(x - K)²] - E[x - K]² does not cancel; the backward
    all-reduces the sums of the gradient and of gradient · x̂, through which every rank's loss
    reaches every rank's input. One all-reduce each way per layer and step, in float64."""

    @staticmethod
    def forward(ctx, x, weight, bias, shift, eps):
        shape = (1, -1, *[1] * (x.dim() - 2))  # (1, C, 1, 1) for images
        c = x.shape[1]
        shifted = x - shift.view(shape)
        local = torch.cat([per_channel(shifted), per_channel(shifted.square())])
        sums = sum_over_ranks(torch.cat([local.double(), local.new_tensor([x.numel() // c])]))
        n = sums[-1]
        offset = sums[:c] / n  # mean - shift
        var = (sums[c:-1] / n - offset.square()).clamp_min(0)  # biased, to normalize
        invstd = torch.rsqrt(var.float() + eps)
        scale = invstd * weight if weight is not None else invstd
        start = -offset.float() * scale + (bias if bias is not None else 0)
        ctx.save_for_backward(shifted, offset.float(), invstd, weight)
        ctx.count = n
        mean = offset.float() + shift
        unbiased = (var * n / (n - 1)).float()
        ctx.mark_non_differentiable(mean, unbiased)
        return torch.addcmul(start.view(shape), shifted, scale.view(shape)), mean, unbiased

    @staticmethod
    def backward(ctx, grad, _mean, _var):
        shifted, offset, invstd, weight = ctx.saved_tensors
        shape = (1, -1, *[1] * (grad.dim() - 2))
        c = grad.shape[1]
        normalized = (shifted - offset.view(shape)) * invstd.view(shape)  # x̂
        local = torch.cat([per_channel(grad), per_channel(grad * normalized)])  # (2C,)
        total = sum_over_ranks(local.double()).float() / ctx.count
        scale = (invstd * weight if weight is not None else invstd).view(shape)
        mean_grad, mean_grad_normalized = total[:c].view(shape), total[c:].view(shape)
        grad_x = (grad - mean_grad - normalized * mean_grad_normalized) * scale
        if weight is None:
            return grad_x, None, None, None, None
        return grad_x, local[c:], local[:c], None, None  # this rank's: DDP averages them


class GlooSyncBatchNorm(nn.modules.batchnorm._BatchNorm):
    """SyncBatchNorm for CPU tensors (torch's, and DistributedDataParallel with it, refuse them):
    in training the batch mean and variance are every rank's (SyncBatchNormFunction), so
    gradients flow back through them to every rank as with torch's; evaluation uses the running
    statistics, as BatchNorm does."""

    @classmethod
    def replacing(cls, bn: nn.modules.batchnorm._BatchNorm) -> "GlooSyncBatchNorm":
        """A layer holding `bn`'s very parameters and statistics (a frozen one stays frozen)."""
        layer = cls(bn.num_features, bn.eps, bn.momentum, bn.affine, bn.track_running_stats)
        if bn.affine:
            layer.weight, layer.bias = bn.weight, bn.bias
        if bn.track_running_stats:
            layer.running_mean, layer.running_var = bn.running_mean, bn.running_var
            layer.num_batches_tracked = bn.num_batches_tracked
        return layer.train(bn.training)

    def _check_input_dim(self, x: torch.Tensor) -> None:
        if x.dim() < 2:
            raise ValueError(f"expected a batch of at least 2 dimensions, got {x.dim()}")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and dist.is_initialized()):
            return super().forward(x)
        tracked = self.track_running_stats
        shift = self.running_mean.detach().clone() if tracked else x.new_zeros(x.shape[1])
        # fp32 statistics under autocast too, as BatchNorm's
        y, mean, unbiased_var = SyncBatchNormFunction.apply(
            x.float(), self.weight, self.bias, shift.float(), self.eps
        )
        if tracked:
            self.update_running_stats(mean, unbiased_var)
        return y.to(x.dtype)

    @torch.no_grad()
    def update_running_stats(self, mean: torch.Tensor, unbiased_var: torch.Tensor) -> None:
        self.num_batches_tracked += 1
        factor = self.momentum if self.momentum is not None else 1 / self.num_batches_tracked
        self.running_mean.lerp_(mean, factor)
        self.running_var.lerp_(unbiased_var, factor)


def sync_batchnorm(model: nn.Module, device: torch.device) -> nn.Module:
    """`model` with its BatchNorm layers normalizing over the global batch (all ranks' parts):
    torch's SyncBatchNorm on GPUs, GlooSyncBatchNorm on CPUs. The state dict keeps BatchNorm's
    keys: checkpoints load into the plain model."""
    if device.type == "cuda":
        return nn.SyncBatchNorm.convert_sync_batchnorm(model)
    for name, child in model.named_children():
        if isinstance(child, nn.modules.batchnorm._BatchNorm):
            setattr(model, name, GlooSyncBatchNorm.replacing(child))
        else:
            sync_batchnorm(child, device)
    return model
