"""Safe file writes: atomic (a temporary file, flushed, renamed in place), never through a link."""

import json
import os
import re
import secrets
import stat
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

from cnntrain.core.errors import UserError

# torch.save reports a failed write (a full disk, a file size limit) as a RuntimeError of its zip
# writer, without an errno: "[enforce fail at inline_container.cc:672] . unexpected pos 640 vs
# 598", "PytorchStreamWriter failed writing file data/0: file write failed" or
# "basic_ios::clear: iostream error".
TORCH_WRITE_FAILURE = re.compile(r"inline_container\.cc|PytorchStreamWriter|basic_ios::clear")
FIX = "free space or fix permissions"


def atomic_write(path: Path, write: Callable[[Path], None]) -> None:
    """Call `write(tmp)` then atomically replace `path` by `tmp`.

    A crash at any moment leaves either the old file or the new one under `path`, never a mix;
    a failed write (read-only or full disk, a file too large) is a UserError and the old file
    stays intact, as it does when `write` raises (say, a check of what it wrote failed): the
    temporary file goes. A `path` that is a symbolic link is refused, not replaced.
    """
    path = Path(path)
    refuse_link(path)
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = new_temporary(path)
        write(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())  # the bytes are on disk before the rename makes them visible
        os.replace(tmp, path)
        fsync_dir(path.parent)
    except BaseException as e:
        if tmp is not None:
            tmp.unlink(missing_ok=True)
        if isinstance(e, OSError):
            raise UserError(f"could not write {path}: {e.strerror or e}; {FIX}") from e
        if isinstance(e, RuntimeError) and TORCH_WRITE_FAILURE.search(str(e)):
            reason = str(e).splitlines()[0]
            raise UserError(f"could not write {path} (disk full or file too large? {reason}); "
                            f"{FIX}") from e  # fmt: skip
        raise


def new_temporary(path: Path) -> Path:
    """A new empty file beside `path`, of a name no one could place a link at beforehand (a random
    part), created only if nothing is there (O_EXCL) and never through a link (O_NOFOLLOW); named
    `.<name>.<pid>.<random>.tmp`, so that a cache tells a dead process's leftovers (data/cache)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0)
    try:
        os.close(os.open(tmp, flags, 0o666))  # 0o666: the umask decides, as for any new file
    except FileExistsError as e:
        raise UserError(
            f"{tmp} is in the way of writing {path} (a planted link?); remove it"
        ) from e
    return tmp


def refuse_link(path: Path) -> None:
    """Refuse a file to be written that is a symbolic link: its target is elsewhere."""
    if Path(path).is_symlink():
        raise UserError(
            f"{path} is a symbolic link (to {os.readlink(path)}); cnntrain does not write "
            "through links: remove it, or put a real file or folder in its place"
        )


def refuse_links(folder: Path, names: Iterable[str] | None = None) -> None:
    """Before writing into an existing `folder`: refuse it when one of its entries `names` (all
    when None), or anything below them, is a symbolic link or a FIFO, socket or device.

    A run folder may come from elsewhere (a colleague's, a cluster's): a link inside it would take
    what cnntrain writes (train.log, checkpoints/, plots/, eval/…) out of it, and a FIFO would
    hang the command. `folder` itself may be a link (outputs/latest): the user named it.
    """
    folder = Path(folder)
    if names is None:
        names = sorted(os.listdir(folder)) if folder.is_dir() else []
    for name in names:
        for path in tree(folder / name):
            refuse_special(path)


def refuse_special(path: Path) -> None:
    """Refuse an entry that is neither a regular file nor a folder (absent is fine)."""
    try:
        mode = path.lstat().st_mode
    except FileNotFoundError:
        return
    if stat.S_ISLNK(mode):
        refuse_link(path)
    if not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):
        raise UserError(f"{path} is not a regular file or folder (a FIFO, socket or device); "
                        "remove it")  # fmt: skip


def tree(top: Path) -> Iterator[Path]:
    """`top` and, when it is a folder, everything below it; links are listed, never followed."""
    yield top
    if top.is_dir() and not top.is_symlink():
        for root, dirs, files in os.walk(top):  # os.walk lists a link to a folder, enters none
            for name in sorted(dirs + files):
                yield Path(root, name)


def fsync_dir(folder: Path) -> None:
    """Persist a rename: the directory entry itself must reach the disk."""
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_text(path: Path, text: str) -> None:
    """`text` as UTF-8, whatever the locale (class names in any script), atomically."""
    atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def write_json(path: Path, data) -> None:
    """`data` as indented JSON in UTF-8, non-ASCII text as it is (`"avión"`, not `"avi\\u00f3n"`);
    read it back with `json.loads(path.read_bytes())`, which takes UTF-8 whatever the locale."""
    write_text(path, json.dumps(data, indent=2, ensure_ascii=False) + "\n")
