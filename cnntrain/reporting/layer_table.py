"""Per-layer summary of a CNN: output shapes, parameters, MACs, receptive field and jump."""

import io
import itertools
import math
from dataclasses import dataclass, replace
from pathlib import Path

import torch
import torch.nn.functional as F
from rich.console import Console
from rich.markup import escape
from rich.table import Table
from torch import nn
from torch.overrides import TorchFunctionMode

from cnntrain.core.files import write_json, write_text

Pair = tuple[int, int]  # (height, width)


def pair(value) -> Pair:
    """An int, or a 1- or 2-sequence (kernel_size=(3,) means 3×3), as (height, width)."""
    values = tuple(value) if isinstance(value, (tuple, list)) else (value,)
    return int(values[0]), int(values[-1])


@dataclass(frozen=True)
class Field:
    """What one element of a tensor sees of the input, per axis (height, width).

    rf: side of the input region it depends on; jump: input pixels between neighbouring elements;
    hw: the tensor's spatial size while it keeps the (N, C, H, W) layout, None once flattened.
    """

    rf: Pair
    jump: Pair
    hw: Pair | None

    def window(self, kernel: Pair, stride: Pair, dilation: Pair, hw: Pair | None) -> "Field":
        """After a window: k_eff = d·(k−1)+1, so rf grows by (k_eff−1)·jump, and jump *= stride."""
        rf = tuple(
            r + d * (k - 1) * j
            for r, k, d, j in zip(self.rf, kernel, dilation, self.jump, strict=True)
        )
        jump = tuple(j * s for j, s in zip(self.jump, stride, strict=True))
        return Field(rf, jump, hw)

    def whole_map(self) -> "Field":
        """The map collapsed to one position: a window as large as the map, stepping over it."""
        return self.window(self.hw, self.hw, (1, 1), None)

    def after(self, shape: torch.Size) -> "Field":
        """After an op not modelled as a window, from its output's shape (see summarize_layers)."""
        hw = tuple(shape[-2:])
        if self.hw is None or (len(shape) >= 3 and hw == self.hw):
            return self  # elementwise or along C (BN, ReLU, +, cat), or already flat (Linear)
        if len(shape) == 4 and hw != (1, 1):
            return replace(self, hw=hw)  # pad, crop, resize: still one input element per element
        return self.whole_map()  # Flatten, x.view(N, -1), mean over H and W: one position left


def merge(fields: list[Field]) -> Field:
    """Inputs combined elementwise (a residual add, a concat): the widest field, the finest grid."""
    rf = tuple(max(axis) for axis in zip(*(f.rf for f in fields), strict=True))
    jump = tuple(min(axis) for axis in zip(*(f.jump for f in fields), strict=True))
    return Field(rf, jump, next((f.hw for f in fields if f.hw), None))


# Readers of (kernel, stride, dilation) of the windowed 2-D ops. Each takes its op's arguments,
# named and defaulted as in PyTorch, so Python binds positional and keyword arguments alike.
def conv_window(input, weight, bias=None, stride=1, padding=0, dilation=1, groups=1):
    return pair(weight.shape[-2:]), pair(stride), pair(dilation)


def pool_window(input, kernel_size, stride=None, padding=0, dilation=1, *options, **named):
    # stride None (F.max_pool2d) or [] (torch.max_pool2d) means "the kernel size"
    return pair(kernel_size), pair(stride or kernel_size), pair(dilation)


def avg_pool_window(input, kernel_size, stride=None, *options, **named):
    return pair(kernel_size), pair(stride or kernel_size), (1, 1)


def lp_pool_window(input, norm_type, *args, **kwargs):
    return avg_pool_window(input, *args, **kwargs)


WINDOWS = {
    F.conv2d: conv_window,  # the same object as torch.conv2d
    F.max_pool2d: pool_window,
    F.max_pool2d_with_indices: pool_window,
    torch.max_pool2d: pool_window,
    F.avg_pool2d: avg_pool_window,
    F.lp_pool2d: lp_pool_window,
}
ADAPTIVE_POOLS = {F.adaptive_avg_pool2d, F.adaptive_max_pool2d, F.adaptive_max_pool2d_with_indices}


