"""model=timm: any timm model by name (`pip install cnntrain[timm]`), random or pretrained.

`model.arch` is a name of `timm.list_models()` (resnet18, convnext_atto, vit_tiny_patch16_224,
…: the architecture, without a pretrained tag). `model.weights`, as for model=torchvision:

- null: timm's own random init, built for the dataset's class count, at the data's own size
  (a model that cannot take it, like a ViT built for 224×224, is refused when it is built).
- `DEFAULT` or a pretrained tag of the arch (`a1_in1k`, `tv_in1k`, …: `timm.list_pretrained(
  "ARCH.*")`): timm's weights, read from the local Hugging Face cache (HF_HOME / HF_HUB_CACHE;
  `$TORCH_HOME/hub/checkpoints/` for the few timm serves by URL) and never downloaded (as with
  HF_HUB_OFFLINE=1): without a copy, a one-line error names the repository and file to fetch.
  The classification head (head.py) is a fresh one for the dataset's classes, and the data
  takes the weights' input size and mean/std (their `pretrained_cfg`) unless `data.image_size`
  / `data.mean` / `data.std` are set.
- a path to a state-dict file (a plain state dict or a cnntrain checkpoint's `model`): every
  tensor but the head's must fit the network as built for null.

The input is 3 channels, as for torchvision models (grayscale data is repeated to RGB). timm is
imported only when a timm model is asked for: it takes seconds to import.
"""

import difflib
import math
from pathlib import Path
from urllib.parse import urlparse

import torch
from torch import nn

from cnntrain.core.errors import UserError, first_line
from cnntrain.core.extras import require
from cnntrain.core.spec import InputSpec
from cnntrain.data.geometry import INTERPOLATIONS
from cnntrain.models.registry import register
from cnntrain.models.torchvision import (
    LOAD_ERRORS,
    NO_PREPROCESSING,
    load_state_dict_file,
    meta_forward_error,
)

HF_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")  # what timm reads from a hub repo
DEFAULT_CROP_PCT = 0.875  # timm's, for a pretrained_cfg without crop_pct: 224 of 256


def timm_module():
    require("timm", "timm", "model=timm")
    import timm

    return timm


def check_arch(arch) -> None:
    timm = timm_module()
    names = timm.list_models()
    if arch in names:
        return
    base, _, tag = str(arch).partition(".")
    if tag and base in names:
        raise UserError(
            f"model.arch={arch!r} names a pretrained tag; use model.arch={base} model.weights={tag}"
        )
    close = difflib.get_close_matches(str(arch), names, n=5, cutoff=0.6)
    hint = f"close matches: {', '.join(close)}" if close else "see timm.list_models()"
    raise UserError(f"model.arch={arch!r} is not a timm model; {hint}")


def resolve_weights(arch: str, weights):
    """`model.weights` as timm's full pretrained name (`arch.tag`), a state-dict file, or None."""
    check_arch(arch)
    if weights is None:
        return None
    name, tags = pretrained_name(arch, weights)
    if name is not None:
        return name
    path = Path(str(weights)).expanduser()
    if not path.is_file():
        names = ", ".join(["DEFAULT", *tags]) if tags else "none: it has no pretrained weights"
        raise UserError(
            f"model.weights={weights!r} is neither a pretrained tag of timm's {arch} ({names}) "
            "nor an existing state-dict file"
        )
    return path


def pretrained_name(arch: str, weights) -> tuple[str | None, list[str]]:
    """(timm's full pretrained name `arch.tag` that `model.weights` names — DEFAULT is timm's
    default tag — or None (null weights, a file), `arch`'s pretrained tags); reads no file."""
    if weights is None:
        return None, []
    timm = timm_module()
    tags = [name.partition(".")[2] for name in timm.list_pretrained(f"{arch}.*")]
    if str(weights) == "DEFAULT" and tags:
        return f"{arch}.{timm.models.get_pretrained_cfg(arch).tag}", tags  # timm's default tag
    return (f"{arch}.{weights}" if str(weights) in tags else None), tags


def data_defaults(arch, weights) -> dict:
    """3 channels; with pretrained weights their evaluation preprocessing (`pretrained_cfg`):
    the short side resized to ⌊crop / crop_pct⌋ px (timm's own rounding) with their
    interpolation (bilinear where it is one cnntrain does not offer), centre-cropped to their
    input size, and their mean/std. A file's are none (it is not read: a resumed run's may be
    gone)."""
    check_arch(arch)
    chosen = pretrained_name(arch, weights)[0]
    if chosen is None:
        return dict(NO_PREPROCESSING)
    cfg = timm_module().models.get_pretrained_cfg(chosen)
    _, height, width = cfg.input_size
    crop_pct = cfg.crop_pct or DEFAULT_CROP_PCT
    return {
        "channels": 3,
        "image_size": (height, width),
        "resize": math.floor(min(height, width) / crop_pct),
        "interpolation": cfg.interpolation if cfg.interpolation in INTERPOLATIONS else None,
        "mean": list(cfg.mean),
        "std": list(cfg.std),
    }


