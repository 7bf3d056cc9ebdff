"""cnntrain-export's work: a trained network with its normalization inside, as ONNX or
TorchScript, carrying its class names, mean/std and input size, checked against PyTorch on a
batch of images before the file is put in place.

The exported network takes float32 pixels in [0, 1], (N, C, H, W) with N free (what ToTensor
gives, stacked), and returns logits (N, classes). Metadata, each value JSON: `classes` (names in
logit order), `mean` and `std` (per channel, applied inside), `input_size` ([C, H, W]): ONNX
`metadata_props`, TorchScript extra files of those names (`torch.jit.load(path,
_extra_files=...)`). How an image of any size becomes that input, as training's evaluation made
it: `resize` (px its short side is resized to; null: just covering the input size) with
`interpolation` (bilinear, bicubic or nearest), then a centre crop to `input_size` (`squash`
true: a run saved before `resize` existed, whose images were stretched to `input_size` instead).
Loading the TorchScript file needs torch only, the ONNX file any ONNX runtime. Calibration:
`temperature` (T fitted on the validation split, 1 when none) and `calibrated` (true when the
graph already divides its logits by T: --calibrated); softmax(logits / T) of a raw file,
softmax(logits) of a calibrated one, gives calibrated probabilities. A run with several labels
per image exports each label's sigmoid probability (output `probabilities`, (N, labels)) with
`multi_label` true and `thresholds` (each label's, in `classes` order: a label is predicted when
its probability is at least its threshold).
"""

import json
import logging
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from omegaconf import DictConfig

from cnntrain.core.checkpoint import run_folder
from cnntrain.core.errors import UserError
from cnntrain.core.extras import install_command
from cnntrain.core.files import atomic_write, refuse_link, refuse_links
from cnntrain.data import load_evaluation_split
from cnntrain.trained.eval import eval_config
from cnntrain.trained.load import Normalized, TrainedModel, load_trained, unit_range

FILE_NAMES = {"onnx": "model.onnx", "torchscript": "model.torchscript.pt"}  # under RUN_DIR/export/
TOLERANCE = 1e-4  # largest |logit difference| from PyTorch's that an exported file may show
CHECK_IMAGES = 8  # images of the run's test split the export is checked on
TRACE_BATCH = 2  # images the network is traced with: the check's batch of 8 proves N is free
ONNX_EXTRA = f"{install_command('onnx')} (onnx, onnxscript, onnxruntime)"
log = logging.getLogger("cnntrain")


@dataclass
class Exported:
    """An export, checked: where it is, and how close to PyTorch it computes."""

    path: Path
    max_difference: float  # largest |logit difference| from PyTorch's on the check images
    checked_on: str  # which images: "8 test images of …" or "8 random images (…)"


def metadata(trained: TrainedModel, calibrated: bool) -> dict[str, str]:
    """What travels with the exported file, each value as JSON."""
    spec = trained.spec
    return {
        "classes": json.dumps(trained.classes),
        "mean": json.dumps(trained.mean),
        "std": json.dumps(trained.std),
        "input_size": json.dumps([spec.channels, spec.height, spec.width]),
        "resize": json.dumps(spec.resize),
        "interpolation": json.dumps(spec.interpolation),
        # true only for a run saved before data.resize: stretched, no crop, no EXIF turn
        "squash": json.dumps(spec.squash),
        "temperature": json.dumps(trained.temperature or 1.0),  # the documented 1 when none
        "calibrated": json.dumps(calibrated),
        **(multi_label_metadata(trained) if trained.multi_label else {}),
    }


def multi_label_metadata(trained: TrainedModel) -> dict[str, str]:
    """Several labels per image: the outputs are each label's probability, predicted at or
    above its threshold."""
    return {"multi_label": json.dumps(True), "thresholds": json.dumps(trained.thresholds.values)}


def check_images(trained: TrainedModel, fresh: DictConfig) -> tuple[torch.Tensor, str]:
    """(uint8 (n, C, H, W), what they are): the first CHECK_IMAGES of the run's own test split
    (its data looked for with this machine's `fresh` paths), else random pixels, saying why."""
    cfg = eval_config(trained.config, fresh, [])
    cfg.data.max_eval_samples = CHECK_IMAGES  # a seeded draw: only these are decoded
    try:
        split = load_evaluation_split(cfg, torch.device("cpu"), trained.spec, trained.mean,
                                      trained.std, trained.classes,
                                      trained.multi_label)  # fmt: skip
        images = split.loader.images_at(range(min(CHECK_IMAGES, split.loader.count)))
    except UserError as e:
        why = str(e)
    else:
        if len(images):
            return images, f"{len(images)} {split.name} images of {split.origin}"
        why = "none of them could be read"
    spec = trained.spec
    generator = torch.Generator().manual_seed(0)
    shape = (CHECK_IMAGES, spec.channels, spec.height, spec.width)
    images = torch.randint(0, 256, shape, dtype=torch.uint8, generator=generator)
    return images, f"{CHECK_IMAGES} random images (the run's test data could not be read: {why})"


