"""Whether a run fits in its device's memory: an estimate of its bytes (parameters with their
gradients and optimizer state, one batch's activations) against what is free, before the model
is built, so a run too large is refused in one line rather than killed by the kernel mid-step."""

import logging
from dataclasses import dataclass, replace
from pathlib import Path

import torch
from torch import nn

from cnntrain.core.errors import UserError
from cnntrain.core.spec import InputSpec
from cnntrain.models.freeze import freeze
from cnntrain.models.registry import build_architecture
from cnntrain.models.transfer import architecture
from cnntrain.training.precision import autocast_dtype

log = logging.getLogger("cnntrain")
GIB = 2**30
# A training step's peak over the sum of its leaf modules' outputs: autograd keeps about every
# output for the backward pass (a convolution its input, BatchNorm its input, ReLU its output,
# max-pool its input and int64 indices), the backward pass adds the gradients of the layers it is
# in, oneDNN reorders copies, and functional ops (torch.relu) are no module. Measured on a CPU at
# batch 128, 96-160 px (a step's peak resident memory less what was there before it, weights and
# gradients): cifar10cnn 1.1 (float32) and 1.2 (bf16), simplecnn 1.5, resnet20 0.8-1.0.
BACKWARD = 1.5
# An evaluation batch's peak over its largest layer's input and output: more such tensors at once
# (oneDNN's reordered copy; a residual block's input kept for its sum). Measured at 128 px, batch
# 512, BatchNorm folded: cifar10cnn 1.5 (float32 and bf16), resnet20 2.0.
EVALUATION = 2.0
IMAGES = 2  # the shape-only forward's batch (meta device: no cost)
# Sides data.image_size is suggested from when a run does not fit (px, largest first).
SUGGESTED_SIDES = (384, 320, 256, 224, 192, 160, 128, 112, 96, 64, 48, 32)


@dataclass(frozen=True)
class Estimate:
    """Bytes a training run holds at its peak: parameters plus the larger of its activations."""

    parameters: int  # weights, plus gradients and optimizer state of the trainable ones
    training: int  # one training batch's activations, forward and backward
    evaluation: int  # one evaluation batch's (no gradients: a layer's input and output at once)

    @property
    def activations(self) -> int:
        return max(self.training, self.evaluation)

    @property
    def total(self) -> int:
        return self.parameters + self.activations


def estimate(model: nn.Module, shape: tuple[int, int, int], batch_size: int,
             eval_batch_size: int, states: int,
             dtype: torch.dtype = torch.float32) -> Estimate:  # fmt: skip
    """The bytes of training `model` (on any device, the meta one included: nothing is
    allocated) on batches of `batch_size` images of `shape` (C, H, W), with `states` more fp32
    tensors per trainable parameter than its gradient (optimizer_states, EMA) and activations
    in `dtype` (the autocast dtype), and of evaluating it on batches of `eval_batch_size`."""
    weights = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total, largest = activation_elements(model, shape)
    return Estimate(
        # fp32 weights twice (evaluation folds BatchNorm into a copy: models/fold.py), gradients
        parameters=4 * (2 * weights + trainable * (1 + states)),
        training=int(BACKWARD * total * dtype.itemsize * batch_size),
        evaluation=int(EVALUATION * largest * dtype.itemsize * eval_batch_size),
    )


@dataclass(frozen=True)
class Settings:
    """What a run's estimate takes from its config besides the model and the image shape."""

    batch_size: int  # training images per process and step
    eval_batch_size: int  # per process
    states: int  # fp32 tensors per trainable parameter besides its gradient
    dtype: torch.dtype  # of activations: the autocast dtype, else float32


