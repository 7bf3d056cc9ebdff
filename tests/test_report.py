"""report.html of run and sweep folders: the numbers, escaping, inline images, no outside assets."""

import base64
import json
import re
from html.parser import HTMLParser

import numpy as np
import pytest
import yaml
from PIL import Image

from cnntrain.core.errors import UserError
from cnntrain.reporting.report import build_report, write_sweep_report
from cnntrain.reporting.sweep_table import constant_settings, sweep_rows, swept_keys

ODD_CLASS = "<cat> & dog"
VOID = {"meta", "img", "br", "hr", "link", "input"}


class StrictParser(HTMLParser):
    """Fails on any end tag that does not close the element open at that point."""

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.open, self.images, self.attributes = [], [], []

    def handle_starttag(self, tag, attrs):
        self.attributes += [value or "" for _, value in attrs]
        if tag == "img":
            self.images.append(dict(attrs)["src"])
        if tag not in VOID:
            self.open.append(tag)

    def handle_endtag(self, tag):
        assert self.open and self.open[-1] == tag, f"</{tag}> closes {self.open[-1:]}"
        self.open.pop()


def parse(page: str) -> StrictParser:
    parser = StrictParser()
    parser.feed(page)
    parser.close()
    assert parser.open == [], f"unclosed {parser.open}"
    return parser


def assert_self_contained(page: str) -> StrictParser:
    parser = parse(page)
    assert not re.search(r"https?://", page)
    assert "<script" not in page and "<link" not in page
    assert all(src.startswith("data:image/png;base64,") for src in parser.images)
    assert not any(a.startswith(("http", "//", "file:")) for a in parser.attributes)
    return parser


def write_png(path, color):
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.zeros((40, 60, 3), dtype=np.uint8)
    pixels[:, :30] = color
    Image.fromarray(pixels).save(path)


def epoch_row(e):
    return {
        "epoch": e,
        "train/loss": 1.9 / e,
        "train/acc": 0.31 + 0.2 * e,
        "val/loss": 1.7 / e,
        "val/acc": 0.38 + 0.15 * e,
        "lr": 0.05 / e,
        "epoch_time_s": 12.3,
        "elapsed_s": 12.3 * e,
        "train/images_per_s": 3650.0,
    }


