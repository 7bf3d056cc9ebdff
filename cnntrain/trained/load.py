"""A trained run, ready to use: its network rebuilt from the checkpoint alone, and images made
into its input exactly as training made them (shared by cnntrain-eval, -predict and -export)."""

from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image
from torch import nn

from cnntrain.core.checkpoint import (
    BEST,
    check_compatible,
    check_usable,
    checkpoint_file,
    load_checkpoint,
    received_weights,
    saved_config,
)
from cnntrain.core.checks import integer, number
from cnntrain.core.errors import UserError, first_line
from cnntrain.core.spec import InputSpec
from cnntrain.data.decode import to_pixels
from cnntrain.data.geometry import spec_fit
from cnntrain.metrics.calibration import TEMPERATURE_RANGE
from cnntrain.metrics.multilabel import DEFAULT_THRESHOLD
from cnntrain.models.registry import build_architecture
from cnntrain.training.thresholds import Thresholds

RANGE_SLACK = 1e-9  # relative: a fitted end of the range, exp(log(end)), may round just past it


class Normalized(nn.Module):
    """A network with its input normalization inside: float32 pixels in [0, 1] (N, C, H, W), as
    ToTensor gives them, → logits (N, classes). The arithmetic is the data pipeline's BatchPrep:
    (x - mean) / std per channel. With a `temperature`, the logits come out divided by it
    (temperature-scaled: their softmax gives calibrated probabilities); with `sigmoid`, each
    label's probability comes out instead (several labels per image)."""

    def __init__(self, network: nn.Module, mean: list[float], std: list[float],
                 temperature: float | None = None, sigmoid: bool = False):  # fmt: skip
        super().__init__()
        self.network = network
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1))
        self.temperature = temperature  # a constant of an exported graph
        self.sigmoid = sigmoid

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        logits = self.network((pixels - self.mean) / self.std)
        if self.temperature is not None:
            logits = logits / self.temperature
        return logits.sigmoid() if self.sigmoid else logits


@dataclass
class TrainedModel:
    """A run's best network (eval mode, on the CPU) and what it needs of its input."""

    network: nn.Module  # the best weights: the EMA weights when the run kept an EMA
    spec: InputSpec  # channels, height, width (px) and class count of its input and output
    classes: list[str]  # class names, in logit order
    mean: list[float]  # per-channel normalization the network was trained with
    std: list[float]
    config: dict  # the run's resolved config, as saved (trackers and callbacks dropped)
    checkpoint: Path
    temperature: float | None = None  # the logits' divisor fitted on the validation split
    # Several labels per image: one sigmoid per class (`classes` the labels), and each label's
    # probability thresholds (L,) saved after training (0.5 each when the run saved none)
    multi_label: bool = False
    thresholds: Thresholds | None = None

    def normalized(self, calibrated: bool = False, sigmoid: bool = False) -> Normalized:
        """The network taking [0, 1] pixels (normalization inside), in eval mode; `calibrated`:
        its logits divided by the temperature (when the run fitted one); `sigmoid`: each
        label's probability out instead of the logits."""
        temperature = self.temperature if calibrated else None
        return Normalized(self.network, self.mean, self.std, temperature, sigmoid).eval()


def load_trained(source) -> TrainedModel:
    """The run folder (its checkpoints/best.pt) or checkpoint `source`, rebuilt from the
    checkpoint alone: no data, no pretrained weights file and no network are needed."""
    path = checkpoint_file(source, BEST, "RUN_DIR")
    saved = load_checkpoint(path)  # torch.load(weights_only=True)
    check_usable(saved, path)
    config = saved_config(saved, path)  # checked as data: see core/schema.py
    spec = InputSpec.from_dict(saved["spec"], f"checkpoint {path}")  # an older one squashes
    classes, mean, std = saved_labels_and_statistics(saved, spec, path)  # before any allocation
    network = checked_network(config["model"], spec, saved, path)
    network.load_state_dict(received_weights(saved, path))
    return TrainedModel(
        network=network.eval(),
        spec=spec,
        classes=classes,
        mean=mean,
        std=std,
        config=config,
        checkpoint=path,
        # sigmoid outputs are never temperature-scaled: a received file's entry is ignored there
        temperature=None if saved.get("multi_label") is True else saved_temperature(saved, path),
        multi_label=saved.get("multi_label") is True,
        thresholds=saved_thresholds(saved, path, len(classes)),
    )


def checked_network(model_cfg, spec: InputSpec, saved: dict, path: Path) -> nn.Module:
    """The architecture of `model_cfg` sized by `spec`, freshly built once the checkpoint's
    weights were checked against its shapes on the meta device (no memory): a received spec's
    sizes could ask for any number of parameters. An architecture that reads a value while it
    is built (torchvision's RegNets, some timm models) cannot be built there: it is built first,
    then checked — its own error, if it has one, comes from that build."""
    try:
        with torch.device("meta"):
            shaped = build_architecture(model_cfg, spec)
    except UserError:
        raise
    except Exception:  # any failure on the meta device: the real build says what it is
        try:
            network = build_architecture(model_cfg, spec)
        except (TypeError, ValueError, KeyError) as e:  # options no run of this code writes
            raise UserError(
                f"checkpoint {path}: its model options ({dict(model_cfg)}) do not build a "
                f"network ({first_line(e)}); use the run's own checkpoint, or train it again"
            ) from e
        check_compatible(saved, network, path)
        return network
    check_compatible(saved, shaped, path)
    return build_architecture(model_cfg, spec)