def run_settings(cfg, data, device: torch.device, world) -> Settings:
    """A run's Settings: batches no larger than `data`'s splits (a DataBundle), split over
    `world.size` processes; the optimizer's state (optimizer_states) plus EMA's copy of the
    weights (trainer.ema)."""
    dtype = autocast_dtype(cfg.trainer.precision, device) or torch.float32
    evaluated = max(data.val.count, data.test.count)
    return Settings(
        batch_size=-(-min(cfg.data.batch_size, data.train.count) // world.size),
        eval_batch_size=-(-min(cfg.data.eval_batch_size, evaluated) // world.size),
        states=optimizer_states(cfg.optimizer) + (1 if cfg.trainer.get("ema") else 0),
        dtype=dtype,
    )


def check_fits(cfg, data, device: torch.device, world) -> None:
    """Refuse (UserError, one line) a run of `cfg` on `data` (a DataBundle) whose estimate
    exceeds the memory free on `device`, naming what would fit; log the estimate when it takes
    over half of it. Called after the data is loaded (the tensor path's decoded splits are
    already out of what is free) and before the model is built. `world`: this run's processes;
    on the CPU those on this machine share its memory."""
    free = free_bytes(device)
    if free is None:
        return
    sharing = world.local_size if device.type == "cpu" else 1
    spec, settings = data.spec, run_settings(cfg, data, device, world)
    try:
        need = run_estimate(cfg.model, spec, settings)
    except (NotImplementedError, RuntimeError) as e:  # an op with no meta kernel, or .item()
        log.info("no memory estimate: the model's forward does not run on shapes alone (%s)", e)
        return
    said = (
        f"model {architecture(cfg.model)} on {spec.height}×{spec.width} (H×W) images, batch "
        f"{cfg.data.batch_size}, needs about {need.total / GIB:.1f} GiB (parameters "
        f"{need.parameters / GIB:.1f} GiB, one batch's activations {need.activations / GIB:.1f} "
        f"GiB){f' in each of {sharing} processes' if sharing > 1 else ''}"
    )
    if need.total * sharing > free:
        remedy = remedies(cfg.model, spec, settings, free // sharing, world.size)
        raise UserError(f"{said} but {free / GIB:.1f} GiB is free on {device}; {remedy}")
    if need.total * sharing > free / 2:
        log.info("%s, of the %.1f GiB free on %s", said, free / GIB, device)


def run_estimate(model_cfg, spec: InputSpec, settings: Settings) -> Estimate:
    """estimate() of `model_cfg`'s network on `spec`'s images, built on the meta device (no
    weights read or allocated) and frozen as model.freeze says."""
    with torch.device("meta"):
        model = build_architecture(model_cfg, spec)
        freeze(model, model_cfg.get("freeze") or "none")
    shape = (spec.channels, spec.height, spec.width)
    s = settings
    return estimate(model, shape, s.batch_size, s.eval_batch_size, s.states, s.dtype)


def remedies(model_cfg, spec: InputSpec, settings: Settings, free: int, processes: int) -> str:
    """What would fit in `free` bytes: the largest of SUGGESTED_SIDES below the run's size, and
    the largest batch sizes (over all `processes`) at the run's size."""
    side = largest_side(model_cfg, spec, settings, free)
    ways = [f"set data.image_size (e.g. {side})"] if side else []
    one = run_estimate(model_cfg, spec, replace(settings, batch_size=1, eval_batch_size=1))
    left = free - one.parameters
    asked = {"batch_size": (one.training, settings.batch_size),
             "eval_batch_size": (one.evaluation, settings.eval_batch_size)}  # fmt: skip
    for key, (per_image, batch) in asked.items():
        if 0 < left // per_image < batch:
            ways.append(f"data.{key} ≤ {left // per_image * processes}")
    return ", or ".join(ways) if ways else "choose a smaller model"


def largest_side(model_cfg, spec: InputSpec, settings: Settings, free: int) -> int | None:
    """The largest of SUGGESTED_SIDES below the run's size at which it fits in `free` bytes."""
    for side in (s for s in SUGGESTED_SIDES if s < min(spec.height, spec.width)):
        try:
            need = run_estimate(model_cfg, replace(spec, height=side, width=side), settings)
        except (UserError, RuntimeError, NotImplementedError, ValueError):
            return None  # the model (or its forward on shapes alone) refuses images this small
        if need.total <= free:
            return side
    return None


@torch.no_grad()
def activation_elements(model: nn.Module, shape: tuple[int, int, int]) -> tuple[int, int]:
    """(sum, largest input + output): elements of one image's input and of every leaf module's
    output in a training-mode forward, run on the meta device (shapes only; its parameters are
    stood in for by meta tensors). In-place modules (ReLU(inplace=True)) write over their input
    and add nothing. The forward takes a batch of IMAGES (BatchNorm refuses one image in training
    mode where a layer's output is 1×1); the counts are per image."""
    counts = [shape[0] * shape[1] * shape[2]]
    pairs = [0]

    def count(module, args, out):
        if isinstance(out, torch.Tensor) and not getattr(module, "inplace", False):
            counts.append(out.numel() // IMAGES)
            inputs = sum(a.numel() for a in args if torch.is_tensor(a))
            pairs.append((out.numel() + inputs) // IMAGES)

    leaves = [m for m in model.modules() if not any(m.children())]
    hooks = [m.register_forward_hook(count) for m in leaves]
    tensors = {**dict(model.named_parameters()), **dict(model.named_buffers())}
    stand_ins = {name: torch.empty_like(t, device="meta") for name, t in tensors.items()}
    was_training = model.training
    try:
        model.train()
        x = torch.empty(IMAGES, *shape, device="meta")
        torch.func.functional_call(model, stand_ins, (x,))
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)
    return sum(counts), max(pairs)


def optimizer_states(optimizer_cfg) -> int:
    """fp32 tensors the optimizer keeps per trainable parameter: SGD a momentum buffer (none
    without momentum), Adam and AdamW (and, to be safe, any other) two moments."""
    name = str(optimizer_cfg.get("_target_", "")).rsplit(".", 1)[-1]
    if name == "SGD":
        return 1 if optimizer_cfg.get("momentum", 0) else 0
    return 2


def free_bytes(device: torch.device) -> int | None:
    """Bytes this process may still allocate on `device`; None where that cannot be read. A GPU:
    what the driver has free plus what PyTorch's cache holds unused. The CPU: MemAvailable, or
    less where a cgroup (a container's limit) leaves less."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return free + torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
    if device.type != "cpu":
        return None
    rooms = [r for r in (mem_available(), cgroup_room()) if r is not None]
    return min(rooms) if rooms else None


def mem_available() -> int | None:
    """/proc/meminfo's MemAvailable (bytes): what the kernel can give without swapping."""
    try:
        lines = Path("/proc/meminfo").read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        if line.startswith("MemAvailable:"):  # "MemAvailable:   24053460 kB"
            return int(line.split()[1]) * 1024
    return None


# (controllers field of /proc/self/cgroup, mount point under the root, limit file, usage file,
# memory.stat's key for the inactive file pages in the usage, hierarchical): v2, v1
CGROUP_FILES = (
    ("", "sys/fs/cgroup", "memory.max", "memory.current", "inactive_file"),
    ("memory", "sys/fs/cgroup/memory", "memory.limit_in_bytes", "memory.usage_in_bytes",
     "total_inactive_file"),
)  # fmt: skip


def cgroup_room(root: Path = Path("/")) -> int | None:
    """Bytes left under this process's cgroup memory limits (v2 or v1), the least over its
    cgroup and those above it; None where no limit is set or none can be read. `root`: where
    proc/ and sys/ are."""
    try:
        lines = (root / "proc/self/cgroup").read_text().splitlines()
    except OSError:
        return None
    rooms = []
    for line in lines:  # "0::/a/b" (v2) or "4:memory:/a/b" (v1)
        _, controllers, path = line.split(":", 2)
        for field, mount, *files in CGROUP_FILES:
            if controllers.split(",") == [field] or controllers == field:
                top = root / mount
                folder = top / path.lstrip("/")
                rooms += [room(d, *files) for d in (folder, *folder.parents)
                          if d.is_relative_to(top)]  # fmt: skip
    rooms = [r for r in rooms if r is not None]
    return min(rooms) if rooms else None


def room(folder: Path, limit: str, usage: str, inactive: str) -> int | None:
    """The cgroup `folder`'s limit less its working set in bytes: its usage less the inactive
    file pages (`inactive` of its memory.stat), a cache the kernel reclaims before it kills, as
    Docker and the kubelet count it. None without a limit ("max", or v1's huge number) or
    files."""
    try:
        cap, used = (folder / limit).read_text().strip(), int((folder / usage).read_text())
    except (OSError, ValueError):
        return None
    if cap == "max" or int(cap) >= 2**62:
        return None
    return int(cap) - max(0, used - stat_value(folder / "memory.stat", inactive))


def stat_value(stat: Path, key: str) -> int:
    """`key`'s value in the memory.stat file `stat` ("inactive_file 4096" lines); 0 where it
    cannot be read."""
    try:
        lines = stat.read_text().splitlines()
    except OSError:
        return 0
    values = dict(line.split(" ", 1) for line in lines if " " in line)
    return int(values.get(key, 0))
