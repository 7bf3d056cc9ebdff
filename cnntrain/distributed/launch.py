"""`cnntrain trainer.devices=N`: the command started N times through torch's elastic launcher; and
the one line a rank prints when another one ended."""

import logging
import re
import signal
import sys
import tempfile
import uuid

import torch.distributed as dist

EXITS_EXPLAINED = (2, 130, 143)  # exit statuses of a rank that printed why (error, SIGINT, SIGTERM)


def is_peer_failure(error: BaseException) -> bool:
    """Did a collective fail because another process of the job ended (or stopped answering)?"""
    if isinstance(error, dist.DistError):
        return True
    text = str(error)
    return isinstance(error, RuntimeError) and ("/gloo/" in text or "NCCL" in text)


def peer_failure_line(error: BaseException) -> str:
    """One line for `is_peer_failure`: this rank stops because another one did."""
    reason = re.sub(r"^\[[^\]]*\]\s*", "", str(error).splitlines()[0]).split(". ")[0]
    return f"another process of this job ended or stopped answering ({reason}): this one stops too"


def launch(devices: int, args: list[str]) -> None:
    """Run `cnntrain args` as `devices` processes on this machine through torch's elastic
    launcher, as `torchrun --standalone --nproc_per_node=N` does (rendezvous on 127.0.0.1);
    exit as the job ended: 0, the status of a rank that said why, or one line naming the rank
    that failed."""
    from torch.distributed.elastic.multiprocessing import DefaultLogsSpecs
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    # The agent's own log lines (workers starting, signals, failures): the line below says it.
    logging.getLogger("torch.distributed.elastic").setLevel(logging.CRITICAL)
    # The agent writes each rank's error file under a log folder (by default a torchelastic_*
    # folder in /tmp, never removed): one of its own, removed when the job ends.
    # (a folder that cannot be removed, on NFS say, must not hide the job's exit status)
    with tempfile.TemporaryDirectory(prefix="cnntrain-launch-", ignore_cleanup_errors=True) as logs:
        config = LaunchConfig(
            min_nodes=1,
            max_nodes=1,
            nproc_per_node=devices,
            logs_specs=DefaultLogsSpecs(log_dir=logs),
            run_id=str(uuid.uuid4()),
            rdzv_backend="c10d",
            rdzv_endpoint="127.0.0.1:0",  # a free port
            max_restarts=0,
            local_addr="127.0.0.1",
        )
        try:
            elastic_launch(config, sys.executable)("-m", "cnntrain", *args)
        except SignalException as e:  # the launcher got SIGINT/SIGTERM and stopped the ranks
            raise SystemExit(128 + e.sigval) from None
        except ChildFailedError as e:
            fail_with_rank(e)


def fail_with_rank(error) -> None:
    """Exit as the first failed rank did: its own status where it printed why, else one line."""
    rank, failure = error.get_first_failure()
    if failure.exitcode in EXITS_EXPLAINED:
        raise SystemExit(failure.exitcode) from None
    how = (
        f"was killed by {signal.Signals(-failure.exitcode).name}"
        if failure.exitcode < 0
        else f"exited with status {failure.exitcode}"
    )
    print(
        f"cnntrain: error: the process of rank {rank} (pid {failure.pid}) {how}; "
        f"the job's other processes were stopped",
        file=sys.stderr,
        flush=True,
    )
    raise SystemExit(1) from None
