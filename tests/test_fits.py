"""The memory a run needs, estimated before its model is built and refused in one line when it is
more than is free (training/fits.py), and the image size a folder of photos gets when
data.image_size is unset (data/shape.py)."""

import inspect
import logging
import re
import subprocess
import sys
import textwrap
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from cnntrain.core.errors import UserError
from cnntrain.core.spec import InputSpec
from cnntrain.data.shape import PHOTO_SIDE
from cnntrain.distributed import SINGLE
from cnntrain.training import fits
from tests.conftest import compose_config, make_image_folder, run_cli, run_folders

GIB = 2**30
linux_only = pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(), reason="not Linux")


def small_net(channels=8, side=8) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(3, channels, 3, padding=1),
        nn.ReLU(inplace=True),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(channels * (side // 2) ** 2, 10),
    )


def test_activations_are_counted_as_a_hand_count_says():
    model = small_net()
    # input 3·8·8 = 192, conv 8·8·8 = 512, in-place ReLU nothing, pool 8·4·4 = 128, flatten 128,
    # linear 10; the largest input + output is the convolution's: 192 + 512
    assert fits.activation_elements(model, (3, 8, 8)) == (970, 704)
    assert {p.device.type for p in model.parameters()} == {"cpu"}  # its weights stay as they are


def test_the_estimate_counts_weights_gradients_optimizer_state_and_activations():
    model = small_net()
    model[0].requires_grad_(False)  # a frozen layer: weights, no gradient or optimizer state
    weights = 8 * 3 * 9 + 8 + 128 * 10 + 10
    trainable = 128 * 10 + 10
    e = fits.estimate(model, (3, 8, 8), batch_size=16, eval_batch_size=64, states=2)
    assert e.parameters == 4 * (2 * weights + 3 * trainable)
    assert e.training == int(fits.BACKWARD * 970 * 4 * 16)
    assert e.evaluation == int(fits.EVALUATION * 704 * 4 * 64)
    assert e.total == e.parameters + max(e.training, e.evaluation)
    half = fits.estimate(model, (3, 8, 8), 16, 64, 2, torch.bfloat16)
    assert (half.training, half.parameters) == (e.training // 2, e.parameters)


@pytest.mark.parametrize(
    "target, momentum, states",
    [("torch.optim.SGD", 0.9, 1), ("torch.optim.SGD", 0.0, 0), ("torch.optim.Adam", None, 2),
     ("torch.optim.AdamW", None, 2)],
)  # fmt: skip
def test_optimizer_state_per_parameter(target, momentum, states):
    assert fits.optimizer_states({"_target_": target, "momentum": momentum}) == states


def wide_net() -> nn.Sequential:
    """Cheap to compute, large to keep: 16 maps of 128×128 px."""
    return nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(inplace=True),
        nn.MaxPool2d(2), nn.Flatten(), nn.Linear(16 * 64 * 64, 10),
    )  # fmt: skip


@linux_only
def test_the_estimate_is_near_a_training_steps_measured_peak():
    # a fresh process (torch alone) trains wide_net one step and says its peak resident memory
    # over what it held before: activations, gradients and momentum
    imports = "from pathlib import Path\nimport torch\nfrom torch import nn\n"
    script = (
        imports
        + inspect.getsource(wide_net)
        + textwrap.dedent("""
        def kib(key):
            status = Path("/proc/self/status").read_text().splitlines()
            return next(int(line.split()[1]) for line in status if line.startswith(key))

        model = wide_net()
        optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
        x, y = torch.randn(32, 3, 128, 128), torch.randint(0, 10, (32,))
        before = kib("VmRSS:")
        Path("/proc/self/clear_refs").write_text("5")  # the high-water mark starts from here
        nn.functional.cross_entropy(model(x), y).backward()
        optimizer.step()
        print((kib("VmHWM:") - before) * 1024)
    """)
    )
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=60, check=True)  # fmt: skip
    measured = int(proc.stdout)
    model = wide_net()
    weights = sum(p.numel() for p in model.parameters())
    estimated = fits.estimate(model, (3, 128, 128), 32, 32, states=1).training + 4 * 2 * weights
    assert measured > 50 * 2**20  # the step did allocate its ~90 MiB of activations
    assert 0.7 < estimated / measured < 2, (estimated, measured)


