"""The datasets cnntrain knows by name (`data.name`): where each is looked for, first match wins.

0. data=csv (a label file) and data=hf (a Hugging Face dataset): data/labels.py, data/hf.py;
1. `data.root`, when set: an ImageFolder folder or archive, or flat class folders
   (data/folders.py; then the name only labels the run);
2. torchvision's own format under `paths.data_dir` (e.g. `cifar-10-batches-py/`);
3. an offline copy under `paths.data_dir`: an ImageFolder tree or archive (`cifar10-jpeg.tar.gz`)
   for the CIFAR sets, the four raw idx `.gz` files (`fashion-mnist/`) for the MNIST sets,
   also where Debian's `dataset-*` packages install them (`/usr/share/datasets/...`);
4. a torchvision download into `paths.data_dir` when `data.download` is true.
"""

import gzip
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from torchvision import datasets as tvd
from torchvision.datasets.folder import find_classes

from cnntrain.core.errors import UserError
from cnntrain.data.folders import flat_listing, open_folder, unpacked
from cnntrain.data.hf import hf_listing
from cnntrain.data.labels import label_listing
from cnntrain.data.limits import limits_of
from cnntrain.data.listing import (
    Listing,
    SplitOptions,
    evaluation_splits,
    listing_splits,
    refuse_table,
)
from cnntrain.data.mosaic import open_mosaics
from cnntrain.data.sources import (
    ARCHIVE_SUFFIXES,
    ImageSource,
    Splits,
    fingerprint,
    folder_source,
    open_image_folder,
    split_root,
)


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
    if data_cfg.name == "mosaic":  # built from another dataset's images, found by this function
        return open_mosaics(data_cfg, data_dir, cache_dir, open_tiles=open_splits)
    listed = open_listing(data_cfg, Path(cache_dir))
    options, limits = SplitOptions.of(data_cfg), limits_of(data_cfg)
    if listed is not None:
        return listing_splits(*listed, options, limits)
    if data_cfg.root:
        return open_folder(Path(data_cfg.root).expanduser(), Path(cache_dir), limits, options)
    refuse_table(options, f"data.name={data_cfg.name}")
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
            "CNNTRAIN_DATA_DIR or paths.data_dir to a folder holding one, or data.download=true "
            "(it is false)"
        )
    return found


def open_torchvision(cls: type, root: Path, download: bool) -> Splits | None:
    """Open a torchvision dataset stored in its own format under `root`; None if absent."""
    try:
        return torchvision_splits(cls, root, download)
    except RuntimeError:  # torchvision's "Dataset not found or corrupted"
        return None


def torchvision_splits(cls: type, root: Path, download: bool) -> Splits:
    train, test = (cls(str(root), train=t, download=download) for t in (True, False))
    splits = {"train": array_source(train), "test": array_source(test)}
    return Splits(list(train.classes), splits, origin=f"{root} ({cls.__name__})")


def download_torchvision(cls: type, root: Path, tried: list[str]) -> Splits:
    """torchvision's download of `cls` into `root` (data.download=true). A failure is one line
    with the network's own reason (its mirrors raise OSError, or RuntimeError once all failed),
    and leaves no empty folder behind (MNIST makes MNIST/raw first)."""
    before = set(root.iterdir()) if root.is_dir() else set()
    try:
        return torchvision_splits(cls, root, download=True)
    except (OSError, RuntimeError) as e:
        for made in set(root.iterdir()) - before if root.is_dir() else ():
            if made.is_dir() and not any(p.is_file() for p in made.rglob("*")):
                shutil.rmtree(made)
        reason = " ".join(str(e).split())[:300] or type(e).__name__  # torchvision's: lines
        raise UserError(
            f"data.download=true could not download {cls.__name__} into {root} ({reason}); "
            f"tried {'; '.join(tried)}. Copy the dataset there, or point CNNTRAIN_DATA_DIR at "
            "a folder holding it"
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


def open_listing(data_cfg, cache_dir: Path) -> tuple[Listing, str] | None:
    """(the images listed, where they come from) of a label file or a Hugging Face dataset;
    None for the other sources."""
    if data_cfg.name == "csv":
        return label_listing(data_cfg), str(Path(data_cfg.labels).expanduser())
    if data_cfg.name == "hf":
        return hf_listing(data_cfg, cache_dir, limits_of(data_cfg)), str(data_cfg.root)
    return None


def open_evaluation_data(data_cfg, data_dir: str, cache_dir: str) -> Splits:
    """Data to evaluate a trained model on, found as open_splits finds training data; but
    `data.root` may also hold labelled images alone, without train/: `test/<class>/<images>`
    (or `val/…`), or class folders at its top (`<class>/<images>`), read as the `test` split
    (split as data.splits says instead, when set: a run's own data). A label file without a
    split column is read whole as the test split too."""
    options, limits = SplitOptions.of(data_cfg), limits_of(data_cfg)
    listed = open_listing(data_cfg, Path(cache_dir))
    if listed is not None:
        return evaluation_splits(*listed, options, limits)
    if not data_cfg.root:
        return open_splits(data_cfg, data_dir, cache_dir)
    path = Path(data_cfg.root).expanduser()
    folder = unpacked(path, Path(cache_dir), limits)
    if split_root(folder) is not None:
        return open_image_folder(path, Path(cache_dir), limits)
    root = next((folder / s for s in ("test", "val") if (folder / s).is_dir()), None)
    if root is None:
        listing = flat_listing(folder, limits, unpacked_archive=path.is_file())
        return evaluation_splits(listing, str(listing.root), options, limits)
    try:
        classes, class_to_idx = find_classes(root)
    except FileNotFoundError as e:
        raise UserError(
            f"data.root={data_cfg.root!r}: no class folders in {root}; give an ImageFolder "
            "(train/ and test/ or val/), test/<class>/<images>, or <class>/<images>"
        ) from e
    splits = {"test": folder_source(root, class_to_idx, limits.max_image_pixels)}
    return Splits(classes, splits, origin=str(root), fingerprint=fingerprint(splits, limits))
