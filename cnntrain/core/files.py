"""Crash-safe file writes: write a temporary file, flush it to disk, rename it into place."""

import json
import os
from collections.abc import Callable
from pathlib import Path

from cnntrain.core.errors import UserError


def atomic_write(path: Path, write: Callable[[Path], None]) -> None:
    """Call `write(tmp)` then atomically replace `path` by `tmp`.

    A crash at any moment leaves either the old file or the new one under `path`, never a mix;
    a failed write (read-only or full disk) is a UserError and the old file stays intact, as it
    does when `write` raises (say, a check of what it wrote failed): the temporary file goes.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())  # the bytes are on disk before the rename makes them visible
        os.replace(tmp, path)
        fsync_dir(path.parent)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise UserError(
            f"could not write {path}: {e.strerror or e}; free space or fix permissions"
        ) from e
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def fsync_dir(folder: Path) -> None:
    """Persist a rename: the directory entry itself must reach the disk."""
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_text(path: Path, text: str) -> None:
    atomic_write(path, lambda tmp: tmp.write_text(text))


def write_json(path: Path, data) -> None:
    write_text(path, json.dumps(data, indent=2) + "\n")
