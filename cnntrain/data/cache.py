"""Build each cache entry once, however many processes ask at once: one builds, the others wait.

An entry (a file or a folder under `paths.cache_dir`) is built under a lock file beside it,
`<entry>.lock`, and published under its final name in one atomic rename, so no process ever
reads a half-built entry. The lock is `filelock`'s OS lock (`flock` on Unix): the kernel releases
it when its holder dies, so a killed run never blocks the next one (on a filesystem without
`flock`, filelock falls back to a lock file of its own and judges its staleness itself). A build
keeps its scratch files beside the entry as `.<entry>.<pid>.*`; whoever holds the lock next
removes those a killed build left. A cache folder that cannot be written costs speed, not the
run: the entry is then built for this run only, with a warning.
"""

import atexit
import glob
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from filelock import FileLock, Timeout

from cnntrain.core.errors import UserError
from cnntrain.core.files import fsync_dir, write_json

log = logging.getLogger(__name__)
T = TypeVar("T")


def build_once(
    entry: Path,
    load: Callable[[Path], T | None],
    build: Callable[[], T],
    save: Callable[[Path, T], T],
) -> T:
    """The value cached at `entry`, building and saving it first if no process has yet.

    load(entry): the cached value, or None when absent or unusable (a corrupt entry is rebuilt);
    build(): the value, computed; save(entry, value): publish it atomically under `entry` and
    return the value to use.
    """
    seen = identity(entry)
    value = None if seen is None else load(entry)
    if value is not None:
        return value
    lock = FileLock(entry.with_name(entry.name + ".lock"))
    try:
        wait_for(lock, entry)
    except OSError as e:  # the lock file cannot be created: a read-only or missing cache folder
        log.warning(
            "cache folder %s is not writable (%s): building %s for this run only",
            entry.parent,
            e.strerror or e,
            entry.name,
        )
        return build()
    try:
        now = identity(entry)
        if now is not None and now != seen:  # another process published it while this one waited
            value = load(entry)
            if value is not None:
                return value
        remove_leftovers(entry)
        value = build()
        try:
            return save(entry, value)
        except (OSError, UserError) as e:  # a full disk costs speed next time, not this run
            log.warning("could not cache %s (%s); this run goes on without it", entry, e)
            return value
    finally:
        lock.release()


def identity(entry: Path) -> tuple[int, int, int] | None:
    """(inode, mtime, size) of `entry`, None if absent: changes whenever a rename replaces it."""
    try:
        st = entry.stat()
    except OSError:  # absent, or under a folder that is not one
        return None
    return st.st_ino, st.st_mtime_ns, st.st_size


def wait_for(lock: FileLock, entry: Path) -> None:
    """Take `lock`, saying so when another process holds it (a build can take minutes)."""
    entry.parent.mkdir(parents=True, exist_ok=True)
    try:
        lock.acquire(timeout=0)
    except Timeout:
        log.info("waiting for another process to finish building %s", entry)
        lock.acquire()


def remove_leftovers(entry: Path) -> None:
    """Remove the scratch files and folders (`.<entry>.<pid>.*`) that builds which died left."""
    for stale in entry.parent.glob(f".{glob.escape(entry.name)}.*"):
        pid = stale.name[len(entry.name) + 2 :].split(".")[0]
        if pid.isdigit() and is_running(int(pid)):
            continue  # still in use: a process whose publishing failed reads from it
        if stale.is_dir():
            shutil.rmtree(stale, ignore_errors=True)
        else:
            stale.unlink(missing_ok=True)


def is_running(pid: int) -> bool:
    if os.name != "posix":
        return True  # Windows' os.kill would terminate it: keep the leftover, it costs only disk
    try:
        os.kill(pid, 0)  # signal 0: only asks whether the process exists
    except ProcessLookupError:
        return False
    except PermissionError:  # it exists, under another user
        return True
    return True


def scratch_folder(entry: Path) -> Path:
    """A new private folder to build the folder `entry` in: beside it, so one rename publishes
    it; in the system's temporary folder (removed at exit) when the cache cannot be written."""
    folder = entry.with_name(f".{entry.name}.{os.getpid()}.partial")
    try:
        folder.mkdir(parents=True)
    except OSError:
        folder = Path(tempfile.mkdtemp(prefix=f"cnntrain-{entry.name}-"))
        atexit.register(shutil.rmtree, folder, ignore_errors=True)
    return folder


def publish_folder(entry: Path, folder: Path) -> Path:
    """Rename the finished `folder` to `entry` (atomic: readers see all of it or nothing)."""
    folder.rename(entry)
    fsync_dir(entry.parent)
    return entry


def load_json(path: Path):
    """The JSON value cached at `path`, or None (with a warning) if it cannot be parsed."""
    try:
        return json.loads(path.read_bytes())
    except (OSError, ValueError) as e:
        log.warning("cache file %s is unreadable (%s); computing it again", path, e)
        return None


def save_json(path: Path, value):
    write_json(path, value)
    return value
