"""Photos as they come: EXIF orientation on every decode, the aspect ratio kept (short side
resized, centre crop: torchvision's weights.transforms()), and RandomResizedCrop on both data
paths with torchvision's law, a resumed run drawing what an uninterrupted one does."""

import math
import tarfile

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from PIL import ExifTags, Image, ImageDraw
from torchvision.models import get_weight
from torchvision.transforms import v2

from cnntrain.core.errors import UserError
from cnntrain.core.spec import InputSpec
from cnntrain.data.augment.draws import Draws
from cnntrain.data.augment.options import read_options
from cnntrain.data.augment.resized_crop import draw_boxes, fallback_box, resized_crop
from cnntrain.data.decode import decode_file, upright_size
from cnntrain.data.geometry import (
    Fit,
    fit_image,
    photo_fit,
    spec_fit,
)
from cnntrain.data.limits import default_limits
from cnntrain.data.loaders import SampleDataset
from cnntrain.data.sources import folder_source
from cnntrain.models.torchvision import data_defaults
from cnntrain.trained.load import image_pixels, load_trained
from cnntrain.trained.predict import ImageRef, read_pixels
from tests.conftest import CIFAR_ARCHIVE, compose_config, load_run_data, needs_cifar
from tests.test_augment import KS, OFF, Z
from tests.test_resume_every import QUIET, assert_same_run, interrupted_and_resumed

UPRIGHT = (24, 40)  # (H, W) of the EXIF test photo as a viewer shows it
# How each orientation's file stores an upright picture: the turn that exif_transpose undoes.
STORED_TURN = {6: Image.Transpose.ROTATE_90, 8: Image.Transpose.ROTATE_270}


def upright_pattern() -> np.ndarray:
    """(24, 40) uint8 with no symmetry: a bright top-left block, a mid-grey bottom band."""
    pixels = np.full(UPRIGHT, 40, np.uint8)
    pixels[:8, :16] = 220
    pixels[16:, :] = 130
    return pixels


def sideways_jpeg(path, orientation: int) -> None:
    """A JPEG storing upright_pattern() turned, with the EXIF Orientation that turns it back."""
    exif = Image.Exif()
    exif[ExifTags.Base.Orientation] = orientation
    stored = Image.fromarray(upright_pattern()).transpose(STORED_TURN[orientation])
    stored.save(path, quality=95, exif=exif)


@pytest.mark.parametrize("orientation", [6, 8])
def test_an_exif_rotated_photo_is_upright_on_both_paths_and_in_predict(tmp_path, orientation):
    folder = tmp_path / "train" / "photos"
    folder.mkdir(parents=True)
    sideways_jpeg(folder / "phone.jpg", orientation)
    with Image.open(folder / "phone.jpg") as img:
        assert img.size == UPRIGHT  # stored (W, H) = (24, 40): sideways
        assert upright_size(img) == UPRIGHT  # the header alone says how it shows
    tensor_path = decode_file(str(folder / "phone.jpg"), 1, Fit(UPRIGHT))[0]
    dataset = SampleDataset(folder_source(tmp_path / "train", {"photos": 0}), 1, UPRIGHT, seed=0)
    loader_path = dataset[(0, 0)][0][0].numpy()
    spec = InputSpec(1, *UPRIGHT, num_classes=2)
    [(_, predicted)] = read_pixels([ImageRef("phone.jpg", folder / "phone.jpg")], spec,
                                   default_limits())  # fmt: skip
    expected = upright_pattern().astype(int)
    for decoded in (tensor_path, loader_path, predicted[0].numpy()):
        assert decoded.shape == UPRIGHT
        assert np.abs(decoded.astype(int) - expected).mean() < 3  # JPEG's error only


def photo_folder_spec(root) -> InputSpec:
    """The input spec data=imagefolder chooses for `root` (train/ and test/), image size unset."""
    from cnntrain.data import input_spec

    cfg = compose_config("data=imagefolder", f"data.root={root}", "data.num_workers=0",
                         "data.val_split=0", output_dir="unused")  # fmt: skip
    return input_spec(cfg, {})[0]


def test_the_image_size_is_counted_upright(tmp_path):
    for split in ("train", "test"):
        (tmp_path / split / "phone").mkdir(parents=True)
        for i in range(3):  # stored 40 px high, 24 wide: shown 24 high, 40 wide
            sideways_jpeg(tmp_path / split / "phone" / f"{i}.jpg", 6)
    spec = photo_folder_spec(tmp_path)
    assert (spec.height, spec.width) == UPRIGHT  # what decoding gives: nothing cropped away


