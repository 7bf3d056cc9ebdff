"""Several processes (torchrun, Gloo on CPU) are one run: one run folder, the training of one
process at the same global batch, failures and signals that end every rank, exact resume.

Unit tests check the shards and the augmentation with ranks simulated in this process; the
end-to-end tests start real processes through torch's elastic launcher (torchrun, or
`cnntrain trainer.devices=2`, which starts the same), on 127.0.0.1 only, each bounded in time."""

import json
import multiprocessing
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from cnntrain.data.augment.draws import EpochDraws
from cnntrain.data.splits import batch_bounds
from cnntrain.distributed import IGNORED, GlooSyncBatchNorm, World, mask_padding
from cnntrain.reporting.metrics_log import TIME_FIELDS
from tests.conftest import (
    REPO,
    compose_config,
    load_run_data,
    make_image_folder,
    read_jsonl,
    run_cli,
    run_folders,
    train_here,
)

CPU = torch.device("cpu")
TIMEOUT = 240  # s, for any one command: a hang fails the test instead of blocking CI
# Only the loopback interface: Gloo's connections, and the launcher's rendezvous (its options).
LOOPBACK = {"GLOO_SOCKET_IFNAME": "lo", "PYTHONPATH": str(REPO)}
STEPS = 56  # training batches per epoch: 224 images / batch 4, beyond one SYNC_EVERY (50)


@pytest.fixture(scope="module")
def image_root(tmp_path_factory):
    return make_image_folder(tmp_path_factory.mktemp("data") / "shapes", per_class=120, mode="RGB")


def args(root: Path, *changes: str) -> list[str]:
    """A run without dropout, augmented, whose 25 validation images split unevenly: batches of
    8, 8, 8 and 1 (rank 1's part of the last is padding only); with `changes` (key=value)."""
    base = [
        "data=imagefolder", f"data.root={root}", "model=simplecnn", "model.dropout=0",
        "trainer.epochs=2", "data.batch_size=4", "data.max_train_samples=224",
        "data.max_eval_samples=25", "data.eval_batch_size=8", "data.augment.crop_padding=2",
        "data.augment.hflip=true", "optimizer.lr=0.00005", "logger=none", "trainer.plots=false",
        "trainer.progress=false", "trainer.sync_bn=true",
        "trainer.precision=32",  # bf16 rounds sums taken in another order apart by ~1e-3
    ]  # fmt: skip
    changed = {c.split("=", 1)[0] for c in changes}
    return [a for a in base if a.split("=", 1)[0] not in changed] + list(changes)


def own_tmp(cwd: Path) -> dict:
    """TMPDIR = cwd/tmp: torchrun's agent keeps a log folder there and never removes it (the
    test's folder is removed with it); `cnntrain trainer.devices=N` must leave it empty."""
    (cwd / "tmp").mkdir(exist_ok=True)
    return {**LOOPBACK, "TMPDIR": str(cwd / "tmp")}


def launcher_folders(cwd: Path) -> list[Path]:
    """What torch's elastic agent left in own_tmp(cwd): its default log folders, or ours."""
    return [*(cwd / "tmp").glob("torchelastic_*"), *(cwd / "tmp").glob("cnntrain-launch-*")]


def run(*cmd: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, *cmd], cwd=cwd, capture_output=True, text=True, timeout=TIMEOUT,
        env={**os.environ, "PYTHONUNBUFFERED": "1", **own_tmp(cwd)},
    )  # fmt: skip


def torchrun(*cmd: str, cwd: Path) -> subprocess.CompletedProcess:
    """`torchrun --standalone --nproc_per_node=2 -m cnntrain *cmd`."""
    return run("-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
               "-m", "cnntrain", *cmd, cwd=cwd)  # fmt: skip


def cnntrain(*cmd: str, cwd: Path) -> subprocess.CompletedProcess:
    return run_cli(*cmd, cwd=cwd, check=False, timeout=TIMEOUT, env=own_tmp(cwd))


def only_run_folder(cwd: Path) -> Path:
    """The one run folder under cwd/outputs; nothing else was made there."""
    (folder,) = run_folders(cwd)
    assert [p for p in (cwd / "outputs").glob("*/*")] == [folder]
    return folder


