"""Where images come from: torchvision datasets, offline copies, idx files and ImageFolder trees.

Every source ends up as `Splits`: the class names plus, per split, an `ImageSource` holding the
labels and either decoded pixels (array-backed sets) or image files (ImageFolder trees).

How a known dataset (`data.name`) is looked for, first match wins:
1. `data.root`, when set: an ImageFolder folder or archive (then the name only labels the run);
2. torchvision's own format under `paths.data_dir` (e.g. `cifar-10-batches-py/`);
3. an offline copy under `paths.data_dir`: an ImageFolder tree or archive (`cifar10-jpeg.tar.gz`)
   for the CIFAR sets, the four raw idx `.gz` files (`fashion-mnist/`) for the MNIST sets,
   also where Debian's `dataset-*` packages install them (`/usr/share/datasets/...`);
4. a torchvision download into `paths.data_dir` when `data.download` is true.
"""

import gzip
import hashlib
import logging
import shutil
import tarfile
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image
from torchvision import datasets as tvd
from torchvision.datasets.folder import IMG_EXTENSIONS, find_classes

from cnntrain.core.errors import UserError
from cnntrain.core.safe_text import printable
from cnntrain.data.cache import build_once, publish_folder, scratch_folder
from cnntrain.data.limits import (
    Limits,
    capped_data_filter,
    default_limits,
    fits,
    limits_of,
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

    targets: np.ndarray  # (N,) int64 class indices
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
class Splits:
    """A dataset as found: class names, its splits (`train` always; `val`, `test` if provided)."""

    classes: list[str]
    splits: dict[str, ImageSource]
    origin: str  # where it was found, for the log and for cache keys
    fingerprint: str = field(default="")  # changes when the files change


@dataclass(frozen=True)
class KnownDataset:
    torchvision_class: type
    folder_names: tuple[str, ...] = ()  # offline ImageFolder copies (folder or archive stem)
    idx_dirs: tuple[str, ...] = ()  # offline raw idx copies (relative to data_dir, or absolute)


KNOWN = {
    "cifar10": KnownDataset(tvd.CIFAR10, folder_names=("cifar10-jpeg", "cifar10")),
    "cifar100": KnownDataset(tvd.CIFAR100, folder_names=("cifar100-jpeg", "cifar100")),
    "mnist": KnownDataset(tvd.MNIST, idx_dirs=("mnist", "/usr/share/datasets/mnist")),
    "fashion_mnist": KnownDataset(
        tvd.FashionMNIST, idx_dirs=("fashion-mnist", "/usr/share/datasets/fashion-mnist")
    ),
}
IDX_FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}


def open_splits(data_cfg, data_dir: str, cache_dir: str) -> Splits:
    """Find the dataset `data_cfg.name` (or the folder `data_cfg.root`) and open its splits."""
    if data_cfg.root:
        return open_image_folder(
            Path(data_cfg.root).expanduser(), Path(cache_dir), limits_of(data_cfg)
        )
    name = data_cfg.name
    if name not in KNOWN:
        raise UserError(
            f"data.name={name!r} has no built-in source; set data.root to an ImageFolder "
            f"folder or archive, or use one of: {', '.join(KNOWN)}"
        )
    known, root = KNOWN[name], Path(data_dir).expanduser()
    tried = [f"{root} (torchvision format)"]
    found = open_torchvision(known.torchvision_class, root, download=False)
    for stem in () if found else known.folder_names:
        tried.append(f"{root / stem}[{'|'.join(ARCHIVE_SUFFIXES)}]")
        for candidate in [root / stem, *(root / (stem + s) for s in ARCHIVE_SUFFIXES)]:
            if candidate.exists():
                return open_image_folder(candidate, Path(cache_dir), limits_of(data_cfg))
    for folder in () if found else known.idx_dirs:
        candidate = root / folder  # an absolute `folder` stays absolute
        tried.append(str(candidate))
        if all((candidate / f).is_file() for pair in IDX_FILES.values() for f in pair):
            return open_idx_folder(candidate, known.torchvision_class.classes)
    if not found and data_cfg.download:
        found = download_torchvision(known.torchvision_class, root, tried)
    if not found:
        raise UserError(
            f"data.name={name!r}: no copy found (tried {'; '.join(tried)}); set "
            f"CNNTRAIN_DATA_DIR or paths.data_dir to a folder holding one, or data.download=true"
        )
    return found


