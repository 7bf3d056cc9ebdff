"""report.html of a run or a sweep folder: one self-contained page, plots inline as data URIs."""

import base64
import html
import json
import re
from pathlib import Path

import yaml

from cnntrain.core.errors import UserError
from cnntrain.core.files import write_text
from cnntrain.reporting.calibration_plots import CALIBRATION_PLOTS
from cnntrain.reporting.cam import CAM_PLOTS, LABEL_CAM_PLOTS
from cnntrain.reporting.formats import duration, is_number
from cnntrain.reporting.metrics_log import read_rows
from cnntrain.reporting.multilabel_plots import MULTILABEL_PLOTS
from cnntrain.reporting.plots import PLOT_NAMES, plot_curves, plot_sweep_param
from cnntrain.reporting.sweep_table import FINISHED, constant_settings, sweep_rows, swept_keys

CAPTIONS = {
    "curves": "Loss, accuracy and learning rate per epoch.",
    "confusion_matrix": "Confusion matrix on the test split: rows are true classes, "
    "columns predicted ones.",
    "per_class_accuracy": "Test accuracy of each class; the dashed line is their mean "
    "(balanced accuracy).",
    "class_distribution": "Training images per class.",
    "feature_maps": "Activation maps of an early, a middle and a late convolution for one "
    "test image.",
    "filters": "The first convolution's filters.",
    "misclassified": "The test images the model got most confidently wrong, each with its file "
    "(or its index in the test split); test_predictions.csv lists every test image, worst "
    "(largest loss) first.",
    "reliability": "Reliability diagram of the test split: each confidence bin's accuracy against "
    "the diagonal a calibrated model follows, as trained and after temperature scaling (the "
    "temperature fitted on the validation split), with the expected calibration error (ECE).",
    "coverage": "Accuracy against coverage: answering only the most confident test images "
    "(cnntrain-predict --abstain P), the share answered and their accuracy; dots mark "
    "confidence thresholds.",
    "cam_mistakes": "Class-activation maps of the most confident mistakes: where in each image "
    "lies the evidence for the predicted class (red: most), by trainer.cam at trainer.cam_layer.",
    "cam_correct": "Class-activation maps of the most confident right answers, two per class: "
    "where the evidence for the class lies.",
    "cam_labels": "Class-activation maps of each label (up to 10) on the two test images that "
    "have it and that the network gives it the highest probability: where its evidence lies.",
    "per_label_ap": "Test average precision (AP) of each label, best first, with its positive "
    "images; the dashed line is their mean (mAP) over the labels with positives.",
    "pr_curves": "Precision against recall on the test split of the three most frequent labels "
    "and the three worst by AP; each dot is where the label's threshold puts it.",
    "label_cooccurrence": "How many test images carry both labels (true labels); the diagonal "
    "is each label's number of images.",
    "largest_errors": "The test images with the largest loss (binary cross-entropy over their "
    "labels): their true labels, the labels predicted at the thresholds, and their file (or "
    "index in the test split).",
}
MULTILABEL_CAPTIONS = {
    **CAPTIONS,
    "curves": "Loss, exact-match accuracy, mAP and learning rate per epoch.",
}
# curves first, then a multi-label run's own figures, then the rest (none of a run is in both)
FIGURE_ORDER = (
    PLOT_NAMES[0],
    *MULTILABEL_PLOTS,
    *PLOT_NAMES[1:],
    *CALIBRATION_PLOTS,
    *CAM_PLOTS,
    *LABEL_CAM_PLOTS,
)
PERCENT_KEYS = ("acc", "mAP", "f1_micro", "f1_macro")  # metrics.jsonl keys shown as percentages

STYLE = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 2em auto;
       max-width: 1200px; padding: 0 1em; color: #222; }
