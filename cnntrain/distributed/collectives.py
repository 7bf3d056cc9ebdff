"""Collectives over the ranks of a run, each a no-op for a single process; and the padding of
evaluation shards (masked, so every image counts once)."""

import torch
import torch.distributed as dist

from cnntrain.distributed.group import collective_device, world

IGNORED = -100  # target of the padding of an evaluation shard: cross_entropy's ignore_index


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
    filler = targets.new_full((padding, *targets.shape[1:]), IGNORED)  # (padding[, L])
    return torch.cat([targets[:-padding], filler])


def real_rows(targets: torch.Tensor) -> torch.Tensor:
    """(N,) bool: the rows of targets (N,) or (N, L) that are images, not mask_padding's."""
    return (targets if targets.ndim == 1 else targets[:, 0]) != IGNORED
