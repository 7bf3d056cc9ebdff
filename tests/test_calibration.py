"""Calibration: ECE as torchmetrics computes it, temperature scaling fitted on the validation split
and saved in the checkpoint, calibrated probabilities and --abstain in cnntrain-predict, and the
temperature in an ONNX export."""

import json
import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torchmetrics.functional.classification import multiclass_calibration_error

from cnntrain.cli import predict as predict_cli
from cnntrain.core.checkpoint import evaluated_weights, load_checkpoint, save_checkpoint
from cnntrain.core.errors import UserError
from cnntrain.core.spec import InputSpec
from cnntrain.metrics import (
    answered_at,
    coverage_curve,
    expected_calibration_error,
    fit_temperature,
    negative_log_likelihood,
)
from cnntrain.metrics.calibration import TEMPERATURE_RANGE, binned
from cnntrain.models import build_model, init_from
from cnntrain.trained.export import export_run, run_onnx
from cnntrain.trained.load import image_pixels, load_trained, saved_temperature, unit_range
from cnntrain.training.calibrate import NO_VALIDATION, save_temperature
from cnntrain.training.evaluate import evaluate
from cnntrain.training.precision import Arithmetic
from tests.conftest import compose_config, load_run_data, make_image_folder, train_here
from tests.test_use import read_csv, run_main

CPU = torch.device("cpu")


def torchmetrics_ece(probabilities: torch.Tensor, targets: torch.Tensor) -> float:
    """torchmetrics' ECE of probabilities (given as such: it applies no softmax to [0, 1])."""
    k = probabilities.shape[1]
    return float(multiclass_calibration_error(probabilities, targets, k, n_bins=15, norm="l1"))


def sampled(scale: float, n: int = 3000, k: int = 10, seed: int = 0):
    """(logits (n, k), targets (n,)): targets drawn from softmax(logits), so the logits are
    calibrated; `scale` × them is over-confident above 1, under-confident below."""
    generator = torch.Generator().manual_seed(seed)
    logits = 2 * torch.randn(n, k, generator=generator)
    targets = torch.multinomial(logits.softmax(1), 1, generator=generator).squeeze(1)
    return scale * logits, targets


@pytest.mark.parametrize("scale", [0.3, 1, 4, 40])  # 40: many float32 softmaxes saturate at 1
def test_ece_equals_torchmetrics_on_random_logits(scale):
    logits, targets = sampled(scale)
    expected = torchmetrics_ece(logits.softmax(1), targets)
    assert expected_calibration_error(logits, targets) == pytest.approx(expected, abs=1e-6)


def test_ece_equals_torchmetrics_on_ties_bin_edges_and_one_wrong_class():
    ties = torch.tensor([[1.0, 1.0, 0.0], [0.0, 0.0, 0.0], [2.0, 2.0, 2.0], [0.5, 3.0, 3.0]])
    tied_targets = torch.tensor([1, 0, 2, 1])
    assert expected_calibration_error(ties, tied_targets) == pytest.approx(
        torchmetrics_ece(ties.softmax(1), tied_targets), abs=1e-6
    )
    edges = torch.linspace(0, 1, 16)[7:]  # 7/15 … 1, each exactly a float32 bin edge
    probabilities = torch.stack([edges, 1 - edges], 1).repeat(3, 1)  # the top class: 0 (or tie)
    targets = torch.tensor([0, 1, 0]).repeat_interleave(len(edges))  # a block each
    confidence, predicted = probabilities.max(1)
    bins = binned(confidence, predicted == targets)
    assert bins.error() == pytest.approx(torchmetrics_ece(probabilities, targets), abs=1e-6)
    assert bins.count[-1] == 3  # confidence exactly 1: torchmetrics' extra bin
    logits, truth = sampled(1, n=600, k=4, seed=1)
    wrong = truth.clone()
    wrong[truth == 2] = (logits[truth == 2].argmax(1) + 1) % 4  # class 2 always predicted wrong
    assert expected_calibration_error(logits, wrong) == pytest.approx(
        torchmetrics_ece(logits.softmax(1), wrong), abs=1e-6
    )