V1 = ("memory.limit_in_bytes", "memory.usage_in_bytes", "total_inactive_file")
V2 = ("memory.max", "memory.current", "inactive_file")


def test_a_cgroup_limit_leaves_limit_less_usage_less_inactive_file_pages(tmp_path):
    (tmp_path / "memory.current").write_text("400\n")
    (tmp_path / "memory.max").write_text("1000\n")
    assert fits.room(tmp_path, *V2) == 600  # no memory.stat: nothing counted reclaimable
    (tmp_path / "memory.stat").write_text("anon 100\ninactive_file 300\nactive_file 0\n")
    assert fits.room(tmp_path, *V2) == 900
    (tmp_path / "memory.stat").write_text("inactive_file 500\n")  # read later than the usage
    assert fits.room(tmp_path, *V2) == 1000
    (tmp_path / "memory.max").write_text("max\n")  # v2: no limit
    assert fits.room(tmp_path, *V2) is None
    (tmp_path / "memory.max").write_text("9223372036854771712\n")  # v1: no limit
    assert fits.room(tmp_path, *V2) is None
    assert fits.room(tmp_path / "none", *V2) is None


def fake_cgroup(folder: Path, names: tuple[str, str, str], limit, usage: int, inactive: int):
    """A cgroup's memory files in `folder`, as `names` (V1 or V2) calls them."""
    limit_file, usage_file, key = names
    folder.mkdir(parents=True, exist_ok=True)
    (folder / limit_file).write_text(f"{limit}\n")
    (folder / usage_file).write_text(f"{usage}\n")
    # v1's inactive_file is the cgroup's own pages, total_inactive_file its subtree's (as usage)
    (folder / "memory.stat").write_text(f"cache {usage}\ninactive_file 0\n{key} {inactive}\n")


def test_a_containers_page_cache_counts_as_room_under_its_cgroup_limits(tmp_path):
    # v1 (this machine's kind: 21.4 GB used, 20.5 GB of it page cache): a cgroup /a/b in a
    # limited /a, the least room of the two; v2: one limited cgroup /c.
    v1, v2 = tmp_path / "v1", tmp_path / "v2"
    for root, line in ((v1, "4:memory:/a/b\n1:cpu:/\n"), (v2, "0::/c\n")):
        (root / "proc/self").mkdir(parents=True)
        (root / "proc/self/cgroup").write_text(line)
    mount = v1 / "sys/fs/cgroup/memory"
    fake_cgroup(mount, V1, 9223372036854771712, 40 * GIB, 30 * GIB)  # no limit
    fake_cgroup(mount / "a", V1, 24 * GIB, 22 * GIB, 20 * GIB)  # 24 − (22 − 20)
    fake_cgroup(mount / "a/b", V1, 30 * GIB, 21 * GIB, 19 * GIB)  # 30 − (21 − 19)
    assert fits.cgroup_room(v1) == 22 * GIB
    fake_cgroup(v2 / "sys/fs/cgroup/c", V2, 8 * GIB, 7 * GIB, 5 * GIB)
    assert fits.cgroup_room(v2) == 6 * GIB
    assert fits.cgroup_room(tmp_path / "none") is None


def test_the_cpus_free_memory_is_the_least_room_its_readers_give(monkeypatch):
    for available, room, free in ((5 * GIB, 3 * GIB, 3 * GIB), (2 * GIB, 3 * GIB, 2 * GIB),
                                  (5 * GIB, None, 5 * GIB), (None, None, None)):  # fmt: skip
        monkeypatch.setattr(fits, "mem_available", lambda available=available: available)
        monkeypatch.setattr(fits, "cgroup_room", lambda room=room: room)
        assert fits.free_bytes(torch.device("cpu")) == free
    assert fits.free_bytes(torch.device("meta")) is None