def rows(folder: Path) -> list[dict]:
    return [
        {k: v for k, v in r.items() if k not in TIME_FIELDS}
        for r in read_jsonl(folder / "metrics.jsonl")
    ]


def results(folder: Path) -> dict:
    return json.loads((folder / "results.json").read_text())


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# --- shards and augmentation, ranks simulated in this process -----------------------------------


@pytest.mark.parametrize("size", [1, 2, 3, 4])
def test_ranks_share_every_training_batch_without_drawing_an_image_twice(size):
    order = torch.randperm(50, generator=torch.Generator().manual_seed(0))
    for lo, hi in [*batch_bounds(50, 12, drop_last=True), (48, 50)]:
        parts = [World(size, r).shard(order, lo, hi, pad=False) for r in range(size)]
        assert all(padding == 0 for _, padding in parts)
        assert torch.equal(torch.cat([part for part, _ in parts]), order[lo:hi])  # rank order


@pytest.mark.parametrize("size", [2, 3, 4])
def test_evaluation_shards_are_padded_to_one_length_and_the_padding_is_masked(size):
    order = torch.arange(9)
    targets = torch.arange(9) % 3
    for lo, hi in [(0, 8), (8, 9)]:  # a full batch, and a last one shorter than the world
        shards = [World(size, r).shard(order, lo, hi, pad=True) for r in range(size)]
        assert len({len(part) for part, _ in shards}) == 1  # every rank runs one batch size
        real = torch.cat([part[: len(part) - padding] for part, padding in shards])
        assert torch.equal(real, order[lo:hi])  # each image once, in order
        masked = torch.cat([mask_padding(targets[part], padding) for part, padding in shards])
        assert (masked == IGNORED).sum() == sum(padding for _, padding in shards)
        assert torch.equal(masked[masked != IGNORED], targets[lo:hi])


@pytest.mark.parametrize("loader", ["tensor", "dataloader"])
def test_an_image_is_augmented_alike_by_one_process_or_two(image_root, loader):
    augment = ["data.augment.hflip=true", "data.augment.crop_padding=3",
               "data.augment.rotation=20", "data.augment.color_jitter.brightness=0.4",
               "data.augment.cutout=4"]  # fmt: skip
    changes = (f"data.loader={loader}", "data.num_workers=0", "data.max_train_samples=40",
               "data.batch_size=8", *augment)  # fmt: skip
    cfg = compose_config(*args(image_root, *changes))
    one = load_run_data(cfg, CPU).train
    two = [load_run_data(cfg, CPU, world=World(2, r, r, 2)).train for r in range(2)]
    for epoch in (1, 2):
        parts = zip(*(loader.batches(epoch) for loader in two), strict=True)
        for (x, y), ((x0, y0), (x1, y1)) in zip(one.batches(epoch), parts, strict=True):
            assert torch.equal(y, torch.cat([y0, y1]))
            assert torch.allclose(x, torch.cat([x0, x1]), atol=1e-6)
    assert not torch.equal(next(one.batches(1))[0], next(one.batches(2))[0])  # it does augment


def test_epoch_draws_depend_on_seed_epoch_and_image_only():
    tables = {}
    whole = EpochDraws(tables, 10, seed=1, epoch=3, index=torch.arange(10))
    drawn = (whole.uniform(-1, 1), whole.integers(5), whole.chance(0.5))
    batch = EpochDraws(tables, 10, seed=1, epoch=3, index=torch.tensor([7, 2]))
    again = EpochDraws({}, 10, seed=1, epoch=3, index=torch.tensor([7, 2]))  # a restarted epoch
    for draws in (batch, again):
        got = (draws.uniform(-1, 1), draws.integers(5), draws.chance(0.5))
        assert all(torch.equal(g, d[[7, 2]]) for g, d in zip(got, drawn, strict=True))
    other = EpochDraws({}, 10, seed=1, epoch=4, index=torch.arange(10))
    assert not torch.equal(other.uniform(-1, 1), drawn[0])