def test_temperature_scaling_undoes_over_and_under_confidence():
    logits, targets = sampled(4)  # over-confident: T ≈ 4 undoes it
    t = fit_temperature(logits, targets)
    assert 3.3 < t < 4.8 and fit_temperature(logits, targets) == t  # deterministic
    assert negative_log_likelihood(logits, targets, t) < negative_log_likelihood(logits, targets)
    after = expected_calibration_error(logits / t, targets)
    assert after < expected_calibration_error(logits, targets) / 3
    under, targets = sampled(0.5)
    assert 0.4 < fit_temperature(under, targets) < 0.6
    separable = 100 * torch.eye(3).repeat(5, 1)  # all right, ever surer: the range's end
    assert fit_temperature(separable, torch.arange(3).repeat(5)) == pytest.approx(0.05)


def test_coverage_answers_the_most_confident_first():
    logits = torch.tensor([[4.0, 0.0], [0.0, 1.0], [0.0, 3.0], [0.2, 0.0]])
    targets = torch.tensor([0, 0, 1, 1])  # right, wrong, right, wrong; by confidence 0, 2, 1, 3
    coverage, accuracy = coverage_curve(logits, targets)
    assert coverage.tolist() == [0.25, 0.5, 0.75, 1.0]
    assert accuracy.tolist() == pytest.approx([1, 1, 2 / 3, 0.5])
    assert answered_at(logits, targets, 0.9) == (0.5, 1.0)
    assert answered_at(logits, targets, 0.999) == (0.0, None)


def tiny_run(tmp_path, val_split: str) -> tuple[dict, list[str]]:
    """(results.json, overrides) of a 1-epoch in-process run on a small ImageFolder, its network
    half trained: confident, neither calibrated nor sure of every image."""
    root = make_image_folder(tmp_path / "data", ("train", "test"), ("a", "b", "c"), per_class=24)
    overrides = ["data=imagefolder", f"data.root={root}", "model=simplecnn", "trainer.epochs=1",
                 "optimizer.lr=0.01",
                 f"data.val_split={val_split}", "logger=none", "trainer.plots=false",
                 "trainer.precision=32", "trainer.device=cpu"]  # fmt: skip
    return train_here(*overrides, output_dir=tmp_path / "run"), overrides


def test_the_temperature_is_fitted_on_the_validation_split_and_saved(tmp_path):
    results, overrides = tiny_run(tmp_path, "0.25")
    run = tmp_path / "run"
    saved = load_checkpoint(run / "checkpoints" / "best.pt")
    assert saved["calibration"]["temperature"] == results["temperature"]
    assert saved["calibration"]["fitted_on"] == results["temperature_fitted_on"] == "val"
    data = load_run_data(compose_config(*overrides, output_dir=run), CPU)
    model = build_model(saved["config"]["model"], data.spec)
    model.load_state_dict(evaluated_weights(saved))
    outputs = {split: evaluate(model, getattr(data, split), Arithmetic(CPU, None),
                               keep_outputs=True) for split in ("val", "test")}  # fmt: skip
    on_val, on_test = (fit_temperature(o["logits"], o["targets"]) for o in outputs.values())
    assert results["temperature"] == pytest.approx(on_val, rel=1e-9) and on_val != on_test
    assert saved["calibration"]["images"] == outputs["val"]["count"]
    test = outputs["test"]
    assert results["test/ece"] == pytest.approx(
        expected_calibration_error(test["logits"], test["targets"]), abs=1e-6
    )
    assert results["test/nll_calibrated"] == pytest.approx(
        negative_log_likelihood(test["logits"], test["targets"], on_val), rel=1e-6
    )


