"""Class-activation maps (Grad-CAM and kin, by the grad-cam library): where in an image lies a
network's evidence for a class, as maps, colour overlays and the report's figures of them."""

import importlib
import logging
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from cnntrain.core.errors import UserError
from cnntrain.core.extras import require
from cnntrain.reporting.cam_methods import CAM_METHODS
from cnntrain.reporting.layer_table import placement, summarize_layers
from cnntrain.reporting.plots import (
    draw_picture,
    evaluating,
    most_confident,
    most_confident_mistakes,
    new_figure,
    plain,
    plot_message,
    save_png,
)
from cnntrain.reporting.predictions import short_name

log = logging.getLogger(__name__)

# plots/<name>.png, in a report's order: one label per image, and several
CAM_PLOTS, LABEL_CAM_PLOTS = ("cam_mistakes", "cam_correct"), ("cam_labels",)
CAM_MISTAKES = 8  # cam_mistakes: the most confident mistakes
CAM_PER_CLASS, CAM_CLASSES = 2, 10  # cam_correct: the 2 most confident right answers, ≤10 classes
CAM_BATCH = 32  # images per library call: one forward (and backward) pass each
MIN_MAP_SIDE = 2  # px of the layer's output: a 1×1 map shows no place at all
HEAT_WEIGHT = 0.5  # share of the colour map in an overlay's pixel, the image's being the rest
PAIRS_PER_ROW = 4
# What a model the library cannot take raises (a layer of no (C, H, W) output, an op the backward
# pass refuses, a broken install): the report says it in one line instead.
CAM_ERRORS = (UserError, RuntimeError, ValueError, ImportError)


def cam_class(method: str) -> type:
    """The grad-cam class of `method` (a key of CAM_METHODS)."""
    return getattr(importlib.import_module("pytorch_grad_cam"), CAM_METHODS[method])


def unexplainable(model: nn.Module) -> str | None:
    """Why no class-activation map can be drawn for `model`, or None when one can."""
    for name, module in model.named_modules():
        kind = type(module).__name__
        if isinstance(module, nn.MultiheadAttention) or kind.endswith("Attention"):
            return (
                f"the model has attention blocks ({kind} at {name}), whose tokens "
                "cnntrain has no rule to reshape into a map"
            )
    if not any(isinstance(m, nn.Conv2d) for m in model.modules()):
        return "the model has no 2-D convolution to take a map of"
    return None


def target_layer(
    model: nn.Module, input_shape: tuple[int, int, int], name: str | None = None
) -> str:
    """The module whose maps are explained: `name` when given (a module of `model` whose output,
    a container's that of the last module it runs, is a map of MIN_MAP_SIDE px a side or more),
    else the last Conv2d the forward pass runs whose output is such a map."""
    modules = dict(model.named_modules())
    if name is not None and (not name or name not in modules):
        convs = [n for n, m in modules.items() if isinstance(m, nn.Conv2d)][-4:]
        raise UserError(
            f"layer {name!r} is not a module of the model; name one from the "
            f"run's summary.txt, e.g. {', '.join(convs) or 'a convolution'}"
        )
    rows = summarize_layers(model, input_shape)["layers"]
    fit = [r["name"] for r in rows if isinstance(modules.get(r["name"]), nn.Conv2d) and is_map(r)]
    side = "×".join(map(str, input_shape))
    if name is not None:
        check_map(name, rows, fit, side)
        return name
    if not fit:
        raise UserError(
            f"no convolution of the model gives a map of {MIN_MAP_SIDE}×{MIN_MAP_SIDE} "
            f"px or more on its {side} input"
        )
    return fit[-1]


def check_map(name: str, rows: list[dict], fit: list[str], side: str) -> None:
    """Refuse the module `name` unless its output (summarize_layers' `rows`; a container's, that
    of the last module it runs) is a map (is_map); `fit`: the convolutions to suggest."""
    inside = [r for r in rows if r["name"] == name or r["name"].startswith(f"{name}.")]
    if inside and is_map(inside[-1]):
        return
    shape = "×".join(map(str, inside[-1]["output_shape"] or ())) if inside else ""
    raise UserError(
        f"layer {name!r} gives {f'an output of {shape}' if shape else 'no output'} on the "
        f"{side} input, not a map of {MIN_MAP_SIDE}×{MIN_MAP_SIDE} px or more; name a "
        f"convolution from the run's summary.txt, e.g. {', '.join(fit[-4:]) or 'none fits'}"
    )


def is_map(row: dict) -> bool:
    """Is a summarize_layers row's output a (C, H, W) map of MIN_MAP_SIDE px a side or more?"""
    shape = row["output_shape"] or ()
    return len(shape) == 3 and min(shape[1:]) >= MIN_MAP_SIDE


