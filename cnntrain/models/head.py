"""The classification head: the layer that gives the logits, found the same way in every model."""

from torch import nn

HEAD_LAYERS = (nn.Linear, nn.Conv2d)  # squeezenet's head is a 1×1 conv; every other a Linear


def head_name(model: nn.Module) -> str:
    """The name of the last Linear or Conv2d that `model` registers: its classification head.

    Every cnntrain model and every torchvision classifier registers its head last (googlenet's
    and inception_v3's auxiliary heads come before `fc`); tests/test_pretrained.py checks, for
    each of them, that this layer is the last one with weights to run and gives the class count.
    """
    names = [name for name, module in model.named_modules() if isinstance(module, HEAD_LAYERS)]
    if not names:
        raise ValueError(f"{type(model).__name__} has no Linear or Conv2d layer to be its head")
    return names[-1]


def head_parameter_names(model: nn.Module) -> set[str]:
    """Names (as in `model.named_parameters()`) of the head's parameters."""
    name = head_name(model)
    return {f"{name}.{p}".lstrip(".") for p, _ in model.get_submodule(name).named_parameters()}


def replace_head(model: nn.Module, num_classes: int) -> None:
    """Swap the head for a freshly initialised one of `num_classes` outputs, same name and kind."""
    name = head_name(model)
    old = model.get_submodule(name)
    bias = old.bias is not None
    if isinstance(old, nn.Linear):
        new = nn.Linear(old.in_features, num_classes, bias=bias)
    else:
        new = nn.Conv2d(old.in_channels, num_classes, old.kernel_size, old.stride, old.padding,
                        bias=bias)  # fmt: skip
    parent, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent), child, new)
