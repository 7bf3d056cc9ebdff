"""Using a trained run: cnntrain-eval, cnntrain-predict and cnntrain-export on a small real run
(a 3-class ImageFolder of PNG files, trained here in-process with an EMA)."""

import csv
import json
import logging
import os
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from cnntrain.cli import eval as eval_cli
from cnntrain.cli import export as export_cli
from cnntrain.cli import predict as predict_cli
from cnntrain.core.checkpoint import load_checkpoint
from cnntrain.core.files import write_json
from cnntrain.data import load_evaluation_split
from cnntrain.trained import predict as predicting
from cnntrain.trained.eval import eval_config
from cnntrain.trained.export import WRITERS, export_run, run_torchscript
from cnntrain.trained.load import load_trained, unit_range
from cnntrain.training.evaluate import evaluate
from cnntrain.training.precision import Arithmetic
from tests.conftest import compose_config, make_image_folder, train_here

CLASSES = ("cat", "dog", "fish")
CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> tuple[Path, Path, dict]:
    """(run folder, its ImageFolder with train/ val/ test/, its results.json)."""
    root = make_image_folder(tmp_path_factory.mktemp("data") / "pets", ("train", "val", "test"),
                             CLASSES, per_class=10, mode="RGB")  # fmt: skip
    run = tmp_path_factory.mktemp("run")
    results = train_here("data=imagefolder", f"data.root={root}", "model=simplecnn",
                         "trainer.epochs=2", "trainer.ema=0.9", "trainer.device=cpu",
                         "logger=none", "trainer.plots=false", output_dir=run)  # fmt: skip
    return run, root, results


def run_main(main, monkeypatch, capsys, *args: str) -> tuple[int, str, str]:
    """(exit status, stdout, stderr) of a console script's main() run here with `args`."""
    monkeypatch.setattr(sys, "argv", ["cnntrain-x", *map(str, args)])
    cnntrain_log = logging.getLogger("cnntrain")
    monkeypatch.setattr(cnntrain_log, "level", cnntrain_log.level)  # main() sets it: restore
    try:
        main()
        status = 0
    except SystemExit as e:
        status = e.code
    out, err = capsys.readouterr()
    return status, out, err


def read_csv(path: Path) -> tuple[list[str], list[dict]]:
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        return reader.fieldnames, list(reader)


def test_loading_a_run_takes_its_ema_weights(trained):
    run, _, _ = trained
    model = load_trained(run)
    saved = load_checkpoint(run / "checkpoints" / "best.pt")
    state = model.network.state_dict()
    assert all(torch.equal(state[k], v) for k, v in saved["ema"]["weights"].items())
    assert not torch.equal(state["fc1.weight"], saved["model"]["fc1.weight"])
    assert model.classes == list(CLASSES) and not model.network.training