def make_run(folder, epochs=3, finished=True, overrides=("model=simplecnn",), val_acc=0.83):
    """A run folder as training leaves it (without checkpoints, which reports do not read)."""
    hydra = folder / ".hydra"
    hydra.mkdir(parents=True)
    config = {"model": {"name": "simplecnn"}, "data": {"name": "cifar10"}, "seed": 0}
    (hydra / "config.yaml").write_text(yaml.safe_dump(config))
    (hydra / "overrides.yaml").write_text(yaml.safe_dump(list(overrides)))
    rows = [epoch_row(e) for e in range(1, epochs + 1)]
    (folder / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (folder / "summary.txt").write_text("layer   output\nconv1   32×32×32 <total>\n")
    if finished:
        results = {
            "test/acc": 0.9312,
            "test/loss": 0.25,
            "test/balanced_acc": 0.9207,
            "test/per_class_acc": {"plane": 0.95, ODD_CLASS: 0.8914, "empty": None},
            "test/split": "test",
            "test/count": 10000,
            "best_epoch": 2,
            "best_val/acc": val_acc,
            "final_val/acc": val_acc - 0.01,
            "epochs": epochs,
            "stopped_by": "epochs",
            "train_time_s": 3725.0,
            "total_time_s": 3800.5,
            "params": 1234567,
            "model": "simplecnn",
            "dataset": "cifar10",
            "classes": ["plane", ODD_CLASS, "empty"],
            "device": "cpu",
            "precision": "float32",
            "loader": "tensor",
            "train/class_counts": {"plane": 300, ODD_CLASS: 100, "empty": 0},
        }
        (folder / "results.json").write_text(json.dumps(results))
    return folder


def test_run_report(tmp_path):
    run = make_run(tmp_path / "14-03-22_ab12cd")
    pngs = {"curves": (255, 0, 0), "confusion_matrix": (0, 255, 0), "extra_plot": (0, 0, 255)}
    for name, color in pngs.items():
        write_png(run / "plots" / f"{name}.png", color)
    path = build_report(run)
    assert path == run / "report.html"
    page = path.read_text()
    parser = assert_self_contained(page)

    assert "14-03-22_ab12cd" in page and "simplecnn" in page and "cifar10" in page
    assert '<p class="big">93.12%</p>' in page
    assert '<th class="text">balanced accuracy</th><td>92.07%</td>' in page
    assert '<th class="text">best epoch</th><td>2</td>' in page
    assert '<th class="text">training time</th><td>1h 02m 05s</td>' in page
    assert '<th class="text">parameters</th><td>1,234,567</td>' in page
    header = (
        "epoch train/loss train/acc val/loss val/acc lr epoch_time_s elapsed_s train/images_per_s"
    )
    assert "<tr><th>" + "</th><th>".join(header.split()) + "</th></tr>" in page
    for row in [  # every epoch, every column, accuracies as percentages, the best one marked
        "<tr><td>1</td><td>1.9</td><td>51.00%</td><td>1.7</td><td>53.00%</td><td>0.05</td>",
        '<tr class="best"><td>2</td><td>0.95</td><td>71.00%</td><td>0.85</td><td>68.00%</td>',
        "<tr><td>3</td><td>0.6333</td><td>91.00%</td><td>0.5667</td><td>83.00%</td><td>0.01667",
    ]:
        assert row in page
    assert "<td>12.3</td><td>36.9</td><td>3,650</td></tr>" in page

    assert "&lt;cat&gt; &amp; dog" in page and ODD_CLASS not in page
    assert (
        '<td class="text">&lt;cat&gt; &amp; dog</td><td>100</td><td>25.00%</td><td>89.14%</td>'
        in page
    )
    assert "conv1   32×32×32 &lt;total&gt;" in page  # summary.txt, escaped
    assert "seed: 0" in page  # config.yaml

    # One inline image per PNG, the known plots first, each exactly the file's bytes.
    assert len(parser.images) == len(pngs)
    decoded = [base64.b64decode(src.split(",", 1)[1]) for src in parser.images]
    order = ["curves", "confusion_matrix", "extra_plot"]
    assert decoded == [(run / "plots" / f"{n}.png").read_bytes() for n in order]
    assert "did not finish" not in page


def test_interrupted_run_report_has_the_banner_and_regenerated_curves(tmp_path):
    run = make_run(tmp_path / "run", epochs=4, finished=False)
    page = build_report(run).read_text()
    parser = assert_self_contained(page)
    assert "this run did not finish (last completed epoch 4)" in page
    assert "simplecnn on cifar10" in page  # from .hydra/config.yaml: there is no results.json
    curves = run / "plots" / "curves.png"
    with Image.open(curves) as image:
        assert image.format == "PNG" and min(image.size) > 200
    assert len(parser.images) == 1
    assert base64.b64decode(parser.images[0].split(",", 1)[1]) == curves.read_bytes()
    assert "best validation accuracy so far: 98.00% (epoch 4)" in page
    assert "<td>4</td>" in page  # the epochs that exist are still tabled
    assert '<p class="big">' not in page


def test_run_report_skips_missing_pieces(tmp_path):
    run = make_run(tmp_path / "run")
    (run / "summary.txt").unlink()
    page = build_report(run).read_text()
    assert_self_contained(page)
    assert "layer summary" not in page
    assert (run / "plots" / "curves.png").is_file()  # no plots folder: curves drawn anyway
    assert page.count("data:image/png;base64,") == 1


def test_run_report_of_a_run_that_stopped_before_its_first_epoch(tmp_path):
    run = tmp_path / "run"
    (run / ".hydra").mkdir(parents=True)
    page = build_report(run).read_text()
    assert_self_contained(page)
    assert "this run did not finish (last completed epoch 0)" in page
    assert (run / "plots" / "curves.png").is_file()


def make_sweep(folder):
    """Five jobs sweeping lr and model: three finished, one still running, one failed."""
    jobs = [
        ("optimizer.lr=0.1 model=simplecnn trainer.epochs=3", 0.80),
        ("optimizer.lr=0.01 model=simplecnn trainer.epochs=3", 0.85),
        ("optimizer.lr=0.001 model=resnet trainer.epochs=3", 0.70),
        ("optimizer.lr=0.0001 model=resnet trainer.epochs=3", None),
        ("optimizer.lr=1.0 model=<odd> trainer.epochs=3", None),
    ]
    for job, (overrides, val_acc) in enumerate(jobs):
        make_run(folder / str(job), finished=val_acc is not None,
                       overrides=overrides.split(), val_acc=val_acc)  # fmt: skip
    (folder / "4" / "error.txt").write_text("diverged: loss is nan & <inf>\n")
    (folder / "summary.csv").write_text("rank,job\n")
    return folder


def jobs_in_table(page: str) -> list[str]:
    """The job column of the ranked table, top to bottom."""
    table = page.split("<h2>jobs, best first", 1)[1].split("</table>", 1)[0]
    return re.findall(r"<tr(?: class=\"\w+\")?><td>\d+</td><td>(\d+)</td>", table)


def test_sweep_report(tmp_path):
    sweep = make_sweep(tmp_path / "14-00-00_abcdef")
    path = build_report(sweep)
    assert path == sweep / "report.html"
    page = path.read_text()
    parser = assert_self_contained(page)

    assert jobs_in_table(page) == ["1", "0", "2", "3", "4"]
    assert jobs_in_table(page) == [r["job"] for r in sweep_rows(sweep)]
    assert "<td>85.00%</td><td>93.12%</td>" in page  # the best job's val and test accuracy
    assert "failed: diverged: loss is nan &amp; &lt;inf&gt;" in page
    assert "&lt;odd&gt;" in page and "<odd>" not in page  # model=<odd>, in its column, escaped

    plots = sorted(p.name for p in (sweep / "plots").iterdir())
    assert plots == ["sweep_model.png", "sweep_optimizer.lr.png"]  # trainer.epochs never varied
    assert len(parser.images) == 2
    for name in plots:
        with Image.open(sweep / "plots" / name) as image:
            assert image.format == "PNG"
            assert np.asarray(image.convert("L")).std() > 8
    for job in range(5):
        assert f"<li><code>{sweep / str(job)}</code>" in page
    assert "<a " not in page


def test_swept_keys_and_what_every_job_shares():
    settings = [{"a": "1", "b": "x"}, {"a": "2", "b": "x"}, {"a": "2", "b": "x", "c": "y"}]
    rows = [{"settings": s} for s in settings]
    assert swept_keys(rows) == ["a", "c"] and constant_settings(rows) == "b=x"
    assert swept_keys([{"settings": {"a": "1"}}]) == []


def test_sweep_report_of_one_job(tmp_path):
    sweep = tmp_path / "sweep"
    make_run(sweep / "0")
    page = write_sweep_report(sweep).read_text()
    assert_self_contained(page)
    assert jobs_in_table(page) == ["0"]
    assert "data:image/png" not in page  # nothing was swept: nothing to plot


def test_build_report_refuses_other_folders(tmp_path):
    (tmp_path / "notes.txt").write_text("hello")
    (tmp_path / "data").mkdir()
    with pytest.raises(UserError, match="is neither a run folder nor a sweep folder"):
        build_report(tmp_path)
    with pytest.raises(UserError, match="is neither a run folder nor a sweep folder"):
        build_report(tmp_path / "missing")
    with pytest.raises(UserError, match="is neither a run folder nor a sweep folder"):
        build_report(tmp_path / "notes.txt")
    assert not (tmp_path / "report.html").exists()
