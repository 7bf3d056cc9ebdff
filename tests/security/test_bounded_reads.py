"""Received folders and archives cost bounded time and memory: folder links and FIFOs cannot
hang the scan, an archive member past data.max_file_mb is never read (predict) or written
(unpacking), and neither one huge image nor one odd-sized one sets the folder's image size."""

import json
import logging
import os
import resource
import subprocess
import sys
import tarfile
import textwrap
from pathlib import Path

import pytest
from PIL import Image

from tests.conftest import REPO, compose_config, load_run_data, make_image_folder, train_here

GIB = 2**30


def folder_config(root, *overrides):
    return compose_config(
        "data=imagefolder", f"data.root={root}", "data.num_workers=0", *overrides,
        output_dir="unused",
    )  # fmt: skip


def run_python(script: str, *args, timeout: int, memory: int | None = None):
    """`script` in a fresh Python (this checkout's package) with `args`; with `memory`, its
    private memory (RLIMIT_DATA, bytes) is capped: past it an allocation fails."""

    def cap_memory():
        resource.setrlimit(resource.RLIMIT_DATA, (memory, memory))

    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(script), *map(str, args)],
        capture_output=True, text=True, timeout=timeout, cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO), "COLUMNS": "400"},
        preexec_fn=cap_memory if memory else None,
    )  # fmt: skip


LOAD = """
import json, sys
from cnntrain.config.resolvers import register_resolvers
from tests.conftest import compose_config, load_run_data
register_resolvers()
cfg = compose_config("data=imagefolder", f"data.root={sys.argv[1]}", "data.num_workers=0",
                     "data.val_split=0", output_dir="unused")
data = load_run_data(cfg)
print(json.dumps({"train": data.train.count, "test": data.test.count}))
"""


def loop_links(folder: Path) -> None:
    """Two links back up the tree in `folder`: a walk that follows them never ends (2^40 paths)."""
    os.symlink(".", folder / "again")
    os.symlink("..", folder / "up")


@pytest.mark.parametrize("received", ["folder", "tar"])
def test_folder_links_and_fifos_cannot_hang_the_scan(tmp_path, received):
    root = make_image_folder(tmp_path / "pets", ("train", "test"), per_class=6)
    loop_links(root / "train" / "class a")
    if received == "folder":
        os.mkfifo(root / "train" / "class b" / "pipe.png")  # opening it would block forever
        given = root
    else:  # the links pass tarfile's `data` filter: they point inside the archive
        given = tmp_path / "pets.tar"
        with tarfile.open(given, "w") as t:
            t.add(root, "pets")
    proc = run_python(LOAD, given, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout.splitlines()[-1]) == {"train": 12, "test": 12}
    [warning] = [line for line in proc.stderr.splitlines() if "folder link" in line]
    assert "did not follow 2 folder link(s)" in warning
    assert all(name in warning for name in ("class a/again", "class a/up"))


def test_a_predict_walk_over_a_folder_link_loop_ends(tmp_path):
    from cnntrain.trained.predict import find_images

    root = make_image_folder(tmp_path / "new", ("test",), per_class=3)
    loop_links(root / "test" / "class a")
    assert len(find_images([str(root)])) == 6


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory) -> Path:
    root = make_image_folder(tmp_path_factory.mktemp("data") / "pets", ("train", "val"))
    run = tmp_path_factory.mktemp("run")
    train_here("data=imagefolder", f"data.root={root}", "model=simplecnn", "trainer.epochs=1",
               "trainer.device=cpu", "logger=none", "trainer.plots=false",
               output_dir=run)  # fmt: skip
    return run


class Zeros:
    """A readable stream of `size` zero bytes, made as it is read."""

    def __init__(self, size: int):
        self.left = size

    def read(self, n: int = -1) -> bytes:
        n = self.left if n < 0 else min(n, self.left)
        self.left -= n
        return bytes(n)


def test_predict_skips_a_2_gib_archive_member_in_bounded_memory(tiny_run, tmp_path):
    image = tmp_path / "good.png"
    Image.new("L", (24, 20), 128).save(image)
    archive = tmp_path / "received.tar.gz"
    with tarfile.open(archive, "w:gz", compresslevel=1) as t:  # 2 GiB of zeros: ~2 MB
        t.add(image, "pics/good.png")
        bomb = tarfile.TarInfo("pics/bomb.png")
        bomb.size = 2 * GIB
        t.addfile(bomb, Zeros(bomb.size))
    assert archive.stat().st_size < 16 * 2**20
    out = tmp_path / "p.csv"
    script = "from cnntrain.cli.predict import main; main()"
    # A cap well under the member: reading it whole (as before) fails; streaming does not.
    proc = subprocess.run(
        [sys.executable, "-c", script, str(tiny_run), str(archive), "--out", str(out)],
        capture_output=True, text=True, timeout=180, cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_DATA, (int(1.5 * GIB),) * 2),
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    [warning] = [line for line in proc.stderr.splitlines() if "bomb.png" in line]
    assert "skipped 1 unreadable file(s)" in warning
    assert f"{archive}/pics/bomb.png (2,048 MiB, over data.max_file_mb=256)" in warning
    rows = out.read_text().splitlines()
    assert len(rows) == 2 and rows[1].startswith(f"{archive}/pics/good.png,")