def class_activation_maps(
    model: nn.Module, inputs: torch.Tensor, class_indices, layer: str, method: str
) -> np.ndarray:
    """(N, H, W) float32 maps in [0, 1] at the input's resolution, each of its class's evidence.

    inputs (N, C, H, W) float: what `model` takes (normalized); class_indices (N,): the class
    each map explains; `layer`: a module name of `model`; `method`: a key of CAM_METHODS. The
    model runs in eval mode on its own device in float32, CAM_BATCH images per pass, its weights
    frozen (the gradient reaches the layer through the input); every module's mode and
    parameter's requires_grad are as they were afterwards.
    """
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    device, _ = placement(model)
    indices = [int(c) for c in class_indices]
    maps = [np.zeros((0, *inputs.shape[-2:]), np.float32)]
    flags = [(p, p.requires_grad) for p in model.parameters()]
    with evaluating(model), torch.enable_grad():
        cam = cam_class(method)(model, [dict(model.named_modules())[layer]])
        try:
            model.requires_grad_(False)
            for start in range(0, len(inputs), CAM_BATCH):
                batch = inputs[start : start + CAM_BATCH].to(device, torch.float32, copy=True)
                targets = [ClassifierOutputTarget(c) for c in indices[start : start + CAM_BATCH]]
                maps.append(cam(batch.requires_grad_(), targets))
        except ValueError as e:  # the library's "Invalid activation shape"
            raise UserError(
                f"layer {layer!r} gives no (C, H, W) map ({e}); name a convolution "
                "from the run's summary.txt"
            ) from e
        finally:  # by hand: the library's `with` form would swallow an IndexError
            cam.activations_and_grads.release()
            for parameter, flag in flags:
                parameter.requires_grad_(flag)
    return np.concatenate(maps).astype(np.float32)


def overlay(image: torch.Tensor, cam: np.ndarray) -> np.ndarray:
    """A uint8 (C, H, W) image (gray shown as RGB) with its map (h, w) in [0, 1] blended over
    it in the jet colour map (blue: none of the evidence, red: the most), as uint8 (H, W, 3)."""
    from matplotlib import colormaps

    heat = torch.as_tensor(cam, dtype=torch.float32)[None, None]
    if heat.shape[-2:] != image.shape[-2:]:
        heat = F.interpolate(heat, size=tuple(image.shape[-2:]), mode="bilinear")
    colours = colormaps["jet"](heat[0, 0].clamp(0, 1).numpy())[..., :3] * 255  # (H, W, 3)
    pixels = image.expand(3, -1, -1).permute(1, 2, 0).numpy().astype(np.float32)
    return np.round((1 - HEAT_WEIGHT) * pixels + HEAT_WEIGHT * colours).astype(np.uint8)


