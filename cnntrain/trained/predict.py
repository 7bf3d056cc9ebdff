"""cnntrain-predict's work: find images in files, folders and archives, label them in batches
with a trained run, and write the CSV (`path`, `prediction`, `probability`, `top2`, …).

The images are received files: an archive member is read as a stream, never past
data.max_file_mb, an image past data.max_image_pixels is skipped (the run's caps, else the
defaults), and CSV cells that a spreadsheet would run as formulas are neutralised.
"""

import contextlib
import csv
import io
import logging
import tarfile
import zipfile
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image
from torchvision.datasets.folder import IMG_EXTENSIONS

from cnntrain.core.errors import UserError
from cnntrain.core.files import write_text
from cnntrain.core.safe_text import csv_row, printable
from cnntrain.core.spec import InputSpec
from cnntrain.data.decode import DECODE_ERRORS
from cnntrain.data.limits import Limits, TooLarge, check_member_size, limits_of, open_image
from cnntrain.data.listing import label_set_text
from cnntrain.data.sources import ARCHIVE_SUFFIXES
from cnntrain.reporting.progress import progress_bar
from cnntrain.trained.load import TrainedModel, image_pixels, unit_range
from cnntrain.training.evaluate import model_logits

log = logging.getLogger(__name__)
TOP_K = 5  # default --top-k: the prediction and 4 runners-up (fewer when the model has fewer)
UNKNOWN = "unknown"  # --abstain's prediction for an image below the confidence asked for
ARCHIVE_ERRORS = (OSError, EOFError, zipfile.BadZipFile, tarfile.TarError, zlib.error)
# A batch of batch_probabilities: indices in the refs, uint8 pixels, calibrated probabilities.
Scored = tuple[list[int], torch.Tensor, torch.Tensor]


@dataclass(frozen=True)
class ImageRef:
    """One image to label: a file, or a member of an archive (read without unpacking)."""

    name: str  # as the CSV's `path` shows it: the file's path, or ARCHIVE/MEMBER
    file: Path  # the image file, or the archive holding it
    member: str | None = None  # the archive member's name
    size: int = 0  # the archive member's stated size, bytes (what reading it can yield)


@dataclass
class Predictions:
    """What cnntrain-predict found: a CSV row per readable image, and the unreadable ones."""

    header: list[str]
    rows: list[list[str]]
    skipped: list[str]  # the files not read, as shown (escaped; with the cap when over one)
    answered: int | None = None  # with --abstain: the rows not UNKNOWN


def is_image_name(name: str) -> bool:
    return name.lower().endswith(IMG_EXTENSIONS)


def is_archive(path: Path) -> bool:
    return path.name.lower().endswith(ARCHIVE_SUFFIXES)


def find_images(paths: list[str]) -> list[ImageRef]:
    """The images `paths` name: files as given, folders' image files (recursively, sorted), and
    archives' image members (.zip, .tar.gz, .tgz, .tar); a UserError when there are none."""
    found = []
    for given in paths:
        path = Path(given).expanduser()
        if path.is_dir():
            files = sorted(p for p in path.rglob("*") if p.is_file() and is_image_name(p.name))
            found += [ImageRef(str(p), p) for p in files]
        elif path.is_file():
            found += archive_members(path) if is_archive(path) else [ImageRef(given, path)]
        else:
            raise UserError(
                f"{given}: no such file or folder; give image files, folders or archives"
            )
    if not found:
        raise UserError(
            f"no image files in {', '.join(paths)} (looked for {', '.join(IMG_EXTENSIONS)} files, "
            "in folders and .zip/.tar.gz archives too)"
        )
    return found


def archive_members(archive: Path) -> list[ImageRef]:
    """The image members of a .zip or tar archive, in the archive's order."""
    try:
        with open_archive(archive) as opened_archive:
            if isinstance(opened_archive, zipfile.ZipFile):
                sizes = [(i.filename, i.file_size) for i in opened_archive.infolist()]
            else:
                sizes = [(m.name, m.size) for m in opened_archive.getmembers() if m.isfile()]
    except ARCHIVE_ERRORS as e:
        raise UserError(f"could not read the archive {archive}: {e}; is it complete?") from e
    return [
        ImageRef(f"{archive}/{name}", archive, name, size)
        for name, size in sizes
        if is_image_name(name)
    ]