@pytest.mark.parametrize(("stored", "chosen"), [((64, 200), (64, 200)), ((480, 640), (96, 128)),
                                                ((700, 500), (134, 96)),
                                                ((32, 9000), (29, 8192))])  # fmt: skip
def test_images_of_one_size_keep_their_aspect_ratio(tmp_path, stored, chosen):
    """(H, W) sizes; a long side over 96 px is no reason to crop them square."""
    for split in ("train", "test"):
        (tmp_path / split / "strip").mkdir(parents=True)
        for i in range(3):
            Image.new("L", stored[::-1], 60 * i).save(tmp_path / split / "strip" / f"{i}.png")
    spec = photo_folder_spec(tmp_path)
    assert (spec.height, spec.width) == chosen


def test_a_strip_or_a_huge_resize_resizes_only_the_crop():
    # A 1 × 20,000 px strip covering a 32 × 32 crop: 32 × 640,000 px (20 Mpx) resized whole.
    strip = Image.fromarray(np.random.default_rng(0).integers(0, 256, (1, 20_000, 3), np.uint8))
    fit = Fit((32, 32))
    whole = strip.resize((640_000, 32), Image.Resampling.BILINEAR).crop((319_984, 0, 320_016, 32))
    only_crop = fit_image(strip, fit)
    assert only_crop.size == (32, 32)
    difference = np.abs(np.asarray(only_crop, int) - np.asarray(whole, int))
    assert difference.max() <= 1 and difference.mean() < 0.1
    # A received spec's resize of 10⁶ px: a 30 × 30 image is not made 10¹² px first.
    tiny = Image.new("RGB", (30, 30), (10, 200, 30))
    assert np.asarray(fit_image(tiny, Fit((32, 32), 10**6))).tolist() == [[[10, 200, 30]] * 32] * 32
    # A 16:9 photo stays on torchvision's path (the whole image resized), to the byte.
    photo = strip.resize((533, 300))
    whole = photo.resize((454, 256), Image.Resampling.BILINEAR).crop((115, 16, 339, 240))
    assert fit_image(photo, Fit((224, 224), 256)).tobytes() == whole.tobytes()


def test_a_checkpoint_saved_before_resize_squashes_as_it_was_trained(copied_run, tmp_path):
    """Such a model learned from images stretched to H × W and never turned (EXIF): it is given
    the same, not a centre crop of the upright image."""
    best = copied_run / "checkpoints" / "best.pt"
    saved = torch.load(best, weights_only=True)
    assert not load_trained(copied_run).spec.squash
    saved["spec"] = {k: saved["spec"][k] for k in ("channels", "height", "width", "num_classes")}
    torch.save(saved, best)
    spec = load_trained(copied_run).spec
    assert spec.squash and spec_fit(spec).key() == [[32, 32], None, "bilinear", "squash"]
    sideways_jpeg(tmp_path / "phone.jpg", 6)  # stored 24 px wide, 40 high
    with Image.open(tmp_path / "phone.jpg") as img:
        pixels = image_pixels(img, spec).numpy()
        squashed = img.convert("RGB").resize((32, 32), Image.Resampling.BILINEAR)  # as before
    assert np.array_equal(pixels, np.array(squashed).transpose(2, 0, 1))


def cifar_photo() -> Image.Image:
    """A real photo's texture: the archive's first CIFAR-10 JPEG."""
    with tarfile.open(CIFAR_ARCHIVE) as archive:
        member = next(m for m in archive if m.isfile() and m.name.endswith(".jpg"))
        with archive.extractfile(member) as f:
            img = Image.open(f)
            img.load()
    return img.convert("RGB")


@needs_cifar
@pytest.mark.parametrize("weights", ["ResNet18_Weights.IMAGENET1K_V1",
                                     "EfficientNet_B0_Weights.IMAGENET1K_V1"])  # fmt: skip
