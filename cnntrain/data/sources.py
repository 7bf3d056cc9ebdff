"""Where images come from: `ImageSource` and `Splits`, ImageFolder trees and archives of them.

Every source ends up as `Splits`: the class names plus, per split, an `ImageSource` holding the
labels and either decoded pixels (array-backed sets) or image files (ImageFolder trees). The
datasets cnntrain knows by name are looked for in data/known.py.
"""

import hashlib
import logging
import shutil
import tarfile
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image
from torchvision.datasets.folder import IMG_EXTENSIONS, find_classes

from cnntrain.core.errors import UserError
from cnntrain.core.safe_text import first_few, printable
from cnntrain.data.cache import build_once, publish_folder, scratch_folder
from cnntrain.data.limits import (
    Limits,
    capped_data_filter,
    default_limits,
    fits,
    open_image,
)
from cnntrain.data.walk import image_files

log = logging.getLogger(__name__)
ARCHIVE_SUFFIXES = (".tar.gz", ".tgz", ".tar", ".zip")
SPLIT_NAMES = ("train", "val", "test")
# 2: unpacked folders are published whole; format 1 could leave one cut short when runs started
# together (a poisoned cache), so its folders are never reused.
UNPACK_FORMAT = 2


@dataclass
class ImageSource:
    """One split's images: `arrays` (N, H, W[, C]) uint8 pixels, or `files` paths to decode
    (an image over `max_pixels`, H × W, is refused as unreadable)."""

    targets: np.ndarray  # (N,) int64 class indices; several labels per image: (N, L) float32 0/1
    arrays: np.ndarray | None = None
    files: list[str] | None = None
    max_pixels: int | None = None

    def __len__(self) -> int:
        return len(self.targets)

    def open(self, i: int) -> Image.Image:
        """Image i as PIL, in its stored mode and size (conversion is the caller's job)."""
        if self.arrays is not None:
            return Image.fromarray(self.arrays[i])
        with open_image(self.files[i], self.max_pixels) as img:
            img.load()  # read now, so a truncated file fails here and the handle is closed
            return img

    def subset(self, indices: np.ndarray) -> "ImageSource":
        arrays = None if self.arrays is None else self.arrays[indices]
        files = None if self.files is None else [self.files[i] for i in indices]
        return ImageSource(self.targets[indices], arrays, files, self.max_pixels)


@dataclass
class Records:
    """What a run folder keeps of how its images were chosen (data/split_table.py writes them)."""

    # splits.csv, when the tool made the split or reused one (data.splits): (path relative to
    # the data's root, POSIX separators; class name; train, val or test) per image
    table: list[tuple[str, str, str]] = field(default_factory=list)
    # bad_rows.csv: rows of a label file or split table left out: (file, row, path, reason)
    bad_rows: list[tuple[str, int, str, str]] = field(default_factory=list)


@dataclass
class Splits:
    """A dataset as found: class names, its splits (`train` always; `val`, `test` if provided)."""

    classes: list[str]
    splits: dict[str, ImageSource]
    origin: str  # where it was found, for the log and for cache keys
    fingerprint: str = field(default="")  # changes when the files change
    records: Records = field(default_factory=Records)
    multi_label: bool = False  # several labels per image: targets (N, L) 0/1, `classes` the labels


def check_root(root: str) -> None:
    """`data.root` must exist (checked before any work, and again when the data is opened)."""
    if not Path(root).expanduser().exists():
        raise UserError(f"data.root={root!r} does not exist; give an ImageFolder folder or archive")


def open_image_folder(path: Path, cache_dir: Path, limits: Limits | None = None) -> Splits:
    """An ImageFolder tree (`train/<class>/*`, plus `val/` and/or `test/`), or an archive of one;
    `limits`: data.max_file_mb and data.max_image_pixels (None: conf/config.yaml's)."""
    check_root(str(path))
    limits = limits or default_limits()
    unpacked = path.is_file()
    if unpacked:
        path = unpack_archive(path, cache_dir / "archives", limits)
    root = find_split_root(path)
    present = [s for s in SPLIT_NAMES if (root / s).is_dir()]
    classes = {split: find_classes(root / split)[0] for split in present}
    check_same_classes(classes, root)
    class_to_idx = {c: i for i, c in enumerate(classes["train"])}
    pixels = limits.max_image_pixels
    splits = {split: folder_source(root / split, class_to_idx, pixels) for split in present}
    # An unpacked archive's folder is named for the archive's size and mtime and written once:
    # its files change only with the archive, so their names suffice (stat-ing 60,000 files
    # costs seconds on a small machine).
    found = fingerprint(splits, limits, stat=not unpacked)
    return Splits(classes["train"], splits, origin=str(root), fingerprint=found)