def plot_cams(
    images: torch.Tensor,
    maps: np.ndarray,
    titles: list[str],
    names: list[str],
    heading: str,
    path: Path,
) -> None:
    """Each uint8 image (k, C, H, W) beside its map (k, H, W) as an overlay, PAIRS_PER_ROW pairs
    a row: its title above, its name (a file, `#index`) under the pair."""
    columns = min(PAIRS_PER_ROW, len(images))
    rows = math.ceil(len(images) / columns)
    fig = new_figure(max(3.2 * columns, 7.0), 1.9 * rows + 0.8)
    axes = fig.subplots(rows, 2 * columns, squeeze=False)
    for ax in axes.flat:
        ax.set_axis_off()
    for i, (image, cam) in enumerate(zip(images, maps, strict=True)):
        left, right = axes[i // columns, 2 * (i % columns) : 2 * (i % columns) + 2]
        draw_picture(left, image, "")
        right.imshow(overlay(image, cam), interpolation="nearest")
        # x = 1.05 of the image's width: the middle of the pair, with the gap between them
        for y, text, where in ((1.04, titles[i], "bottom"), (-0.04, short_name(names[i]), "top")):
            left.text(1.05, y, plain(text), transform=left.transAxes, ha="center", va=where)
    fig.suptitle(plain(heading))
    save_png(fig, path)


def most_confident_correct(
    logits: torch.Tensor, targets: torch.Tensor, per_class: int, max_classes: int
) -> list[int]:
    """Indices of the (at most) `per_class` right predictions of highest softmax probability
    of each of the first `max_classes` classes, class by class, most confident first."""
    confidence, predicted = F.softmax(logits.float(), dim=1).max(1)
    picks = []
    for k in range(min(max_classes, logits.shape[1])):
        picks += most_confident(confidence, (predicted == k) & (targets == k), per_class)
    return picks


@dataclass
class SplitImages:
    """A test split's images and outputs. logits (N, K), targets (N,) on the CPU;
    images_at(indices) -> uint8 (n, C, H, W); prep(uint8 batch) -> the model's input;
    names (N,): each image's file, "" for a built-in dataset's."""

    images_at: Callable[[list[int]], torch.Tensor]
    prep: Callable[[torch.Tensor], torch.Tensor]
    logits: torch.Tensor
    targets: torch.Tensor
    classes: list[str]
    names: list[str]

    def title(self, index: int, predicted: int, confidence: float) -> str:
        """ "true → predicted (p)" for a mistake, "class (p)" for a right answer."""
        true, shown = int(self.targets[index]), self.classes[predicted]
        return (
            f"{self.classes[true] + ' → ' if true != predicted else ''}{shown} ({confidence:.2f})"
        )


def plot_test_cams(model: nn.Module, test: SplitImages, picks: list[tuple[int, int, str]],
                   layer: str, method: str, heading: str, path: Path) -> None:  # fmt: skip
    """The maps of the test images and classes `picks` ((index, class, title) each) as one
    figure."""
    indices = [i for i, _, _ in picks]
    images = test.images_at(indices)
    maps = class_activation_maps(model, test.prep(images), [c for _, c, _ in picks], layer, method)
    names = [test.names[i] or f"#{i}" for i in indices]
    plot_cams(images, maps, [t for _, _, t in picks], names, f"{heading}\n({method}, layer "
              f"{layer})", path)  # fmt: skip


def predicted_picks(test: SplitImages, indices: list[int]) -> list[tuple[int, int, str]]:
    """(index, predicted class, title) of the test images `indices`."""
    confidence, predicted = F.softmax(test.logits[indices].float(), dim=1).max(1)  # (k,) each
    shown = zip(indices, predicted.tolist(), confidence.tolist(), strict=True)
    return [(i, c, test.title(i, c, p)) for i, c, p in shown]


def label_picks(test: SplitImages) -> list[tuple[int, int, str]]:
    """Several labels per image (targets (N, L)): for each of the first CAM_CLASSES labels, its
    CAM_PER_CLASS test images of highest probability among those that have it, (index, label,
    "label (p)") each."""
    probabilities = test.logits.float().sigmoid()  # (N, L)
    picks = []
    for k in range(min(CAM_CLASSES, probabilities.shape[1])):
        present = test.targets[:, k] > 0.5
        for i in most_confident(probabilities[:, k], present, CAM_PER_CLASS):
            picks.append((i, k, f"{test.classes[k]} ({probabilities[i, k]:.2f})"))
    return picks


def cam_panels(test: SplitImages) -> list[tuple[str, str, list]]:
    """The report's figures of maps: (plot name, heading, picks) each."""
    if test.targets.ndim == 2:
        return [("cam_labels", "each label's most probable images that have it: evidence for "
                 "the label", label_picks(test))]  # fmt: skip
    mistakes = most_confident_mistakes(test.logits, test.targets, CAM_MISTAKES)
    correct = most_confident_correct(test.logits, test.targets, CAM_PER_CLASS, CAM_CLASSES)
    return [
        ("cam_mistakes", "most confident mistakes (true → predicted): evidence for the "
         "prediction", predicted_picks(test, mistakes)),
        ("cam_correct", "most confident right answers, 2 per class: evidence for the class",
         predicted_picks(test, correct)),
    ]  # fmt: skip


def why_no_maps(model: nn.Module, method: str) -> str | None:
    """Why the report shows no maps (the one line its figures and the log say), or None."""
    if method == "none":
        return "class-activation maps are off (trainer.cam: none)"
    try:
        require("pytorch_grad_cam", "explain", "class-activation maps (trainer.cam)")
    except UserError as e:
        return str(e)
    reason = unexplainable(model)
    return f"no class-activation maps: {reason}" if reason else None


def write_cam_plots(
    folder: Path, model: nn.Module, test: SplitImages, method: str, layer: str | None
) -> list[Path]:
    """plots/cam_mistakes.png (the CAM_MISTAKES most confident mistakes) and cam_correct.png
    (the most confident right answers per class) into `folder`, each map of the predicted class
    at `layer` (None: target_layer's choice) by `method` (trainer.cam); with several labels per
    image cam_labels.png, each label's map on the images of it it is surest of; the paths
    written.

    A model the maps cannot be drawn for, or the extra missing, gives figures saying why and one
    warning line: training never fails for a figure. The model runs on its own device.
    """
    panels = cam_panels(test)
    paths = [Path(folder) / f"{name}.png" for name, _, _ in panels]
    reason = why_no_maps(model, method)
    if reason is None:
        try:
            layer = target_layer(model, tuple(test.prep(test.images_at([0])).shape[1:]), layer)
            for (_, heading, picks), path in zip(panels, paths, strict=True):
                if picks:
                    plot_test_cams(model, test, picks, layer, method, heading, path)
                else:
                    plot_message(heading, "no test image to show", path)
            return paths
        except CAM_ERRORS as e:
            reason = f"no class-activation maps: {(str(e).splitlines() or [type(e).__name__])[0]}"
    if method != "none":
        log.warning("%s", reason)
    for (_, heading, _), path in zip(panels, paths, strict=True):
        plot_message(heading.split(":")[0], reason, path)
    return paths
