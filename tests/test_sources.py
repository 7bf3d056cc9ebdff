"""Your own photos: flat class folders, label files and Hugging Face datasets, split by the tool
(seeded, per class, kept in the run's splits.csv) or as a split table says (data.splits)."""

import csv
import importlib.util
import json
import logging
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cnntrain.config.resumed import resumed_config
from cnntrain.config.rules import validate
from cnntrain.core.errors import UserError
from cnntrain.core.safe_text import csv_cell, csv_value
from cnntrain.data.hf import is_hub_id, load
from cnntrain.data.known import open_evaluation_data, open_splits
from cnntrain.data.listing import class_order
from cnntrain.data.split_table import write_records
from cnntrain.data.splits import carved_counts, three_way_split
from cnntrain.trained.eval import use_run_split
from tests.conftest import compose_config, make_image_folder, run_cli, run_folders

RUN = ("model=simplecnn", "trainer.epochs=1", "trainer.plots=false", "logger=none",
       "data.num_workers=0")  # fmt: skip


def flat_folder(root: Path, classes=("cat", "dog"), per_class=10) -> Path:
    """`root/<class>/img NNN.png`: class folders alone, no split folders."""
    return make_image_folder(
        root, splits=("",), classes=classes, per_class=per_class, size=(16, 16)
    )


def opened(tmp_path: Path, *overrides: str, evaluation: bool = False):
    cfg = compose_config(*overrides, f"paths.cache_dir={tmp_path / 'cache'}")
    validate(cfg)
    open_data = open_evaluation_data if evaluation else open_splits
    return open_data(cfg.data, cfg.paths.data_dir, cfg.paths.cache_dir)


def read_table(path: Path) -> list[dict]:
    with open(path, encoding="utf-8", newline="") as f:
        return list(csv.DictReader(f))


def sizes(found) -> dict[str, int]:
    return {split: len(source) for split, source in found.splits.items()}


def test_the_tool_splits_each_class_seeded_and_keeps_one_image_in_train():
    assert carved_counts(1, 0.1, 0.1) == {"val": 0, "test": 0}  # train alone
    assert carved_counts(2, 0.1, 0.1) == {"val": 1, "test": 0}  # val before test
    assert carved_counts(3, 0.1, 0.1) == {"val": 1, "test": 1}  # every split, as a fraction > 0
    assert carved_counts(40, 0.1, 0.2) == {"val": 4, "test": 8}
    assert carved_counts(40, 0.0, 0.2) == {"val": 0, "test": 8}
    targets = np.repeat(np.arange(3), [40, 20, 2])
    made = three_way_split(targets, 0.1, 0.2, seed=0)
    assert sorted(np.concatenate(list(made.values())).tolist()) == list(range(len(targets)))
    assert np.bincount(targets[made["test"]]).tolist() == [8, 4]  # class 2: train and val only
    assert np.bincount(targets[made["val"]], minlength=3).tolist() == [4, 2, 1]
    again, other = three_way_split(targets, 0.1, 0.2, 0), three_way_split(targets, 0.1, 0.2, 1)
    assert all(np.array_equal(made[s], again[s]) for s in made)
    assert not np.array_equal(made["test"], other["test"])
    # the test images depend on the seed and data.test_split alone
    assert np.array_equal(made["test"], three_way_split(targets, 0.3, 0.2, 0)["test"])
    with pytest.raises(UserError, match=r"data.val_split=0.5 \+ data.test_split=0.5"):
        three_way_split(targets, 0.5, 0.5, 0)


def test_flat_class_folders_are_split_with_their_nested_folders_and_small_classes(tmp_path, caplog):
    root = flat_folder(tmp_path / "photos", classes=("cat", "dog", "owl"), per_class=[12, 12, 2])
    (root / "cat" / "indoor").mkdir()
    shutil.copy(root / "cat" / "img 000.png", root / "cat" / "indoor" / "sofa.png")
    folder = ("data=imagefolder", f"data.root={root}")
    with caplog.at_level(logging.WARNING):
        found = opened(tmp_path, *folder)
    assert found.classes == ["cat", "dog", "owl"] and set(found.splits) == {"train", "val", "test"}
    table = {path: (label, split) for path, label, split in found.records.table}
    assert len(table) == 27 == sum(sizes(found).values())  # every file once
    assert table["cat/indoor/sofa.png"][0] == "cat"  # a nested folder belongs to its class
    assert sorted(s for label, s in table.values() if label == "owl") == ["train", "val"]
    assert "'owl' (2 image(s): no test)" in caplog.text
    assert found.records.table == opened(tmp_path, *folder).records.table  # seeded
    assert found.records.table != opened(tmp_path, *folder, "data.split_seed=1").records.table
    evaluated = opened(tmp_path, *folder, evaluation=True)  # other data: all of it is tested
    assert sizes(evaluated) == {"test": 27}