MAX_CLASSES = 100_000  # outputs a received checkpoint may ask for (ImageNet-21k has 21,841)


def saved_labels_and_statistics(saved: dict, spec: InputSpec, path: Path) -> tuple:
    """The checkpoint's class names and normalization (mean, std), checked as received data
    against its spec: `num_classes` distinct names (at most MAX_CLASSES), and `channels` finite
    means and positive finite stds — before a network of that many outputs is built."""
    classes, stats = saved["classes"], saved["normalization"]
    fine_classes = (
        isinstance(classes, list | tuple)
        and len(classes) == spec.num_classes <= MAX_CLASSES
        and all(isinstance(c, str) for c in classes)
        and len(set(classes)) == len(classes)
    )
    if not fine_classes:
        raise UserError(
            f"checkpoint {path}: classes is not {spec.num_classes} distinct names (its spec's "
            f"num_classes, at most {MAX_CLASSES:,}); use the run's own checkpoint, or train it "
            "again"
        )
    mean, std = (stats.get(k) if isinstance(stats, dict) else None for k in ("mean", "std"))
    per_channel = [isinstance(v, list | tuple) and len(v) == spec.channels for v in (mean, std)]
    if not (all(per_channel) and all(number(-1e3, 1e3)(m) for m in mean)
            and all(number(0, 1e3, lo_open=True)(s) for s in std)):  # fmt: skip
        raise UserError(
            f"checkpoint {path}: normalization is not {spec.channels} means and {spec.channels} "
            "positive stds (one per input channel); use the run's own checkpoint, or train it again"
        )
    return list(classes), [float(m) for m in mean], [float(s) for s in std]


def saved_thresholds(saved: dict, path: Path, count: int) -> Thresholds | None:
    """The labels' Thresholds of a checkpoint with several labels per image (training/
    thresholds.py's entry), checked as received data: `count` probabilities in [0, 1], the rule
    ("f1" or one of them), where they were tuned ("val" or null) and on how many images; 0.5
    each when the run saved none (stopped before its final test); None for one label per image."""
    if saved.get("multi_label") is not True:
        return None
    entry = saved.get("thresholds")
    if entry is None:
        return Thresholds([DEFAULT_THRESHOLD] * count, DEFAULT_THRESHOLD, None)
    entry = entry if isinstance(entry, dict) else {}
    values, rule = entry.get("values"), entry.get("rule", "f1")
    fine = (
        isinstance(values, list)
        and len(values) == count
        and all(number(0, 1)(v) for v in values)
        and (rule == "f1" or number(0, 1)(rule))
        and entry.get("fitted_on", None) in ("val", None)
        and integer(0)(entry.get("images", 0))
    )
    if not fine:
        raise UserError(
            f"checkpoint {path}: thresholds is not {count} probabilities from 0 to 1 with their "
            "rule (f1 or one of them), fitted_on (val or null) and image count (what tuning "
            "gives); use the run's own checkpoint, or train it again"
        )
    return Thresholds([float(v) for v in values], rule, entry.get("fitted_on"),
                      entry.get("images", 0))  # fmt: skip


def saved_temperature(saved: dict, path: Path) -> float | None:
    """The temperature of the checkpoint's `calibration` entry (training/calibrate.py), checked
    as received data: a number in TEMPERATURE_RANGE, the only values fitting gives (a tiny one
    would make every probability inf or NaN); None when the run fitted none."""
    calibration = saved.get("calibration")
    if calibration is None:
        return None
    t = calibration.get("temperature") if isinstance(calibration, dict) else None
    low, high = TEMPERATURE_RANGE
    if not number(low * (1 - RANGE_SLACK), high * (1 + RANGE_SLACK))(t):
        raise UserError(
            f"checkpoint {path}: calibration.temperature {t!r} is not a number from {low:g} to "
            f"{high:g} (what fitting gives); use the run's own checkpoint, or train it again"
        )
    return float(t)


def image_pixels(image: Image.Image, spec: InputSpec) -> torch.Tensor:
    """(C, H, W) uint8 of a PIL image of any mode, size and EXIF orientation, in the model's
    channels and size, converted exactly as training decoded its evaluation images
    (data/decode.py: upright, short side resized to the spec's resize, centre-cropped)."""
    return torch.from_numpy(to_pixels(image, spec.channels, spec_fit(spec)))


def unit_range(pixels: torch.Tensor) -> torch.Tensor:
    """uint8 (N, C, H, W) → float32 in [0, 1]: what ToTensor gives, and Normalized takes."""
    return pixels.float().div_(255)