def adaptive_window(n_in: int, n_out: int) -> Pair:
    """(kernel, stride) along one axis of adaptive pooling from n_in to n_out positions.

    PyTorch's bin i spans [⌊i·n_in/n_out⌋, ⌈(i+1)·n_in/n_out⌉): the kernel is the widest bin,
    the stride n_in/n_out (floored when it does not divide).
    """
    kernel = max(-(-(i + 1) * n_in // n_out) - i * n_in // n_out for i in range(n_out))
    return kernel, max(n_in // n_out, 1)


def propagate(func, args: tuple, kwargs: dict, field: Field, shape: torch.Size) -> Field:
    """The field of an output of `func(*args, **kwargs)` of `shape`, given its inputs' `field`."""
    hw = tuple(shape[-2:])
    if func in WINDOWS:
        return field.window(*WINDOWS[func](*args, **kwargs), hw)
    if func in ADAPTIVE_POOLS and field.hw:
        (kh, sh), (kw, sw) = (adaptive_window(n, o) for n, o in zip(field.hw, hw, strict=True))
        return field.window((kh, kw), (sh, sw), (1, 1), hw)
    return field.after(shape)


def tensors_in(obj) -> list[torch.Tensor]:
    """The tensors in a nest of tuples, lists and dicts: a call's arguments or an op's result."""
    if isinstance(obj, torch.Tensor):
        return [obj]
    if isinstance(obj, dict):
        obj = list(obj.values())
    if isinstance(obj, (tuple, list)):
        return [t for item in obj for t in tensors_in(item)]
    return []


class FieldTracker(TorchFunctionMode):
    """Carries a Field from the input through every torch call of a forward pass (the dataflow).

    Modules, functional ops (F.relu, F.max_pool2d, torch.flatten) and tensor methods (x.view,
    `+`) all reach __torch_function__; tensors not computed from the input (weights) have no field.
    """

    def __init__(self):
        super().__init__()
        # id → (tensor, field); holding the tensor keeps its id from being reused by another
        self.fields: dict[int, tuple[torch.Tensor, Field]] = {}

    def mark(self, tensor: torch.Tensor, field: Field) -> None:
        self.fields[id(tensor)] = (tensor, field)

    def field(self, tensor: torch.Tensor | None) -> Field | None:
        entry = self.fields.get(id(tensor))
        return entry[1] if entry else None

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        result = func(*args, **kwargs)  # this mode is off inside: nested calls are not seen
        inputs = [f for t in tensors_in((args, kwargs)) if (f := self.field(t))]
        if inputs:
            field = merge(inputs)
            # x[i] = y writes into x and returns None; every other op returns what it wrote
            written = args[0] if func is torch.Tensor.__setitem__ else result
            for out in tensors_in(written):
                self.mark(out, propagate(func, args, kwargs, field, out.shape))
        return result


def count_macs(module: nn.Module, out: torch.Tensor | None) -> int:
    """Multiply-accumulates of one call on a batch of 1 (convention in summarize_layers)."""
    if out is None:
        return 0
    if isinstance(module, (nn.Conv1d, nn.Conv2d, nn.Conv3d)):
        return out.numel() * module.in_channels // module.groups * math.prod(module.kernel_size)
    if isinstance(module, nn.Linear):
        return out.numel() * module.in_features
    return 0


def claim_params(module: nn.Module, counted: set[int]) -> int:
    """Parameters owned directly by `module` and not yet counted (a module called again, ties)."""
    fresh = [p for p in module.parameters(recurse=False) if id(p) not in counted]
    counted.update(id(p) for p in fresh)
    return sum(p.numel() for p in fresh)


def side(values: Pair) -> int | list[int]:
    """One int for a square field, [h, w] otherwise."""
    return values[0] if values[0] == values[1] else list(values)


def layer_row(name: str, module: nn.Module, out, field: Field | None, params: int) -> dict:
    return {
        "name": name,
        "type": type(module).__name__,
        "output_shape": list(out.shape[1:]) if out is not None else None,  # without the batch
        "params": params,
        "macs": count_macs(module, out),
        "receptive_field": side(field.rf) if field else None,
        "jump": side(field.jump) if field else None,
    }


def placement(model: nn.Module) -> tuple[torch.device, torch.dtype]:
    """Device and floating dtype of the model's first float parameter or buffer (else CPU)."""
    for tensor in itertools.chain(model.parameters(), model.buffers()):
        if tensor.is_floating_point():
            return tensor.device, tensor.dtype
    return torch.device("cpu"), torch.get_default_dtype()


def summarize_layers(model: nn.Module, input_shape: tuple[int, int, int]) -> dict:
    """One forward pass of a zero batch (1, C, H, W) through `model`, recorded per layer.

    `layers` has one row per call of a leaf module (no children) in execution order, named as in
    `named_modules()`. A module with children that owns parameters directly gets a row when its
    forward returns; a module with parameters never called gets a last row with `output_shape`
    None. Each parameter is counted on the first row of a module owning it, so the rows' `params`
    sum to `total_params`.

    MACs (multiply-accumulates, batch of 1): Conv1d/2d/3d = output elements × (C_in/groups) ×
    kernel area; Linear = output elements × in_features (in × out × leading dims); every other
    module 0. Ops called functionally in `forward` outside a module are not counted.

    Receptive field and jump, in input pixels, follow the dataflow rather than the row order:
    every tensor computed from the input carries them per axis, from (1, 1) at the input. A conv
    or pool window (module or functional) of kernel k, stride s, dilation d gives
    rf + d·(k−1)·jump and jump·s; adaptive pooling is a window of its widest bin. Ops combining
    inputs elementwise (a residual `+`, torch.cat) take the largest rf and the smallest jump;
    elementwise, padding and reshaping ops keep them. They are not clipped to the image: they
    count zero padding, so they can exceed H. Once the map collapses to one position (adaptive
    pooling to 1×1, Flatten, x.view(N, -1), a mean over H and W) the field is that of a window
    as large as the map, rf + (H−1)·jump with jump·H, and Linear layers after it keep it: they
    see the whole map. Square fields are one int, others [h, w]; None for outputs that do not
    depend on the input.

    The model runs in eval mode without gradients (BatchNorm statistics untouched) on its own
    device and dtype; every module's train/eval mode is restored afterwards.
    """
    names = {module: name for name, module in model.named_modules()}
    tracker, rows, counted = FieldTracker(), [], set()

    def record(module, args, output):
        out = next(iter(tensors_in(output)), None)
        params = claim_params(module, counted)
        rows.append(layer_row(names[module], module, out, tracker.field(out), params))

    hooked = [
        m
        for m in names
        if next(m.children(), None) is None or next(m.parameters(recurse=False), None) is not None
    ]
    device, dtype = placement(model)
    x = torch.zeros(1, *input_shape, device=device, dtype=dtype)
    tracker.mark(x, Field(rf=(1, 1), jump=(1, 1), hw=pair(input_shape[-2:])))
    modes = {m: m.training for m in model.modules()}
    handles = [m.register_forward_hook(record) for m in hooked]
    try:
        model.eval()
        with torch.no_grad(), tracker:
            model(x)
    finally:
        for handle in handles:
            handle.remove()
        for module, training in modes.items():
            module.training = training
    for module, name in names.items():  # modules the forward pass never called
        if params := claim_params(module, counted):
            rows.append(layer_row(name, module, None, None, params))
    return {
        "input_shape": list(input_shape),
        "layers": rows,
        "total_params": sum(p.numel() for p in model.parameters()),
        "trainable_params": sum(p.numel() for p in model.parameters() if p.requires_grad),
        "total_macs": sum(row["macs"] for row in rows),
    }


def human(n: int) -> str:
    """1769472 → 1.77M: a count with a K/M/G/T suffix, as is below 1000."""
    for scale, suffix in ((10**12, "T"), (10**9, "G"), (10**6, "M"), (10**3, "K")):
        if n >= scale:
            return f"{n / scale:.2f}{suffix}"
    return str(n)


def dims(value) -> str:
    """64×32×32 for a shape, 36 or 3×5 for a field, — for none."""
    if value is None:
        return "—"
    return "×".join(map(str, value)) if isinstance(value, list) else str(value)


def layers_table(summary: dict) -> Table:
    """The summary as a rich table: one row per layer, totals in the footer."""
    c, h, w = summary["input_shape"]
    table = Table(
        title=f"input {c}×{h}×{w}",
        caption=f"{summary['trainable_params']:,} trainable params; RF and jump in input pixels",
        show_footer=True,
    )
    table.add_column("Layer", footer="Total", overflow="fold")  # a cut name is useless
    table.add_column("Type", overflow="fold")
    table.add_column("Output shape")
    table.add_column("Params", justify="right", footer=f"{summary['total_params']:,}")
    table.add_column("MACs", justify="right", footer=human(summary["total_macs"]))
    table.add_column("RF", justify="right")
    table.add_column("Jump", justify="right")
    for layer in summary["layers"]:
        table.add_row(
            escape(layer["name"]),
            layer["type"],
            dims(layer["output_shape"]),
            f"{layer['params']:,}",
            human(layer["macs"]),
            dims(layer["receptive_field"]),
            dims(layer["jump"]),
        )
    return table


def render_text(table: Table) -> str:
    """The table as plain text at its natural width (names never wrap), no trailing spaces."""
    buffer = io.StringIO()
    Console(file=buffer, width=1000, no_color=True).print(table)
    return "\n".join(line.rstrip() for line in buffer.getvalue().splitlines()) + "\n"


def write_layer_summary(summary: dict, run_dir: Path) -> None:
    """Write run_dir/summary.json (the dict) and run_dir/summary.txt (the table as text)."""
    run_dir = Path(run_dir)
    write_json(run_dir / "summary.json", summary)
    write_text(run_dir / "summary.txt", render_text(layers_table(summary)))