@pytest.mark.skipif(not Path("/proc/meminfo").exists(), reason="not Linux")
def test_the_kernels_available_memory_is_read():
    assert fits.mem_available() > 0


def bundle(spec: InputSpec, train=1000, evaluated=200):
    """What check_fits reads of a DataBundle."""
    split = SimpleNamespace(count=evaluated)
    return SimpleNamespace(spec=spec, train=SimpleNamespace(count=train), val=split, test=split)


def test_a_run_too_large_is_refused_with_what_would_fit(monkeypatch):
    cfg = compose_config("trainer.precision=32", output_dir="unused")
    monkeypatch.setattr(fits, "free_bytes", lambda device: 12 * GIB)
    data = bundle(InputSpec(3, 431, 640, 10))
    with pytest.raises(UserError) as refused:
        fits.check_fits(cfg, data, torch.device("cpu"), SINGLE)
    said = str(refused.value)
    assert re.fullmatch(
        r"model cifar10cnn on 431×640 \(H×W\) images, batch 128, needs about [\d.]+ GiB "
        r"\(parameters [\d.]+ GiB, one batch's activations [\d.]+ GiB\) but 12.0 GiB is free on "
        r"cpu; set data.image_size \(e.g. (\d+)\), or data.batch_size ≤ (\d+)(, or "
        r"data.eval_batch_size ≤ \d+)?",
        said,
    ), said
    side, batch = map(int, re.findall(r"\(e.g. (\d+)\).*≤ (\d+)", said)[0])
    settings = fits.run_settings(cfg, data, torch.device("cpu"), SINGLE)
    at = fits.run_estimate(cfg.model, InputSpec(3, side, side, 10), settings)
    assert at.total <= 12 * GIB  # what it suggests fits
    bigger = fits.SUGGESTED_SIDES[fits.SUGGESTED_SIDES.index(side) - 1]
    assert fits.run_estimate(cfg.model, InputSpec(3, bigger, bigger, 10), settings).total > 12 * GIB
    assert 0 < batch < 128


def test_a_side_too_small_for_the_models_forward_ends_the_suggestions_without_a_traceback():
    # alexnet's max-pools fail on the meta device below 63 px (RuntimeError), after 192…64 px
    model = compose_config("model=torchvision", "model.arch=alexnet", output_dir="unused").model
    settings = fits.Settings(128, 128, 2, torch.float32)
    spec = InputSpec(3, 224, 224, 10)
    with pytest.raises(RuntimeError):
        fits.run_estimate(model, InputSpec(3, 48, 48, 10), settings)
    assert fits.largest_side(model, spec, settings, free=1) is None
    assert fits.remedies(model, spec, settings, free=1, processes=1) == "choose a smaller model"
    fits_at_64 = fits.run_estimate(model, InputSpec(3, 64, 64, 10), settings).total
    assert fits.largest_side(model, spec, settings, fits_at_64) == 64


def test_a_run_that_fits_says_its_estimate_past_half_the_free_memory(monkeypatch, caplog):
    cfg = compose_config("trainer.precision=32", output_dir="unused")
    data = bundle(InputSpec(3, 32, 32, 10))
    need = fits.run_estimate(
        cfg.model, data.spec, fits.run_settings(cfg, data, torch.device("cpu"), SINGLE)
    )
    for free, said in ((4 * need.total, False), (need.total + 1, True)):
        monkeypatch.setattr(fits, "free_bytes", lambda device, free=free: free)
        caplog.clear()
        with caplog.at_level(logging.INFO, logger="cnntrain"):
            fits.check_fits(cfg, data, torch.device("cpu"), SINGLE)
        assert any("needs about" in r.getMessage() for r in caplog.records) == said


