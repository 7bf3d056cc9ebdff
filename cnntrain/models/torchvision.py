"""model=torchvision: any torchvision classifier by name, random or pretrained, sized for the data.

`model.arch` is a name of `torchvision.models.list_models(module=torchvision.models)` (the
classification models; not detection, segmentation, video or quantized ones). `model.weights`:

- null: torchvision's own random init, built for the dataset's class count. The input is the
  data's own size unless `data.image_size` is set; a model that cannot take that size (ViT and
  MaxViT take 224×224 only, inception_v3 at least 75×75) is refused when it is built.
- a weights name (`DEFAULT`, `IMAGENET1K_V1`, …: the members of `get_model_weights(arch)`):
  torchvision's builder loads them, through torch hub's cache `$TORCH_HOME/hub/checkpoints/`
  (downloaded there if absent), and keeps its own stem; the classification head (head.py) is
  replaced by a fresh one for the dataset's classes. The data then takes the weights' own
  preprocessing (`data_defaults`) unless `data.image_size`/`data.mean`/`data.std` are set.
- a path to a state-dict file (a plain state dict, or a cnntrain checkpoint's `model`): every
  tensor but the head's must fit the network as built for null; the head's is loaded when its
  class count matches. The file carries no preprocessing: the data is treated as for null.

The input is always 3 channels: grayscale data is repeated to RGB by the data pipeline
(`data_defaults` says channels=3). No wrapper module: the `model` state dict has torchvision's
own key names and loads strictly into `torchvision.models.get_model(arch, num_classes=K)` —
with `aux_logits=False` for googlenet and inception_v3, and with the weights' `image_size`
(ViT) or `input_size` (MaxViT) when those are not 224.
"""

import contextlib
import difflib
import os
import pickle
import zipfile
from pathlib import Path
from urllib.parse import urlparse

import torch
from torch import nn
from torchvision import models as tv

from cnntrain.core.checkpoint import FORMAT
from cnntrain.core.errors import UserError, first_line
from cnntrain.core.spec import InputSpec
from cnntrain.models.head import replace_head
from cnntrain.models.registry import register
from cnntrain.models.shapes import meta_output
from cnntrain.models.transfer import match_tensors

ARCHS = tuple(tv.list_models(module=tv))
# googlenet and inception_v3 build auxiliary heads unless told not to, and then return tuples in
# train mode; torchvision drops them itself after loading weights, so say it only for random init.
RANDOM_INIT_OPTIONS = {
    arch: {"aux_logits": False, "init_weights": True} for arch in ("googlenet", "inception_v3")
}
RANDOM_INIT_SIDE = 224  # px: what torchvision builds ViT and MaxViT for without weights
LOAD_ERRORS = (OSError, RuntimeError, pickle.UnpicklingError, zipfile.BadZipFile, EOFError)


def check_arch(arch) -> None:
    if arch not in ARCHS:
        close = difflib.get_close_matches(str(arch), ARCHS, n=5, cutoff=0.5)
        hint = f"close matches: {', '.join(close)}" if close else f"one of: {', '.join(ARCHS)}"
        raise UserError(f"model.arch={arch!r} is not a torchvision classifier; {hint}")


def weights_named(arch: str, weights) -> tv.WeightsEnum | None:
    """The member of `arch`'s weights enum that `model.weights` names, or None (null, a file)."""
    if weights is None:
        return None
    enum = tv.get_model_weights(arch)
    name = str(weights).removeprefix(f"{enum.__name__}.")
    if name not in [*enum.__members__, "DEFAULT"]:
        return None
    return tv.get_weight(f"{enum.__name__}.{name}")


def resolve_weights(arch: str, weights) -> tv.WeightsEnum | Path | None:
    """`model.weights` as torchvision's weights enum member, a state-dict file, or None."""
    check_arch(arch)
    named = weights_named(arch, weights)
    if weights is None or named is not None:
        return named
    names = [w.name for w in tv.get_model_weights(arch)]
    path = Path(str(weights)).expanduser()
    if not path.is_file():
        raise UserError(
            f"model.weights={weights!r} is neither a weights name of {arch} "
            f"(DEFAULT, {', '.join(names)}) nor an existing state-dict file"
        )
    return path