@pytest.fixture
def gloo_alone():
    """A Gloo process group of this process alone: the collectives run, over one rank."""
    torch.distributed.init_process_group(
        "gloo", init_method=f"tcp://127.0.0.1:{free_port()}", rank=0, world_size=1
    )
    yield
    torch.distributed.destroy_process_group()


def test_gloo_sync_batchnorm_computes_what_batchnorm_does(gloo_alone):
    torch.manual_seed(0)
    plain = nn.BatchNorm2d(3, momentum=0.2)
    nn.init.uniform_(plain.weight, 0.5, 2)
    nn.init.uniform_(plain.bias, -1, 1)
    synced = GlooSyncBatchNorm.replacing(nn.BatchNorm2d(3, momentum=0.2))
    synced.load_state_dict(plain.state_dict())
    x = torch.randn(6, 3, 5, 4) * 3 + 1
    xs = x.clone().requires_grad_()
    x.requires_grad_()
    out, out_synced = plain(x), synced(xs)
    torch.testing.assert_close(out_synced, out)
    weights = torch.randn_like(out)
    (out * weights).sum().backward()
    (out_synced * weights).sum().backward()
    torch.testing.assert_close(xs.grad, x.grad)
    torch.testing.assert_close(synced.weight.grad, plain.weight.grad)
    for name, value in plain.state_dict().items():  # running statistics, their count
        torch.testing.assert_close(synced.state_dict()[name], value)
    plain.eval()
    synced.eval()
    torch.testing.assert_close(synced(x), plain(x))


def test_dataloader_workers_leave_signals_to_the_training_process(image_root):
    cfg = compose_config(*args(image_root, "data.loader=dataloader", "data.num_workers=1"))
    train = load_run_data(cfg, CPU).train
    batches = train.batches(1)
    first = next(batches)[1]
    for worker in multiprocessing.active_children():  # torchrun signals the whole group
        os.kill(worker.pid, signal.SIGTERM)
    assert len(first) + sum(len(y) for _, y in batches) == 4 * STEPS


# --- real processes ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def two_processes(image_root, tmp_path_factory):
    """`cnntrain trainer.devices=2 …`, left alone: (its output, its run folder)."""
    cwd = tmp_path_factory.mktemp("two")
    proc = cnntrain(*args(image_root), "trainer.devices=2", cwd=cwd)
    assert proc.returncode == 0, proc.stderr
    assert launcher_folders(cwd) == []  # the launcher's log folder was removed
    return proc, only_run_folder(cwd)


@pytest.mark.slow
def test_two_processes_are_one_run_that_trains_as_one_process(two_processes, image_root, tmp_path):
    proc, folder = two_processes
    one = train_here(*args(image_root), output_dir=tmp_path / "one")
    two = results(folder)
    assert (two["world_size"], two["backend"], one["world_size"], one["backend"]) == (
        2, "gloo", 1, None,
    )  # fmt: skip
    assert two["test/count"] == one["test/count"] == 25  # every image once, padding masked
    for a, b in zip(rows(folder), rows(tmp_path / "one"), strict=True):
        assert a["train/loss"] == pytest.approx(b["train/loss"], rel=1e-4)
        assert a["val/loss"] == pytest.approx(b["val/loss"], rel=1e-3)
        assert (a["train/acc"], a["val/acc"]) == (b["train/acc"], b["val/acc"])
    assert rows(folder)[0]["val/acc"] < 1  # a task not yet solved: accuracy tells runs apart
    # Rank 0 writes and prints; the other rank's warnings reach the console, marked.
    assert "[rank 1] WARNING the data has no test split" in proc.stderr
    assert "[rank 1]" not in (folder / "train.log").read_text()
    assert "2 processes (2 on this machine), backend gloo" in (folder / "train.log").read_text()