def test_without_a_validation_split_no_temperature_is_fitted(tmp_path, caplog):
    with caplog.at_level(logging.INFO, logger="cnntrain"):
        results, _ = tiny_run(tmp_path, "0")
    assert [r.getMessage() for r in caplog.records].count(NO_VALIDATION) == 1
    assert results["temperature"] is None and results["temperature_fitted_on"] is None
    assert results["test/ece_calibrated"] == results["test/ece"]
    assert "calibration" not in load_checkpoint(tmp_path / "run" / "checkpoints" / "best.pt")
    assert load_trained(tmp_path / "run").temperature is None  # its probabilities: softmax(logits)


def test_a_finished_run_reports_calibration(finished_run):
    results = json.loads((finished_run / "results.json").read_text())
    saved = load_checkpoint(finished_run / "checkpoints" / "best.pt")
    assert results["temperature"] == saved["calibration"]["temperature"] > 0
    assert results["temperature_fitted_on"] == "val"
    assert 0 <= results["test/ece"] <= 1 and 0 <= results["test/ece_calibrated"] <= 1
    assert results["test/nll"] > 0 and results["test/nll_calibrated"] > 0
    assert {"reliability.png", "coverage.png"} <= {
        p.name for p in (finished_run / "plots").iterdir()
    }
    page = (finished_run / "report.html").read_text()
    assert "expected calibration error (ECE)" in page and "after temperature scaling" in page


def random_images(folder, n: int = 8) -> list:
    """`n` random 32×32 RGB PNGs in `folder`, sorted: a CIFAR run's input size."""
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(n):
        pixels = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(folder / f"{i}.png")
    return sorted(folder.iterdir())


def test_predict_gives_calibrated_probabilities_and_abstains(copied_run, tmp_path, monkeypatch,
                                                             capsys):  # fmt: skip
    save_temperature(copied_run / "checkpoints" / "best.pt", 0.4, 1)  # sharper: more spread
    files = random_images(tmp_path / "images")
    trained = load_trained(copied_run)
    pixels = unit_range(torch.stack([image_pixels(Image.open(f), trained.spec) for f in files]))
    with torch.no_grad():
        probabilities = (trained.normalized()(pixels) / 0.4).softmax(1)  # (8, 10)
    top = probabilities.max(1).values.tolist()
    threshold = sum(sorted(top)[3:5]) / 2  # between the 4th and 5th: half answered
    out = tmp_path / "p.csv"
    status, stdout, stderr = run_main(predict_cli.main, monkeypatch, capsys, copied_run,
                                      tmp_path / "images", "--out", out, "--abstain",
                                      str(threshold))  # fmt: skip
    assert status == 0, stderr
    header, rows = read_csv(out)
    assert header[-1] == "best_guess" and len(rows) == len(files)
    for row, p, expected in zip(rows, top, probabilities, strict=True):
        assert float(row["probability"]) == pytest.approx(p, abs=1e-6)
        assert row["best_guess"] == trained.classes[int(expected.argmax())]
        assert row["prediction"] == ("unknown" if p < threshold else row["best_guess"])
    assert f"answered 4 of 8 images (50.0%); the rest are unknown below {threshold:g}" in stdout
    status, _, stderr = run_main(predict_cli.main, monkeypatch, capsys, copied_run,
                                 tmp_path / "images", "--abstain", "1.5")  # fmt: skip
    assert status == 2 and stderr.count("\n") == 1 and "--abstain 1.5" in stderr


def test_a_received_checkpoints_temperature_is_checked(copied_run):
    path = copied_run / "checkpoints" / "best.pt"
    state = load_checkpoint(path)
    for bad in (float("nan"), "2", 1e-300):
        state["calibration"] = {"temperature": bad}
        save_checkpoint(path, state)
        with pytest.raises(UserError, match=r"calibration\.temperature .* from 0.05 to 20"):
            load_trained(copied_run)


