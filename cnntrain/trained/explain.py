"""cnntrain-predict --explain DIR: for each readable image, a PNG of the image beside the
class-activation map of its predicted class (reporting/cam.py), named after the image."""

import logging
import re
from pathlib import Path, PurePosixPath

import torch

from cnntrain.core.errors import UserError
from cnntrain.core.extras import require
from cnntrain.core.files import refuse_link
from cnntrain.core.safe_text import printable
from cnntrain.data.limits import limits_of
from cnntrain.reporting.cam import (
    CAM_BATCH,
    class_activation_maps,
    plot_cams,
    target_layer,
    unexplainable,
)
from cnntrain.reporting.progress import progress_bar
from cnntrain.trained.load import TrainedModel, unit_range
from cnntrain.trained.predict import ImageRef, read_pixels
from cnntrain.training.evaluate import model_logits

log = logging.getLogger(__name__)
STEM_CHARS = 60  # of the image's name kept in its PNG's name, after `<index>_`
UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")  # anything else (separators too) becomes "_"


def explained_layer(trained: TrainedModel, folder: Path, layer: str | None) -> str | None:
    """What --explain explains, checked before any image is read: the network's module `layer`
    (--layer), or target_layer's choice; None, after one warning line, for a model that cannot
    be explained (the predictions are written all the same). A missing extra, a `folder` that
    is a link or a file, or a `layer` that is not a module, are refused."""
    require("pytorch_grad_cam", "explain", "--explain")
    refuse_link(folder)
    if folder.exists() and not folder.is_dir():
        raise UserError(f"--explain {folder} is a file; give a folder to write the maps into")
    reason = unexplainable(trained.network)
    spec = trained.spec
    try:
        if reason is None:
            return target_layer(trained.network, (spec.channels, spec.height, spec.width), layer)
    except UserError as e:
        if layer is not None:
            raise
        reason = str(e)
    log.warning("--explain: %s; the predictions are written without maps", reason)
    return None


def png_name(index: int, name: str) -> str:
    """`<index:04d>_<stem>.png`: the image's file stem, its characters outside [A-Za-z0-9._-]
    replaced by "_" and no leading dot: a plain name inside the folder, whatever `name` holds."""
    stem = PurePosixPath(name.replace("\\", "/")).stem
    return f"{index:04d}_{UNSAFE.sub('_', stem)[:STEM_CHARS].lstrip('.') or 'image'}.png"


def write_explanations(trained: TrainedModel, refs: list[ImageRef], folder: Path, layer: str,
                       method: str, *, tta: bool, device: torch.device,
                       show_bars: bool) -> int:  # fmt: skip
    """One PNG per readable image of `refs` into `folder` (created), named png_name(its index
    among the readable images, as in the CSV, from 0), titled with the predicted class and its
    calibrated probability (as the CSV's, with `tta` too), the map of that class at the
    network's `layer` by `method`; the number written. CAM_BATCH images per pass."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserError(f"--explain {folder}: cannot create it ({e.strerror or e})") from e
    model = trained.normalized(calibrated=True).to(device)
    heading = f"{method} map of the predicted class, layer {layer}"
    names, pixels, written = [], [], 0

    def explain_batch() -> int:
        batch = unit_range(torch.stack(pixels)).to(device)  # (B, C, H, W) in [0, 1]
        with torch.no_grad():
            confidence, predicted = model_logits(model, batch, tta).softmax(1).max(1)
        maps = class_activation_maps(model, batch, predicted, f"network.{layer}", method)
        shown = zip(names, pixels, maps, predicted.tolist(), confidence.tolist(), strict=True)
        for i, (name, image, cam, k, p) in enumerate(shown, start=written):
            title = f"{trained.classes[k]} (p={p:.2f})"
            plot_cams(
                image[None],
                cam[None],
                [title],
                [printable(name)],
                heading,
                folder / png_name(i, name),
            )
        names.clear()
        pixels.clear()
        return written + len(maps)

    with progress_bar(len(refs), "explain", show_bars) as bar:
        for ref, image in read_pixels(refs, trained.spec, limits_of(trained.config["data"])):
            bar.update()
            if isinstance(image, str):  # unreadable: cnntrain-predict counts it already
                continue
            names.append(ref.name)
            pixels.append(image)
            if len(pixels) == CAM_BATCH:
                written = explain_batch()
    return explain_batch() if pixels else written
