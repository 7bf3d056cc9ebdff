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
from cnntrain.reporting.cam import class_activation_maps, plot_cams, target_layer, unexplainable
from cnntrain.trained.load import TrainedModel, unit_range

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


class Explainer:
    """--explain's PNGs, written batch by batch as cnntrain-predict labels the images (predict's
    `each_batch`: each image is read once): one per readable image into `folder` (created), named
    png_name(its CSV row's index, from 0), titled with the CSV's class and probability, the map
    of that class at the network's `layer` by `method`. `written`: how many so far."""

    def __init__(self, trained: TrainedModel, folder: Path, layer: str, method: str,
                 device: torch.device):  # fmt: skip
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise UserError(f"--explain {folder}: cannot create it ({e.strerror or e})") from e
        self.model = trained.normalized(calibrated=True).to(device)
        self.classes, self.folder, self.layer, self.method = trained.classes, folder, layer, method
        self.written = 0

    def __call__(self, names: list[str], pixels: torch.Tensor, predicted: list[int],
                 confidence: list[float]) -> None:  # fmt: skip
        """The maps of a batch: its names, uint8 pixels (B, C, H, W), predicted classes and
        their probabilities."""
        maps = class_activation_maps(self.model, unit_range(pixels), predicted,
                                     f"network.{self.layer}", self.method)  # fmt: skip
        heading = f"{self.method} map of the predicted class, layer {self.layer}"
        shown = zip(names, pixels, maps, predicted, confidence, strict=True)
        for i, (name, image, cam, k, p) in enumerate(shown, start=self.written):
            title = f"{self.classes[k]} (p={p:.2f})"
            plot_cams(image[None], cam[None], [title], [printable(name)], heading,
                      self.folder / png_name(i, name))  # fmt: skip
        self.written += len(names)
