"""A new user's own photos, end to end: a flat folder of mixed sizes and formats (a 1600×1200 JPEG
first, PNG, WEBP, grayscale, EXIF-rotated, a nested folder) trained with the README's own-data line
and with `experiment=finetune`, by the real CLI, asserting on the files written."""

import csv
import json
from pathlib import Path

import pytest
import torch
import torchvision.models as tv

from bench.photo_folder import make_photo_folder
from tests.conftest import needs_cifar, run_cli, run_folders
from tests.test_pretrained import cache_file

pytestmark = [pytest.mark.slow, needs_cifar]


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> Path:
    """3 classes × 10 photo-like images made from CIFAR-10, the first file a 1600×1200 JPEG."""
    root = tmp_path_factory.mktemp("photos") / "my photos"
    make_photo_folder(root, classes=3, per_class=10, seed=0, layout="flat")
    return root


def read_csv(path: Path) -> list[dict]:
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def test_the_readme_own_data_line_trains_on_a_flat_folder_of_photos(photos, tmp_path):
    first = min(p for p in photos.rglob("*") if p.is_file())
    run_cli("data=imagefolder", f"data.root={photos}", "trainer.epochs=1", "logger=none",
            cwd=tmp_path)  # fmt: skip
    (run,) = run_folders(tmp_path)
    spec = torch.load(run / "checkpoints" / "best.pt", weights_only=True)["spec"]
    assert (spec["height"], spec["width"]) != (1200, 1600)  # not sized by the first file
    assert spec["height"] == spec["width"] <= 224  # a square chosen from the data
    assert "median short side" in (run / "train.log").read_text()

    splits = read_csv(run / "splits.csv")
    assert len(splits) == 30 and {r["split"] for r in splits} == {"train", "val", "test"}
    assert all((photos / r["path"]).is_file() for r in splits)
    assert first.relative_to(photos).as_posix() in {r["path"] for r in splits}

    results = json.loads((run / "results.json").read_text())
    mistakes = read_csv(run / "test_predictions.csv")
    tested = {r["path"] for r in splits if r["split"] == "test"}
    assert {r["path"] for r in mistakes} == tested and len(mistakes) == results["test/count"]
    assert all(Path(r["path"]).parts[0] == r["true"] for r in mistakes)  # <class>/… under root
    assert (run / "plots" / "misclassified.png").is_file()


def test_experiment_finetune_runs_end_to_end_on_a_flat_folder(photos, tmp_path):
    hub = tmp_path / "torch" / "hub" / "checkpoints"
    hub.mkdir(parents=True)
    weights = tv.ResNet18_Weights.DEFAULT
    torch.save(tv.resnet18(num_classes=1000).state_dict(), cache_file(hub, weights))
    home = {"TORCH_HOME": str(tmp_path / "torch")}  # the weights written above, nothing else
    run_cli("experiment=finetune", f"data.root={photos}", "trainer.epochs=2", "logger=none",
            "trainer.plots=false", cwd=tmp_path, env=home)  # fmt: skip
    (run,) = run_folders(tmp_path)
    results = json.loads((run / "results.json").read_text())
    assert results["monitor"] == "val/loss" and results["epochs"] == 2
    assert results["test/count"] == 3 and "best_val/loss" in results
    spec = torch.load(run / "checkpoints" / "best.pt", weights_only=True)["spec"]
    # the weights' own evaluation preprocessing: resize 256, centre crop 224, bilinear
    assert (spec["height"], spec["width"], spec["resize"]) == (224, 224, 256)
    log = (run / "train.log").read_text()
    assert "with weights DEFAULT" in log and (run / "splits.csv").is_file()
