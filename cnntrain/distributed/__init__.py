"""Training as several processes (torchrun): the world, its process group, one run for all ranks.
The package's face: its modules' public names, so callers write `distributed.barrier()`.

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

from cnntrain.distributed.collectives import (
    IGNORED,
    barrier,
    from_main,
    gather_in_order,
    mask_padding,
    max_over_ranks,
    real_rows,
    share_from_main,
    sum_over_ranks,
)
from cnntrain.distributed.group import (
    SINGLE,
    World,
    backend,
    check_batch_size,
    check_devices,
    launched,
    local_device,
    rank_prefix,
    start,
    stop,
    world,
)
from cnntrain.distributed.launch import is_peer_failure, launch, peer_failure_line
from cnntrain.distributed.parallel import parallel, unwrap
from cnntrain.distributed.sync_batchnorm import GlooSyncBatchNorm, sync_batchnorm, use_sync_bn

__all__ = [
    "IGNORED", "SINGLE", "GlooSyncBatchNorm", "World", "backend", "barrier", "check_batch_size",
    "check_devices", "from_main", "gather_in_order", "is_peer_failure", "launch", "launched",
    "local_device", "mask_padding", "max_over_ranks", "parallel", "peer_failure_line",
    "rank_prefix", "real_rows", "share_from_main", "start", "stop", "sum_over_ranks",
    "sync_batchnorm", "unwrap", "use_sync_bn", "world",
]  # fmt: skip
