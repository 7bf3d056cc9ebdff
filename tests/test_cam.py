"""Class-activation maps: they lie on the evidence a model is known to use, the layer choice, the
models they refuse, the report's figures and cnntrain-predict --explain."""

import logging
import subprocess
import sys

import numpy as np
import pytest
import torch
import torchvision
from omegaconf import OmegaConf
from PIL import Image
from torch import nn

from cnntrain.core.errors import UserError
from cnntrain.core.spec import InputSpec
from cnntrain.models.registry import build_model
from cnntrain.reporting.cam import (
    CAM_PLOTS,
    SplitImages,
    class_activation_maps,
    overlay,
    target_layer,
    unexplainable,
    write_cam_plots,
)

SIDE, SQUARE = 32, 8  # px: the square (SIDE/4) covers 1/16 of the image, 1/4 of its quadrant
COLOURS = torch.tensor([[1.0, 0.1, 0.1], [0.1, 1.0, 0.1], [0.1, 0.1, 1.0]])  # class = its colour


def square_images(n: int, seed: int, side: int = SIDE) -> tuple[torch.Tensor, torch.Tensor, list]:
    """(n, 3, side, side) normalized noise, each with a square (side/4 px) of its class's colour
    in a random corner: the only evidence of the class, and it lies in the square. Also (n,)
    classes and each square's top-left corner (row, column)."""
    g = torch.Generator().manual_seed(seed)
    square = side // 4
    x = torch.rand(n, 3, side, side, generator=g) * 0.6 + 0.2
    y = torch.randint(0, 3, (n,), generator=g)
    corners = []
    for i, r, c in zip(range(n), *torch.randint(0, 2, (2, n), generator=g).tolist(), strict=True):
        top, left = r * (side - square), c * (side - square)
        x[i, :, top : top + square, left : left + square] = COLOURS[y[i], :, None, None]
        corners.append((top, left))
    return (x - 0.5) / 0.25, y, corners


def mass_on(maps: np.ndarray, corners, side: int) -> float:
    """The mean share of each map's sum inside the `side` px square at its corner."""
    shares = [m[r : r + side, c : c + side].sum() / max(m.sum(), 1e-9)
              for m, (r, c) in zip(maps, corners, strict=True)]  # fmt: skip
    return float(np.mean(shares))


def trained_on_squares(model: nn.Module, images: int, side: int, epochs: int, batch: int):
    """`model` trained with Adam (lr 1e-3) on `images` square images of `side` px, seeded; in
    eval mode."""
    torch.manual_seed(0)
    x, y, _ = square_images(images, seed=1, side=side)
    optimizer = torch.optim.Adam(model.parameters(), 1e-3)
    for _ in range(epochs):
        for start in range(0, len(x), batch):
            loss = nn.functional.cross_entropy(
                model(x[start : start + batch]), y[start : start + batch]
            )
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    return model.eval()


@pytest.fixture(scope="module")
def square_model():
    """cnntrain's simplecnn trained (a few seconds) to tell the squares' colours apart."""
    torch.manual_seed(0)
    model = build_model(OmegaConf.create({"name": "simplecnn"}), InputSpec(3, SIDE, SIDE, 3))
    return trained_on_squares(model, images=128, side=SIDE, epochs=3, batch=32)


@pytest.mark.parametrize("method", ["gradcam", "gradcam++"])
def test_the_map_lies_on_the_square(square_model, method):
    x, y, corners = square_images(32, seed=2)
    assert (square_model(x).argmax(1) == y).float().mean() > 0.9
    layer = target_layer(square_model, (3, SIDE, SIDE))
    assert layer == "conv3"  # its map is 8×8; the pools after it leave 4×4
    maps = class_activation_maps(square_model, x, y, layer, method)
    assert maps.shape == (32, SIDE, SIDE) and maps.dtype == np.float32
    assert maps.min() >= 0 and maps.max() <= 1
    # 1/16 of the image: 4 times its share of the mass at least (0.4-0.5 seen; the 8×8 map,
    # scaled up to 32×32, spills over the square's edges)
    assert mass_on(maps, corners, SQUARE) > 0.25


@pytest.fixture(scope="module")
def torchvision_square_model():
    """torchvision's resnet18 (random init) trained (~10 s) on 48 px square images: its late maps
    (layer3: 3×3, layer4: 2×2) see the whole image, so layer2's 6×6 map is the one to read."""
    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=3)
    return trained_on_squares(model, images=160, side=48, epochs=5, batch=16)


