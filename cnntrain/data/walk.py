"""A received folder's image files, listed without following a link into a loop."""

import os
from pathlib import Path

from torchvision.datasets.folder import IMG_EXTENSIONS


def image_files(class_folder: Path) -> tuple[list[str], list[str]]:
    """(image files, folder links not followed) under `class_folder`, in torchvision's order
    (folders by path, then files by name). The class folder may itself be a link; below it
    links to folders are not followed (so none can loop), links to image files are read, and
    only regular files count (a FIFO named x.png would block the reader forever)."""
    folders, links, pending = [], [], [str(class_folder)]
    while pending:
        top = pending.pop()
        names = []
        with os.scandir(top) as entries:
            for entry in entries:
                if entry.is_dir(follow_symlinks=False):
                    pending.append(entry.path)
                elif entry.is_symlink() and entry.is_dir():
                    links.append(entry.path)
                elif entry.name.lower().endswith(IMG_EXTENSIONS) and entry.is_file():
                    names.append(entry.name)
        folders.append((top, sorted(names)))
    files = [os.path.join(top, name) for top, names in sorted(folders) for name in names]
    return files, links