def test_a_split_table_is_followed_whatever_the_seed(tmp_path, caplog):
    root = flat_folder(tmp_path / "photos")
    first = opened(tmp_path, "data=imagefolder", f"data.root={root}")
    write_records(first.records, tmp_path / "run")
    table = tmp_path / "run" / "splits.csv"
    assert read_table(table)[0].keys() == {"path", "class", "split"}
    shutil.copy(root / "dog" / "img 000.png", root / "dog" / "new.png")  # not listed
    (root / "cat" / "img 009.png").unlink()  # listed, gone
    reuse = ("data=imagefolder", f"data.root={root}", f"data.splits={table}", "data.split_seed=7")
    with caplog.at_level(logging.WARNING):
        again = opened(tmp_path, *reuse)
    assert again.records.table == [r for r in first.records.table if r[0] != "cat/img 009.png"]
    assert "left out 1 image file(s) that data.splits=" in caplog.text
    assert again.records.bad_rows == [(str(table), 11, "cat/img 009.png", "not found in the data")]
    rows = table.read_text().replace("cat/img 000.png,cat", "cat/img 000.png,dog")
    table.write_text(rows)
    with pytest.raises(UserError, match=r"cat/img 000.png is class 'dog' there but 'cat'"):
        opened(tmp_path, *reuse)
    tree = make_image_folder(tmp_path / "tree", per_class=3)
    with pytest.raises(UserError, match="comes with its own splits"):
        opened(tmp_path, "data=imagefolder", f"data.root={tree}", f"data.splits={table}")


def test_label_files_csv_sniffed_text_and_parquet(tmp_path, caplog):
    root = flat_folder(tmp_path / "photos", per_class=6)
    rows = [("path", "kind", "split")]
    rows += [(f"cat/img {i:03d}.png", "cat", ("Train", "VALIDATION", "dev", "testing")[i % 4])
             for i in range(6)]  # fmt: skip
    rows += [(f"dog/img {i:03d}.png", "dog", "train") for i in range(6)]
    rows += [("dog/img 000.png", "dog", "train"), ("cat/x.png", "cat", "test"),
             ("cat/img 005.png", "cat", "holdout")]  # fmt: skip
    labels = tmp_path / "labels.txt"  # `;` told from the text
    labels.write_text("\n".join(";".join(row) for row in rows) + "\n")
    columns = ("data=csv", f"data.labels={labels}", f"data.root={root}", "data.label_column=kind")
    with caplog.at_level(logging.WARNING):
        found = opened(tmp_path, *columns, "data.split_column=split")
    assert sizes(found) == {"train": 8, "val": 3, "test": 1}  # the file's splits: no carving
    reasons = [reason for *_, reason in found.records.bad_rows]
    assert reasons[0] == "lists the file of row 8 again" and reasons[1] == "no such file"
    assert reasons[2].startswith("split 'holdout' is not train, val or test")
    assert "left out 3 row(s)" in caplog.text
    with pytest.raises(UserError, match=r"no column 'label' \(its columns: path, kind, split\)"):
        opened(tmp_path, "data=csv", f"data.labels={labels}")
    pq = pytest.importorskip("pyarrow.parquet")
    import pyarrow as pa

    table = pa.table({"path": [f"{c}/img {i:03d}.png" for c in ("cat", "dog") for i in range(6)],
                      "label": [10] * 6 + [2] * 6})  # fmt: skip
    pq.write_table(table, root / "labels.parquet")
    found = opened(tmp_path, "data=csv", f"data.labels={root / 'labels.parquet'}")
    assert found.classes == ["2", "10"]  # integer labels sort as numbers
    assert sizes(found) == {"train": 8, "val": 2, "test": 2} and len(found.records.table) == 12


def test_class_names_sort_by_value_only_when_all_are_integers():
    assert class_order(["10", "-3", "2", "007", "7"]) == ["-3", "2", "007", "7", "10"]
    assert class_order(["10", "--5", "2"]) == ["--5", "10", "2"]  # not an integer: as text
    assert class_order(["²", "1"]) == ["1", "²"]  # a digit to isdigit(), not to int()


def test_written_cells_read_back_as_they_were(monkeypatch):
    for text in ("=1+2", "@cmd", "-x", "plain", "-0.5", "'", "'quoted"):
        assert csv_value(csv_cell(text)) == text
    assert is_hub_id("owner/name") and not is_hub_id("owner/name/more")
    monkeypatch.chdir(Path(__file__).parents[1])  # `tests/test_sources.py` names this file
    assert not is_hub_id(str(Path(__file__).parent.name + "/" + Path(__file__).name))