def test_unpacking_leaves_out_a_member_over_the_cap(tmp_path, caplog):
    root = make_image_folder(tmp_path / "pets", ("train", "test"), per_class=6)
    archive = tmp_path / "pets.tar.gz"
    with tarfile.open(archive, "w:gz", compresslevel=1) as t:
        t.add(root, "pets")
        big = tarfile.TarInfo("pets/train/class a/big.png")
        big.size = 3 * 2**20
        t.addfile(big, Zeros(big.size))
    cache = tmp_path / "cache"
    cfg = folder_config(
        archive, "data.val_split=0", "data.max_file_mb=2", f"paths.cache_dir={cache}"
    )
    with caplog.at_level(logging.WARNING):
        data = load_run_data(cfg)
    assert data.train.count == 12 and data.test.count == 12
    [warning] = [r.getMessage() for r in caplog.records if "big.png" in r.getMessage()]
    assert warning == f"{archive}: left out 1 member(s): pets/train/class a/big.png (3 MiB, " \
        "over data.max_file_mb=2)"  # fmt: skip
    assert not list(cache.rglob("big.png"))  # never written: a disk bomb stays in its archive


def test_an_image_over_the_pixel_cap_is_skipped_and_sets_nothing(tmp_path, caplog):
    from cnntrain.data import input_spec

    root = make_image_folder(tmp_path / "pets", ("train", "test"), per_class=6)
    huge = root / "train" / "class a" / "000 huge.png"  # sorted first in its folder
    Image.new("1", (12000, 12000), 1).save(huge)  # 144 M pixels in ~20 KB
    cfg = folder_config(root, "data.val_split=0")
    spec, _ = input_spec(cfg, {})
    assert (spec.height, spec.width) == (20, 24)
    with caplog.at_level(logging.WARNING):
        data = load_run_data(cfg)
    assert data.train.count == 12
    [warning] = [r.getMessage() for r in caplog.records if "huge.png" in r.getMessage()]
    assert warning == (
        f"skipped 1 oversized image file(s) in train/: {huge} (12000×12000 px, over "
        "data.max_image_pixels=89478485)"
    )
    assert next(iter(data.train.batches(0)))[0].shape[1:] == (1, 20, 24)


def test_the_folders_image_size_is_the_most_common_not_the_first(tmp_path, caplog):
    from cnntrain.data import input_spec

    root = make_image_folder(tmp_path / "pets", ("train", "test"), per_class=6)
    Image.new("L", (300, 200), 9).save(root / "train" / "class a" / "000 odd.png")
    with caplog.at_level(logging.INFO):
        spec, _ = input_spec(folder_config(root, "data.val_split=0"), {})
    assert (spec.height, spec.width) == (20, 24)
    said = [r.getMessage() for r in caplog.records if r.getMessage().startswith("image size")]
    assert said == [
        "image size 20×24 (H×W, data.image_size unset): the most common of 13 training image(s) "
        "sampled"
    ]


def test_a_size_sample_is_capped_and_seeded(tmp_path):
    from cnntrain.data.shape import SIZE_SAMPLE, data_shape
    from cnntrain.data.sources import open_image_folder

    root = make_image_folder(tmp_path / "pets", ("train",), per_class=SIZE_SAMPLE)
    found = open_image_folder(root, tmp_path / "cache")
    opened = []
    real = Image.open

    def counted(file, *args, **kwargs):
        opened.append(file)
        return real(file, *args, **kwargs)

    with pytest.MonkeyPatch.context() as m:
        m.setattr(Image, "open", counted)
        assert data_shape(found.splits["train"], 0, True) == (1, (20, 24))
        first = list(opened)
        data_shape(found.splits["train"], 0, True)
    files = found.splits["train"].files
    assert len(first) == SIZE_SAMPLE and opened == first * 2  # the same draw every time
    assert first != files[:SIZE_SAMPLE] and set(first) < set(files)  # drawn from all of them


def test_a_received_runs_split_table_over_the_cap_is_refused_unread(tmp_path, monkeypatch):
    """resume= and cnntrain-eval read a received run's splits.csv whole: one over the run's
    data.max_file_mb is refused in one line before a byte is read."""
    from cnntrain.core.errors import UserError
    from cnntrain.data import split_table
    from cnntrain.data.known import open_splits
    from cnntrain.data.limits import Limits

    run = tmp_path / "received run"
    run.mkdir()
    (run / split_table.SPLITS_FILE).write_text("path,class,split\n" + "a.png,a,train\n" * 20000)
    table = split_table.run_split_table(run)
    assert table == str(run / "splits.csv")
    assert len(split_table.read_split_table(Path(table))[0]) == 20000  # within the cap: read
    photos = make_image_folder(tmp_path / "photos", splits=("",), per_class=2)
    cfg = folder_config(photos, f"data.splits={table}", "data.max_file_mb=0.1",
                        f"paths.cache_dir={tmp_path / 'cache'}")  # fmt: skip
    with pytest.raises(UserError, match=r"is 0.3 MiB, over data.max_file_mb=0.1;"):
        open_splits(cfg.data, cfg.paths.data_dir, cfg.paths.cache_dir)  # the run's cap, obeyed
    monkeypatch.setattr("builtins.open", lambda *a, **k: pytest.fail("the table was opened"))
    with pytest.raises(UserError, match=r"over data.max_file_mb=0.1;"):
        split_table.read_split_table(Path(table), Limits(0.1, 10**6))
    (run / "splits.csv").unlink()
    (run / "splits.csv").mkdir()  # not a regular file: no table
    assert split_table.run_split_table(run) is None
