"""Caches: built once however many processes start together, reused while the files are unchanged,
rebuilt when they change or are corrupt, written atomically, and decoding only the chosen images."""

import errno
import hashlib
import io
import json
import logging
import os
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from filelock import FileLock

from cnntrain.core.errors import UserError
from cnntrain.data import decode, sources
from cnntrain.data.sources import open_image_folder
from cnntrain.data.splits import seeded_subset, stratified_split
from tests.conftest import REPO, compose_config, load_run_data, make_image_folder

CPU = torch.device("cpu")
CHILD_TIMEOUT = 120  # s: a child that hangs fails the test instead of blocking the suite


def config(root, cache, *overrides):
    return compose_config(
        "data=imagefolder",
        f"data.root={root}",
        f"paths.cache_dir={cache}",
        "data.num_workers=0",
        *overrides,
        output_dir="unused",
    )


def make_archive(tmp_path: Path) -> Path:
    """A .tar.gz of an ImageFolder with train/ and test/, 2 classes × 12 images each."""
    make_image_folder(tmp_path / "pack" / "shapes", splits=("train", "test"))
    archive = tmp_path / "shapes.tar.gz"
    with tarfile.open(archive, "w:gz") as t:
        t.add(tmp_path / "pack" / "shapes", arcname="shapes")
    return archive


def cache_files(cache: Path) -> list[str]:
    """Every file under `cache` but the lock files, relative to it."""
    return sorted(
        str(p.relative_to(cache))
        for p in cache.rglob("*")
        if p.is_file() and not p.name.endswith(".lock")
    )


def leftovers(cache: Path) -> list[Path]:
    """Scratch files and folders of builds (`.<entry>.<pid>.*`) left anywhere under `cache`."""
    return list(cache.rglob(".*"))


def summary(data) -> dict:
    """What a process sees: counts, statistics and a digest of every image and label it uses."""
    h = hashlib.sha256()
    for loader in (data.train, data.val, data.test):
        h.update(loader.images_at(range(loader.count)).numpy().tobytes())
        h.update(loader.targets.numpy().tobytes())
    return {
        "counts": [data.train.count, data.val.count, data.test.count],
        "mean": data.mean,
        "std": data.std,
        "digest": h.hexdigest(),
    }


@pytest.fixture
def count_decodes(monkeypatch):
    """The files each decode_files call read, in order: proof of what was (not) decoded."""
    calls = []
    real = decode.decode_files

    def counted(files, *args, **kwargs):
        calls.append(list(files))
        return real(files, *args, **kwargs)

    monkeypatch.setattr(decode, "decode_files", counted)
    return calls


def test_an_archive_is_unpacked_once_into_the_cache(tmp_path, monkeypatch):
    archive, cache = make_archive(tmp_path), tmp_path / "cache"
    unpacked, real = [], sources.extract

    def counted(archive, folder, *caps):
        unpacked.append(folder)
        return real(archive, folder, *caps)

    monkeypatch.setattr(sources, "extract", counted)
    first = open_image_folder(archive, cache)
    again = open_image_folder(archive, cache)
    assert len(unpacked) == 1 and first.origin == again.origin
    assert first.origin.startswith(str(cache / "archives"))
    assert [p.name for p in (cache / "archives").iterdir() if p.is_dir()] == [
        Path(first.origin).parent.name
    ]


# A child process: once the parent says go, load the data on the tensor path, then on the
# DataLoader path (whose unreadable-file scans the children then race for); print what it saw and
# the builds it ran itself. Each build first sleeps, so that processes arriving together would all
# build were there no lock.
CHILD = """
import json, sys, time
from pathlib import Path
import torch
from cnntrain.config.resolvers import register_resolvers
from cnntrain.data import decode, normalization, sources
from tests.conftest import load_run_data
from tests.test_caches import config, summary

builds = {"unpack": 0, "decode": 0, "scan": 0, "stats": 0}
def counted(name, build):
    def slow_build(*args, **kwargs):
        builds[name] += 1
        time.sleep(0.3)
        return build(*args, **kwargs)
    return slow_build
sources.extract = counted("unpack", sources.extract)
decode.decode_entry = counted("decode", decode.decode_entry)
decode.scan_unreadable = counted("scan", decode.scan_unreadable)
normalization.training_stats = counted("stats", normalization.training_stats)

archive, cache, ready, go = sys.argv[1:]
register_resolvers()
configs = [
    config(archive, cache, f"data.loader={loader}", "data.val_split=0.25")
    for loader in ("tensor", "dataloader")
]
Path(ready).touch()
deadline = time.time() + 60
while not Path(go).exists() and time.time() < deadline:
    time.sleep(0.005)
seen = [summary(load_run_data(cfg, torch.device("cpu"))) for cfg in configs]
print(json.dumps({"builds": builds, "seen": seen}))
"""