def test_a_torchvision_network_looks_at_the_square(torchvision_square_model):
    model = torchvision_square_model
    x, y, corners = square_images(32, seed=2, side=48)
    assert (model(x).argmax(1) == y).float().mean() > 0.9
    maps = class_activation_maps(model, x, y, "layer2", "gradcam")
    # the square is 1/16 of the image: 0.33 of the mass seen; its quadrant 1/4: 0.73 seen
    assert mass_on(maps, corners, 12) > 0.2
    quadrants = [(top // 24 * 24, left // 24 * 24) for top, left in corners]
    assert mass_on(maps, quadrants, 24) > 0.5


def test_eigencam_and_a_torchvision_network_leave_the_model_as_it_was():
    model = torchvision.models.resnet18(num_classes=3).to(memory_format=torch.channels_last)
    model.train()
    model.fc.requires_grad_(False)
    layer = target_layer(model, (3, SIDE, SIDE))
    assert layer == "layer3.1.conv2"  # layer4 is 1×1 at 32 px: no place to show
    x, y, _ = square_images(4, seed=3)
    for method in ("gradcam", "eigencam"):
        maps = class_activation_maps(model, x.to(memory_format=torch.channels_last), y, layer,
                                     method)  # fmt: skip
        assert maps.shape == (4, SIDE, SIDE) and np.isfinite(maps).all()
    assert model.training and all(m.training for m in model.modules())
    assert not model.fc.weight.requires_grad and model.conv1.weight.requires_grad
    assert all(not m._forward_hooks for m in model.modules())


def test_layer_choice_and_refusals():
    timm = pytest.importorskip("timm")
    convnet = timm.create_model("resnet18", pretrained=False, num_classes=3)
    assert target_layer(convnet, (3, 64, 64)) == "layer4.1.conv2"  # 2×2 at 64 px
    assert unexplainable(convnet) is None
    vit = timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=32, num_classes=3)
    assert "attention" in unexplainable(vit)
    assert "no 2-D convolution" in unexplainable(nn.Sequential(nn.Flatten(), nn.Linear(12, 2)))
    with pytest.raises(UserError, match=r"'nosuch' is not a module .*layer4\.1\.conv2"):
        target_layer(convnet, (3, 64, 64), "nosuch")
    assert target_layer(convnet, (3, 64, 64), "layer3") == "layer3"


def test_a_named_layer_must_give_a_map():
    model = nn.Sequential(nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU()), nn.AdaptiveAvgPool2d(1),
                          nn.Flatten(), nn.Linear(4, 2))  # fmt: skip
    for fits in ("0", "0.0", "0.1"):  # a container's map is that of the last module it runs
        assert target_layer(model, (3, 16, 16), fits) == fits
    for name, shape in (("1", "4×1×1"), ("2", "4"), ("3", "2")):  # pooled, flat, logits
        refused = rf"^layer '{name}' gives an output of {shape} on the 3×16×16 input, not a map"
        with pytest.raises(UserError, match=refused + r" of 2×2 px or more; .* e\.g\. 0\.0$"):
            target_layer(model, (3, 16, 16), name)
    unused = nn.ModuleDict({"run": model, "spare": nn.Conv2d(4, 4, 1)})
    unused.forward = model.forward  # `spare` holds weights but never runs
    with pytest.raises(UserError, match=r"^layer 'spare' gives no output"):
        target_layer(unused, (3, 16, 16), "spare")


def test_overlay_shows_gray_images_in_colour():
    image = torch.full((1, 6, 5), 100, dtype=torch.uint8)
    cam = np.zeros((3, 3), np.float32)
    cam[0, 0] = 1
    shown = overlay(image, cam)
    assert shown.shape == (6, 5, 3) and shown.dtype == np.uint8
    assert shown[0, 0, 0] > shown[0, 0, 2] and shown[-1, -1, 2] > shown[-1, -1, 0]  # red, blue


def report_inputs(n=12, classes=3) -> SplitImages:
    images = torch.randint(0, 256, (n, 3, SIDE, SIDE), dtype=torch.uint8)
    targets = torch.arange(n) % classes
    logits = torch.randn(n, classes)
    names = [f"d/{i}.png" for i in range(n)]
    return SplitImages(lambda i: images[i], lambda b: b.float() / 255, logits, targets,
                       [f"c{k}" for k in range(classes)], names)  # fmt: skip


def assert_pngs(paths):
    for path in paths:
        with Image.open(path) as image:
            assert image.format == "PNG" and min(image.size) > 150


def test_report_figures_and_why_there_are_none(square_model, tmp_path, monkeypatch, caplog):
    test = report_inputs()
    paths = write_cam_plots(tmp_path / "a", square_model, test, "gradcam", None)
    assert [p.name for p in paths] == [f"{name}.png" for name in CAM_PLOTS]
    assert_pngs(paths)
    vit_like = nn.Sequential(nn.Conv2d(3, 4, 3), nn.MultiheadAttention(4, 1))
    with caplog.at_level(logging.WARNING):
        assert_pngs(write_cam_plots(tmp_path / "b", vit_like, test, "gradcam", None))
        monkeypatch.setitem(sys.modules, "pytorch_grad_cam", None)  # as if not installed
        assert_pngs(write_cam_plots(tmp_path / "c", square_model, test, "gradcam", None))
        assert_pngs(write_cam_plots(tmp_path / "d", square_model, test, "none", None))
    lines = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(lines) == 2 and "attention" in lines[0] and "[explain]" in lines[1]


@pytest.mark.slow
def test_a_run_report_and_predict_explain(finished_run, tmp_path):
    assert_pngs(finished_run / "plots" / f"{name}.png" for name in CAM_PLOTS)
    images = tmp_path / "images"
    images.mkdir()
    for i, colour in enumerate(("red", "navy", "olive")):
        Image.new("RGB", (40, 30), colour).save(images / f"shot {i}.jpg")
    (images / "broken.png").write_bytes(b"not a png")
    predict = [sys.executable, "-m", "cnntrain.cli.predict", str(finished_run), str(images)]
    proc = subprocess.run([*predict, "--explain", "maps", "--method", "gradcam++"],
                          capture_output=True, text=True, timeout=120, cwd=tmp_path)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    written = sorted(p.name for p in (tmp_path / "maps").iterdir())
    assert written == ["0000_shot_0.png", "0001_shot_1.png", "0002_shot_2.png"]
    assert_pngs((tmp_path / "maps").iterdir())
    refused = subprocess.run([*predict, "--explain", "maps", "--layer", "nosuch", "--out", "x.csv"],
                             capture_output=True, text=True, timeout=120, cwd=tmp_path)  # fmt: skip
    assert refused.returncode == 2 and not (tmp_path / "x.csv").exists()
    assert refused.stderr.count("\n") == 1 and "'nosuch' is not a module" in refused.stderr
