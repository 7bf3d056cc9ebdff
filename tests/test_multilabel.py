"""Several labels per image, end to end: a label file of coloured squares (each colour present is a
label; some images have none) trains, resumes bitwise, tunes each label's threshold on the
validation split only, and predict and the ONNX export use those thresholds; a single-label run
keeps its fields."""

import csv
import json
import logging
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from cnntrain.config.rules import validate
from cnntrain.core.errors import UserError
from cnntrain.data.labels import label_listing
from cnntrain.data.limits import default_limits
from cnntrain.data.listing import SplitOptions, listing_splits
from cnntrain.metrics import tune_thresholds
from cnntrain.trained.load import load_trained, unit_range
from cnntrain.trained.predict import find_images, predict
from cnntrain.training.state import check_optimized_metric, chosen_monitor
from tests.conftest import compose_config, train_here

COLOURS = ("red", "green", "blue")  # channel c bright in a square: label COLOURS[c]
ONLY_TRAIN = "violet"  # a label of one image: the split keeps it in train alone
FAULT = ("+callbacks.fault._target_=tests.faults.Fault", "+callbacks.fault.at=sigint-step:2:1")


def square_image(rng, labels: list[str]) -> Image.Image:
    pixels = np.full((24, 24, 3), 20, dtype=np.uint8)
    for c, colour in enumerate(COLOURS):
        if colour in labels:
            y, x = rng.integers(0, 16, 2)
            pixels[y : y + 8, x : x + 8, c] = 230
    return Image.fromarray(pixels)


@pytest.fixture(scope="module")
def label_file(tmp_path_factory):
    """labels.csv (path,labels with `|` between labels) over 200 images of 24×24 px."""
    root = tmp_path_factory.mktemp("squares")
    rng = np.random.default_rng(0)
    rows = []
    for i in range(200):
        labels = [c for c in COLOURS if rng.random() < 0.4] + ([ONLY_TRAIN] if i == 3 else [])
        square_image(rng, labels).save(root / f"{i:03d}.png")
        rows.append((f"{i:03d}.png", "|".join(labels)))
    with open(root / "labels.csv", "w", newline="") as f:
        csv.writer(f).writerows([("path", "labels"), *rows])
    return root / "labels.csv"