def read_pixels(
    refs: list[ImageRef], spec: InputSpec, limits: Limits
) -> Iterator[tuple[ImageRef, torch.Tensor | str]]:
    """Each image as the model's (C, H, W) uint8 input, or why it was not read: "" when it
    cannot be read or converted, the cap it passes when over one; every archive is opened once."""
    with contextlib.ExitStack() as stack:
        archives: dict[Path, zipfile.ZipFile | tarfile.TarFile] = {}
        for ref in refs:
            try:
                if ref.member is None:
                    image = opened(ref.file, limits.max_image_pixels)
                else:
                    check_member_size(ref.size, limits)  # before a byte is read
                    if ref.file not in archives:
                        archives[ref.file] = stack.enter_context(open_archive(ref.file))
                    with member_stream(archives[ref.file], ref.member) as stream:
                        image = opened(stream, limits.max_image_pixels)
                yield ref, image_pixels(image, spec)
            except TooLarge as e:
                yield ref, str(e)
            except (*DECODE_ERRORS, *ARCHIVE_ERRORS):
                yield ref, ""


def open_archive(path: Path) -> zipfile.ZipFile | tarfile.TarFile:
    return zipfile.ZipFile(path) if path.name.lower().endswith(".zip") else tarfile.open(path)


def member_stream(archive: zipfile.ZipFile | tarfile.TarFile, member: str) -> io.IOBase:
    """An archive member as a binary stream: it yields at most the member's stated size."""
    if isinstance(archive, zipfile.ZipFile):
        return archive.open(member)  # zipfile stops at the stated size and checks the CRC
    return archive.extractfile(member)


def opened(file, max_pixels: int) -> Image.Image:
    """The image in `file` (a path or a binary stream), read whole now: a truncated file fails
    here, not later; one over `max_pixels` (H × W) is refused before its pixels are read."""
    with open_image(file, max_pixels) as img:
        img.load()
        return img


def csv_header(k: int) -> list[str]:
    """path, prediction, probability, top2, top2_probability, … topK, topK_probability."""
    ranks = [f"top{i}" for i in range(2, k + 1)]
    return ["path", "prediction", "probability"] + [
        c for r in ranks for c in (r, f"{r}_probability")
    ]


def batch_probabilities(trained: TrainedModel, refs: list[ImageRef], *, batch_size: int,
                        tta: bool | str, device: torch.device, show_bars: bool,
                        skipped: list[str]) -> Iterator[Scored]:  # fmt: skip
    """The readable images of `refs`, each decoded once, `batch_size` at a time: (their indices
    in `refs`, their uint8 pixels (B, C, H, W), their calibrated probabilities (B, K) float64 on
    the CPU: softmax(logits / the run's temperature), or with several labels per image each
    label's sigmoid(logit); logits by model_logits with `tta`). Each unreadable image is
    appended to `skipped` as shown (escaped; with the cap when over one)."""
    model = trained.normalized(calibrated=True).to(device)
    places, pixels = [], []

    def scored() -> Scored:
        batch = torch.stack(pixels)
        with torch.no_grad():
            logits = model_logits(model, unit_range(batch).to(device), tta).double()
        probabilities = logits.sigmoid() if trained.multi_label else logits.softmax(1)
        done = (places.copy(), batch, probabilities.cpu())
        places.clear()
        pixels.clear()
        return done

    images = read_pixels(refs, trained.spec, limits_of(trained.config.get("data", {})))
    with progress_bar(len(refs), "predict", show_bars) as bar:
        for place, (ref, image) in enumerate(images):
            bar.update()
            if isinstance(image, str):
                skipped.append(printable(ref.name) + (f" ({image})" if image else ""))
                continue
            places.append(place)
            pixels.append(image)
            if len(pixels) == batch_size:
                yield scored()
    if pixels:
        yield scored()


