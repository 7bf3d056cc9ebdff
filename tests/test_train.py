"""train() wiring, in-process: what the final test evaluates, and what reaches the loss."""

import pytest
import torch

from cnntrain.core.checkpoint import load_checkpoint
from cnntrain.data.augment.options import read_options
from cnntrain.metrics import class_weights
from cnntrain.models import build_model
from cnntrain.train import build_step_parts
from cnntrain.training.evaluate import evaluate
from cnntrain.training.precision import Arithmetic
from tests.conftest import compose_config, load_run_data, make_image_folder, read_jsonl, train_here

CPU = torch.device("cpu")


def test_the_final_test_uses_the_best_epochs_ema_weights(tmp_path):
    root = make_image_folder(tmp_path / "data", splits=("train", "test"), per_class=24)
    overrides = ("data=imagefolder", f"data.root={root}", "model=simplecnn", "trainer.epochs=3",
                 "trainer.ema=0.9", "data.val_split=0.25", "data.batch_size=8", "logger=none",
                 "trainer.plots=false", "data.num_workers=0",
                 "trainer.precision=32")  # fmt: skip
    run = tmp_path / "run"
    results = train_here(*overrides, output_dir=run)
    best = load_checkpoint(run / "checkpoints" / "best.pt")
    rows = read_jsonl(run / "metrics.jsonl")
    assert best["epoch"] == results["best_epoch"] == max(rows, key=lambda r: r["val/acc"])["epoch"]
    assert results["test/split"] == "test" and rows[0]["val/split"] == "val"

    cfg = compose_config(*overrides, output_dir=run)
    data = load_run_data(cfg, CPU)
    model = build_model(cfg.model, data.spec)
    test_loss = {}
    for name, weights in (("ema", best["ema"]["weights"]), ("raw", best["model"])):
        model.load_state_dict(weights)
        test_loss[name] = evaluate(model, data.test, Arithmetic(CPU, None))["loss"]
    assert results["test/loss"] == pytest.approx(test_loss["ema"], rel=1e-6)
    assert test_loss["raw"] != pytest.approx(test_loss["ema"], rel=1e-6)  # so the check can fail


def test_auto_class_weights_reach_the_loss(tmp_path):
    root = make_image_folder(tmp_path / "data", classes=("common", "rare"), per_class=[30, 6])
    overrides = ("data=imagefolder", f"data.root={root}", "model=simplecnn",
                 "loss.class_weights=auto", "data.num_workers=0")  # fmt: skip
    cfg = compose_config(*overrides, output_dir="unused")
    data = load_run_data(cfg, CPU)
    model = build_model(cfg.model, data.spec)
    parts = build_step_parts(cfg, model, data, Arithmetic(CPU, None),
                             read_options(cfg.data.augment))  # fmt: skip
    expected = class_weights(data.train.targets, 2)
    assert torch.equal(parts.loss_fn.weight, expected) and expected[1] > expected[0]