@pytest.mark.parametrize("size", [(300, 200), (200, 301), (225, 224)])
def test_evaluation_preprocessing_is_the_weights_own_transforms(weights, size):
    arch = "efficientnet_b0" if weights.startswith("Efficient") else "resnet18"
    wanted = data_defaults(arch, weights.split(".")[1])
    assert wanted["resize"] == 256  # ResNet18: bilinear; EfficientNet-B0: bicubic
    d = OmegaConf.create({"resize": None, "interpolation": None})
    fit = photo_fit(d, wanted["image_size"], wanted)
    photo = cifar_photo().resize(size[::-1], Image.Resampling.BICUBIC)  # (W, H): non-square
    spec = InputSpec(3, *fit.crop, num_classes=10, resize=fit.resize,
                     interpolation=fit.interpolation)  # fmt: skip
    mean, std = (torch.tensor(wanted[k]).view(3, 1, 1) for k in ("mean", "std"))
    ours = (image_pixels(photo, spec).float() / 255 - mean) / std
    theirs = get_weight(weights).transforms()(photo)
    assert ours.shape == theirs.shape == (3, 224, 224)
    assert (ours - theirs).abs().max() <= 1 / 255 / std.min() + 1e-6  # one uint8 step


def ks_distance(a: np.ndarray, b: np.ndarray) -> float:
    """Two-sample Kolmogorov–Smirnov statistic: the largest gap between the empirical CDFs."""
    grid = np.union1d(a, b)
    cdf = lambda x: np.searchsorted(np.sort(x), grid, side="right") / len(x)  # noqa: E731
    return float(np.abs(cdf(a) - cdf(b)).max())


def resized_crop_options(scale, ratio):
    """data.augment with random_resized_crop alone on, read: its ResizedCrop."""
    crop = {"enabled": True, "scale": list(scale), "ratio": list(ratio)}
    return read_options({**OFF, "random_resized_crop": crop}).resized_crop


def torchvision_boxes(height, width, scale, ratio, n) -> dict[str, np.ndarray]:
    """top, left, height, width (n,) of n boxes torchvision's RandomResizedCrop draws on a
    height × width image."""
    transform = v2.RandomResizedCrop(8, scale=scale, ratio=ratio)
    image = torch.zeros(1, height, width)
    torch.manual_seed(0)
    boxes = [transform.make_params([image]) for _ in range(n)]
    return {key: np.array([b[key] for b in boxes]) for key in ("top", "left", "height", "width")}


@pytest.mark.parametrize(
    "shape, scale",
    [((40, 30), (0.08, 1.0)),  # the default law: the fallback is rare
     ((12, 48), (0.3, 1.0))],  # a 4:1 image: most draws fail and fall back to a centred 4:3
)  # fmt: skip
def test_resized_crop_boxes_follow_torchvisions_law(shape, scale):
    n, ratio = 4000, (3 / 4, 4 / 3)
    drawn = draw_boxes(*shape, resized_crop_options(scale, ratio),
                       Draws(n, torch.Generator().manual_seed(1), "cpu"))  # fmt: skip
    ours = dict(zip(("top", "left", "height", "width"), (t.numpy() for t in drawn), strict=True))
    theirs = torchvision_boxes(*shape, scale, ratio, n)
    assert (ours["top"] + ours["height"] <= shape[0]).all() and ours["top"].min() >= 0
    assert (ours["left"] + ours["width"] <= shape[1]).all() and ours["left"].min() >= 0
    bound = KS / math.sqrt(n / 2)  # both samples of n
    for law in (lambda b: b["height"] * b["width"], lambda b: np.log(b["width"] / b["height"]),
                lambda b: b["top"], lambda b: b["left"]):  # fmt: skip
        assert ks_distance(law(ours), law(theirs)) < bound
    # How often every try fails: the same, within Z standard deviations.
    spare = fallback_box(*shape, ratio)
    fell = [np.mean((b["height"] == spare[0]) & (b["width"] == spare[1])) for b in (ours, theirs)]
    p = (fell[0] + fell[1]) / 2
    assert abs(fell[0] - fell[1]) <= Z * math.sqrt(2 * p * (1 - p) / n) + 1e-9


def test_a_box_of_the_output_size_is_cropped_unchanged_and_a_double_one_is_averaged():
    x = torch.rand(3, 2, 16, 16)
    whole = resized_crop_options((1, 1), (1, 1))
    draw = Draws(3, torch.Generator().manual_seed(0), "cpu")
    assert torch.equal(resized_crop(x, (16, 16), whole, draw), x)
    halved = resized_crop(x, (8, 8), whole, draw)  # each output pixel: its 2 × 2 block's mean
    torch.testing.assert_close(halved, torch.nn.functional.avg_pool2d(x, 2))


def circle(path, size) -> None:
    """A white disc of radius 0.4 of the short side, centred, on black: (H, W) `size`."""
    img = Image.new("L", size[::-1])
    r, (cy, cx) = 0.4 * min(size), (size[0] / 2, size[1] / 2)
    ImageDraw.Draw(img).ellipse((cx - r, cy - r, cx + r, cy + r), fill=255)
    img.save(path)


