"""Training as several processes (torchrun): the world, its process group, one run for all ranks.

torchrun — or `cnntrain trainer.devices=N`, which starts the same thing through torch's elastic
launcher — runs one process per GPU (or per share of the CPU cores). They act as one run:

- rank 0 picks the run folder and sends it to the others before any of them writes (cli/train.py);
  only rank 0 writes files, tracks and prints; the others log warnings and errors, marked
  `[rank N]`;
- `data.batch_size` is the global batch at any world size W: every global batch of the epoch's
  order is cut into W contiguous parts, one per rank (`World.shard`), so no image is drawn twice
  and an image's augmentation (a function of seed, epoch and image index) does not depend on W;
- DistributedDataParallel averages the gradients; `trainer.sync_bn` normalizes with the global
  batch's statistics; evaluation shards are padded to one length, the padding masked, the totals
  summed over ranks and the logits gathered on rank 0;
- a stop (SIGINT/SIGTERM) is agreed at the loop's host syncs, so every rank stops at one step.
"""

import datetime
import functools
import logging
import os
import re
import signal
import sys
import uuid
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from cnntrain.core.errors import UserError

# The longest a rank waits in a collective for the others, e.g. while rank 0 alone writes a
# checkpoint, the plots and the report; then the collective fails instead of hanging forever.
TIMEOUT = datetime.timedelta(minutes=30)
IGNORED = -100  # target of the padding of an evaluation shard: cross_entropy's ignore_index
EXITS_EXPLAINED = (2, 130, 143)  # exit statuses of a rank that printed why (error, SIGINT, SIGTERM)