def test_the_cli_refuses_a_model_and_size_that_cannot_fit_before_training(tmp_path):
    # cifar10cnn at 2048×2048: its dense layer alone has 8.6 G parameters (34 GB of weights), and
    # one image's activations take GBs: about 195 GiB in all, on 12 grayscale training images
    if fits.free_bytes(torch.device("cpu")) > 150 * GIB:
        pytest.skip("this machine may have the memory to start that run")
    root = make_image_folder(tmp_path / "pets", ("train", "test"), per_class=6)
    proc = run_cli("data=imagefolder", f"data.root={root}", "data.image_size=2048",
                   "trainer.device=cpu", "data.num_workers=0", "data.val_split=0",
                   cwd=tmp_path, check=False)  # fmt: skip
    assert proc.returncode == 2
    [line] = proc.stderr.strip().splitlines()
    assert re.match(
        r"cnntrain: error: model cifar10cnn on 2048×2048 \(H×W\) images, batch 128, needs about "
        r"[\d.]+ GiB .* is free on cpu; set data.image_size \(e.g. ",
        line,
    )
    [run] = run_folders(tmp_path)
    log = (run / "train.log").read_text()
    assert line.removeprefix("cnntrain: error: ") in log  # the run folder keeps its log
    assert not (run / "checkpoints").exists() and not (run / "metrics.jsonl").exists()


def write_photos(folder: Path, sizes: list[tuple[int, int]]) -> None:
    """PNGs of `sizes` (width, height, as cameras say) into `folder`, in sorted order."""
    folder.mkdir(parents=True, exist_ok=True)
    for i, size in enumerate(sizes):
        Image.new("RGB", size, (40 * (i % 6), 90, 160)).save(folder / f"{i:03d}.png")


def photo_config(root: Path):
    return compose_config("data=imagefolder", f"data.root={root}", "data.num_workers=0",
                          "data.val_split=0", output_dir="unused")  # fmt: skip


def test_mixed_size_photos_get_a_square_of_their_median_short_side(tmp_path, caplog):
    from cnntrain.data import input_spec

    rng = np.random.default_rng(0)
    sizes = [(1600, 1200)] + [tuple(rng.integers(40, 90, 2)) for _ in range(11)]
    write_photos(tmp_path / "photos" / "train" / "cat", sizes)
    write_photos(tmp_path / "photos" / "test" / "cat", sizes[1:4])
    with caplog.at_level(logging.INFO):
        spec, _ = input_spec(photo_config(tmp_path / "photos"), {})
    median = sorted(min(s) for s in sizes)[6]
    assert (spec.height, spec.width) == (median, median) != (1200, 1600)
    [said] = [r.getMessage() for r in caplog.records if r.getMessage().startswith("image size")]
    shortest, longest = min(min(s) for s in sizes), max(min(s) for s in sizes)
    assert said == (
        f"image size {median}×{median} (H×W, data.image_size unset): 12 training image(s) "
        f"sampled have 12 size(s) (short sides {shortest}-{longest} px, median {median}); photos "
        f"get a square of the median short side, at most {PHOTO_SIDE} px (data.image_size=N sets "
        "another)"
    )


def test_large_photos_get_the_default_photo_side(tmp_path):
    from cnntrain.data import input_spec

    same = [(640, 480)] * 5  # one camera's: one size, but large (its aspect ratio is kept)
    mixed = [(1600, 1200), (300, 400), (500, 200), (640, 431), (250, 250)]
    for name, sizes, side in (("same", same, 128), ("mixed", mixed, PHOTO_SIDE)):
        write_photos(tmp_path / name / "train" / "dog", sizes)
        write_photos(tmp_path / name / "test" / "dog", sizes[:2])
        spec, _ = input_spec(photo_config(tmp_path / name), {})
        assert (spec.height, spec.width) == (PHOTO_SIDE, side), name


def test_a_folder_of_one_small_size_keeps_it(tmp_path):
    from cnntrain.data import input_spec

    root = make_image_folder(tmp_path / "tiles", ("train", "test"), per_class=6, size=(64, 48))
    spec, _ = input_spec(photo_config(root), {})
    assert (spec.height, spec.width) == (64, 48)
