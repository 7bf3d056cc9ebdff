"""data.root as a folder or archive: an ImageFolder tree (train/, val/, test/) or class folders.

Flat class folders (`<class>/<images>`, nested folders inside a class belonging to it) have no
split of their own: the tool makes one (data/listing.py), or follows data.splits.
"""

import logging
from pathlib import Path

from torchvision.datasets.folder import IMG_EXTENSIONS, find_classes

from cnntrain.core.errors import UserError
from cnntrain.data.limits import Limits
from cnntrain.data.listing import Listing, SplitOptions, listing_splits, refuse_table
from cnntrain.data.sources import (
    SPLIT_NAMES,
    Splits,
    check_root,
    folder_source,
    open_image_folder,
    split_root,
    unpack_archive,
)

log = logging.getLogger(__name__)


def open_folder(path: Path, cache_dir: Path, limits: Limits, options: SplitOptions) -> Splits:
    """The data at `path` (data.root): a tree as sources.open_image_folder opens it, else flat
    class folders split as `options` say."""
    folder = unpacked(path, cache_dir, limits)
    if split_root(folder) is not None:
        refuse_table(options, f"{path} (train/ and its split folders)")
        return open_image_folder(path, cache_dir, limits)
    listing = flat_listing(folder, limits, unpacked_archive=path.is_file())
    return listing_splits(listing, str(listing.root), options, limits)


def unpacked(path: Path, cache_dir: Path, limits: Limits) -> Path:
    """The folder `path` names, or holds when it is an archive (unpacked once into the cache)."""
    check_root(str(path))
    return unpack_archive(path, cache_dir / "archives", limits) if path.is_file() else path


def flat_listing(folder: Path, limits: Limits, unpacked_archive: bool = False) -> Listing:
    """The class folders at the top of `folder` (or of its only subfolder, as an archive wraps
    them) and their image files; split folders without train/ are refused. `unpacked_archive`:
    `folder` is an archive's, unpacked once into the cache (its files never change)."""
    root = class_root(folder)
    partial = [s for s in SPLIT_NAMES if (root / s).is_dir()]
    if partial:
        raise UserError(
            f"{root} has {partial[0]}/ but no train/; give an ImageFolder tree (train/<class>/… "
            "beside it) or flat class folders (<class>/<images>, no split folders)"
        )
    try:
        classes, class_to_idx = find_classes(root)
    except FileNotFoundError as e:
        raise UserError(
            f"{root} has no class folders; give an ImageFolder tree (train/<class>/<images>) or "
            "flat class folders (<class>/<images>)"
        ) from e
    source = folder_source(root, class_to_idx, limits.max_image_pixels)
    loose = [
        p.name for p in root.iterdir() if p.is_file() and p.name.lower().endswith(IMG_EXTENSIONS)
    ]
    if loose:
        log.warning("left out %d image file(s) at the top of %s, outside any class folder",
                    len(loose), root)  # fmt: skip
    labels = [classes[t] for t in source.targets]
    return Listing(root, source.files, labels, classes=classes, fixed=unpacked_archive)


def class_root(folder: Path) -> Path:
    """`folder`, or its only entry when that is a folder holding folders (an archive's wrapper)."""
    entries = [p for p in folder.iterdir() if not p.name.startswith(".")]
    if len(entries) == 1 and entries[0].is_dir() and any(p.is_dir() for p in entries[0].iterdir()):
        return entries[0]
    return folder