def test_a_received_checkpoints_classes_and_normalization_are_checked(copied_run):
    path = copied_run / "checkpoints" / "best.pt"
    state = load_checkpoint(path)
    k, c = len(state["classes"]), state["spec"]["channels"]
    stats, config = state["normalization"], state["config"]
    for key, bad, named in (
        ("classes", 3, "classes is not"),  # was a TypeError traceback
        ("classes", "abcdefghij"[:k], "classes is not"),  # a string of k letters
        ("classes", state["classes"][:-1], "classes is not"),
        ("classes", [state["classes"][0]] * k, "classes is not"),
        ("spec", {**state["spec"], "num_classes": 10**7}, "classes is not"),  # before 40 GB
        ("normalization", [1], "normalization is not"),  # was a TypeError traceback
        ("normalization", {**stats, "std": [0.0] * c}, "normalization is not"),  # NaN outputs
        ("normalization", {**stats, "mean": [0.1] * (c + 1)}, "normalization is not"),
        ("normalization", {**stats, "mean": ["x"] * c}, "normalization is not"),
        # the classifier of 8192² images would be terabytes: refused on the meta device
        ("spec", {**state["spec"], "height": 8192, "width": 8192}, "does not fit this model"),
        ("ema", {"updates": 1}, "ema.weights is not"),  # was a KeyError traceback
        # an option no run writes: was the builder's ValueError traceback
        ("config", {**config, "model": {**config["model"], "dropout": 2.0}}, "its model options"),
    ):
        save_checkpoint(path, {**state, key: bad})
        with pytest.raises(UserError, match=rf"^checkpoint .*best\.pt:? {named}"):
            load_trained(copied_run)
    save_checkpoint(path, state)
    assert load_trained(copied_run).classes == state["classes"]


def test_init_from_checks_a_received_checkpoints_weights(copied_run):
    path = copied_run / "checkpoints" / "best.pt"
    state = load_checkpoint(path)
    model_cfg = state["config"]["model"]
    model = build_model(model_cfg, InputSpec.from_dict(state["spec"], "checkpoint"))
    save_checkpoint(path, {**state, "ema": {"updates": 1}})  # was a KeyError traceback
    with pytest.raises(UserError, match=r"best\.pt: ema\.weights is not a network's weights"):
        init_from(model, copied_run, model_cfg)


def test_a_saved_temperature_is_one_fitting_can_give():
    separable = 100 * torch.eye(3).repeat(5, 1)  # all right, ever surer: the range's low end
    wrong = torch.arange(1, 4).remainder(3).repeat(5)  # all wrong, ever surer: its high end
    ends = [fit_temperature(separable, targets) for targets in (torch.arange(3).repeat(5), wrong)]
    assert ends == pytest.approx(list(TEMPERATURE_RANGE))
    for t in (*ends, *TEMPERATURE_RANGE, 1, 2.5):
        assert saved_temperature({"calibration": {"temperature": t}}, Path("best.pt")) == t
    assert saved_temperature({}, Path("best.pt")) is None
    for bad in (1e-300, 0.0499, 20.01, 1e300, float("inf"), -1.0, 0, True, None):
        with pytest.raises(UserError, match=r"^checkpoint best\.pt: calibration\.temperature"):
            saved_temperature({"calibration": {"temperature": bad}}, Path("best.pt"))


def test_onnx_export_carries_and_can_apply_the_temperature(copied_run, tmp_path):
    import onnx

    save_temperature(copied_run / "checkpoints" / "best.pt", 2.5, 1)
    out = tmp_path / "calibrated.onnx"
    exported = export_run(copied_run, "onnx", out, compose_config("paths.output_dir=x"), True)
    assert exported.max_difference <= 1e-4  # checked against PyTorch's logits / 2.5
    meta = {p.key: json.loads(p.value) for p in onnx.load(str(out)).metadata_props}
    assert meta["temperature"] == 2.5 and meta["calibrated"] is True
    pixels = torch.rand(3, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = load_trained(copied_run).normalized()(pixels) / 2.5
    np.testing.assert_allclose(run_onnx(out, pixels).numpy(), expected.numpy(), atol=1e-4)