def export_run(source, fmt: str, out: Path | None, fresh: DictConfig,
               calibrated: bool = False) -> Exported:  # fmt: skip
    """Export the run (folder or checkpoint) `source` as `fmt` (onnx | torchscript) to `out`
    (default RUN_DIR/export/<FILE_NAMES[fmt]>); a file that fails its check is not kept.
    `calibrated`: the graph divides its logits by the run's temperature."""
    if fmt == "onnx":
        require_onnx()
    if out is None:
        refuse_links(run_folder(source), ["export"])  # a received run's export/ may be a link
        out = run_folder(source) / "export" / FILE_NAMES[fmt]
    out = Path(out)
    refuse_link(out)  # now, not after the work (atomic_write refuses it too)
    trained = load_trained(source)
    if calibrated and trained.temperature is None:
        log.warning("%s has no fitted temperature (trained with data.val_split=0?): --calibrated "
                    "divides by 1", trained.checkpoint)  # fmt: skip
    model = trained.normalized(calibrated, sigmoid=trained.multi_label)
    images, checked_on = check_images(trained, fresh)
    pixels = unit_range(images)  # (n, C, H, W) in [0, 1]
    with torch.no_grad():
        expected = model(pixels)
    write, run = WRITERS[fmt]
    difference = float("nan")

    def write_checked(tmp: Path) -> None:
        nonlocal difference
        write(model, pixels[:TRACE_BATCH], tmp, metadata(trained, calibrated))
        difference = float((run(tmp, pixels) - expected).abs().max())
        if not difference <= TOLERANCE:
            raise UserError(
                f"the {fmt} export of {trained.checkpoint} gives logits up to {difference:.3g} "
                f"away from PyTorch's on {checked_on} (more than {TOLERANCE:g}); {out} was not "
                "written"
            )

    atomic_write(out, write_checked)
    return Exported(out, difference, checked_on)


def require_onnx() -> None:
    """ONNX export needs the `onnx` extra; say how to get it before any work."""
    try:
        import onnxruntime  # noqa: F401
        import onnxscript  # noqa: F401
    except ImportError as e:
        raise UserError(f"--format onnx needs {e.name}: {ONNX_EXTRA}") from e


def write_onnx(model: Normalized, example: torch.Tensor, path: Path, meta: dict) -> None:
    """torch.onnx's exporter (torch.export-based), the batch axis named `batch` and free, the
    output named `logits`, or `probabilities` when the model ends in a sigmoid."""
    program = torch.onnx.export(
        model,
        (example,),
        input_names=["pixels"],
        output_names=["probabilities" if model.sigmoid else "logits"],
        dynamic_shapes=({0: torch.export.Dim("batch")},),
        dynamo=True,
        verbose=False,
    )
    program.model.metadata_props.update(meta)
    program.save(str(path))


def run_onnx(path: Path, pixels: torch.Tensor) -> torch.Tensor:
    """The outputs ONNX Runtime computes with the file at `path`."""
    import onnxruntime

    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (outputs,) = session.run(None, {"pixels": pixels.numpy()})  # its one output
    return torch.from_numpy(np.asarray(outputs))


def write_torchscript(model: Normalized, example: torch.Tensor, path: Path, meta: dict) -> None:
    """torch.jit.trace (deprecated upstream in favour of torch.export, still what a C++ or
    Python program without cnntrain loads with torch.jit.load); the metadata as extra files."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"`torch\.jit\.\w+` is deprecated")
        traced = torch.jit.trace(model, example)
        # Through a Python file: given a path, torch's C++ writer aborts the whole process when the
        # disk is full or the file too large; a Python file raises OSError instead.
        with open(path, "wb") as f:
            torch.jit.save(traced, f, _extra_files=meta)


def run_torchscript(path: Path, pixels: torch.Tensor) -> torch.Tensor:
    """The outputs of the TorchScript file at `path`, loaded as a program without cnntrain
    would (torch.jit.load)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"`torch\.jit\.\w+` is deprecated")
        loaded = torch.jit.load(str(path), map_location="cpu")
    with torch.no_grad():
        return loaded(pixels)


WRITERS = {"onnx": (write_onnx, run_onnx), "torchscript": (write_torchscript, run_torchscript)}