def find_split_root(path: Path) -> Path:
    """The folder holding `train/`: `path` itself or its only subfolder (archives wrap one)."""
    root = split_root(path)
    if root is None:
        raise UserError(f"{path} has no train/ folder; an ImageFolder needs train/<class>/<images>")
    return root


def split_root(path: Path) -> Path | None:
    """find_split_root's folder, or None when there is no train/ folder."""
    if (path / "train").is_dir():
        return path
    subdirs = [p for p in path.iterdir() if p.is_dir()]
    if len(subdirs) == 1 and (subdirs[0] / "train").is_dir():
        return subdirs[0]
    return None


def check_same_classes(classes: dict[str, list[str]], root: Path) -> None:
    for split, names in classes.items():
        if names != classes["train"]:
            extra = ", ".join(map(printable, sorted(set(names) ^ set(classes["train"]))))
            raise UserError(
                f"{root}: {split}/ and train/ disagree on classes ({extra}); "
                "every split needs the same class folders"
            )


def folder_source(folder: Path, class_to_idx: dict[str, int], max_pixels=None) -> ImageSource:
    """The image files of `folder`'s class folders (`max_pixels`: as ImageSource's); class
    folders without any are refused."""
    found = {name: image_files(folder / name) for name in class_to_idx}
    empty = [printable(name) for name, (files, _) in found.items() if not files]
    if empty:
        raise UserError(
            f"{folder}: class folder(s) with no images: {', '.join(empty)}; "
            f"add images ({', '.join(IMG_EXTENSIONS)}) or remove the folder"
        )
    links = [printable(link) for _, skipped in found.values() for link in skipped]
    if links:
        log.warning("did not follow %d folder link(s) in class folders: %s", len(links),
                    first_few(links))  # fmt: skip
    files = [f for name in class_to_idx for f in found[name][0]]
    targets = [class_to_idx[name] for name in class_to_idx for _ in found[name][0]]
    return ImageSource(np.array(targets, dtype=np.int64), files=files, max_pixels=max_pixels)


def fingerprint(splits: dict[str, ImageSource], limits: Limits, stat: bool = True) -> str:
    """Hash of the caps (they decide which files are usable) and of every file's path and, with
    `stat`, its size and mtime: changes whenever the data does."""
    h = hashlib.blake2b(digest_size=8)
    h.update(repr(limits).encode())
    for split, source in splits.items():
        for f in source.files:
            st = Path(f).stat() if stat else None
            h.update(f"{split}\0{f}\0{st and st.st_size}\0{st and st.st_mtime_ns}\n".encode())
    return h.hexdigest()


def unpack_archive(archive: Path, into: Path, limits: Limits | None = None) -> Path:
    """Unpack `archive` once into `into/<stem>-<hash>/`; later calls, and concurrent ones, reuse it.
    A member over data.max_file_mb (`limits`; None: conf/config.yaml's) is left out, with a
    warning.

    One process unpacks into its own scratch folder and renames it into place whole; the others
    wait for it, so no run ever sees a partly unpacked folder.
    """
    limits = limits or default_limits()
    st = archive.stat()
    text = f"{UNPACK_FORMAT}\0{archive.resolve()}\0{st.st_size}\0{st.st_mtime_ns}"
    text += f"\0{limits.max_file_mb}"  # members past the cap are left out: another cap, folder
    key = hashlib.blake2b(text.encode(), digest_size=6)
    stem = archive.name.split(".")[0]
    target = into / f"{stem}-{key.hexdigest()}"
    return build_once(
        target,
        load=lambda folder: folder if folder.is_dir() else None,
        build=lambda: extract(archive, scratch_folder(target), limits),
        save=publish_folder,
    )


def extract(archive: Path, folder: Path, limits: Limits) -> Path:
    """Unpack `archive` into the empty `folder`, leaving out (with one warning) members over
    data.max_file_mb; on failure remove the folder and say so."""
    log.info("unpacking %s into %s (once)", archive, folder.parent)
    too_large = []
    try:
        if archive.name.endswith(".zip"):
            with zipfile.ZipFile(archive) as z:
                # zipfile stops reading a member at its stated size (and checks its CRC)
                fit = [i for i in z.infolist() if fits(i.filename, i.file_size, limits, too_large)]
                z.extractall(folder, fit)
        else:
            with tarfile.open(archive) as t:
                t.extractall(folder, filter=capped_data_filter(limits, too_large))
    except (tarfile.TarError, zipfile.BadZipFile, EOFError, OSError) as e:
        shutil.rmtree(folder, ignore_errors=True)
        raise UserError(f"could not unpack {archive}: {e}; is it a complete .tar.gz/.zip?") from e
    if too_large:
        log.warning("%s: left out %d member(s): %s", archive, len(too_large), first_few(too_large))
    return folder
