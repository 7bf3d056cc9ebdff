"""torch.compile for a run: the mode `trainer.compile` names, a fresh Dynamo cache per job, and a
warm-up that compiles every graph before epoch 1 so compile time is reported apart from training.

Without the warm-up the first training step, the first evaluation and the ragged last
evaluation batch each compile inside a timed epoch: `epoch_time_s`, `train/images_per_s` and
time-to-accuracy would include minutes of compiling on a GPU.
"""

import logging
import time

import torch
from torch import nn

from cnntrain.models.freeze import train_mode
from cnntrain.training.evaluate import model_logits
from cnntrain.training.step import StepParts

log = logging.getLogger("cnntrain")


def compile_mode(setting) -> str | None:
    """torch.compile's mode for `trainer.compile` (true = "default"); None: not compiled."""
    if setting is True:
        return "default"
    if setting is False or setting is None:
        return None
    return str(setting)


def compiled(model: nn.Module, setting) -> nn.Module:
    """`model` compiled as `trainer.compile` says, or `model` itself."""
    mode = compile_mode(setting)
    if mode is None:
        return model
    torch._dynamo.reset()  # a sweep's earlier jobs leave their graphs and guards behind
    return torch.compile(model, mode=mode)


def eval_batch_sizes(count: int, batch: int, ranks: int) -> set[int]:
    """The per-process batch sizes evaluating `count` images in global batches of `batch` gives:
    the full one and the ragged last one (each global batch is split over `ranks`, padded)."""
    return {-(-min(batch, count - lo) // ranks) for lo in range(0, count, batch)}


def warm_up(parts: StepParts, eval_model: nn.Module, data, cfg, ranks: int) -> float:
    """Compile what the run will execute — a training step at the per-process batch, and
    `eval_model`'s evaluation forward (with its test-time views) at every evaluation batch
    size — on real unaugmented images, then put back the weights, BatchNorm statistics,
    gradients and RNG states as they were. Returns the seconds taken (nearly all compiling)."""
    model, a = parts.model, parts.arithmetic
    began = time.perf_counter()
    saved = {k: v.clone() for k, v in model.state_dict().items()}
    devices = [a.device] if a.device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        batch = min(cfg.data.batch_size // ranks, data.train.count)
        x = data.train.prep(data.train.images_at(range(batch)))
        train_mode(model)  # as train_one_epoch: frozen BatchNorm layers stay in eval mode
        with a.autocast():
            model(x).float().sum().backward()
        eval_model.eval()
        with torch.no_grad(), a.autocast():
            for split in (data.val, data.test):
                for size in eval_batch_sizes(split.count, cfg.data.eval_batch_size, ranks):
                    model_logits(eval_model, split.prep(split.images_at(range(size))), a.tta)
    parts.optimizer.zero_grad(set_to_none=True)
    model.load_state_dict(saved)
    if a.device.type == "cuda":
        torch.cuda.synchronize(a.device)
    seconds = time.perf_counter() - began
    log.info("torch.compile (mode %s): %.1f s compiling before epoch 1 (not in epoch times; "
             "results.json compile_s)", compile_mode(cfg.trainer.compile), seconds)  # fmt: skip
    return seconds
