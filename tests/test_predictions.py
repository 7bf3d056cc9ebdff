"""test_predictions.csv: each test image with its file, classes, confidence and loss."""

import csv
import math

import torch

from cnntrain.reporting.predictions import (
    COLUMNS,
    image_names,
    prediction_rows,
    short_name,
    write_predictions,
)


def test_rows_are_sorted_by_loss_with_each_images_own_numbers():
    logits = torch.tensor([[2.0, 0.0, 0.0], [0.0, 3.0, 0.0], [1.0, 1.0, 1.0], [0.0, 0.0, 5.0]])
    targets = torch.tensor([0, 0, 2, 2])
    rows = prediction_rows(logits, targets, ["cat", "dog", "=cmd()"], ["a", "b", "c", "d"])
    by_index = {row[0]: row for row in rows}
    for i, (index, name, true, _, confidence, loss) in enumerate(rows):
        p = logits[index].softmax(0)
        assert loss == round(-math.log(p[targets[index]].item()), 6)
        assert confidence == round(p.max().item(), 6)
        assert name == "abcd"[index] and true == ["cat", "dog", "=cmd()"][targets[index]]
        assert i == 0 or rows[i - 1][5] >= loss
    assert [row[0] for row in rows] == [1, 2, 0, 3]  # the confident mistake first
    assert by_index[1][3] == "dog" and by_index[2][3] == "cat"  # a tie: the first class


def test_names_are_relative_to_the_root_and_empty_for_arrays(tmp_path):
    files = [str(tmp_path / "cat" / "1.jpg"), "/elsewhere/2.png"]
    assert image_names(files, str(tmp_path), 2) == ["cat/1.jpg", "/elsewhere/2.png"]
    assert image_names(None, None, 3) == ["", "", ""]
    assert short_name("x" * 40, 10) == "…" + "x" * 9 and short_name("a/b.jpg") == "a/b.jpg"


def test_the_file_reads_back_and_is_safe_in_a_spreadsheet(tmp_path):
    logits, targets = torch.tensor([[0.0, 1.0], [1.0, 0.0]]), torch.tensor([0, 0])
    rows = prediction_rows(logits, targets, ["=HYPERLINK(1)", "b"], ["+evil.jpg", "ok/1.jpg"])
    with open(write_predictions(tmp_path, rows), newline="", encoding="utf-8") as f:
        read = list(csv.DictReader(f))
    assert tuple(read[0]) == COLUMNS
    assert read[0]["path"] == "'+evil.jpg" and read[0]["true"] == "'=HYPERLINK(1)"
    assert read[0]["predicted"] == "b" and float(read[0]["loss"]) > float(read[1]["loss"])