NO_PREPROCESSING = {"channels": 3, "image_size": None, "resize": None, "interpolation": None,
                    "mean": None, "std": None}  # fmt: skip


def data_defaults(arch, weights) -> dict:
    """What the data must be for `arch` with `weights`: 3 channels, and with pretrained weights
    their own preprocessing (`transforms()`, no download): the short side resized to
    `resize_size` px with their interpolation, centre-cropped to the size fed to the network,
    and their mean/std. A file's are none (it is not read: a resumed run's may be gone)."""
    check_arch(arch)
    chosen = weights_named(arch, weights)
    if chosen is None:
        return dict(NO_PREPROCESSING)
    preprocess = chosen.transforms()
    crop = preprocess.crop_size  # [side] or [H, W]
    return {
        "channels": 3,
        "image_size": (crop[0], crop[-1]),
        "resize": preprocess.resize_size[0],  # [short side]
        "interpolation": preprocess.interpolation.value,  # "bilinear", "bicubic"
        "mean": list(preprocess.mean),
        "std": list(preprocess.std),
    }


def torchvision_architecture(spec: InputSpec, arch: str = "resnet18", weights=None) -> nn.Module:
    """The network torchvision_classifier builds for these options, randomly initialised and
    reading no weights file (a trained run's checkpoint is loaded into it instead)."""
    return tv.get_model(
        arch,
        num_classes=spec.num_classes,
        **architecture_options(arch, weights_named(arch, weights)),
    )


def architecture_options(arch: str, weights: tv.WeightsEnum | None) -> dict:
    """Builder options that make a random-init network compute what torchvision's builder with
    `weights` builds: with weights, it sets googlenet's and inception_v3's `transform_input` (the
    input is re-normalized as their original training's was) and ViT's `image_size` / MaxViT's
    `input_size`; without, cnntrain's own RANDOM_INIT_OPTIONS apply."""
    if weights is None:
        return RANDOM_INIT_OPTIONS.get(arch, {})
    if arch in RANDOM_INIT_OPTIONS:
        return {"aux_logits": False, "init_weights": False, "transform_input": True}
    if arch.startswith("vit_"):
        return {"image_size": weights.meta["min_size"][0]}
    if arch.startswith("maxvit_"):
        return {"input_size": weights.meta["min_size"]}
    return {}


@register(
    "torchvision",
    check=resolve_weights,
    data_defaults=data_defaults,
    architecture=torchvision_architecture,
)
def torchvision_classifier(spec: InputSpec, arch: str = "resnet18", weights=None) -> nn.Module:
    chosen = resolve_weights(arch, weights)
    if spec.channels != 3:
        raise UserError(
            f"model=torchvision takes 3-channel images, not data.channels={spec.channels}; "
            "leave data.channels unset (grayscale is repeated to RGB) or set it to 3"
        )
    if isinstance(chosen, tv.WeightsEnum):
        model = pretrained(arch, chosen)
        replace_head(model, spec.num_classes)
    else:
        model = tv.get_model(
            arch, num_classes=spec.num_classes, **RANDOM_INIT_OPTIONS.get(arch, {})
        )
        if chosen is not None:
            load_state_dict_file(model, chosen, f"torchvision's {arch}")
    check_input_size(model, spec, arch, chosen)
    return model


