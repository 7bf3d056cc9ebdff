"""Class imbalance: called out with its remedies, and both remedies do what they claim."""

import json

import numpy as np
import pytest
import torch

from cnntrain.data.splits import balanced_weights, epoch_order
from cnntrain.metrics import class_weights
from cnntrain.train import imbalanced, model_line
from tests.conftest import compose_config, load_run_data, make_image_folder, run_cli, run_folders

COUNTS = [60, 12]  # training images of "common" and "rare": 5× imbalanced


def test_class_weights_are_inverse_frequency_averaging_one_per_image():
    targets = torch.tensor([0] * 60 + [1] * 12)
    weights = class_weights(targets, 2)
    assert weights.tolist() == pytest.approx([72 / 120, 72 / 24])
    assert weights[targets].mean().item() == pytest.approx(1.0)


def test_class_weights_change_the_loss_towards_the_rare_class():
    logits = torch.tensor([[2.0, 0.0], [2.0, 0.0]])  # both predicted "common"
    targets = torch.tensor([0, 1])  # the second is rare, and wrong
    plain = torch.nn.functional.cross_entropy(logits, targets, reduction="none")
    weights = class_weights(torch.tensor([0] * 60 + [1] * 12), 2)
    weighted = torch.nn.functional.cross_entropy(logits, targets, weight=weights, reduction="none")
    assert weighted[1] / weighted[0] == pytest.approx(5 * plain[1] / plain[0])


def test_balanced_sampler_draws_every_class_equally_often():
    targets = torch.tensor([0] * 600 + [1] * 120 + [2] * 30)
    order = epoch_order(len(targets), seed=0, epoch=1, weights=balanced_weights(targets))
    shares = torch.bincount(targets[order], minlength=3) / len(order)
    assert shares.tolist() == pytest.approx([1 / 3] * 3, abs=0.04)  # plain shuffling: .8/.16/.04


def test_balanced_sampler_reaches_the_training_loader(tmp_path):
    root = make_image_folder(tmp_path / "f", classes=("common", "rare"), per_class=COUNTS)
    cfg = compose_config("data=imagefolder", f"data.root={root}", "data.sampler=balanced",
                         "data.batch_size=8", output_dir="unused")  # fmt: skip
    data = load_run_data(cfg, torch.device("cpu"))
    drawn = torch.cat([y for _, y in data.train.batches(epoch=1)])
    assert 0.3 < drawn.float().mean().item() < 0.7  # rare is 1/6 of the folder, ~1/2 of draws


@pytest.mark.slow
@pytest.mark.parametrize("remedy", [[], ["loss.class_weights=auto"], ["data.sampler=balanced"]])
def test_imbalanced_folder_is_called_out_and_trains_with_each_remedy(tmp_path, remedy):
    root = make_image_folder(tmp_path / "f", classes=("common", "rare"), per_class=COUNTS)
    proc = run_cli("data=imagefolder", f"data.root={root}", "model=simplecnn", "trainer.epochs=2",
                   *remedy, cwd=tmp_path)  # fmt: skip
    log = proc.stdout + proc.stderr
    assert "imbalanced training data" in log.replace("\n", " ")
    assert "loss.class_weights=auto" in log and "data.sampler=balanced" in log
    (run,) = run_folders(tmp_path)
    results = json.loads((run / "results.json").read_text())
    assert results["train/class_counts"] == {"common": 60, "rare": 12}
    assert set(results["test/per_class_acc"]) == {"common", "rare"}
    present = list(results["test/per_class_acc"].values())
    assert results["test/balanced_acc"] == pytest.approx(sum(present) / 2)


def test_a_random_subset_of_balanced_classes_is_not_called_imbalanced():
    """The warning is for data, not for sampling noise: 512 images drawn from CIFAR-10's balanced
    classes (every smoke run: 41 to 62 a class, 1.5×) pass; real imbalance does not."""
    smoke = {"airplane": 59, "automobile": 43, "bird": 41, "cat": 45, "deer": 48, "dog": 56,
             "frog": 50, "horse": 52, "ship": 56, "truck": 62}  # fmt: skip
    assert not imbalanced(smoke)
    rng = np.random.default_rng(0)
    for k in (2, 10, 100):
        draws = [dict(enumerate(rng.multinomial(n * k, [1 / k] * k))) for n in (25, 50, 200) * 100]
        assert sum(map(imbalanced, draws)) <= 3, k  # of 300 balanced draws
    assert imbalanced({"common": 54, "rare": 11}) and imbalanced({"a": 1000, "b": 300})


def test_the_log_names_the_architecture_its_weights_and_what_trains():
    cfg = compose_config("model=torchvision", "model.arch=resnet50", "model.weights=IMAGENET1K_V2")
    model = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.Linear(2, 3))
    model[0].requires_grad_(False)
    assert model_line(cfg.model, model) == (
        "torchvision resnet50 with weights IMAGENET1K_V2, 15 parameters (9 trainable)"
    )
    assert model_line(compose_config("model=simplecnn").model, model).startswith("simplecnn, 15")