@dataclass(frozen=True)
class World:
    """The processes of one run: `size` ranks; this one is `rank`, `local_rank` of the
    `local_size` on its machine."""

    size: int = 1
    rank: int = 0
    local_rank: int = 0
    local_size: int = 1

    @property
    def is_main(self) -> bool:
        """Rank 0: the one that writes the run folder, tracks and prints."""
        return self.rank == 0

    def part(self, lo: int, hi: int) -> tuple[int, int]:
        """[start, stop) of this rank in [lo, hi): W contiguous parts in rank order whose sizes
        differ by at most one (all equal when W divides hi - lo)."""
        base, extra = divmod(hi - lo, self.size)
        start = lo + self.rank * base + min(self.rank, extra)
        return start, start + base + (self.rank < extra)

    def padding(self, lo: int, hi: int) -> int:
        """Images that make this rank's part of [lo, hi) as long as the longest."""
        start, stop = self.part(lo, hi)
        return -(-(hi - lo) // self.size) - (stop - start)

    def shard(self, order: torch.Tensor, lo: int, hi: int, pad: bool) -> tuple[torch.Tensor, int]:
        """This rank's entries of the global batch order[lo:hi], and how many are padding.

        With `pad` (evaluation) every part is made as long as the longest by repeating the
        batch's first entry, so all ranks run batches of one size; the caller masks the padding
        (`mask_padding`). Training parts are never padded: no image counts twice."""
        start, stop = self.part(lo, hi)
        padding = self.padding(lo, hi) if pad else 0
        part = order[start:stop]
        if padding:
            part = torch.cat([part, order[lo : lo + 1].expand(padding)])
        return part, padding


SINGLE = World()


@functools.cache
def world() -> World:
    """This process's place in the job, from torchrun's environment; one process without it."""
    env = os.environ
    return World(
        size=int(env.get("WORLD_SIZE", 1)),
        rank=int(env.get("RANK", 0)),
        local_rank=int(env.get("LOCAL_RANK", 0)),
        local_size=int(env.get("LOCAL_WORLD_SIZE", 1)),
    )


def launched() -> bool:
    """Started by torchrun or the elastic launcher (its agent names the run in the environment)."""
    return "TORCHELASTIC_RUN_ID" in os.environ


def rank_prefix() -> str:
    """`[rank N] ` on ranks other than 0 (whose lines are the run's own): for their messages."""
    w = world()
    return "" if w.is_main else f"[rank {w.rank}] "


# --- checks, before any work ---------------------------------------------------------------------


def check_devices(devices: int) -> None:
    """`trainer.devices` against how this process was started."""
    w = world()
    if launched() and devices not in (1, w.local_size):
        raise UserError(
            f"trainer.devices={devices} but torchrun started {w.local_size} process(es) on this "
            "machine (--nproc_per_node); under torchrun leave trainer.devices out"
        )
    if not launched() and devices > 1:
        raise UserError(
            f"trainer.devices={devices} starts {devices} processes from the cnntrain command, "
            "which a sweep (-m) or a call from Python cannot; run `cnntrain trainer.devices="
            f"{devices} …` alone, or torchrun"
        )


def check_batch_size(batch_size: int, size: int) -> None:
    """`data.batch_size` is the global batch: each of the `size` ranks takes an equal part."""
    if batch_size % size:
        raise UserError(
            f"data.batch_size={batch_size} is the global batch and must split evenly over the "
            f"{size} processes; use a multiple of {size} (e.g. {size * max(1, batch_size // size)})"
        )


def local_device(device: torch.device) -> torch.device:
    """The device this rank trains on: its own GPU, cuda:LOCAL_RANK, when training on GPUs."""
    w = world()
    if w.size == 1 or device.type != "cuda":
        return device
    if device.index not in (None, w.local_rank):
        raise UserError(
            f"trainer.device={device} would put every process on one GPU; with several "
            "processes use trainer.device=cuda or auto (each process takes cuda:LOCAL_RANK)"
        )
    if w.local_size > torch.cuda.device_count():
        raise UserError(
            f"{w.local_size} processes on this machine but it has {torch.cuda.device_count()} "
            "GPU(s); start one process per GPU (--nproc_per_node / trainer.devices)"
        )
    return torch.device("cuda", w.local_rank)


# --- the process group ---------------------------------------------------------------------------


def start(device: torch.device) -> None:
    """Join the job's process group once (NCCL between GPUs, Gloo on CPUs); put this process on
    its GPU, or on its share of the CPU cores."""
    w = world()
    if w.size == 1 or dist.is_initialized():
        return
    device = local_device(device)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    # torchrun sets OMP_NUM_THREADS=1; with W processes on one machine each gets cores / W.
    torch.set_num_threads(max(1, len(os.sched_getaffinity(0)) // w.local_size))
    if device.type == "cuda":  # bound to its GPU from the start (NCCL's communicator on it)
        dist.init_process_group("nccl", timeout=TIMEOUT, device_id=device)
    else:
        dist.init_process_group("gloo", timeout=TIMEOUT)


def stop() -> None:
    """Leave the process group (after the last collective: every rank is done)."""
    if dist.is_initialized():
        dist.destroy_process_group()


def backend() -> str | None:
    """The process group's backend, nccl or gloo; None for a single process."""
    return dist.get_backend() if dist.is_initialized() else None


def collective_device() -> torch.device:
    """Where the tensors of small collectives live: NCCL reduces GPU tensors only."""
    if backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


# --- collectives: each a no-op for a single process ---------------------------------------------


def from_main(value):
    """Rank 0's `value` (any picklable object), on every rank."""
    if not dist.is_initialized():
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def sum_over_ranks(tensor: torch.Tensor) -> torch.Tensor:
    """`tensor` summed over ranks, in place; returned."""
    if dist.is_initialized():
        dist.all_reduce(tensor)
    return tensor


def max_over_ranks(value: int) -> int:
    """The largest `value` of any rank."""
    if not dist.is_initialized():
        return value
    t = torch.tensor([value], dtype=torch.int64, device=collective_device())
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return int(t.item())


def share_from_main(tensors) -> None:
    """Copy rank 0's values into these tensors on every rank (weights, BatchNorm statistics)."""
    if dist.is_initialized():
        for t in tensors:
            dist.broadcast(t, src=0)


def barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def gather_in_order(parts: list[torch.Tensor]) -> torch.Tensor | None:
    """This rank's per-batch parts (of one length on every rank, as `World.shard` pads them),
    gathered on rank 0 in the split's order: batch by batch, rank by rank. None on the others;
    the parts concatenated for a single process."""
    local = torch.cat(parts)
    if not dist.is_initialized():
        return local
    w = world()
    gathered = [torch.empty_like(local) for _ in range(w.size)] if w.is_main else None
    dist.gather(local, gathered, dst=0)
    if not w.is_main:
        return None
    sizes = [len(p) for p in parts]
    per_rank = [g.split(sizes) for g in gathered]
    return torch.cat([per_rank[r][b] for b in range(len(sizes)) for r in range(w.size)])


def mask_padding(targets: torch.Tensor, padding: int) -> torch.Tensor:
    """Targets of a shard whose last `padding` images are padding: those become IGNORED."""
    if not padding:
        return targets
    return torch.cat([targets[:-padding], targets.new_full((padding,), IGNORED)])


# --- the model -----------------------------------------------------------------------------------


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


# --- failures ------------------------------------------------------------------------------------


def is_peer_failure(error: BaseException) -> bool:
    """Did a collective fail because another process of the job ended (or stopped answering)?"""
    if isinstance(error, dist.DistError):
        return True
    text = str(error)
    return isinstance(error, RuntimeError) and ("/gloo/" in text or "NCCL" in text)


def peer_failure_line(error: BaseException) -> str:
    """One line for `is_peer_failure`: this rank stops because another one did."""
    reason = re.sub(r"^\[[^\]]*\]\s*", "", str(error).splitlines()[0]).split(". ")[0]
    return f"another process of this job ended or stopped answering ({reason}): this one stops too"


# --- `cnntrain trainer.devices=N` ----------------------------------------------------------------


def launch(devices: int, args: list[str]) -> None:
    """Run `cnntrain args` as `devices` processes on this machine through torch's elastic
    launcher, as `torchrun --standalone --nproc_per_node=N` does (rendezvous on 127.0.0.1);
    exit as the job ended: 0, the status of a rank that said why, or one line naming the rank
    that failed."""
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    # The agent's own log lines (workers starting, signals, failures): the line below says it.
    logging.getLogger("torch.distributed.elastic").setLevel(logging.CRITICAL)
    config = LaunchConfig(
        min_nodes=1,
        max_nodes=1,
        nproc_per_node=devices,
        run_id=str(uuid.uuid4()),
        rdzv_backend="c10d",
        rdzv_endpoint="127.0.0.1:0",  # a free port
        max_restarts=0,
        local_addr="127.0.0.1",
    )
    try:
        elastic_launch(config, sys.executable)("-m", "cnntrain", *args)
    except SignalException as e:  # the launcher got SIGINT/SIGTERM and stopped the ranks with it
        raise SystemExit(128 + e.sigval) from None
    except ChildFailedError as e:
        rank, failure = e.get_first_failure()
        if failure.exitcode in EXITS_EXPLAINED:
            raise SystemExit(failure.exitcode) from None
        how = (
            f"was killed by {signal.Signals(-failure.exitcode).name}"
            if failure.exitcode < 0
            else f"exited with status {failure.exitcode}"
        )
        print(
            f"cnntrain: error: the process of rank {rank} (pid {failure.pid}) {how}; "
            f"the job's other processes were stopped",
            file=sys.stderr,
            flush=True,
        )
        raise SystemExit(1) from None