h1 { margin-bottom: 0.2em; } h2 { border-bottom: 1px solid #ccc; margin-top: 2em; }
.subtitle { color: #555; margin-top: 0; }
.big { font-size: 3em; font-weight: bold; margin: 0.2em 0 0; }
.banner { background: #fff3cd; border: 1px solid #e0b400; padding: 0.8em 1em; font-weight: bold; }
table { border-collapse: collapse; margin: 0.5em 0; font-size: 0.9em; }
th, td { border: 1px solid #ddd; padding: 0.25em 0.6em; text-align: right; }
th { background: #f3f3f3; } td.text, th.text { text-align: left; }
tr.best { background: #e6f4ea; } tr.failed { background: #fde8e8; }
pre { background: #f7f7f7; border: 1px solid #ddd; padding: 0.8em; overflow-x: auto;
      font-size: 0.85em; }
figure { margin: 1.5em 0; } figure img { max-width: 100%; border: 1px solid #eee; }
figcaption { color: #555; font-size: 0.9em; }
"""


# ---- HTML pieces ----


def esc(value) -> str:
    return html.escape(str(value), quote=True)


def png_data_uri(path: Path) -> str:
    """The PNG's bytes inline, so the page needs no file beside it."""
    return "data:image/png;base64," + base64.b64encode(Path(path).read_bytes()).decode("ascii")


def figure(path: Path, caption: str) -> str:
    return (
        f'<figure><img src="{png_data_uri(path)}" alt="{esc(path.name)}">'
        f"<figcaption>{esc(caption)}</figcaption></figure>\n"
    )


def table(header: list[str], rows: list[list], text_columns=(), row_classes=None) -> str:
    """An HTML table of escaped cells; `text_columns` (indices) align left, numbers right."""

    def cell(tag: str, i: int, value) -> str:
        align = ' class="text"' if i in text_columns else ""
        return f"<{tag}{align}>{esc(value)}</{tag}>"

    head = "".join(cell("th", i, h) for i, h in enumerate(header))
    body = []
    for n, row in enumerate(rows):
        css = f' class="{row_classes[n]}"' if row_classes and row_classes[n] else ""
        body.append(f"<tr{css}>" + "".join(cell("td", i, v) for i, v in enumerate(row)) + "</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>\n"


def key_value_table(pairs: list[tuple[str, str]]) -> str:
    rows = "".join(f'<tr><th class="text">{esc(k)}</th><td>{esc(v)}</td></tr>' for k, v in pairs)
    return f"<table><tbody>{rows}</tbody></table>\n"


def section(title: str, body: str) -> str:
    return f"<section><h2>{esc(title)}</h2>\n{body}</section>\n"


def preformatted(title: str, path: Path) -> str:
    """A text file verbatim in a <pre>, or nothing when the file is missing."""
    text = path.read_text(encoding="utf-8", errors="replace") if path.is_file() else None
    return section(title, f"<pre>{esc(text)}</pre>\n") if text is not None else ""


def page(title: str, body: str) -> str:
    return (
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        f"<title>{esc(title)}</title>\n<style>{STYLE}</style>\n</head>\n"
        f"<body>\n{body}</body>\n</html>\n"
    )


# ---- number formats ----


def percent(fraction) -> str:
    return f"{100 * fraction:.2f}%" if is_number(fraction) else "—"


def metric(key: str, value) -> str:
    """One metrics.jsonl value for a table: accuracies, mAP and F1 as percentages, other numbers
    compact."""
    if key.endswith(PERCENT_KEYS):
        return percent(value)
    if isinstance(value, float):
        return f"{value:,.0f}" if abs(value) >= 1000 else f"{value:.4g}"
    return "—" if value is None else str(value)


# ---- run report ----


def read_json(path: Path) -> dict | None:
    """The JSON object in the file at `path`; None when it is missing or holds no JSON object (a
    received folder's file may hold anything: the report goes on without it)."""
    try:
        data = json.loads(path.read_bytes()) if path.is_file() else None
    except (ValueError, UnicodeDecodeError):
        return None
    return data if isinstance(data, dict) else None


def read_yaml(path: Path):
    """The YAML file at `path` as plain data; None when it is missing or not plain YAML (a tag
    such as `!!python/object` is refused by safe_load: the file is shown as text only)."""
    try:
        return yaml.safe_load(path.read_text()) if path.is_file() else None
    except (yaml.YAMLError, UnicodeDecodeError):
        return None


def write_run_report(run_dir: Path) -> Path:
    """run_dir/report.html: results, curves and plots, per-epoch and per-class (a multi-label
    run's per-label) tables, config."""
    run_dir = Path(run_dir)
    metrics_file = run_dir / "metrics.jsonl"
    rows = read_rows(metrics_file) if metrics_file.is_file() else []
    results = read_json(run_dir / "results.json")
    curves = run_dir / "plots" / "curves.png"
    if results is None or not curves.is_file():  # an unfinished run has no plots of its own
        plot_curves(rows, curves)
    config = read_yaml(run_dir / ".hydra" / "config.yaml")
    overrides = read_yaml(run_dir / ".hydra" / "overrides.yaml") or []
    model = (results or {}).get("model") or group_name(config, "model")
    dataset = (results or {}).get("dataset") or group_name(config, "data")
    body = [
        f"<h1>{esc(run_dir.name)}</h1>\n",
        f'<p class="subtitle">{esc(model)} on {esc(dataset)} — {esc(run_dir)}</p>\n',
        f"<p>overrides: <code>{esc(' '.join(map(str, overrides)) or 'none')}</code></p>\n",
        results_section(results) if results else unfinished_banner(rows),
        plots_section(run_dir / "plots", is_multilabel(results or {})),
        section("per epoch", epochs_table(rows, (results or {}).get("best_epoch"))) if rows else "",
        labels_or_classes_section(results) if results else "",
        preformatted("layer summary", run_dir / "summary.txt"),
        preformatted("config", run_dir / ".hydra" / "config.yaml"),
    ]
    path = run_dir / "report.html"
    write_text(path, page(f"{run_dir.name}: {model} on {dataset}", "".join(body)))
    return path


def group_name(config, group: str) -> str:
    """`model.name` or `data.name` of a config.yaml (what a run without results.json trained)."""
    value = config.get(group) if isinstance(config, dict) else None
    return str(value.get("name", "?")) if isinstance(value, dict) else "?"


def unfinished_banner(rows: list[dict]) -> str:
    last = rows[-1].get("epoch", len(rows)) if rows else 0
    banner = f'<p class="banner">this run did not finish (last completed epoch {esc(last)})</p>\n'
    key, name = ("val/mAP", "mAP") if any("val/mAP" in r for r in rows) else ("val/acc", "accuracy")
    scored = [r for r in rows if is_number(r.get(key))]
    if not scored:
        return banner
    best = max(scored, key=lambda r: r[key])
    return banner + (
        f"<p>best validation {name} so far: {percent(best[key])} "
        f"(epoch {esc(best.get('epoch', '?'))})</p>\n"
    )


def is_multilabel(r: dict) -> bool:
    """Whether results.json is a multi-label run's (or evaluation's): several labels per image."""
    return r.get("task") == "multi"


def test_headline(r: dict) -> str:
    """results.json's test accuracy (a multi-label run's mAP) as a big number, with the split and
    its image count."""
    count = r.get("test/count")
    split = f"{r.get('test/split', 'test')} split, {count:,} images" if is_number(count) else "test"
    if is_multilabel(r):
        value, name = r.get("test/mAP"), "test mAP, mean average precision over the labels"
    else:
        value, name = r.get("test/acc"), "test accuracy"
    return f'<p class="big">{percent(value)}</p>\n<p>{name} ({esc(split)})</p>\n'


def test_pairs(r: dict) -> list[tuple[str, str]]:
    """The test metrics besides the headline one, as (label, value) rows."""
    if is_multilabel(r):
        return multilabel_pairs(r)
    pairs = [("balanced accuracy", percent(r.get("test/balanced_acc")))]
    if "test/top5_acc" in r:
        pairs.append(("top-5 accuracy", percent(r["test/top5_acc"])))
    return [*pairs, ("test loss", metric("test/loss", r.get("test/loss"))), *calibration_pairs(r)]


def multilabel_pairs(r: dict) -> list[tuple[str, str]]:
    """A multi-label test's F1, exact-match accuracy, Hamming loss, loss and its thresholds."""
    return [
        ("micro F1", percent(r.get("test/f1_micro"))),
        ("macro F1", percent(r.get("test/f1_macro"))),
        ("exact-match accuracy", percent(r.get("test/acc"))),
        ("Hamming loss", metric("test/hamming_loss", r.get("test/hamming_loss"))),
        ("test loss (binary cross-entropy)", metric("test/loss", r.get("test/loss"))),
        ("thresholds", thresholds_rule(r)),
    ]


def thresholds_rule(r: dict) -> str:
    """How the per-label thresholds were chosen (their values: the labels table)."""
    rule, where = r.get("thresholds_rule"), r.get("thresholds_fitted_on")
    if is_number(rule):
        return f"{rule:g} for every label"
    if rule != "f1":
        return f"rule {rule}"
    if where:
        return f"per label, maximizing F1 on the {where} split"
    return "not tuned: no validation split to maximize F1 on"


def calibration_pairs(r: dict) -> list[tuple[str, str]]:
    """ECE and NLL as trained → after temperature scaling, and the temperature; none for
    results written before cnntrain measured calibration."""
    if "test/ece" not in r:
        return []
    t = r.get("temperature")
    where = r.get("temperature_fitted_on") or "?"
    fitted = f"{t:.4g} (fitted on the {where} split)" if is_number(t) else "none fitted"
    return [
        ("expected calibration error (ECE)", before_after(r, "test/ece")),
        ("negative log-likelihood (NLL)", before_after(r, "test/nll")),
        ("temperature", fitted),
    ]


def before_after(r: dict, key: str) -> str:
    """`0.1234 → 0.0456 after temperature scaling`: a calibration metric and its calibrated one."""
    after = r.get(f"{key}_calibrated")
    return f"{metric(key, r.get(key))} → {metric(key, after)} after temperature scaling"


def results_section(r: dict) -> str:
    """The test accuracy as a big number, then every other result worth a glance."""
    key, name = ("mAP", "mAP") if is_multilabel(r) else ("acc", "accuracy")
    pairs = [
        *test_pairs(r),
        ("best epoch", r.get("best_epoch", "—")),
        (f"best validation {name}", percent(r.get(f"best_val/{key}"))),
        (f"final validation {name}", percent(r.get(f"final_val/{key}"))),
        ("epochs", r.get("epochs", "—")),
        ("stopped by", r.get("stopped_by", "—")),
        ("training time", duration(r.get("train_time_s"))),
        ("total time", duration(r.get("total_time_s"))),
        ("parameters", f"{r['params']:,}" if is_number(r.get("params")) else "—"),
        ("device", r.get("device", "—")),
        ("precision", r.get("precision", "—")),
        ("loader", r.get("loader", "—")),
    ]
    return section("results", test_headline(r) + key_value_table(pairs))


def plots_section(plots_dir: Path, multilabel: bool = False) -> str:
    """Every PNG of the plots folder, the known ones in FIGURE_ORDER, then the rest by name."""
    if not plots_dir.is_dir():
        return ""
    order = {name: i for i, name in enumerate(FIGURE_ORDER)}
    captions = MULTILABEL_CAPTIONS if multilabel else CAPTIONS
    pngs = sorted(plots_dir.glob("*.png"), key=lambda p: (order.get(p.stem, len(order)), p.name))
    figures = "".join(figure(p, captions.get(p.stem, p.stem.replace("_", " "))) for p in pngs)
    return section("plots", figures) if pngs else ""


def epochs_table(rows: list[dict], best_epoch) -> str:
    """Every column of metrics.jsonl (union, first-seen order); the best epoch highlighted."""
    columns = list(dict.fromkeys(k for r in rows for k in r))
    cells = [[metric(k, r.get(k)) for k in columns] for r in rows]
    marks = ["best" if r.get("epoch") == best_epoch else "" for r in rows]
    return table(columns, cells, row_classes=marks)


def labels_or_classes_section(r: dict) -> str:
    """The per-label table of a multi-label run, else the per-class one."""
    return labels_section(r) if is_multilabel(r) else classes_section(r)


def classes_section(r: dict) -> str:
    """Per class: training images, their share, and test accuracy."""
    counts = r.get("train/class_counts") or {}
    accuracy = r.get("test/per_class_acc") or {}
    classes = r.get("classes") or list(dict.fromkeys([*counts, *accuracy]))
    total = sum(counts.values())
    rows = [
        [
            c,
            f"{counts[c]:,}" if c in counts else "—",
            percent(counts[c] / total) if c in counts and total else "—",
            percent(accuracy.get(c)),
        ]
        for c in classes
    ]
    header = ["class", "training images", "share of training", "test accuracy"]
    return section("classes", table(header, rows, text_columns={0}))


def labels_section(r: dict) -> str:
    """Per label of a multi-label test: AP, F1, positive images and the label's threshold."""
    ap, f1 = r.get("test/per_label_ap") or {}, r.get("test/per_label_f1") or {}
    support, thresholds = r.get("test/per_label_support") or {}, r.get("thresholds") or {}
    labels = r.get("classes") or list(dict.fromkeys([*ap, *support]))
    rows = [
        [
            label,
            "no positives" if label in ap and ap[label] is None else percent(ap.get(label)),
            percent(f1.get(label)),
            f"{support[label]:,}" if is_number(support.get(label)) else "—",
            f"{thresholds[label]:.3f}" if is_number(thresholds.get(label)) else "—",
        ]
        for label in labels
    ]
    header = ["label", "test AP", "test F1", "test positives", "threshold"]
    return section("labels", table(header, rows, text_columns={0}))


# ---- evaluation report (cnntrain-eval) ----


def write_eval_report(eval_dir: Path) -> Path:
    """eval_dir/report.html of a cnntrain-eval folder (RUN_DIR/eval/<time>/): the results, the
    confusion matrix and per-class plots (a multi-label one's plots), and a per-class (per-label)
    table."""
    eval_dir = Path(eval_dir)
    r = read_json(eval_dir / "results.json") or {}
    run = eval_dir.parent.parent.name
    pairs = [
        *test_pairs(r),
        ("data", r.get("data", "—")),
        ("checkpoint", r.get("checkpoint", "—")),
        (
            "test-time views",
            {True: "flip", "flip_translate": "flip × 1 px shifts"}.get(r.get("tta"), "off"),
        ),
        ("device", r.get("device", "—")),
        ("precision", r.get("precision", "—")),
        ("evaluation time", duration(r.get("eval_time_s"))),
    ]
    multilabel = is_multilabel(r)
    body = [
        f"<h1>evaluation of {esc(run)}</h1>\n",
        f'<p class="subtitle">{esc(r.get("model", "?"))} on {esc(r.get("dataset", "?"))} — '
        f"{esc(eval_dir)}</p>\n",
        section("results", test_headline(r) + key_value_table(pairs)),
        plots_section(eval_dir / "plots", multilabel),
        labels_section(r) if multilabel else eval_classes_section(r),
    ]
    path = eval_dir / "report.html"
    write_text(path, page(f"evaluation of {run}", "".join(body)))
    return path


def eval_classes_section(r: dict) -> str:
    """Per class of an evaluation: test images and test accuracy."""
    counts, accuracy = r.get("test/class_counts") or {}, r.get("test/per_class_acc") or {}
    rows = [[c, f"{counts.get(c, 0):,}", percent(accuracy.get(c))] for c in r.get("classes", [])]
    return section("classes", table(["class", "test images", "test accuracy"], rows, {0}))


# ---- sweep report ----


def plot_file_name(key: str) -> str:
    return "sweep_" + re.sub(r"[^\w.=-]+", "_", key) + ".png"


def write_sweep_report(sweep_dir: Path) -> Path:
    """sweep_dir/report.html: the ranked jobs, accuracy against each swept key, job folders."""
    sweep_dir = Path(sweep_dir)
    rows = sweep_rows(sweep_dir)  # best first
    settings = [r["settings"] for r in rows]
    val_acc = [r.get("val/acc") if is_number(r.get("val/acc")) else None for r in rows]
    test_acc = [r.get("test/acc") if is_number(r.get("test/acc")) else None for r in rows]
    figures = []
    for key in swept_keys(rows):
        path = sweep_dir / "plots" / plot_file_name(key)
        values = [s.get(key, "(unset)") for s in settings]
        plot_sweep_param(key, values, val_acc, test_acc, path)
        figures.append(figure(path, f"Validation and test accuracy against {key}."))
    completed = sum(r["status"] == "completed" for r in rows)
    pruned = sum(r["status"] == "pruned" for r in rows)
    counts = f"{len(rows)} jobs, {completed} completed" + (f", {pruned} pruned" if pruned else "")
    body = [
        f"<h1>sweep {esc(sweep_dir.name)}</h1>\n",
        f'<p class="subtitle">{esc(sweep_dir)} — {counts}</p>\n',
        section("jobs, best first (by validation accuracy)", jobs_table(rows)),
        f"<p>every job: <code>{esc(constant_settings(rows) or 'nothing in common')}</code></p>\n",
        search_section(sweep_dir),
        section("swept settings", "".join(figures)) if figures else "",
        section("job folders", job_folders(sweep_dir, rows)),
    ]
    path = sweep_dir / "report.html"
    write_text(path, page(f"sweep {sweep_dir.name}", "".join(body)))
    return path


STUDY_FIGURES = {  # plots/<name>.png an Optuna sweep draws (hydra_plugins/cnntrain_optuna_sweeper)
    "optuna_history": "Each trial's objective in the order the trials ran, and the best so far.",
    "optuna_importances": "How much each searched parameter mattered to the objective "
    "(PED-ANOVA over the completed trials).",
    "optuna_parallel_coordinate": "Every completed trial as a line through its parameter "
    "values, coloured by its objective.",
}


def search_section(sweep_dir: Path) -> str:
    """An Optuna sweep's best.yaml (best parameters and value, trials by outcome) and the
    study's own figures; nothing for other sweeps."""
    best = read_yaml(sweep_dir / "best.yaml")
    if not isinstance(best, dict):
        return ""
    value = best.get("best_value")
    pairs = [
        ("objective", f"{best.get('direction', '?')} {best.get('optimized_metric', '?')}"),
        ("best value", f"{value:.4f}" if is_number(value) else "—"),
        ("best trial", f"{best.get('best_trial', '—')} (job {best.get('best_job', '—')})"),
        *((f"best {key}", param) for key, param in (best.get("best_params") or {}).items()),
        *((f"trials {state}", n) for state, n in (best.get("trials") or {}).items()),
        ("study", best.get("study_name", "—")),
        ("storage", best.get("storage", "—")),
    ]
    plots = sweep_dir / "plots"
    figures = "".join(
        figure(plots / f"{name}.png", caption)
        for name, caption in STUDY_FIGURES.items()
        if (plots / f"{name}.png").is_file()
    )
    return section("search (Optuna): best.yaml", key_value_table(pairs) + figures)


def jobs_table(rows: list[dict]) -> str:
    """The ranked jobs: a column per swept key (what every job shares is said once, below)."""
    keys = swept_keys(rows)
    header = ["rank", "job", *keys, "val acc", "test acc", "best epoch", "time", "status"]
    cells = [
        [
            r["rank"],
            r["job"],
            *(r["settings"].get(k, "—") for k in keys),
            percent(r.get("val/acc")),
            percent(r.get("test/acc")),
            r.get("best_epoch") if r.get("best_epoch") is not None else "—",
            duration(r.get("train_time_s")),
            r["status"],
        ]
        for r in rows
    ]
    marks = ["" if r["status"] in FINISHED else "failed" for r in rows]
    text = {*range(2, 2 + len(keys)), len(header) - 1}
    return table(header, cells, text_columns=text, row_classes=marks)


def job_folders(sweep_dir: Path, rows: list[dict]) -> str:
    """The job folders as plain paths (no links: the page may be opened far from them)."""
    by_job = sorted(rows, key=lambda r: int(r["job"]))
    items = "".join(
        f"<li><code>{esc(sweep_dir / r['job'])}</code> — {esc(r['status'])}</li>" for r in by_job
    )
    return f"<ul>{items}</ul>\n"


# ---- either ----


def is_run_folder(path: Path) -> bool:
    return (path / "metrics.jsonl").is_file() or (path / ".hydra").is_dir()


def is_sweep_folder(path: Path) -> bool:
    return any(p.is_dir() and p.name.isdigit() for p in path.iterdir())


def build_report(path: Path) -> Path:
    """report.html for a run folder or a sweep folder, whichever `path` is; the page's path."""
    path = Path(path)
    if path.is_dir() and is_run_folder(path):
        return write_run_report(path)
    if path.is_dir() and is_sweep_folder(path):
        return write_sweep_report(path)
    raise UserError(
        f"{path} is neither a run folder nor a sweep folder (no metrics.jsonl or .hydra/, no "
        "numbered job folders); give outputs/<date>/<time>_<id> or "
        "outputs/multirun/<date>/<time>_<id>"
    )