@pytest.fixture
def mixed_sizes(tmp_path):
    """An ImageFolder of discs in 2:1, 1:2 and square images (train and val)."""
    for split in ("train", "val"):
        for c, name in enumerate(("a", "b")):
            folder = tmp_path / "discs" / split / name
            folder.mkdir(parents=True)
            for i, size in enumerate([(40, 80), (80, 40), (60, 60), (50, 100)]):
                circle(folder / f"{i}.png", (size[0] + 4 * c, size[1] + 4 * c))
    return tmp_path / "discs"


def disc_extent(image: torch.Tensor) -> tuple[int, int]:
    """(rows, columns) holding any of the disc (bright pixels) of a (1, H, W) image."""
    bright = image[0] > 127
    return int(bright.any(1).sum()), int(bright.any(0).sum())


@pytest.mark.parametrize("loader", ["tensor", "dataloader"])
def test_a_mixed_size_folder_keeps_every_images_aspect_and_crops_from_a_larger_region(
    mixed_sizes, tmp_path, loader
):
    cfg = compose_config(
        "data=imagefolder", f"data.root={mixed_sizes}", "data.image_size=32", "data.resize=40",
        f"data.loader={loader}", "data.batch_size=4", "data.num_workers=0",
        "data.augment.random_resized_crop.enabled=true", "model=simplecnn",
        output_dir=tmp_path / "run",
    )  # fmt: skip
    data = load_run_data(cfg)
    val = data.val.images_at(range(data.val.count))
    assert val.shape[1:] == (1, 32, 32) and data.spec.resize == 40
    for image in val:  # short side 40, centre 32 × 32: a disc of diameter 0.8 · 40 = 32
        rows, cols = disc_extent(image)
        assert abs(rows - cols) <= 1 and rows >= 30
    stored = data.train.images_at([0, 1])
    assert stored.shape[1:] == (1, 40, 40)  # the region crops are drawn from
    assert data.train.prep(stored).shape[1:] == (1, 32, 32)  # unaugmented: its centre
    x, _ = next(iter(data.train.batches(epoch=1)))
    assert x.shape == (4, 1, 32, 32)


def test_draws_and_crops_are_a_function_of_seed_epoch_and_image_only(mixed_sizes, tmp_path):
    """An image's crop is the same whatever its batch, and wherever an epoch resumes."""
    outputs = {}
    for batch_size in (2, 4):
        cfg = compose_config(
            "data=imagefolder", f"data.root={mixed_sizes}", "data.image_size=24",
            "data.loader=tensor", f"data.batch_size={batch_size}", "data.val_split=0",
            "data.augment.random_resized_crop.enabled=true", "model=simplecnn",
            output_dir=tmp_path / str(batch_size),
        )  # fmt: skip
        train = load_run_data(cfg).train
        train.targets = torch.arange(train.count)  # each image's index, to find it again
        first = [(x, y) for x, y in train.batches(epoch=2)]
        resumed = list(train.batches(epoch=2, start=1))
        assert all(torch.equal(a, b) for (a, _), (b, _) in zip(first[1:], resumed, strict=True))
        outputs[batch_size] = {
            int(i): image for x, y in first for i, image in zip(y, x, strict=True)
        }
    assert outputs[2].keys() == outputs[4].keys() and len(outputs[2]) == 8
    assert all(torch.equal(outputs[2][i], outputs[4][i]) for i in outputs[2])


def test_a_resumed_run_with_resized_crops_is_bitwise_the_uninterrupted_one(mixed_sizes, tmp_path):
    overrides = ["data=imagefolder", f"data.root={mixed_sizes}", "data.image_size=24",
                 "data.resize=28", "data.loader=tensor", "data.batch_size=2", "model=simplecnn",
                 "data.augment.random_resized_crop.enabled=true", *QUIET]  # fmt: skip
    assert_same_run(*interrupted_and_resumed(overrides, tmp_path))


def test_bad_resize_and_crop_settings_are_refused_in_one_line():
    d = OmegaConf.create({"resize": 20, "interpolation": None})
    with pytest.raises(UserError, match=r"data.resize=20 .* use data.resize ≥ 32"):
        photo_fit(d, (32, 48), {})
    bad = {**OFF, "random_resized_crop": {"enabled": True, "scale": [0.9, 0.1], "ratio": [1, 1]}}
    with pytest.raises(UserError, match=r"data.augment.random_resized_crop.scale=\[0.9, 0.1\]"):
        read_options(bad)