def open_torchvision(cls: type, root: Path, download: bool) -> Splits | None:
    """Open a torchvision dataset stored in its own format under `root`; None if absent."""
    try:
        train, test = (cls(str(root), train=t, download=download) for t in (True, False))
    except RuntimeError:  # torchvision's "Dataset not found or corrupted"
        return None
    splits = {"train": array_source(train), "test": array_source(test)}
    return Splits(list(train.classes), splits, origin=f"{root} ({cls.__name__})")


def download_torchvision(cls: type, root: Path, tried: list[str]) -> Splits:
    try:
        return open_torchvision(cls, root, download=True)
    except OSError as e:  # no network, refused, disk full: all URLError/OSError
        raise UserError(
            f"could not download {cls.__name__} into {root} ({e}); tried {'; '.join(tried)}. "
            "Copy the dataset there, or point CNNTRAIN_DATA_DIR at a folder holding it"
        ) from e


def array_source(ds) -> ImageSource:
    data = ds.data if isinstance(ds.data, np.ndarray) else ds.data.numpy()  # MNIST: a tensor
    return ImageSource(np.asarray(ds.targets, dtype=np.int64), arrays=data)


def read_idx(path: Path) -> np.ndarray:
    """Read a gzipped idx file (LeCun's format: magic, dims as big-endian int32, uint8 data)."""
    with gzip.open(path, "rb") as f:
        raw = f.read()
    ndim = raw[3]
    shape = np.frombuffer(raw, dtype=">i4", count=ndim, offset=4)
    return np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim).reshape(shape)


def open_idx_folder(folder: Path, classes: list[str]) -> Splits:
    splits = {
        split: ImageSource(
            read_idx(folder / labels).astype(np.int64), arrays=read_idx(folder / images)
        )
        for split, (images, labels) in IDX_FILES.items()
    }
    return Splits(list(classes), splits, origin=f"{folder} (idx files)")


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


def open_evaluation_data(data_cfg, data_dir: str, cache_dir: str) -> Splits:
    """Data to evaluate a trained model on, found as open_splits finds training data; but
    `data.root` may also hold labelled images alone, without train/: `test/<class>/<images>`
    (or `val/…`), or class folders at its top (`<class>/<images>`), read as the `test` split."""
    if not data_cfg.root:
        return open_splits(data_cfg, data_dir, cache_dir)
    path, limits = Path(data_cfg.root).expanduser(), limits_of(data_cfg)
    check_root(str(path))
    folder = unpack_archive(path, Path(cache_dir) / "archives", limits) if path.is_file() else path
    if split_root(folder) is not None:
        return open_image_folder(path, Path(cache_dir), limits)
    root = next((folder / s for s in ("test", "val") if (folder / s).is_dir()), folder)
    try:
        classes, class_to_idx = find_classes(root)
    except FileNotFoundError as e:
        raise UserError(
            f"data.root={data_cfg.root!r}: no class folders in {root}; give an ImageFolder "
            "(train/ and test/ or val/), test/<class>/<images>, or <class>/<images>"
        ) from e
    splits = {"test": folder_source(root, class_to_idx, limits.max_image_pixels)}
    return Splits(classes, splits, origin=str(root), fingerprint=fingerprint(splits, limits))


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
        names = ", ".join(links[:3]) + (", …" if len(links) > 3 else "")
        log.warning("did not follow %d folder link(s) in class folders: %s", len(links), names)
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
        reasons = ", ".join(too_large[:3]) + (", …" if len(too_large) > 3 else "")
        log.warning("%s: left out %d member(s): %s", archive, len(too_large), reasons)
    return folder