def test_no_datasets_loading_script_is_run(monkeypatch, tmp_path):
    """datasets 2.16-2.19 ran a dataset's own loading script (its code) unless told not to."""
    datasets = pytest.importorskip("datasets")
    calls = []
    monkeypatch.setattr(datasets, "load_dataset", lambda path, **kw: calls.append(kw) or {})
    for root in ("owner/name", str(tmp_path)):  # the Hub, and a folder load_dataset reads
        load(root, tmp_path / "cache")
    assert [kw["trust_remote_code"] for kw in calls] == [False, False]


def test_data_hf_without_datasets_names_the_extra(monkeypatch, tmp_path):
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "datasets" else real(name, *a)
    )
    with pytest.raises(UserError, match=r"data=hf needs datasets.*\[hf\]"):
        validate(compose_config("data=hf", f"data.root={tmp_path}"))


@pytest.mark.slow
def test_a_flat_folder_trains_keeps_its_split_and_a_resumed_run_reuses_it(tmp_path):
    root = flat_folder(tmp_path / "photos")
    run_cli("data=imagefolder", f"data.root={root}", *RUN, cwd=tmp_path)
    (run,) = run_folders(tmp_path)
    table = (run / "splits.csv").read_text()
    made = opened(tmp_path, "data=imagefolder", f"data.root={root}").records.table
    assert [tuple(r.values()) for r in read_table(run / "splits.csv")] == made
    cfg = resumed_config(compose_config(f"resume={run}", output_dir=run), [])
    assert cfg.data.splits == str(run / "splits.csv")
    own = compose_config("data=imagefolder", f"data.root={root}")
    use_run_split(own, run, [])  # cnntrain-eval RUN: the run's own test split
    assert own.data.splits == str(run / "splits.csv")
    shutil.copy(root / "dog" / "img 000.png", root / "dog" / "new.png")
    run_cli(f"resume={run}", "trainer.epochs=2", cwd=tmp_path)
    assert "left out 1 image file(s) that data.splits=" in (run / "train.log").read_text()
    assert (run / "splits.csv").read_text() == table
    assert json.loads((run / "results.json").read_text())["epochs"] == 2


@pytest.mark.slow
def test_a_label_file_with_bad_rows_trains_and_lists_them(tmp_path):
    root = flat_folder(tmp_path / "photos", per_class=20)  # 2 of each class in val, in test
    (root / "dog" / "broken.png").write_bytes(b"not a png")
    rows = [f"{c}/img {i:03d}.png,{c}" for c in ("cat", "dog") for i in range(20)]
    rows += ["cat/gone.png,cat", "dog/img 001.png,", "dog/broken.png,dog"]
    (root / "labels.csv").write_text("path,label\n" + "\n".join(rows) + "\n")
    run_cli("data=csv", f"data.labels={root / 'labels.csv'}", *RUN, cwd=tmp_path)
    (run,) = run_folders(tmp_path)
    log = (run / "train.log").read_text()
    assert "left out 2 row(s): labels.csv row 42 'cat/gone.png': no such file" in log
    assert "unreadable image file(s)" in log and "broken.png" in log  # data.on_bad_image=skip
    bad = read_table(run / "bad_rows.csv")
    assert [(r["row"], r["path"], r["reason"]) for r in bad] == [
        ("42", "cat/gone.png", "no such file"),
        ("43", "dog/img 001.png", "empty label"),
    ]
    assert len(read_table(run / "splits.csv")) == 41  # 40 good rows and the unreadable image


@pytest.mark.slow
def test_a_hugging_face_dataset_trains(tmp_path):
    datasets = pytest.importorskip("datasets")
    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(0, 80, (16, 16), np.uint8) + 150 * (i % 2))
              for i in range(24)]  # fmt: skip
    features = datasets.Features(
        {"image": datasets.Image(), "label": datasets.ClassLabel(names=["night", "day"])}
    )
    data = {"image": images, "label": [i % 2 for i in range(24)]}
    whole = datasets.Dataset.from_dict(data, features=features)
    split = whole.train_test_split(test_size=4, seed=0)  # train and test: val is the tool's
    split.save_to_disk(str(tmp_path / "saved"))
    run_cli("data=hf", f"data.root={tmp_path / 'saved'}", *RUN, cwd=tmp_path)
    (run,) = run_folders(tmp_path)
    results = json.loads((run / "results.json").read_text())
    assert results["classes"] == ["night", "day"] and results["test/count"] == 4
    table = read_table(run / "splits.csv")
    assert sorted({r["split"] for r in table}) == ["test", "train", "val"] and len(table) == 24
