"""Names from received folders stay data in what cnntrain writes: CSV cells a spreadsheet would
run as formulas are neutralised, control characters in names are escaped in log lines, and a
class without one readable training image is refused as an empty class folder is."""

import csv
import json
import logging
import os
import subprocess
import sys

import pytest

from cnntrain.core.errors import UserError
from cnntrain.reporting.metrics_log import to_csv
from cnntrain.reporting.sweep_table import write_sweep_summary
from tests.conftest import REPO, compose_config, load_run_data, make_image_folder, train_here

FORMULA = '=HYPERLINK("x","y")'  # a folder name cannot hold the `/` of a URL
CLASSES = (FORMULA, "@SUM(A1)", "plain")


def folder_config(root, *overrides):
    return compose_config(
        "data=imagefolder", f"data.root={root}", "data.num_workers=0", *overrides,
        output_dir="unused",
    )  # fmt: skip


@pytest.mark.parametrize(
    ("value", "written"),
    [
        (FORMULA, "'" + FORMULA),
        ("+1+cmd", "'+1+cmd"),
        ("-2+3", "'-2+3"),
        ("@SUM(A1)", "'@SUM(A1)"),
        ("\t=1", "'\t=1"),
        ("\r=1", "'\r=1"),
        ("-0.5", "-0.5"),  # text that is a number stays one
        ("+3e-2", "+3e-2"),
        (-0.5, -0.5),
        (3, 3),
        (None, None),
        ("cat", "cat"),
        ("a=b", "a=b"),
    ],
)
def test_csv_cells_that_start_like_a_formula_get_a_quote(value, written):
    from cnntrain.core.safe_text import csv_cell

    assert csv_cell(value) == written


def test_control_characters_in_names_are_escaped():
    from cnntrain.core.safe_text import printable

    assert printable("line\nbreak\t\x1b[31m\u202eevil.png") == (
        "line\\nbreak\\t\\x1b[31m\\u202eevil.png"
    )
    assert printable("ordinary name, é ü 猫.png") == "ordinary name, é ü 猫.png"


@pytest.fixture(scope="module")
def formula_run(tmp_path_factory):
    """(run folder, its data): a tiny run whose class names are spreadsheet formulas."""
    root = make_image_folder(tmp_path_factory.mktemp("data") / "pets", ("train", "val"),
                             CLASSES, per_class=4)  # fmt: skip
    run = tmp_path_factory.mktemp("run")
    train_here("data=imagefolder", f"data.root={root}", "model=simplecnn", "trainer.epochs=1",
               "trainer.device=cpu", "logger=none", "trainer.plots=false",
               output_dir=run)  # fmt: skip
    return run, root


def test_predictions_csv_neutralises_formula_class_and_file_names(formula_run, tmp_path):
    run, root = formula_run
    (tmp_path / "=cmd.png").write_bytes((root / "val" / "plain" / "img 000.png").read_bytes())
    (tmp_path / "bad\nname.png").write_bytes(b"not an image")
    out = tmp_path / "p.csv"
    proc = subprocess.run(
        [sys.executable, "-m", "cnntrain.cli.predict", str(run), "=cmd.png", "bad\nname.png",
         str(root / "val"), "--out", str(out), "--top-k", "3"],
        capture_output=True, text=True, timeout=120, cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    [warning] = [line for line in proc.stderr.splitlines() if "skipped" in line]
    assert warning == "cnntrain: warning: skipped 1 unreadable file(s): bad\\nname.png"
    with open(out, newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 13 and rows[0]["path"] == "'=cmd.png"
    shown = {"'" + FORMULA, "'@SUM(A1)", "plain"}
    for row in rows:
        assert {row["prediction"], row["top2"], row["top3"]} == shown
        assert all(0 <= float(row[p]) <= 1 for p in ("probability", "top2_probability"))


def test_a_sweep_summary_neutralises_overrides_and_errors(tmp_path):
    for job, overrides in (("0", ["+x==1+2", "data.name=-cmd"]), ("1", ["@a=b"])):
        (tmp_path / job / ".hydra").mkdir(parents=True)
        (tmp_path / job / ".hydra" / "overrides.yaml").write_text(json.dumps(overrides))
    (tmp_path / "0" / "results.json").write_text(
        json.dumps({"best_val/acc": 0.5, "test/acc": -0.25, "best_epoch": 1, "train_time_s": 2.0})
    )
    (tmp_path / "1" / "error.txt").write_text("=cmd|' /C calc'!A0")
    write_sweep_summary(tmp_path)
    with open(tmp_path / "summary.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [(r["overrides"], r["status"], r["test/acc"]) for r in rows] == [
        ("'+x==1+2 data.name=-cmd", "completed", "-0.25"),
        ("'@a=b", "failed: =cmd|' /C calc'!A0", ""),
    ]


def test_metrics_csv_text_is_neutralised_and_numbers_kept():
    text = to_csv([{"epoch": 1, "train/loss": -0.5, "note": "=1+1"}])
    assert text == "epoch,train/loss,note\n1,-0.5,'=1+1\n"


def test_names_with_control_characters_stay_on_one_log_line(tmp_path, caplog):
    root = make_image_folder(tmp_path / "pets", ("train", "test"), ("cat\nsays", "dog"), 4)
    (root / "train" / "dog" / "bad\x1b[2Jname.png").write_bytes(b"not an image")
    from cnntrain.train import log_class_balance

    with caplog.at_level(logging.INFO):
        load_run_data(folder_config(root, "data.val_split=0"))
        log_class_balance({"cat\nsays": 4, "dog": 4})
    messages = [r.getMessage() for r in caplog.records]
    assert not [m for m in messages if "\n" in m or "\x1b" in m]
    assert any("bad\\x1b[2Jname.png" in m for m in messages)
    assert "training images per class: cat\\nsays 4, dog 4" in messages


def test_a_class_without_one_readable_image_is_refused_like_an_empty_folder(tmp_path):
    root = make_image_folder(tmp_path / "pets", ("train", "test"), ("cat", "dog"), 4)
    for image in (root / "train" / "dog").iterdir():
        image.write_bytes(b"not an image")
    with pytest.raises(UserError) as unreadable:
        load_run_data(folder_config(root, "data.val_split=0"))
    assert str(unreadable.value) == (
        f"{root}/train: class folder(s) with no readable images: dog; add readable images or "
        "remove the folder"
    )
    for image in (root / "train" / "dog").iterdir():
        image.unlink()
    with pytest.raises(UserError) as empty:
        load_run_data(folder_config(root, "data.val_split=0"))
    assert str(empty.value).startswith(f"{root}/train: class folder(s) with no images: dog; ")