def test_predict_on_the_test_images_reproduces_test_acc(trained, tmp_path):
    run, root, results = trained
    out = tmp_path / "predictions.csv"
    proc = subprocess.run(
        [sys.executable, "-m", "cnntrain.cli.predict", str(run), str(root / "test"), "--out",
         str(out)], capture_output=True, text=True, timeout=120, cwd=tmp_path,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines()[-1] == f"predictions: {out}"
    header, rows = read_csv(out)
    assert header == ["path", "prediction", "probability", "top2", "top2_probability", "top3",
                      "top3_probability"]  # fmt: skip
    assert len(rows) == results["test/count"] == 30
    correct = sum(Path(r["path"]).parent.name == r["prediction"] for r in rows)
    assert correct / len(rows) == pytest.approx(results["test/acc"])
    # The probabilities are those of training's own evaluation (data pipeline, training/evaluate).
    model = load_trained(run)
    cfg = eval_config(model.config, compose_config("paths.output_dir=unused"), [])
    split = load_evaluation_split(cfg, CPU, model.spec, model.mean, model.std, model.classes)
    logits = evaluate(model.network, split.loader, Arithmetic(CPU, None), keep_outputs=True)
    calibrated = logits["logits"] / model.temperature  # fitted on the val split
    expected = calibrated.softmax(1).sort(1, descending=True).values  # (30, 3)
    got = [[float(r[c]) for c in ("probability", "top2_probability", "top3_probability")]
           for r in rows]  # fmt: skip
    np.testing.assert_allclose(got, expected.numpy(), atol=1e-6)
    assert [r["path"] for r in rows] == sorted(r["path"] for r in rows)


def test_predict_skips_unreadable_files_with_one_warning(trained, tmp_path, monkeypatch, capsys):
    run, root, _ = trained
    images = tmp_path / "new"
    (images / "nested").mkdir(parents=True)
    original = root / "test" / "dog" / "img 000.png"
    shutil.copy(original, images / "nested" / "dog.png")
    Image.open(original).convert("RGBA").save(images / "dog_rgba.png")  # same pixels, alpha
    Image.open(original).convert("L").resize((50, 40)).save(images / "gray.jpg")
    (images / "broken.png").write_bytes(b"not an image at all")
    (images / "cut.jpg").write_bytes((images / "gray.jpg").read_bytes()[:100])
    (images / "notes.txt").write_text("not an image name: not looked at")
    archive = tmp_path / "more.zip"
    with zipfile.ZipFile(archive, "w") as z:
        z.write(original, "pets/dog.png")
        z.writestr("pets/bad.png", b"\x89PNG but no more")
    out = tmp_path / "p.csv"
    status, stdout, stderr = run_main(
        predict_cli.main, monkeypatch, capsys, run, images, archive, "--out", out, "--top-k", "2"
    )
    assert status == 0, stderr
    warnings = [line for line in stderr.splitlines() if "warning" in line]
    assert len(warnings) == 1 and "skipped 3 unreadable file(s)" in warnings[0]
    assert all(name in warnings[0] for name in ("broken.png", "cut.jpg", "more.zip/pets/bad.png"))
    header, rows = read_csv(out)
    assert header == ["path", "prediction", "probability", "top2", "top2_probability"]
    by_path = {Path(r["path"]).relative_to(tmp_path).as_posix(): r for r in rows}
    assert sorted(by_path) == ["more.zip/pets/dog.png", "new/dog_rgba.png", "new/gray.jpg",
                               "new/nested/dog.png"]  # fmt: skip
    same = [by_path[p] for p in ("new/nested/dog.png", "new/dog_rgba.png", "more.zip/pets/dog.png")]
    assert all(r == {**same[0], "path": r["path"]} for r in same)  # converted as in training
    assert stdout.splitlines()[-1] == f"predictions: {out}" and "4 images" in stdout


def test_predict_explain_reads_each_image_once_and_maps_the_csvs_classes(
    trained, tmp_path, monkeypatch, capsys
):
    pytest.importorskip("pytorch_grad_cam")
    from cnntrain.trained import explain

    run, root, _ = trained
    archive = tmp_path / "pets.zip"
    with zipfile.ZipFile(archive, "w") as z:
        for file in sorted((root / "test" / "dog").iterdir())[:3]:
            z.write(file, f"dog/{file.name}")
    decoded, drawn = [], []
    decode = predicting.opened
    monkeypatch.setattr(
        predicting, "opened", lambda file, cap: decoded.append(file) or decode(file, cap)
    )
    draw = explain.plot_cams
    monkeypatch.setattr(explain, "plot_cams", lambda *a: drawn.append(a) or draw(*a))
    label = predict_cli.predict  # 3 batches of 5, 5 and 3 images: PNG numbers run on
    monkeypatch.setattr(
        predict_cli, "predict", lambda *a, **kw: label(*a, **{**kw, "batch_size": 5})
    )
    out = tmp_path / "p.csv"
    status, stdout, stderr = run_main(predict_cli.main, monkeypatch, capsys, run,
                                      root / "test" / "cat", archive, "--out", out, "--explain",
                                      tmp_path / "maps")  # fmt: skip
    assert status == 0, stderr
    _, rows = read_csv(out)
    assert len(rows) == len(decoded) == 13  # each image decoded once, the archive's too
    for i, (row, (_, _, titles, names, _, png)) in enumerate(zip(rows, drawn, strict=True)):
        assert titles == [f"{row['prediction']} (p={float(row['probability']):.2f})"]
        assert names == [row["path"]] and png.name.startswith(f"{i:04d}_") and png.is_file()
    assert "class-activation maps: 13 PNGs" in stdout
    decoded.clear()
    status, _, stderr = run_main(predict_cli.main, monkeypatch, capsys, run, archive, "--out",
                                 tmp_path / "q.csv", "--explain", tmp_path / "maps", "--layer",
                                 "fc2")  # fmt: skip
    assert status == 2 and stderr.count("\n") == 1 and "'fc2' gives an output of 3 " in stderr
    assert not decoded and not (tmp_path / "q.csv").exists()  # refused before an image is read


def test_predict_without_readable_images_or_checkpoint_is_one_line(
    trained, tmp_path, monkeypatch, capsys
):
    run, _, _ = trained
    (tmp_path / "broken.png").write_bytes(b"junk")
    status, _, stderr = run_main(
        predict_cli.main, monkeypatch, capsys, run, tmp_path / "broken.png"
    )
    assert status == 2 and stderr.count("\n") == 1
    assert "none of the 1 image files could be read" in stderr
    status, _, stderr = run_main(predict_cli.main, monkeypatch, capsys, tmp_path, tmp_path)
    assert status == 2 and stderr.count("\n") == 1 and "no checkpoint at" in stderr
    assert not (tmp_path / "predictions.csv").exists()


def test_predict_never_replaces_an_existing_csv_unless_told(trained, tmp_path, monkeypatch, capsys):
    run, root, _ = trained
    out = tmp_path / "predictions.csv"
    out.write_text("yesterday's labels\n")
    status, _, stderr = run_main(predict_cli.main, monkeypatch, capsys, run, root / "test",
                                 "--out", out)  # fmt: skip
    assert status == 2 and stderr.count("\n") == 1 and "--overwrite" in stderr
    assert out.read_text() == "yesterday's labels\n"
    status, _, stderr = run_main(predict_cli.main, monkeypatch, capsys, run, root / "test",
                                 "--out", out, "--overwrite")  # fmt: skip
    assert status == 0, stderr
    assert out.read_text().startswith("path,prediction,probability")


def test_json_keeps_class_names_as_written(tmp_path):
    write_json(tmp_path / "results.json", {"classes": ["avión", "猫"]})
    assert '"avión"' in (tmp_path / "results.json").read_text(encoding="utf-8")
    assert json.loads((tmp_path / "results.json").read_bytes())["classes"] == ["avión", "猫"]


def test_eval_on_the_runs_own_test_split_reproduces_its_results(trained, monkeypatch, capsys):
    run, _, results = trained
    status, stdout, stderr = run_main(eval_cli.main, monkeypatch, capsys, run)
    assert status == 0, stderr
    folder = Path(stdout.splitlines()[-1])
    assert stdout.splitlines()[-2].startswith(f"test accuracy {results['test/acc']:.2%}")
    assert folder.parent == run / "eval"
    assert re.fullmatch(r"\d{4}-\d\d-\d\d_\d\d-\d\d-\d\d(-\d+)?", folder.name)
    scored = json.loads((folder / "results.json").read_text())
    for key in ("test/acc", "test/balanced_acc", "test/per_class_acc", "test/count"):
        assert scored[key] == results[key], key
    assert scored["test/loss"] == pytest.approx(results["test/loss"], rel=1e-6)
    assert "test/top5_acc" not in scored  # 3 classes
    assert scored["temperature"] == results["temperature"]  # the run's, from its checkpoint
    assert scored["test/ece_calibrated"] == pytest.approx(results["test/ece_calibrated"], abs=1e-6)
    plots = {"confusion_matrix.png", "per_class_accuracy.png", "reliability.png", "coverage.png"}
    assert {p.name for p in (folder / "plots").iterdir()} == plots
    report = (folder / "report.html").read_text()
    assert "data:image/png;base64," in report and "evaluation of" in report


def test_eval_matches_another_folders_classes_by_name(trained, tmp_path, monkeypatch, capsys):
    run, root, results = trained
    other = tmp_path / "other"  # class folders alone, a subset: cat = 0, fish = 1 here (2 there)
    for name in ("fish", "cat"):
        shutil.copytree(root / "test" / name, other / name)
    status, stdout, stderr = run_main(
        eval_cli.main, monkeypatch, capsys, run, "data=imagefolder", f"data.root={other}"
    )
    assert status == 0, stderr
    scored = json.loads((Path(stdout.splitlines()[-1]) / "results.json").read_text())
    assert scored["test/count"] == 20
    assert scored["test/class_counts"] == {"cat": 10, "dog": 0, "fish": 10}
    trained_per_class = results["test/per_class_acc"]
    expected = {"cat": trained_per_class["cat"], "dog": None, "fish": trained_per_class["fish"]}
    assert scored["test/per_class_acc"] == expected
    assert scored["test/acc"] == pytest.approx((expected["cat"] + expected["fish"]) / 2)


def test_eval_refuses_an_unknown_class_and_a_network_change(trained, tmp_path, monkeypatch, capsys):
    run, root, _ = trained
    evaluations = sorted((run / "eval").glob("*")) if (run / "eval").exists() else []
    zoo = tmp_path / "zoo"
    shutil.copytree(root / "test" / "cat", zoo / "test" / "cat")
    shutil.copytree(root / "test" / "dog", zoo / "test" / "zebra")
    status, _, stderr = run_main(
        eval_cli.main, monkeypatch, capsys, run, "data=imagefolder", f"data.root={zoo}"
    )
    assert status == 2 and stderr.count("\n") == 1
    assert "class 'zebra', which the model does not know" in stderr and "cat, dog, fish" in stderr
    status, _, stderr = run_main(eval_cli.main, monkeypatch, capsys, run, "model=resnet")
    assert status == 2 and "'model=resnet' cannot be set" in stderr
    now = sorted((run / "eval").glob("*")) if (run / "eval").exists() else []
    assert now == evaluations  # nothing written


FRESH_LOADER = """
import json, sys
import numpy as np, onnxruntime, torch
pixels = torch.from_numpy(np.load(sys.argv[1]))
extra = dict.fromkeys(["classes", "mean", "std", "input_size", "resize", "interpolation",
                      "squash", "temperature", "calibrated"], "")
scripted = torch.jit.load(sys.argv[2], _extra_files=extra)
session = onnxruntime.InferenceSession(sys.argv[3], providers=["CPUExecutionProvider"])
onnx = lambda x: session.run(["logits"], {"pixels": x.numpy()})[0].tolist()
print(json.dumps({
    "torchscript": scripted(pixels).tolist(), "torchscript_one": scripted(pixels[:1]).tolist(),
    "onnx": onnx(pixels), "onnx_one": onnx(pixels[:1]),
    "torchscript_meta": {k: json.loads(v) for k, v in extra.items()},
    "onnx_meta": {k: json.loads(v) for k, v in session.get_modelmeta().custom_metadata_map.items()},
    "cnntrain_imported": [m for m in sys.modules if m.split(".")[0] == "cnntrain"],
}))
"""


def test_export_to_both_formats_matches_pytorch_in_a_fresh_process(
    trained, tmp_path, monkeypatch, capsys
):
    run, root, _ = trained
    files = {}
    for fmt, name in (("torchscript", "net.pt"), ("onnx", "net.onnx")):
        status, stdout, stderr = run_main(
            export_cli.main, monkeypatch, capsys, run, "--format", fmt, "--out", tmp_path / name
        )
        assert status == 0, stderr
        assert stdout.splitlines()[-1] == str(tmp_path / name)
        assert f"8 test images of {root}" in stdout  # checked on real images
        files[fmt] = tmp_path / name
    model = load_trained(run)
    chosen = sorted((root / "test").rglob("*.png"))[::6]  # 5 images, of every class
    images = torch.stack([torch.from_numpy(np.array(Image.open(f))).permute(2, 0, 1)
                          for f in chosen])  # fmt: skip
    pixels = unit_range(images)  # (5, 3, 20, 24) in [0, 1]
    np.save(tmp_path / "pixels.npy", pixels.numpy())
    proc = subprocess.run(
        [sys.executable, "-c", FRESH_LOADER, str(tmp_path / "pixels.npy"),
         str(files["torchscript"]), str(files["onnx"])],
        capture_output=True, text=True, timeout=120, cwd=tmp_path,
        env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"},
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    loaded = json.loads(proc.stdout)
    with torch.no_grad():
        expected = model.normalized()(pixels)  # (5, 3) logits
    for fmt in ("torchscript", "onnx"):
        np.testing.assert_allclose(loaded[fmt], expected.numpy(), atol=1e-4)
        np.testing.assert_allclose(loaded[f"{fmt}_one"], expected[:1].numpy(), atol=1e-4)
        assert loaded[f"{fmt}_meta"] == {"classes": list(CLASSES), "mean": model.mean,
                                         "std": model.std, "input_size": [3, 20, 24],
                                         "resize": None, "interpolation": "bilinear",
                                         "squash": False, "temperature": model.temperature,
                                         "calibrated": False}  # fmt: skip
    assert loaded["cnntrain_imported"] == []


def test_an_export_that_computes_otherwise_fails_by_how_much_and_is_not_kept(
    trained, tmp_path, monkeypatch, capsys
):
    run, _, _ = trained
    write, _ = WRITERS["torchscript"]
    monkeypatch.setitem(
        WRITERS, "torchscript", (write, lambda path, pixels: run_torchscript(path, pixels) + 0.01)
    )
    out = tmp_path / "net.pt"
    status, _, stderr = run_main(
        export_cli.main, monkeypatch, capsys, run, "--format", "torchscript", "--out", out
    )
    assert status == 2 and stderr.count("\n") == 1
    assert "up to 0.01 away from PyTorch's" in stderr and f"{out} was not written" in stderr
    assert list(tmp_path.iterdir()) == []  # no file, no temporary file


def test_export_checks_on_random_images_when_the_test_data_is_gone(trained, tmp_path):
    run, _, _ = trained
    model_dir = tmp_path / "run"
    shutil.copytree(run / "checkpoints", model_dir / "checkpoints")
    saved = load_checkpoint(model_dir / "checkpoints" / "best.pt")
    saved["config"]["data"]["root"] = str(tmp_path / "gone")
    torch.save(saved, model_dir / "checkpoints" / "best.pt")
    exported = export_run(model_dir, "torchscript", None, compose_config("paths.output_dir=x"))
    assert exported.path == model_dir / "export" / "model.torchscript.pt"
    assert exported.checked_on.startswith("8 random images (the run's test data could not be")
    assert "gone" in exported.checked_on and exported.max_difference <= 1e-4
    assert exported.path.is_file()
