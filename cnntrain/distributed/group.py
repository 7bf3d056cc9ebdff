"""The processes of one run: the world (ranks, this one's place), the checks before any work, this
rank's device and its process group."""

import datetime
import functools
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from cnntrain.core.errors import UserError

# The longest a rank waits in a collective for the others, e.g. while rank 0 alone writes a
# checkpoint, the plots and the report; then the collective fails instead of hanging forever.
TIMEOUT = datetime.timedelta(minutes=30)


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


# --- the model -----------------------------------------------------------------------------------


# --- failures ------------------------------------------------------------------------------------


# --- `cnntrain trainer.devices=N` ----------------------------------------------------------------