def pretrained(arch: str, weights: tv.WeightsEnum) -> nn.Module:
    """torchvision's own builder with `weights`: it reads them from torch hub's cache, or
    downloads them there; a one-line UserError when neither works."""
    folder = Path(torch.hub.get_dir()) / "checkpoints"
    file = Path(urlparse(weights.url).path).name
    had_copy = (folder / file).is_file()
    try:
        with weights_only_loading():
            return tv.get_model(arch, weights=weights)
    except LOAD_ERRORS as e:
        reason = first_line(e)
        label = f"model.weights: {type(weights).__name__}.{weights.name}"
        if had_copy:
            raise UserError(
                f"{label}: {folder / file} could not be read as {arch}'s weights ({reason}); "
                f"delete it and fetch {weights.url} again"
            ) from e
        raise UserError(
            f"{label}: {file} is not in {folder} and could not be downloaded ({reason}); "
            f"fetch {weights.url} and put it in that folder (TORCH_HOME sets where it is)"
        ) from e


@contextlib.contextmanager
def weights_only_loading():
    """torchvision's builders call torch.load(weights_only=False); this forces weights_only=True
    (torch's documented TORCH_FORCE_WEIGHTS_ONLY_LOAD), so loading never runs code from a file."""
    before = os.environ.get("TORCH_FORCE_WEIGHTS_ONLY_LOAD")
    os.environ["TORCH_FORCE_WEIGHTS_ONLY_LOAD"] = "1"
    try:
        yield
    finally:
        if before is None:
            del os.environ["TORCH_FORCE_WEIGHTS_ONLY_LOAD"]
        else:
            os.environ["TORCH_FORCE_WEIGHTS_ONLY_LOAD"] = before


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """The tensors of a state-dict file: a plain state dict or a cnntrain checkpoint's `model`."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except (*LOAD_ERRORS, ValueError) as e:
        reason = first_line(e)
        raise UserError(f"model.weights={str(path)!r} could not be read ({reason})") from e
    if isinstance(state, dict) and state.get("format") == FORMAT:
        state = state["model"]
    if not isinstance(state, dict) or not all(torch.is_tensor(t) for t in state.values()):
        raise UserError(
            f"model.weights={str(path)!r} is not a state dict (name → tensor) "
            "nor a cnntrain checkpoint"
        )
    return state


def load_state_dict_file(model: nn.Module, path: Path, network: str) -> None:
    """Load every tensor of `path` into `model` (`network`, e.g. "torchvision's resnet18", for
    the message); only the head may differ (another class count)."""
    saved = read_state_dict(path)
    match = match_tensors(model.state_dict(), saved, model)
    misfits = [name for name in match.skipped + match.new if name not in match.head]
    misfits += match.unused
    if misfits:
        raise UserError(
            f"model.weights={str(path)!r} does not fit {network}: {len(misfits)} "
            f"tensors missing, extra or of another shape (first: {', '.join(misfits[:3])})"
        )
    model.load_state_dict({name: saved[name] for name in match.loaded}, strict=False)


@torch.no_grad()
def check_input_size(model: nn.Module, spec: InputSpec, arch: str, weights) -> None:
    """Refuse, in one line, an input size the network cannot take: a forward pass of one image
    on the meta device, where only shapes are computed (no arithmetic, no memory)."""
    error = meta_forward_error(model, (spec.channels, spec.height, spec.width))
    if error is None:
        return
    side = RANDOM_INIT_SIDE
    if isinstance(weights, tv.WeightsEnum):  # the size the pretrained network was built for
        side = weights.transforms().crop_size[0]
    hint = f"set data.image_size={side}"
    if meta_forward_error(model, (spec.channels, side, side)) is not None:
        hint = "set data.image_size to a size it takes"
    raise UserError(
        f"model.arch={arch} cannot take {spec.height}×{spec.width} images ({error}); {hint}"
    )


def meta_forward_error(model: nn.Module, shape: tuple[int, int, int]) -> str | None:
    """Why `model` fails on one (C, H, W) image, shapes only; None when it does not fail."""
    was_training = model.training
    model.eval()  # BatchNorm in train mode refuses a batch of one
    try:
        meta_output(model, torch.empty(1, *shape, device="meta"))
    except (RuntimeError, AssertionError, ValueError, IndexError) as e:
        return first_line(e)
    finally:
        model.train(was_training)
    return None
