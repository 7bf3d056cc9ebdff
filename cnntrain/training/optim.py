"""Optimizers and learning-rate schedules, both built from config as Hydra `_target_` + `_partial_`.

Every schedule is stepped once per optimizer step, so StepLR's `step_size` epochs become
`step_size × steps_per_epoch` steps (the article's per-epoch StepLR, the same lr per epoch), and
cosine and one-cycle change smoothly every step. A schedule that runs to an end (cosine,
one-cycle) is planned over the whole run; when a resumed run is given another length, `resize`
makes the plan for the new length and the run follows it from where it is (timm's rule): one
change of rate at the resume point, said in the log, then a decay to the end value at the new
last step — a finished run given more epochs trains them. A warm-up longer than half the run is
cut to half of it, said in the log.
"""

import inspect
import logging

from hydra.utils import get_class
from omegaconf import OmegaConf
from torch import nn
from torch.optim import Optimizer

from cnntrain.core.errors import UserError
from cnntrain.models.head import head_parameter_names

log = logging.getLogger(__name__)
# BatchNorm*, SyncBatchNorm and InstanceNorm* all derive from _NormBase (no public base class).
NORM_LAYERS = (nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm)


def build_optimizer(optimizer_cfg, model: nn.Module, fused: bool = False) -> Optimizer:
    """The optimizer `optimizer_cfg` names, over the trainable parameters (frozen ones stay out:
    no update, no weight decay).

    With `norm_lr_scale` ≠ 1, normalization layers' parameters form a second group at
    `lr × norm_lr_scale` and `weight_decay / norm_lr_scale` (the same shrinkage per step): with a
    frozen BN scale (FastNet) the shifts must move fast, as in the public CIFAR-10 speed runs.
    With `head_lr_scale` ≠ 1, the classification head (models/head.py) forms the last group at
    `lr × head_lr_scale`, weight decay unchanged: a new head on a pretrained body learns faster.
    Group 0 always holds the rest (it may be empty, as with model.freeze=backbone).
    `fused`: the fused implementation, where the class has one (fp16 needs it: precision.py).
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
    optimizer_class = target_class(options, "optimizer")
    if fused and "fused" in inspect.signature(optimizer_class).parameters:
        options["fused"] = True
    return built("optimizer", optimizer_class, groups, **options)


def build_scheduler(scheduler_cfg, optimizer: Optimizer, epochs: int, steps_per_epoch: int):
    """The schedule `scheduler_cfg` names (its `_target_`), planned over `epochs` epochs."""
    options = OmegaConf.to_container(scheduler_cfg)
    options.pop("name", None)  # the option's name, for people and sweep tables
    schedule_class = target_class(options, "scheduler")
    steps = {"total_steps": epochs * steps_per_epoch, "steps_per_epoch": steps_per_epoch}
    return built("scheduler", schedule_class, optimizer, **steps, **options)


def target_class(options: dict, group: str) -> type:
    """The class `options["_target_"]` names (taken out of `options`, with `_partial_`). Built
    here with plain values rather than by Hydra's `instantiate`, which would also build any
    `{_target_: …}` nested in a value: a config from a file someone else made must not run code
    (core/schema.py checks such a config before it gets here)."""
    options.pop("_partial_", None)
    try:
        return get_class(options.pop("_target_"))
    except Exception as e:  # Hydra raises ImportError or ValueError, with the module's reason
        raise UserError(f"{group}._target_ cannot be imported: {e}") from e


def built(group: str, cls: type, *args, **options):
    """`cls(*args, **options)`; options it does not take are a UserError naming them."""
    try:
        return cls(*args, **options)
    except TypeError as e:
        raise UserError(f"{group}: {cls.__module__}.{cls.__name__} {e}") from e


def check_scheduler_name(scheduler_cfg) -> None:
    """`scheduler.name` must be the name of the class `scheduler._target_` builds."""
    built = getattr(get_class(scheduler_cfg._target_), "name", None)
    if scheduler_cfg.get("name", built) != built:
        raise UserError(
            f"scheduler.name={scheduler_cfg.name!r} does not match scheduler._target_ "
            f"({scheduler_cfg._target_}, a {built!r} schedule); choose one with scheduler=OPTION"
        )
