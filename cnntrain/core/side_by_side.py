"""Independent jobs at once: each but the last in a forked child process, where forking is safe.

A run's figures are independent of one another, and drawing them is single-threaded Python
(matplotlib) plus imports (grad-cam pulls in scikit-learn and SciPy): on two cores, two groups
drawn side by side end a run about a second and a half sooner (docs/benchmarks.md A.14).
"""

import os
import pickle
import sys
import traceback
import warnings
from collections.abc import Callable

import torch

Job = Callable[[], None]


def run_side_by_side(*jobs: Job) -> None:
    """Run `jobs` (each writes its own files and returns nothing) and return when all ended.

    Where forking is safe (`can_fork`), each job but the last runs in a forked child and the
    last here; otherwise one after another, here. A child's exception is raised here (the
    same type when it can be pickled, so a UserError stays one line), after every job ended.
    """
    if len(jobs) < 2 or not can_fork():
        for job in jobs:
            job()
        return
    children = [fork(job) for job in jobs[:-1]]
    try:
        jobs[-1]()
    finally:  # the children end before this process raises or goes on
        errors = [outcome(*child) for child in children]
    for error in errors:
        if error is not None:
            raise error


def can_fork() -> bool:
    """Whether a child forked now can run torch and matplotlib: POSIX without macOS (whose
    system libraries are not fork-safe), one CPU core or more to spare, and no CUDA context
    (a forked child cannot use its parent's)."""
    return (
        hasattr(os, "fork")
        and hasattr(os, "sched_getaffinity")
        and sys.platform != "darwin"
        and len(os.sched_getaffinity(0)) > 1
        and not torch.cuda.is_initialized()
    )


def fork(job: Job) -> tuple[int, int]:
    """Start `job` in a forked child; (its pid, the read end of the pipe its error comes by)."""
    sys.stdout.flush()  # else a buffered line would be written by both processes
    sys.stderr.flush()
    read, write = os.pipe()
    with warnings.catch_warnings():  # Python ≥ 3.12 warns on forking with threads running; the
        # child takes no lock of another thread (trackers, the progress bar's monitor)
        warnings.simplefilter("ignore", DeprecationWarning)
        pid = os.fork()
    if pid:
        os.close(write)
        return pid, read
    os.close(read)
    code = 0
    try:
        torch.set_num_threads(1)  # the parent draws on the other core
        job()
    except BaseException as e:
        code = 1
        with os.fdopen(write, "wb") as pipe:
            pipe.write(pickled(e))
    finally:
        os._exit(code)  # no interpreter teardown: nothing of the parent's is the child's to close


def pickled(error: BaseException) -> bytes:
    """`error` pickled; a RuntimeError holding its traceback's text when it cannot be."""
    try:
        return pickle.dumps(error)
    except Exception:
        return pickle.dumps(RuntimeError("".join(traceback.format_exception(error))))


def outcome(pid: int, read: int) -> BaseException | None:
    """Wait for child `pid`; its exception (None when it ended well)."""
    with os.fdopen(read, "rb") as pipe:
        sent = pipe.read()  # before waiting: a long traceback would fill the pipe
    _, status = os.waitpid(pid, 0)
    if sent:
        return pickle.loads(sent)  # our own child's bytes, not a received file
    if os.waitstatus_to_exitcode(status) != 0:  # killed (out of memory, a signal)
        return RuntimeError(f"a forked job ended with status {os.waitstatus_to_exitcode(status)}")
    return None