def read_csv(path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def overrides(label_file, *extra: str) -> tuple[str, ...]:
    return ("data=csv", f"data.labels={label_file}", "data.label_column=labels",
            "data.label_separator=|", "model=simplecnn", "trainer.epochs=3", "data.batch_size=32",
            "logger=none", "trainer.device=cpu", "trainer.precision=32", *extra)  # fmt: skip


@pytest.fixture(scope="module")
def run(label_file, tmp_path_factory):
    """A finished multi-label run (3 epochs), with its log."""
    folder = tmp_path_factory.mktemp("run") / "run"
    results = train_here(*overrides(label_file), output_dir=folder)
    return folder, results


def test_a_label_file_with_several_labels_per_row_trains_with_multilabel_fields(run):
    folder, results = run
    assert results["task"] == "multi" and results["monitor"] == "val/mAP"
    assert results["classes"] == sorted([*COLOURS, ONLY_TRAIN])
    for key in ("test/mAP", "test/f1_micro", "test/f1_macro", "test/acc", "test/hamming_loss"):
        assert 0 <= results[key] <= 1, key
    assert results["test/mAP"] > 0.8  # a colour square is easy to see
    rows = read_csv(folder / "metrics.csv")
    assert results["best_val/mAP"] == pytest.approx(max(float(r["val/mAP"]) for r in rows))
    assert results["final_val/mAP"] == pytest.approx(float(rows[-1]["val/mAP"]))
    assert results["test/per_label_ap"][ONLY_TRAIN] is None  # no test image: left out of mAP
    assert "test/ece" not in results and "temperature" not in results
    assert {"val/mAP", "val/f1_micro", "val/f1_macro", "val/hamming_loss"} <= rows[0].keys()
    assert "val/balanced_acc" not in rows[0]
    table = read_csv(folder / "splits.csv")
    assert any(r["class"] == "" for r in table)  # images with no label are kept, all-negative
    assert {r["split"] for r in table if ONLY_TRAIN in r["class"].split("|")} == {"train"}
    predictions = read_csv(folder / "test_predictions.csv")
    assert set(predictions[0]) >= {"true", "predicted", *(f"p_{c}" for c in COLOURS)}
    for name in ("per_label_ap", "pr_curves", "label_cooccurrence", "largest_errors",
                 "cam_labels"):  # fmt: skip
        assert (folder / "plots" / f"{name}.png").is_file()
    assert "mAP" in (folder / "report.html").read_text()


def test_each_labels_map_lies_on_its_own_square(run):
    pytest.importorskip("pytorch_grad_cam")
    from cnntrain.reporting.cam import class_activation_maps, target_layer

    trained = load_trained(run[0])
    pixels = np.full((24, 24, 3), 20, dtype=np.uint8)
    pixels[2:10, 2:10, 0] = 230  # red, top left
    pixels[14:22, 14:22, 1] = 230  # green, bottom right
    model = trained.network
    image = torch.from_numpy(pixels).permute(2, 0, 1)[None]  # (1, 3, 24, 24) uint8
    mean, std = (torch.tensor(v).view(1, -1, 1, 1) for v in (trained.mean, trained.std))
    inputs = (unit_range(image) - mean) / std
    layer = target_layer(model, tuple(inputs.shape[1:]), None)
    labels = [trained.classes.index(c) for c in ("red", "green")]
    maps = class_activation_maps(model, inputs.repeat(2, 1, 1, 1), labels, layer, "gradcam")
    for cam, (rows, cols) in zip(maps, [(slice(2, 10), slice(2, 10)),
                                        (slice(14, 22), slice(14, 22))], strict=True):  # fmt: skip
        assert cam[rows, cols].sum() / cam.sum() > 0.25  # 64 of 576 px: chance 0.11


def test_the_thresholds_are_tuned_on_the_validation_split_alone(run, label_file):
    folder, results = run
    trained = load_trained(folder)
    assert trained.multi_label and trained.thresholds.values == list(results["thresholds"].values())
    assert (trained.thresholds.rule, trained.thresholds.fitted_on) == ("f1", "val")
    table = read_csv(folder / "splits.csv")
    root = label_file.parent
    probabilities, targets = {}, {}
    for split in ("val", "test"):
        rows = [r for r in table if r["split"] == split]
        pixels = torch.stack([image_tensor(root / r["path"]) for r in rows])
        with torch.no_grad():
            probabilities[split] = trained.normalized(sigmoid=True)(unit_range(pixels))
        targets[split] = torch.tensor([[float(c in r["class"].split("|")) for c in trained.classes]
                                       for r in rows])  # fmt: skip
    on_val = tune_thresholds(probabilities["val"], targets["val"], "f1")
    on_test = tune_thresholds(probabilities["test"], targets["test"], "f1")
    assert torch.allclose(trained.thresholds.tensor(), on_val, atol=1e-6)
    assert not torch.allclose(on_val, on_test, atol=1e-6)
    assert results["thresholds_fitted_on"] == "val" and results["thresholds_rule"] == "f1"


def image_tensor(path) -> torch.Tensor:
    with Image.open(path) as img:
        return torch.from_numpy(np.array(img.convert("RGB"))).permute(2, 0, 1)


def test_predict_and_the_onnx_export_use_the_thresholds(run, label_file, tmp_path):
    pytest.importorskip("onnxruntime")
    import onnx
    import onnxruntime

    from cnntrain.trained.export import export_run

    folder, _ = run
    trained = load_trained(folder)
    images = sorted(label_file.parent.glob("*.png"))[:40]
    made = predict(trained, find_images([str(p) for p in images]), batch_size=16, top_k=5,
                   tta=False, device=torch.device("cpu"), show_bars=False)  # fmt: skip
    assert made.header == ["path", "labels", *(f"p_{c}" for c in trained.classes)]
    thresholds = trained.thresholds.tensor()
    pixels = torch.stack([image_tensor(p) for p in images])
    with torch.no_grad():
        expected = trained.normalized(sigmoid=True)(unit_range(pixels))
    for row, p in zip(made.rows, expected, strict=True):
        assert [float(v) for v in row[2:]] == pytest.approx(p.tolist(), abs=1e-6)
        chosen = [
            c for c, on in zip(trained.classes, (p >= thresholds).tolist(), strict=True) if on
        ]
        assert row[1] == "|".join(chosen)
    exported = export_run(folder, "onnx", tmp_path / "model.onnx", compose_config(output_dir="x"))
    meta = {p.key: p.value for p in onnx.load(exported.path).metadata_props}
    assert meta["multi_label"] == "true"
    assert np.allclose(json.loads(meta["thresholds"]), trained.thresholds.values)
    session = onnxruntime.InferenceSession(str(exported.path), providers=["CPUExecutionProvider"])
    (out,) = session.run(["probabilities"], {"pixels": unit_range(pixels).numpy()})
    assert np.allclose(out, expected.numpy(), atol=1e-4)


@pytest.mark.slow
def test_a_multilabel_run_stopped_and_resumed_is_bitwise_identical(label_file, tmp_path, run):
    folder, results = run
    stopped = tmp_path / "stopped"
    with pytest.raises(SystemExit):
        train_here(*overrides(label_file), *FAULT, output_dir=stopped)
    resumed = train_here(output_dir=stopped, resume=stopped)
    for name in ("last.pt", "best.pt"):
        a, b = (torch.load(f / "checkpoints" / name, weights_only=True) for f in (folder, stopped))
        assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"]), name
    assert resumed["test/mAP"] == results["test/mAP"]
    assert resumed["thresholds"] == results["thresholds"]
    from cnntrain.sweeps.jobs import same_run_in

    # the resumed run saved data.splits = its splits.csv: a sweep launched again still knows it
    saved = torch.load(stopped / "checkpoints" / "last.pt", weights_only=True)["config"]
    assert saved["data"]["splits"]
    assert same_run_in(stopped, compose_config(*overrides(label_file), output_dir=str(stopped)))


def test_labels_too_rare_for_every_split_and_absent_from_test_are_named(label_file, tmp_path,
                                                                       caplog):  # fmt: skip
    with caplog.at_level(logging.INFO, "cnntrain"):
        train_here(*overrides(label_file, "trainer.epochs=1", "trainer.plots=false"),
                   output_dir=tmp_path / "run")  # fmt: skip
    text = caplog.text
    assert "several labels per image (data.task=auto)" in text
    assert f"'{ONLY_TRAIN}' (1 image(s): no val or test)" in text  # the split's line
    assert f"label(s) have no positive image in the test split: {ONLY_TRAIN}" in text
    assert "with no label" in text  # the training histogram counts them


def test_data_task_single_refuses_a_row_of_several_labels(label_file):
    cfg = compose_config(*overrides(label_file, "data.task=single"), output_dir="x")
    with pytest.raises(UserError, match=r"data.task=single but .* has \d labels"):
        listing_splits(label_listing(cfg.data), "labels.csv", SplitOptions.of(cfg.data),
                       default_limits())  # fmt: skip


def test_zero_one_label_columns_give_the_same_labels(label_file, tmp_path):
    rows = read_csv(label_file)
    columns = tmp_path / "columns.csv"
    with open(columns, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["path", *COLOURS, ONLY_TRAIN])
        for r in rows:
            labels = r["labels"].split("|")
            writer.writerow([label_file.parent / r["path"],
                             *(int(c in labels) for c in (*COLOURS, ONLY_TRAIN))])  # fmt: skip
    names = ",".join((*COLOURS, ONLY_TRAIN))
    cfg = compose_config("data=csv", f"data.labels={columns}", f"data.label_columns=[{names}]",
                         output_dir="x")  # fmt: skip
    listing = label_listing(cfg.data)
    assert listing.classes == [*COLOURS, ONLY_TRAIN]
    assert [set(s) for s in listing.label_sets] == [set(r["labels"].split("|")) - {""}
                                                     for r in rows]  # fmt: skip


def test_monitors_and_sweep_metrics_of_the_other_kind_of_run_are_refused():
    assert chosen_monitor("auto", True) == "val/mAP" and chosen_monitor("auto", False) == "val/acc"
    with pytest.raises(UserError, match=r"trainer\.monitor=val/mAP is not reported"):
        chosen_monitor("val/mAP", False)
    with pytest.raises(UserError, match=r"trainer\.monitor=val/balanced_acc is not reported"):
        chosen_monitor("val/balanced_acc", True)
    with pytest.raises(UserError, match="optimized_metric=test/mAP is not in the results"):
        check_optimized_metric("test/mAP", False)
    check_optimized_metric("best_val/mAP", True)


def test_label_columns_must_be_distinct_names_without_the_separator():
    for columns in ("[cat,cat]", "['a|b',c]"):
        cfg = compose_config("data=csv", "data.labels=x.csv", f"data.label_columns={columns}",
                             output_dir="x")  # fmt: skip
        with pytest.raises(UserError, match=r"data\.label_columns"):
            validate(cfg)


def test_a_received_multilabel_checkpoint_never_scales_its_sigmoids(run, tmp_path):
    folder = tmp_path / "received"
    shutil.copytree(run[0], folder)
    path = folder / "checkpoints" / "best.pt"
    saved = torch.load(path, weights_only=True)
    saved["calibration"] = {"temperature": 5.0, "fitted_on": "val", "images": 1}
    torch.save(saved, path)
    assert load_trained(folder).temperature is None  # predict, eval and export agree


def test_a_received_checkpoints_thresholds_are_checked(run, tmp_path):
    folder = tmp_path / "received"
    shutil.copytree(run[0], folder)
    path = folder / "checkpoints" / "best.pt"
    saved = torch.load(path, weights_only=True)
    entry, count = saved["thresholds"], len(saved["classes"])
    for bad in (
        {**entry, "values": [float("nan")] * count},
        {**entry, "values": entry["values"][:-1]},  # another label count
        {**entry, "rule": "best"},
        {**entry, "fitted_on": "test"},
        {**entry, "images": -1},
        list(entry["values"]),  # not the mapping tuning writes
    ):
        torch.save({**saved, "thresholds": bad}, path)
        with pytest.raises(UserError, match=rf"^checkpoint {path}: thresholds is not {count} "):
            load_trained(folder)
    torch.save({k: v for k, v in saved.items() if k != "thresholds"}, path)
    kept = load_trained(folder).thresholds  # a run stopped before its final test saved none
    assert kept.values == [0.5] * count and kept.fitted_on is None


def test_eval_of_a_multilabel_run_writes_the_thresholds_as_training_did(run):
    from cnntrain.trained.eval import evaluate_run

    folder, results = run
    evaluated = evaluate_run(folder, compose_config(output_dir=folder), [])
    again = json.loads((evaluated / "results.json").read_text())
    for key in ("thresholds", "thresholds_rule", "thresholds_fitted_on", "test/mAP"):
        assert again[key] == pytest.approx(results[key]), key


def test_a_single_label_run_keeps_its_fields(finished_run):
    results = (finished_run / "results.json").read_text()
    saved = torch.load(finished_run / "checkpoints" / "best.pt", weights_only=True)
    assert '"task"' not in results and '"test/balanced_acc"' in results
    assert "multi_label" not in saved and "thresholds" not in saved and "calibration" in saved


def test_a_sweep_of_multilabel_runs_is_ranked_by_validation_map(tmp_path):
    from cnntrain.reporting.sweep_table import write_sweep_summary

    for job, (exact, ap) in enumerate([(0.30, 0.70), (0.20, 0.90)]):  # exact match disagrees
        folder = tmp_path / str(job)
        (folder / ".hydra").mkdir(parents=True)
        (folder / ".hydra" / "overrides.yaml").write_text(f"- optimizer.lr={job + 1}\n")
        results = {"task": "multi", "best_val/acc": exact, "best_val/mAP": ap, "test/mAP": ap - 0.1,
                   "test/acc": exact, "best_epoch": 2, "train_time_s": 1.0}  # fmt: skip
        (folder / "results.json").write_text(json.dumps(results))
    rows = write_sweep_summary(tmp_path)
    assert [r["job"] for r in rows] == ["1", "0"]
    summary = read_csv(tmp_path / "summary.csv")
    assert [r["val/mAP"] for r in summary] == ["0.9", "0.7"] and summary[0]["test/mAP"] == "0.8"


def test_a_sweep_launched_again_knows_its_jobs_runs_by_their_settings(run, label_file):
    """sweeps/jobs.py: a job folder holding a run of the same settings is resumed (a finished one
    tested again, not trained again); other settings train anew."""
    from cnntrain.sweeps.jobs import same_run_in

    folder, _ = run
    assert same_run_in(folder, compose_config(*overrides(label_file), output_dir=str(folder)))
    other = compose_config(*overrides(label_file, "trainer.epochs=4"), output_dir=str(folder))
    assert not same_run_in(folder, other)
    assert not same_run_in(folder.parent, other)  # no checkpoint there