def timm_architecture(spec: InputSpec, arch: str = "resnet18", weights=None) -> nn.Module:
    """The network timm_classifier builds for these options, randomly initialised, reading no
    weights file and no cache (a trained run's checkpoint is loaded into it, on a machine that
    has neither): a pretrained tag's own configuration by its name, else `arch`'s."""
    name = pretrained_name(arch, weights)[0]
    return timm_module().create_model(name or arch, pretrained=False, num_classes=spec.num_classes)


@register("timm", check=resolve_weights, data_defaults=data_defaults,
          architecture=timm_architecture)  # fmt: skip
def timm_classifier(spec: InputSpec, arch: str = "resnet18", weights=None) -> nn.Module:
    chosen = resolve_weights(arch, weights)
    if spec.channels != 3:
        raise UserError(
            f"model=timm takes 3-channel images, not data.channels={spec.channels}; "
            "leave data.channels unset (grayscale is repeated to RGB) or set it to 3"
        )
    timm = timm_module()
    if isinstance(chosen, str):
        model = pretrained(chosen)
        model.reset_classifier(spec.num_classes)  # a fresh head, as for torchvision's weights
    else:
        model = timm.create_model(arch, pretrained=False, num_classes=spec.num_classes)
        if chosen is not None:
            load_state_dict_file(model, chosen, f"timm's {arch}")
    check_input_size(model, spec, arch)
    return model


def cached_copy(cfg) -> tuple[Path | None, str]:
    """(the local copy of pretrained weights `cfg` or None, what to fetch and where to put it)."""
    from huggingface_hub import constants, try_to_load_from_cache

    if cfg.hf_hub_id:
        names = (cfg.hf_hub_filename,) if cfg.hf_hub_filename else HF_WEIGHT_FILES
        fetch = (
            f"fetch {names[0]} of the Hugging Face repository {cfg.hf_hub_id} into the cache "
            f"{constants.HF_HUB_CACHE} (`hf download {cfg.hf_hub_id} {names[0]}` on a machine "
            "with a network; HF_HOME or HF_HUB_CACHE say where the cache is)"
        )
        for name in names:
            found = try_to_load_from_cache(cfg.hf_hub_id, name)
            if isinstance(found, str):
                return Path(found), fetch
        return None, fetch
    folder = Path(torch.hub.get_dir()) / "checkpoints"
    file = folder / Path(urlparse(cfg.url).path).name
    fetch = f"fetch {cfg.url} and put it in {folder} (TORCH_HOME says where it is)"
    return (file if file.is_file() else None), fetch


def pretrained(name: str) -> nn.Module:
    """timm's `name` (arch.tag) with its pretrained weights, from the local cache only (as with
    HF_HUB_OFFLINE=1: a training run never waits on a download); a one-line UserError naming
    what to fetch, and where, when there is no copy or it cannot be read."""
    timm = timm_module()
    cfg = timm.models.get_pretrained_cfg(name)
    copy, fetch = cached_copy(cfg)
    if copy is None:
        raise UserError(f"model.weights: timm's {name} weights are not in the local cache; {fetch}")
    from safetensors import SafetensorError  # timm's dependency: hub weights are safetensors

    try:
        return timm.create_model(name, pretrained=True, pretrained_cfg_overlay={"file": str(copy)})
    except (*LOAD_ERRORS, ValueError, KeyError, SafetensorError) as e:
        raise UserError(
            f"model.weights: {copy} could not be read as timm's {name} ({first_line(e)}); "
            f"delete it and {fetch}"
        ) from e


@torch.no_grad()
def check_input_size(model: nn.Module, spec: InputSpec, arch: str) -> None:
    """Refuse, in one line, an input size the network cannot take (a shapes-only forward)."""
    error = meta_forward_error(model, (spec.channels, spec.height, spec.width))
    if error is None:
        return
    _, height, width = model.pretrained_cfg.get("input_size", (3, 224, 224))
    hint = (
        f"set data.image_size=[{height},{width}]"
        if height != width
        else f"set data.image_size={height}"
    )
    raise UserError(
        f"model.arch={arch} cannot take {spec.height}×{spec.width} images ({error}); {hint}"
    )