def start_together(tmp_path: Path, archive: Path, cache: Path, count: int) -> list[dict]:
    """Run `count` children, released at the same instant; their JSON lines."""
    procs = []
    for i in range(count):
        args = [archive, cache, tmp_path / f"ready-{i}", tmp_path / "go"]
        procs.append(
            subprocess.Popen(
                [sys.executable, "-c", CHILD, *map(str, args)],
                cwd=REPO,
                env={**os.environ, "PYTHONPATH": str(REPO)},
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
        )
    try:
        deadline = time.time() + CHILD_TIMEOUT
        while not all((tmp_path / f"ready-{i}").exists() for i in range(len(procs))):
            assert time.time() < deadline and all(p.poll() is None for p in procs), [
                p.communicate()[1] for p in procs if p.poll() is not None
            ]
            time.sleep(0.05)
        (tmp_path / "go").touch()
        outputs = [p.communicate(timeout=CHILD_TIMEOUT) for p in procs]
    finally:
        for p in procs:
            p.kill()
    for p, (_, err) in zip(procs, outputs, strict=True):
        assert p.returncode == 0, err
    return [json.loads(out.splitlines()[-1]) for out, _ in outputs]


@pytest.mark.slow  # three processes importing torch: about 10 s on 2 cores
def test_processes_starting_together_on_a_cold_cache_build_each_entry_once(tmp_path):
    archive, cache = make_archive(tmp_path), tmp_path / "cache"
    results = start_together(tmp_path, archive, cache, count=3)
    builds = {k: sum(r["builds"][k] for r in results) for k in results[0]["builds"]}
    # One archive, one statistics entry, and per split (train, test) one decode and one scan.
    assert builds == {"unpack": 1, "decode": 2, "scan": 2, "stats": 1}
    # Every process saw all of the data, and the same as one process alone on a fresh cache.
    alone = summary(load_run_data(config(archive, tmp_path / "fresh", "data.val_split=0.25"), CPU))
    assert alone["counts"] == [18, 6, 24]
    assert all(r["seen"] == [alone, alone] for r in results)
    assert (cache / "archives").is_dir() and not leftovers(cache)
    (unpacked,) = [p for p in (cache / "archives").iterdir() if p.is_dir()]
    assert len(list(unpacked.rglob("*.png"))) == 4 * 12  # train + test, 2 classes each
    assert len(list((cache / "decoded").glob("*.pt"))) == 2
    assert len(list((cache / "decoded").glob("*.unreadable.json"))) == 2
    assert len(list((cache / "stats").glob("*.json"))) == 1


KILLED_BUILDER = """
import sys, time
from pathlib import Path
from cnntrain.data import sources

def extract_then_hang(archive, folder, *caps):
    sources.real_extract(archive, folder, *caps)
    print("unpacked", folder, flush=True)
    time.sleep(600)  # killed here: the lock is held, the folder is complete but unpublished

sources.real_extract, sources.extract = sources.extract, extract_then_hang
sources.unpack_archive(Path(sys.argv[1]), Path(sys.argv[2]))
"""


def test_an_unpack_killed_midway_publishes_nothing_and_blocks_nobody(tmp_path):
    archive, into = make_archive(tmp_path), tmp_path / "cache" / "archives"
    proc = subprocess.Popen(
        [sys.executable, "-c", KILLED_BUILDER, str(archive), str(into)],
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        line = proc.stdout.readline()  # blocks until the child unpacked (or died)
        assert line.startswith("unpacked"), line
        scratch = Path(line.split()[1])
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=CHILD_TIMEOUT)
    entry = scratch.name.split(".")[1]  # the scratch folder is .<entry>.<pid>.partial
    assert scratch.is_dir() and not (into / entry).exists()  # built, but not visible
    assert [p.name for p in into.iterdir() if not p.name.startswith(".")] == [f"{entry}.lock"]
    lock = FileLock(into / f"{entry}.lock")
    lock.acquire(timeout=5)  # the kernel released the dead holder's lock
    lock.release()
    found = open_image_folder(archive, tmp_path / "cache")
    assert len(found.splits["train"]) == 24 and len(found.splits["test"]) == 24
    assert not scratch.exists()  # the next builder removed the dead one's scratch folder


def test_a_healthy_decoded_cache_is_reused_without_decoding(tmp_path, count_decodes):
    root = make_image_folder(tmp_path / "f", splits=("train", "test"))
    cfg = config(root, tmp_path / "cache", "data.loader=tensor")
    first = summary(load_run_data(cfg, CPU))
    assert sum(len(files) for files in count_decodes) == 48  # every image, once
    count_decodes.clear()
    assert summary(load_run_data(cfg, CPU)) == first
    assert count_decodes == []


@pytest.mark.parametrize("change", ["mtime", "size"])
def test_a_changed_file_invalidates_the_decoded_cache(tmp_path, count_decodes, change):
    root = make_image_folder(tmp_path / "f", splits=("train", "test"))
    cfg = config(root, tmp_path / "cache", "data.loader=tensor", "data.val_split=0")
    before = load_run_data(cfg, CPU).train.images.clone()
    path = sorted((root / "train" / "class a").iterdir())[0]
    if change == "mtime":
        st = path.stat()
        os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    else:  # another image: other pixels, another size, the same mtime
        other = make_image_folder(tmp_path / "other", splits=("train",), seed=1)
        new = (other / "train" / "class b" / "img 000.png").read_bytes()
        st = path.stat()
        assert len(new) != st.st_size
        path.write_bytes(new)
        os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    count_decodes.clear()
    after = load_run_data(cfg, CPU).train.images
    assert path in {Path(f) for files in count_decodes for f in files}  # not served from the cache
    if change == "mtime":
        assert torch.equal(before, after)
    else:
        assert not torch.equal(before[0], after[0]) and torch.equal(before[1:], after[1:])
        assert torch.equal(after[0], torch.tensor(decode.decode_file(str(path), 1, (20, 24))))


@pytest.mark.parametrize("setting", ["data.channels=3", "data.image_size=[10,12]"])
def test_other_decoding_settings_get_their_own_entry(tmp_path, count_decodes, setting):
    root = make_image_folder(tmp_path / "f", splits=("train", "test"))
    cache = tmp_path / "cache"
    plain = load_run_data(config(root, cache, "data.loader=tensor"), CPU)
    entries = set(cache_files(cache))
    count_decodes.clear()
    other = load_run_data(config(root, cache, "data.loader=tensor", setting), CPU)
    assert sum(len(files) for files in count_decodes) == 48
    assert set(cache_files(cache)) > entries  # new entries beside the old ones
    shape = (3, 20, 24) if setting == "data.channels=3" else (1, 10, 12)
    assert other.test.images.shape[1:] == shape and plain.test.images.shape[1:] == (1, 20, 24)
    count_decodes.clear()
    again = load_run_data(config(root, cache, "data.loader=tensor"), CPU)
    assert torch.equal(again.test.images, plain.test.images)
    assert count_decodes == []  # the first entry still serves the first settings


def disk_full_midway(monkeypatch):
    """Every cache writer writes half of its bytes, then fails as a full disk does."""

    def half_then_fail(path, data: bytes):
        Path(path).write_bytes(data[: len(data) // 2])
        raise OSError(errno.ENOSPC, "No space left on device")

    real_save = torch.save

    def save(obj, f, *args, **kwargs):
        buffer = io.BytesIO()
        real_save(obj, buffer)
        half_then_fail(f, buffer.getvalue())

    def write_text(self, text, *args, **kwargs):
        half_then_fail(self, text.encode())

    monkeypatch.setattr(torch, "save", save)
    monkeypatch.setattr(Path, "write_text", write_text)


@pytest.mark.parametrize("loader", ["tensor", "dataloader"])
def test_a_cache_write_failing_midway_leaves_no_file_and_the_run_goes_on(
    tmp_path, monkeypatch, caplog, loader
):
    root = make_image_folder(tmp_path / "f", splits=("train", "test"))
    expected = summary(load_run_data(config(root, tmp_path / "ok", f"data.loader={loader}"), CPU))
    written = cache_files(tmp_path / "ok")
    # tensor: decoded/*.pt and stats/*.json; dataloader: decoded/*.unreadable.json and stats
    assert any(f.endswith(".pt" if loader == "tensor" else ".unreadable.json") for f in written)
    assert any(f.startswith("stats/") for f in written)
    disk_full_midway(monkeypatch)
    cache = tmp_path / "cache"
    with caplog.at_level(logging.WARNING):
        assert summary(load_run_data(config(root, cache, f"data.loader={loader}"), CPU)) == expected
    assert cache_files(cache) == []  # no half file under a final name, no temporary file left
    failed = [r.getMessage() for r in caplog.records if "could not cache" in r.getMessage()]
    assert len(failed) == len(written) and all("No space left" in m for m in failed)


def test_a_failed_rewrite_keeps_the_old_file(tmp_path, monkeypatch):
    root = make_image_folder(tmp_path / "f", splits=("train", "test"))
    cache = tmp_path / "cache"
    load_run_data(config(root, cache), CPU)
    (stats,) = (cache / "stats").glob("*.json")
    stats.write_text("{")  # corrupt: the next run computes it again and writes it anew
    disk_full_midway(monkeypatch)
    load_run_data(config(root, cache), CPU)
    assert stats.read_text() == "{"  # the failed write replaced nothing


def test_a_failing_unpack_leaves_nothing_under_the_final_name(tmp_path, monkeypatch):
    archive, cache = make_archive(tmp_path), tmp_path / "cache"
    real = tarfile.TarFile.extractall

    def fail_midway(self, path, *args, **kwargs):
        self.extract(self.getmembers()[1], path, filter="data")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(tarfile.TarFile, "extractall", fail_midway)
    with pytest.raises(UserError, match=r"could not unpack .*No space left"):
        open_image_folder(archive, cache)
    assert [p.name for p in (cache / "archives").iterdir()] == [
        p.name for p in (cache / "archives").glob("*.lock")
    ]  # neither the final folder nor the scratch one
    monkeypatch.setattr(tarfile.TarFile, "extractall", real)
    assert len(open_image_folder(archive, cache).splits["train"]) == 24


def test_an_unwritable_cache_folder_costs_speed_not_the_run(tmp_path, caplog):
    archive = make_archive(tmp_path)
    expected = summary(load_run_data(config(archive, tmp_path / "ok"), CPU))
    (tmp_path / "a file").write_text("the cache folder cannot be created under a file")
    cache = tmp_path / "a file" / "cache"
    for loader in ("tensor", "dataloader"):
        with caplog.at_level(logging.WARNING):
            assert summary(load_run_data(config(archive, cache, f"data.loader={loader}"), CPU)) == (
                expected
            )
    assert "is not writable" in caplog.text and "for this run only" in caplog.text


def test_corrupt_decode_cache_is_rebuilt(tmp_path, caplog):
    root = make_image_folder(tmp_path / "f")
    cfg = config(root, tmp_path / "cache", "data.loader=tensor")
    first = load_run_data(cfg, CPU).val.images.clone()
    for path in (tmp_path / "cache" / "decoded").glob("*.pt"):
        raw = bytearray(path.read_bytes())
        raw[len(raw) // 2] ^= 0xFF  # one flipped bit in the pixel data: torch.load alone misses it
        path.write_bytes(raw)
    with caplog.at_level(logging.WARNING):
        again = load_run_data(cfg, CPU).val.images
    warned = [m for m in caplog.messages if "unreadable" in m and "decoding again" in m]
    assert len(warned) == 2  # train and val, each said once
    assert torch.equal(first, again)
    caplog.clear()
    assert torch.equal(load_run_data(cfg, CPU).val.images, first)
    assert not [m for m in caplog.messages if "cache" in m]  # rebuilt for good


def test_corrupt_statistics_are_computed_again(tmp_path, caplog):
    root = make_image_folder(tmp_path / "f")
    cfg = config(root, tmp_path / "cache")
    first = load_run_data(cfg, CPU)
    (stats,) = (tmp_path / "cache" / "stats").glob("*.json")
    stats.write_text('{"mean": [0.')  # as a plain write cut short would have left it
    with caplog.at_level(logging.WARNING):
        again = load_run_data(cfg, CPU)
    assert "is unreadable" in caplog.text
    assert (again.mean, again.std) == (first.mean, first.std)
    assert json.loads(stats.read_text()) == {"mean": first.mean, "std": first.std}


def chosen_files(root: Path, *, val_split, max_train, max_eval, split_seed=0):
    """The files the caps choose, drawn as the README says: a stratified, seeded validation
    split of train, then seeded subsets of each split, over the files as listed."""
    found = open_image_folder(root, root.parent / "unused-cache")
    train, test = found.splits["train"], found.splits["test"]
    train_idx, val_idx = stratified_split(train.targets, val_split, split_seed)
    pick = lambda idx, limit, seed: idx[seeded_subset(np.arange(len(idx)), limit, seed)]  # noqa: E731
    return {
        "train": [train.files[i] for i in pick(train_idx, max_train, split_seed)],
        "val": [train.files[i] for i in pick(val_idx, max_eval, split_seed + 1)],
        "test": [test.files[i] for i in pick(np.arange(len(test)), max_eval, split_seed + 2)],
    }


CAPS = ("data.val_split=0.25", "data.max_train_samples=10", "data.max_eval_samples=6")


@pytest.mark.parametrize("loader", ["tensor", "dataloader"])
def test_capped_runs_decode_only_the_images_they_use_and_the_same_as_before(
    tmp_path, count_decodes, loader
):
    root = make_image_folder(tmp_path / "f", splits=("train", "test"), per_class=40)
    data = load_run_data(config(root, tmp_path / "cache", f"data.loader={loader}", *CAPS), CPU)
    expected = chosen_files(root, val_split=0.25, max_train=10, max_eval=6)
    for name, part in zip(expected, (data.train, data.val, data.test), strict=True):
        pixels = [decode.decode_file(f, 1, (20, 24)) for f in expected[name]]
        assert torch.equal(part.images_at(range(part.count)), torch.from_numpy(np.stack(pixels)))
    # Read: the chosen train and val files, then the chosen test files; none of the other 138.
    read = [sorted(files) for files in count_decodes[:2]]
    assert read == [sorted(expected["train"] + expected["val"]), sorted(expected["test"])]
    assert {f for files in count_decodes for f in files} <= {
        f for v in expected.values() for f in v
    }


def test_each_choice_is_its_own_entry_and_serves_only_its_images(tmp_path, count_decodes):
    root = make_image_folder(tmp_path / "f", splits=("train", "test"), per_class=40)
    cache = tmp_path / "cache"
    for max_train in (10, 12, 10):
        cfg = config(
            root, cache, "data.loader=tensor", *CAPS, f"data.max_train_samples={max_train}"
        )
        data = load_run_data(cfg, CPU)
        files = chosen_files(root, val_split=0.25, max_train=max_train, max_eval=6)["train"]
        pixels = torch.from_numpy(np.stack([decode.decode_file(f, 1, (20, 24)) for f in files]))
        assert torch.equal(data.train.images, pixels)
    assert len(count_decodes) == 3  # train+val (10), test, train+val (12); then all cached
    assert len(list((cache / "decoded").glob("*.pt"))) == 3


def test_an_unreadable_chosen_file_is_dropped_and_unchosen_ones_are_never_read(
    tmp_path, caplog, count_decodes
):
    root = make_image_folder(tmp_path / "f", splits=("train", "test"), per_class=40)
    expected = chosen_files(root, val_split=0.25, max_train=10, max_eval=6)
    chosen_bad = Path(expected["train"][3])
    every = {str(p) for p in (root / "train").rglob("*.png")}
    unchosen = sorted(every - set(expected["train"]) - set(expected["val"]))
    chosen_bad.write_bytes(b"")
    Path(unchosen[0]).write_bytes(b"not an image")
    with caplog.at_level(logging.WARNING):
        data = load_run_data(config(root, tmp_path / "cache", "data.loader=tensor", *CAPS), CPU)
    (warning,) = [m for m in caplog.messages if "unreadable" in m]
    assert warning.startswith("skipped 1 unreadable image file(s) in train/") and (
        str(chosen_bad) in warning
    )
    assert data.train.count == 9 and data.val.count == 6  # one short of its cap, no stand-in
    assert unchosen[0] not in {f for files in count_decodes for f in files}
    survivors = [f for f in expected["train"] if f != str(chosen_bad)]
    pixels = torch.from_numpy(np.stack([decode.decode_file(f, 1, (20, 24)) for f in survivors]))
    assert torch.equal(data.train.images, pixels)