def predict(trained: TrainedModel, refs: list[ImageRef], *, batch_size: int, top_k: int,
            tta: bool, device: torch.device, show_bars: bool, abstain: float | None = None,
            each_batch: Callable | None = None) -> Predictions:  # fmt: skip
    """Label `refs` with `trained` (batch_probabilities): the `top_k` classes of each readable
    image by calibrated probability; with several labels per image its label set and every
    label's probability (multilabel_rows). `abstain`: see `abstained`. `each_batch`: called
    with each batch's names, uint8 pixels, predicted class indices and their probabilities, as
    in its rows (cnntrain-predict --explain draws its maps from them; with several labels, of
    each image's most probable label)."""
    k = min(top_k, len(trained.classes))
    rows, skipped, confident = [], [], []
    scored = batch_probabilities(trained, refs, batch_size=batch_size, tta=tta, device=device,
                                 show_bars=show_bars, skipped=skipped)  # fmt: skip
    if trained.multi_label:
        return multilabel_predictions(trained, refs, scored, skipped, each_batch)
    for places, pixels, probabilities in scored:
        top = probabilities.topk(k, dim=1)  # (B, k) each, most probable first
        names = [refs[i].name for i in places]
        values, indices = top.values.tolist(), top.indices.tolist()
        for name, p, i in zip(names, values, indices, strict=True):
            row = [name] + [v for j in range(k) for v in (trained.classes[i[j]], f"{p[j]:.6f}")]
            confident.append(abstain is None or p[0] >= abstain)
            rows.append(row if abstain is None else abstained(row, confident[-1]))
        if each_batch is not None:
            each_batch(names, pixels, [i[0] for i in indices], [p[0] for p in values])
    if not rows:
        raise nothing_read(refs, skipped)
    if abstain is None:
        return Predictions(csv_header(k), rows, skipped)
    return Predictions([*csv_header(k), "best_guess"], rows, skipped, sum(confident))


def multilabel_predictions(trained: TrainedModel, refs: list[ImageRef], scored, skipped: list,
                           each_batch: Callable | None) -> Predictions:  # fmt: skip
    """Predictions with several labels per image: `labels`, those whose probability is at least
    their threshold (the run's, tuned on its validation split), joined by LABEL_JOIN ("" for
    none), and a `p_<label>` column per label."""
    thresholds = trained.thresholds.tensor()
    rows = []
    for places, pixels, probabilities in scored:
        names = [refs[i].name for i in places]
        chosen = (probabilities >= thresholds).tolist()  # (B, L) bool
        for name, flags, p in zip(names, chosen, probabilities.tolist(), strict=True):
            rows.append([name, label_set_text(trained.classes, flags), *(f"{v:.6f}" for v in p)])
        if each_batch is not None:
            top = probabilities.max(1)
            each_batch(names, pixels, top.indices.tolist(), top.values.tolist())
    if not rows:
        raise nothing_read(refs, skipped)
    return Predictions(["path", "labels", *(f"p_{c}" for c in trained.classes)], rows, skipped)


def nothing_read(refs: list[ImageRef], skipped: list[str]) -> UserError:
    return UserError(
        f"none of the {len(refs)} image files could be read (first: {skipped[0]}); are they images?"
    )


def abstained(row: list[str], confident: bool) -> list[str]:
    """A CSV row under --abstain P: `prediction` is UNKNOWN unless the top probability is at
    least P (`confident`); the most probable class also goes in a last column, `best_guess`."""
    return [row[0], row[1] if confident else UNKNOWN, *row[2:], row[1]]


def write_csv(predictions: Predictions, path: Path) -> None:
    """The predictions as CSV at `path`, written atomically (an old file stays until then)."""
    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow(predictions.header)
    writer.writerows(csv_row(row) for row in predictions.rows)
    write_text(path, text.getvalue())
