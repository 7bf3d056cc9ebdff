"""cnntrain-audit: planted duplicates across splits, file problems, a run's own data, bad input."""

import csv
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cnntrain.audit import run as audit_run
from cnntrain.audit import scan
from cnntrain.cli import audit as audit_cli
from tests.conftest import make_image_folder, train_here

SIZE = 48  # px: the planted folder's images
CLASSES = {"cat": (10, 4), "dog": (10, 4), "tiny": (1, 1)}  # train, test images per class


def smooth_image(rng: np.random.Generator, size: int = SIZE, mode: str = "RGB") -> Image.Image:
    """A random image of large blobs (6 × 6 random colours, upscaled): unrelated ones are ~32
    pHash bits apart, as photos are."""
    coarse = Image.fromarray(rng.integers(0, 256, (6, 6, 3), dtype=np.uint8), "RGB")
    return coarse.resize((size, size), Image.Resampling.BICUBIC).convert(mode)


def make_planted_folder(root: Path) -> Path:
    """An ImageFolder tree (train/, test/) with planted problems: an exact duplicate across
    train/test (PNG → lossless WEBP, a name with `<`), a near one (1.5× larger, JPEG q90), an
    unreadable file, a grey image among RGB ones, a far larger image, a class of one image per
    split (none left for val)."""
    rng = np.random.default_rng(0)
    for name, counts in CLASSES.items():
        for split, count in zip(("train", "test"), counts, strict=True):
            folder = root / split / name
            folder.mkdir(parents=True)
            for i in range(count):
                smooth_image(rng).save(folder / f"{name}{i:02d}.png")
    original = Image.open(root / "train/cat/cat00.png")
    original.save(root / "test/cat/copy <b>.webp", lossless=True)
    near = Image.open(root / "train/dog/dog03.png")
    near.resize((SIZE * 3 // 2,) * 2, Image.Resampling.BICUBIC).save(
        root / "test/dog/bigger.jpg", quality=90
    )
    (root / "test/cat/broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 40)
    smooth_image(rng, mode="L").save(root / "train/dog/grey.png")
    smooth_image(rng, size=SIZE * 5).save(root / "train/cat/huge.png")
    return root


def read_csv(path: Path) -> list[dict]:
    with open(path, encoding="utf-8", newline="") as f:
        return list(csv.DictReader(f))


def audit_here(monkeypatch, capsys, *arguments: str) -> tuple[int, str, str]:
    """`cnntrain-audit *arguments` in this process: (exit status, stdout, stderr)."""
    monkeypatch.setattr(sys, "argv", ["cnntrain-audit", *arguments])
    status = 0
    try:
        audit_cli.main()
    except SystemExit as e:
        status = e.code
    out = capsys.readouterr()
    return status, out.out, out.err


@pytest.fixture(scope="module")
def planted(tmp_path_factory) -> tuple[Path, Path, subprocess.CompletedProcess]:
    """(the planted folder, its audit folder, the real command's process), audited once."""
    base = tmp_path_factory.mktemp("audit")
    root = make_planted_folder(base / "data")
    out = base / "out"
    command = [sys.executable, "-m", "cnntrain.cli.audit", "data=imagefolder",
               f"data.root={root}", "--out", str(out)]  # fmt: skip
    proc = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    return root, out, proc


@pytest.mark.slow
def test_audit_finds_planted_duplicates_across_splits(planted):
    _, out, proc = planted
    pairs = {(r["kind"], r["split_a"], r["path_a"], r["split_b"], r["path_b"])
             for r in read_csv(out / "duplicates.csv")}  # fmt: skip
    assert pairs == {
        ("exact", "train", "train/cat/cat00.png", "test", "test/cat/copy <b>.webp"),
        ("near", "train", "train/dog/dog03.png", "test", "test/dog/bigger.jpg"),
    }
    summary = json.loads((out / "summary.json").read_bytes())
    assert (summary["exact_pairs"], summary["near_pairs"]) == (1, 1)
    assert summary["test_with_train_near_duplicate"] == 2  # the near copy and the exact one
    assert summary["test_with_train_exact_duplicate"] == 1
    assert summary["test_with_train_or_val_near_duplicate"] == 2
    assert summary["test_images"] == 12 and summary["near_bits"] == 4
    assert proc.stdout.splitlines()[-1] == str(out / "report.html")
    assert "test images with one in train: 2 of 12" in proc.stdout


@pytest.mark.slow
def test_audit_lists_file_problems_and_escapes_names(planted):
    _, out, _ = planted
    problems = {(r["path"], r["problem"]) for r in read_csv(out / "files.csv")}
    assert {("test/cat/broken.png", "unreadable"), ("train/dog/grey.png", "odd channels"),
            ("train/cat/huge.png", "odd size")} <= problems  # fmt: skip
    small = [r["detail"] for r in read_csv(out / "files.csv") if r["problem"] == "small class"]
    assert len(small) == 1 and "'tiny'" in small[0] and "none in val" in small[0]
    page = (out / "report.html").read_text(encoding="utf-8")
    assert "copy &lt;b&gt;.webp" in page and "copy <b>" not in page
    assert page.count("data:image/png;base64,") >= 4  # both pairs' thumbnails


@pytest.mark.slow
def test_audit_of_a_run_uses_its_split_and_a_rerun_replaces_the_files(
    tmp_path, monkeypatch, capsys
):
    flat = make_image_folder(tmp_path / "flat", splits=("",), per_class=10, mode="RGB")
    run = tmp_path / "run"
    train_here("data=imagefolder", f"data.root={flat}", "model=simplecnn", "trainer.epochs=1",
               "data.batch_size=8", "logger=none", "trainer.plots=false",
               "trainer.progress=false", output_dir=run)  # fmt: skip
    status, stdout, stderr = audit_here(monkeypatch, capsys, str(run))
    assert status == 0, stderr
    assert stdout.splitlines()[-1] == str(run / "audit" / "report.html")
    summary = json.loads((run / "audit" / "summary.json").read_bytes())
    table = read_csv(run / "splits.csv")
    assert summary["images_by_split"] == {
        s: n for s in ("train", "val", "test") if (n := sum(r["split"] == s for r in table))
    }
    monkeypatch.setattr(scan, "read_file", unexpected)  # every image's scan kept from the first
    status, _, stderr = audit_here(monkeypatch, capsys, str(run), "--near-bits", "0")
    assert status == 0, stderr
    assert json.loads((run / "audit" / "summary.json").read_bytes())["near_bits"] == 0
    assert not [p for p in (run / "audit").iterdir() if p.name.endswith(".tmp")]


def unexpected(*args, **kwargs):
    raise AssertionError(f"unexpected call with {args}")


def test_too_many_folds_are_refused_before_any_image_is_read(tmp_path, monkeypatch, capsys):
    data = make_image_folder(tmp_path / "data", per_class=2)  # 4 images per class
    monkeypatch.setattr(audit_run, "scan_pool", unexpected)
    status, _, stderr = audit_here(monkeypatch, capsys, "data=imagefolder", f"data.root={data}",
                                   "--out", str(tmp_path / "out"), "--folds", "5")  # fmt: skip
    assert status == 2 and "--folds=5: " in stderr and "use --folds between 2 and 4" in stderr
    assert len(stderr.strip().splitlines()) == 1, stderr


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["--folds", "1", "--out", "OUT", "data=imagefolder"], "--folds 1: K-fold needs K ≥ 2"),
        (["MISSING"], "RUN_DIR='MISSING' is not a folder"),
        (["data=imagefolder", "data.root=DATA", "--out", "LINK"], "is a symbolic link"),
        (["data=imagefolder", "data.root=DATA"], "give a run folder, or the data's overrides"),
    ],
)
def test_audit_refuses_bad_input_in_one_line(arguments, message, tmp_path, monkeypatch, capsys):
    data = make_image_folder(tmp_path / "data", per_class=2)
    (tmp_path / "LINK").symlink_to(tmp_path / "elsewhere")
    monkeypatch.chdir(tmp_path)
    arguments = [a.replace("DATA", str(data)) for a in arguments]
    status, _, stderr = audit_here(monkeypatch, capsys, *arguments)
    assert status == 2
    assert message in stderr and len(stderr.strip().splitlines()) == 1, stderr
    assert not (tmp_path / "elsewhere").exists()
    shutil.rmtree(data)


def test_fold_models_near_chance_are_called_too_weak_to_rank_label_errors():
    weak = audit_cli.weak
    assert weak(0.34, 3) and weak(0.15, 10)  # chance: 1/3, 1/10
    assert not weak(0.6, 3) and not weak(0.3, 10) and not weak(0.9, 2)


def test_a_missing_extra_is_said_before_the_data_is_looked_for(monkeypatch, capsys, tmp_path):
    monkeypatch.setitem(sys.modules, "imagehash", None)  # as if not installed
    root = tmp_path / "no such folder"
    monkeypatch.setattr(sys, "argv", ["cnntrain-audit", "data=imagefolder", f"data.root={root}",
                                      "--out", str(tmp_path / "a")])  # fmt: skip
    with pytest.raises(SystemExit) as stopped:
        audit_cli.main()
    err = capsys.readouterr().err
    assert stopped.value.code == 2 and err.count("\n") == 1
    assert "needs imagehash" in err and "[audit]" in err and "no such folder" not in err
