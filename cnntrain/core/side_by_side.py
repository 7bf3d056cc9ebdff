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
    last here; otherwise (or when no process can be forked now) one after another, here. A
    child's exception is raised here (the same type when it can be rebuilt, so a UserError stays
    one line; else a RuntimeError of its traceback), after every job ended.
    """
    if len(jobs) < 2 or not can_fork():
        for job in jobs:
            job()
        return
    children, here = [], [jobs[-1]]
    for job in jobs[:-1]:
        try:
            children.append(fork(job))
        except OSError:  # no process to spare (EAGAIN, ENOMEM): this one runs the job
            here.insert(-1, job)
    try:
        for job in here:
            job()
    finally:  # the children end before this process raises or goes on
        errors = [outcome(*child) for child in children]
    for error in errors:
        if error is not None:
            raise error


def can_fork() -> bool:
    """Whether a child forked now can run torch and matplotlib: POSIX without macOS (whose
    system libraries are not fork-safe), one CPU core or more to spare, no CUDA context (a
    forked child cannot use its parent's) and no live W&B run (its console capture refuses a
    forked child's printing: ForkedError)."""
    return (
        hasattr(os, "fork")
        and hasattr(os, "sched_getaffinity")
        and sys.platform != "darwin"
        and len(os.sched_getaffinity(0)) > 1
        and not torch.cuda.is_initialized()
        and getattr(sys.modules.get("wandb"), "run", None) is None
    )


def fork(job: Job) -> tuple[int, int]:
    """Start `job` in a forked child; (its pid, the read end of the pipe its error comes by)."""
    sys.stdout.flush()  # else a buffered line would be written by both processes
    sys.stderr.flush()
    read, write = os.pipe()
    try:
        with warnings.catch_warnings():  # Python ≥ 3.12 warns on forking with threads running;
            # the child takes no lock of another thread (trackers, the progress bar's monitor)
            warnings.simplefilter("ignore", DeprecationWarning)
            pid = os.fork()
    except OSError:
        os.close(read)
        os.close(write)
        raise
    if pid:
        os.close(write)
        return pid, read
    os.close(read)
    code = 0
    try:
        torch.set_num_threads(1)  # the parent draws on the other core
        job()
    except BaseException as e:  # every failure goes back to the parent
        code = 1
        with os.fdopen(write, "wb") as pipe:
            pipe.write(pickled(e))
    finally:  # os._exit, whatever happens: a child must never return into the parent's code
        try:
            sys.stdout.flush()  # what the job printed: os._exit flushes nothing
            sys.stderr.flush()
        finally:
            os._exit(code)  # no interpreter teardown: nothing of the parent's is the child's


def pickled(error: BaseException) -> bytes:
    """(`error` pickled, its traceback's text), pickled; a RuntimeError of that text stands in
    for an error that cannot be pickled."""
    text = "".join(traceback.format_exception(error))
    try:
        error_bytes = pickle.dumps(error)
    except Exception:  # an exception holding a lock, a lambda, …
        error_bytes = pickle.dumps(RuntimeError(text))
    return pickle.dumps((error_bytes, text))


def unpickled(sent: bytes) -> BaseException:
    """The child's exception from `sent` (our own child's bytes, not a received file); a
    RuntimeError of its traceback's text when it cannot be rebuilt (an exception whose __init__
    takes other arguments than its message)."""
    error_bytes, text = pickle.loads(sent)
    try:
        return pickle.loads(error_bytes)
    except Exception:
        return RuntimeError(text)


def outcome(pid: int, read: int) -> BaseException | None:
    """Wait for child `pid`; its exception (None when it ended well)."""
    with os.fdopen(read, "rb") as pipe:
        sent = pipe.read()  # before waiting: a long traceback would fill the pipe
    _, status = os.waitpid(pid, 0)
    if sent:
        return unpickled(sent)
    if os.waitstatus_to_exitcode(status) != 0:  # killed (out of memory, a signal)
        return RuntimeError(f"a forked job ended with status {os.waitstatus_to_exitcode(status)}")
    return None