@pytest.mark.slow
def test_a_sigterm_to_the_job_checkpoints_once_and_resuming_matches_the_run_left_alone(
    two_processes, image_root, tmp_path
):
    fault = ("+callbacks.fault._target_=tests.faults.Fault",
             "+callbacks.fault.at=sigterm-job-step:2:10")  # fmt: skip
    proc = cnntrain(*args(image_root), "trainer.devices=2", *fault, cwd=tmp_path)
    assert proc.returncode == 128 + signal.SIGTERM, proc.stderr
    assert launcher_folders(tmp_path) == []  # removed on the way out too
    folder = only_run_folder(tmp_path)
    last = torch.load(folder / "checkpoints" / "last.pt", weights_only=True)
    # The ranks agreed to stop at the next host sync, SYNC_EVERY (50) steps into the epoch.
    assert (last["progress"]["epoch"], last["progress"]["step"]) == (1, 50)
    assert last["world_size"] == 2
    log = (folder / "train.log").read_text()
    assert log.count("interrupted at epoch 2, step 50; checkpoint saved") == 1
    assert proc.stderr.count(f"continue with: cnntrain resume={folder}") == 1
    resumed = torchrun(f"resume={folder}", cwd=tmp_path)  # the same world size, by torchrun
    assert resumed.returncode == 0, resumed.stderr
    _, alone = two_processes
    assert rows(folder) == rows(alone)
    left, done = (
        torch.load(f / "checkpoints" / "last.pt", weights_only=True) for f in (alone, folder)
    )
    assert all(torch.equal(done["model"][k], v) for k, v in left["model"].items())
    assert "running_mean" in " ".join(done["model"])  # BatchNorm's keys: a plain model loads it


@pytest.mark.slow
def test_a_rank_killed_mid_epoch_ends_the_job_with_one_message(image_root, tmp_path):
    fault = ("+callbacks.fault._target_=tests.faults.Fault",
             "+callbacks.fault.at=kill-rank-step:1:1:3")  # fmt: skip
    proc = cnntrain(*args(image_root), "trainer.devices=2", *fault, cwd=tmp_path)
    assert proc.returncode == 1
    assert "cnntrain: error: the process of rank 1 " in proc.stderr
    assert "was killed by SIGKILL; the job's other processes were stopped" in proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr


def machine(node: int, port: int, overrides: list[str], cwd: Path) -> subprocess.Popen:
    """The torchrun command of machine `node` of two, rendezvous at 127.0.0.1:port; its output
    goes to cwd/node<N>.log."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes=2", f"--node_rank={node}",
           "--nproc_per_node=1", "--rdzv-backend=c10d", f"--rdzv-endpoint=127.0.0.1:{port}",
           "--rdzv-id=loopback", "--local-addr=127.0.0.1",
           "-m", "cnntrain", *overrides]  # fmt: skip
    with open(cwd / f"node{node}.log", "w") as log:
        return subprocess.Popen(cmd, cwd=cwd, stdout=log, stderr=subprocess.STDOUT,
                                env={**os.environ, **own_tmp(cwd)})  # fmt: skip


@pytest.mark.slow
def test_two_machines_on_loopback_are_one_run(image_root, tmp_path):
    port = free_port()
    overrides = args(image_root, "trainer.epochs=1", "data.max_train_samples=32")
    nodes = [machine(n, port, overrides, tmp_path) for n in range(2)]
    try:
        codes = [node.wait(timeout=TIMEOUT) for node in nodes]
    finally:
        for node in nodes:
            node.kill()
    assert codes == [0, 0], [(tmp_path / f"node{n}.log").read_text() for n in range(2)]
    assert results(only_run_folder(tmp_path))["world_size"] == 2


def test_a_global_batch_that_does_not_split_over_the_processes_is_refused(
    image_root, tmp_path, monkeypatch, capsys
):
    """The real command line, in this process: refused before any process starts."""
    from cnntrain.cli.train import main

    monkeypatch.chdir(tmp_path)
    command = args(image_root, "trainer.devices=2", "data.batch_size=5")
    monkeypatch.setattr(sys, "argv", ["cnntrain", *command])
    with pytest.raises(SystemExit) as stopped:
        main()
    assert stopped.value.code == 2
    assert capsys.readouterr().err == (
        "cnntrain: error: data.batch_size=5 is the global batch and must split evenly over the "
        "2 processes; use a multiple of 2 (e.g. 4)\n"
    )
    assert not (tmp_path / "outputs").exists()
