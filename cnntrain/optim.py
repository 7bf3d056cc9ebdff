"""Optimizer (Hydra `_target_` + `_partial_`) and a learning-rate schedule stepped every batch.

Every schedule is expressed in optimizer steps, so one `scheduler.step()` per batch is right for
all of them: StepLR's `step_size` epochs become `step_size × steps_per_epoch` steps (the same
lr per epoch as the article's per-epoch StepLR), cosine and one-cycle change smoothly every step.
"""

from hydra.utils import instantiate
from omegaconf import OmegaConf
from torch import nn
from torch.optim import Optimizer, lr_scheduler

from cnntrain.errors import UserError
from cnntrain.models.head import head_parameter_names

SCHEDULERS = ("none", "step", "cosine", "onecycle")
# BatchNorm*, SyncBatchNorm and InstanceNorm* all derive from _NormBase (no public base class).
NORM_LAYERS = (nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm)


def build_optimizer(optimizer_cfg, model: nn.Module) -> Optimizer:
    """The optimizer `optimizer_cfg` names, over the trainable parameters (frozen ones stay out:
    no update, no weight decay).

    With `norm_lr_scale` ≠ 1, normalization layers' parameters form a second group at
    `lr × norm_lr_scale` and `weight_decay / norm_lr_scale` (the same shrinkage per step): with a
    frozen BN scale (FastNet) the shifts must move fast, as in the public CIFAR-10 speed runs.
    With `head_lr_scale` ≠ 1, the classification head (models/head.py) forms the last group at
    `lr × head_lr_scale`, weight decay unchanged: a new head on a pretrained body learns faster.
    Group 0 always holds the rest (it may be empty, as with model.freeze=backbone).
    """
    options = OmegaConf.to_container(optimizer_cfg)
    norm_scale = options.pop("norm_lr_scale", 1.0)
    head_scale = options.pop("head_lr_scale", 1.0)
    lr, decay = options["lr"], options.get("weight_decay", 0.0)
    trainable = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    head = head_parameter_names(model) if head_scale != 1.0 else set()
    norm = set()
    if norm_scale != 1.0:
        norm = {
            id(p) for m in model.modules() if isinstance(m, NORM_LAYERS) for p in m.parameters()
        }
    groups = [{"params": [p for n, p in trainable if n not in head and id(p) not in norm]}]
    if norm_scale != 1.0:
        in_norm = [p for n, p in trainable if n not in head and id(p) in norm]
        groups.append(
            {"params": in_norm, "lr": lr * norm_scale, "weight_decay": decay / norm_scale}
        )
    if head_scale != 1.0:
        groups.append({"params": [p for n, p in trainable if n in head], "lr": lr * head_scale})
    # _convert_="all": plain lists (betas) in param_groups, so checkpoints load weights_only.
    return instantiate(options, _convert_="all")(groups)


def build_scheduler(cfg, optimizer: Optimizer, epochs: int, steps_per_epoch: int):
    total = epochs * steps_per_epoch
    if cfg.name == "onecycle":  # warms up by itself
        return lr_scheduler.OneCycleLR(
            optimizer,
            max_lr=[g["lr"] for g in optimizer.param_groups],
            total_steps=total,
            pct_start=cfg.pct_start,
            div_factor=cfg.div_factor,
            final_div_factor=cfg.final_div_factor,
            anneal_strategy=cfg.anneal_strategy,
            cycle_momentum=False,  # momentum stays what optimizer.momentum says
        )
    warmup = min(total - 1, round(cfg.warmup_epochs * steps_per_epoch))
    main = main_schedule(cfg, optimizer, total - warmup, steps_per_epoch)
    if warmup <= 0:
        return main
    ramp = lr_scheduler.LinearLR(optimizer, start_factor=1 / warmup, total_iters=warmup)
    return lr_scheduler.SequentialLR(optimizer, [ramp, main], milestones=[warmup])


def main_schedule(cfg, optimizer, steps: int, steps_per_epoch: int):
    if cfg.name == "none":
        return lr_scheduler.LambdaLR(optimizer, lambda _: 1.0)
    if cfg.name == "step":
        return lr_scheduler.StepLR(optimizer, cfg.step_size * steps_per_epoch, gamma=cfg.gamma)
    if cfg.name == "cosine":
        return lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(1, steps), eta_min=cfg.min_lr)
    raise UserError(f"scheduler.name={cfg.name!r} is unknown; use one of: {', '.join(SCHEDULERS)}")
