"""model.freeze: which parameters train, and a train mode that keeps frozen BatchNorm fixed."""

from torch import nn

from cnntrain.core.errors import UserError
from cnntrain.models.head import head_parameter_names

# BatchNorm*, SyncBatchNorm and InstanceNorm* all derive from _NormBase (no public base class):
# the layers whose train mode updates running statistics.
STATISTICS_LAYERS = nn.modules.batchnorm._NormBase


def freeze(model: nn.Module, choice) -> list[str]:
    """Stop the gradients of the parameters `choice` names; return their names.

    choice: `none` (a model's own fixed parameters, like FastNet's whitening stem, stay fixed),
    `backbone` (every parameter but the classification head's, see head.py), or a list of
    module-name prefixes: `layer1` covers `layer1.0.conv1.weight` but not `layer10.…`.
    Frozen parameters get no gradient, so build_optimizer leaves them out (no update, no decay).
    """
    if isinstance(choice, str) and choice not in ("none", "backbone"):
        raise UserError(
            f"model.freeze={choice!r} is not valid; use none, backbone or a list of module names"
        )
    if choice == "none":
        return []
    params = dict(model.named_parameters())
    if choice == "backbone":
        head = head_parameter_names(model)
        chosen = [name for name in params if name not in head]
    else:
        chosen = [name for prefix in choice for name in under_prefix(model, params, str(prefix))]
    for name in chosen:
        params[name].requires_grad_(False)
    if not any(p.requires_grad for p in params.values()):
        raise UserError(f"model.freeze={list(choice)} leaves no parameter to train")
    return chosen


def under_prefix(model: nn.Module, params: dict, prefix: str) -> list[str]:
    """The parameter names under module `prefix`; a UserError naming it when there are none."""
    names = [name for name in params if name == prefix or name.startswith(prefix + ".")]
    if not names:
        top = [name for name, module in model.named_children() if has_parameters(module)]
        raise UserError(
            f"model.freeze: {prefix!r} names no module with parameters; "
            f"the model's top-level modules are: {', '.join(top)}"
        )
    return names


def has_parameters(module: nn.Module) -> bool:
    return next(module.parameters(), None) is not None


def frozen_statistics_layers(model: nn.Module) -> list[nn.Module]:
    """BatchNorm-like layers with parameters, all frozen (a FastNet BN, shift trained, is not)."""
    return [
        m
        for m in model.modules()
        if isinstance(m, STATISTICS_LAYERS)
        and has_parameters(m)
        and not any(p.requires_grad for p in m.parameters())
    ]


def train_mode(model: nn.Module) -> nn.Module:
    """`model.train()`, but frozen BatchNorm layers stay in eval mode: they normalize with their
    running statistics and do not update them, so a frozen layer is bitwise unchanged."""
    model.train()
    for layer in frozen_statistics_layers(model):
        layer.eval()
    return model
