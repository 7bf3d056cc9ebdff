"""`cnntrain-predict RUN_DIR PATH… [--out FILE] … [--explain DIR]`: label images with a run."""

import sys
from collections import Counter
from pathlib import Path

from rich.table import Table

from cnntrain.cli.common import ArgumentParser, fail, log_to_console, warn
from cnntrain.core.device import select_device
from cnntrain.core.errors import UserError
from cnntrain.core.files import refuse_link
from cnntrain.core.safe_text import first_few
from cnntrain.data.listing import LABEL_JOIN
from cnntrain.reporting.cam_methods import CAM_METHODS
from cnntrain.reporting.console import console
from cnntrain.trained.load import load_trained
from cnntrain.trained.predict import TOP_K, UNKNOWN, Predictions, find_images, predict, write_csv

ROWS_SHOWN = 10  # rows of the printed table; the CSV has them all

DESCRIPTION = """Label images with the best weights of a cnntrain run (its EMA weights when it
kept an EMA): image files, folders (recursively) and .zip/.tar.gz/.tgz/.tar archives (read
without unpacking). Each image is converted to the run's channels and size as in training and
normalized with the run's statistics. Probabilities are calibrated: softmax(logits / T), T the
temperature the run fitted on its validation split (1 when none). Writes a CSV with columns path,
prediction, probability, top2, top2_probability, … topK, topK_probability (and best_guess with
--abstain); unreadable files are skipped and counted. A run with several labels per image writes
path, labels (those at or above their threshold, tuned on the run's validation split, joined by
|) and p_<label>, each label's sigmoid probability (--top-k and --abstain do not apply)."""


def main() -> None:
    """The `cnntrain-predict` console script."""
    parser = ArgumentParser(prog="cnntrain-predict", description=DESCRIPTION)
    parser.add_argument("run", metavar="RUN_DIR", help="a run folder, or a checkpoint .pt file")
    parser.add_argument("paths", nargs="+", metavar="PATH", help="images, folders or archives")
    parser.add_argument("--out", type=Path, default=Path("predictions.csv"), metavar="FILE",
                        help="the CSV to write (default: predictions.csv here)")  # fmt: skip
    parser.add_argument("--top-k", type=int, default=TOP_K, metavar="K",
                        help=f"classes per image, most probable first (default: {TOP_K}, "
                        "or the model's class count if smaller)")  # fmt: skip
    parser.add_argument("--tta", action="store_true",
                        help="average each image's logits with its mirror image's")  # fmt: skip
    parser.add_argument("--abstain", type=float, metavar="P",
                        help=f"answer {UNKNOWN!r} when the top probability is below P (0 < P < 1); "
                        "the most probable class goes in a last column, best_guess")  # fmt: skip
    parser.add_argument("--explain", type=Path, metavar="DIR",
                        help="also write into DIR one PNG per image, beside it the map "
                        "of its predicted class's evidence (pip extra: explain)")  # fmt: skip
    parser.add_argument("--layer", metavar="NAME",
                        help="with --explain: the module to explain, a name from the run's "
                        "summary.txt (default: the last convolution with a map ≥ 2×2)")  # fmt: skip
    parser.add_argument("--method", choices=list(CAM_METHODS), default="gradcam",
                        help="with --explain: how the map is made (default: gradcam)")  # fmt: skip
    parser.add_argument("--overwrite", action="store_true",
                        help="replace --out when it exists (else that is refused)")  # fmt: skip
    args = parser.parse_args()
    if args.top_k < 1:
        fail(f"--top-k {args.top_k}: give a number of classes ≥ 1")
    if args.abstain is not None and not 0 < args.abstain < 1:
        fail(f"--abstain {args.abstain:g}: give a probability between 0 and 1, e.g. --abstain 0.8")
    if args.layer is not None and args.explain is None:
        fail("--layer chooses what --explain DIR explains: give --explain DIR too")
    log_to_console()
    try:
        refuse_link(args.out)  # now, not after the work (writing it refuses it too)
        if args.out.exists() and not args.overwrite:
            raise UserError(f"--out {args.out} exists; give another --out FILE, or --overwrite "
                            "to replace it")  # fmt: skip
        trained = load_trained(args.run)
        if trained.multi_label and args.abstain is not None:
            raise UserError(
                "--abstain answers unknown below a top class's probability; a run with several "
                "labels per image predicts each label at its threshold: leave --abstain out"
            )
        refs = find_images(args.paths)
        device = select_device("auto")
        explainer = None
        if args.explain:  # imported only then: the maps' figures need matplotlib and grad-cam
            from cnntrain.trained.explain import Explainer, explained_layer

            layer = explained_layer(trained, args.explain, args.layer)
            if layer is not None:
                explainer = Explainer(trained, args.explain, layer, args.method, device)
        predictions = predict(
            trained,
            refs,
            batch_size=trained.config["data"]["eval_batch_size"],
            top_k=args.top_k,
            tta=args.tta,
            device=device,
            show_bars=sys.stderr.isatty(),
            abstain=args.abstain,
            each_batch=explainer,  # the maps of the very images and classes of the CSV's rows
        )
        write_csv(predictions, args.out)
    except UserError as e:
        fail(str(e))
    if predictions.skipped:
        skipped = predictions.skipped
        warn(f"skipped {len(skipped)} unreadable file(s): {first_few(skipped)}")
    console.print(layers_table(predictions))
    if predictions.answered is not None:
        total = len(predictions.rows)
        print(f"answered {predictions.answered:,} of {total:,} images "
              f"({predictions.answered / total:.1%}); the rest are {UNKNOWN} below "
              f"{args.abstain:g}", flush=True)  # fmt: skip
    if explainer is not None:
        print(f"class-activation maps: {explainer.written:,} PNGs in {args.explain}", flush=True)
    print(f"predictions: {args.out}", flush=True)


def layers_table(predictions: Predictions) -> Table:
    """The first ROWS_SHOWN predictions, and how many images each class (or label) got."""
    rows = predictions.rows
    several = predictions.header[1] == "labels"  # a label set per image, then each label's p
    counts = Counter(c for row in rows for c in (row[1].split(LABEL_JOIN) if several else [row[1]])
                     if c)  # fmt: skip
    caption = f"{len(rows):,} images: " + ", ".join(f"{c} {n:,}" for c, n in counts.most_common())
    if len(rows) > ROWS_SHOWN:
        caption = f"first {ROWS_SHOWN} of {caption}"
    if several:
        table = Table("path", "labels", caption=caption)
        for path, labels, *_ in rows[:ROWS_SHOWN]:
            table.add_row(path, labels or "(none)")
        return table
    table = Table("path", "prediction", "probability", caption=caption)
    for path, prediction, probability, *_ in rows[:ROWS_SHOWN]:
        table.add_row(path, prediction, f"{float(probability):.1%}")
    return table


if __name__ == "__main__":
    main()
