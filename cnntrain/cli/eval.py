"""`cnntrain-eval RUN_DIR [overrides…]`: test a run's best weights on its test split or new data."""

import json

from cnntrain.cli.common import ArgumentParser, fail, log_to_console, preflight
from cnntrain.config.resolvers import register_resolvers
from cnntrain.core.errors import UserError
from cnntrain.trained.eval import EVAL_KEYS, check_eval_overrides, evaluate_run

DESCRIPTION = f"""Evaluate the best weights of a cnntrain run (its EMA weights when it kept an
EMA) on the run's own test split, or on other data given as overrides, e.g.
`data=imagefolder data.root=PATH` (an ImageFolder, test/<class>/<images> or <class>/<images>;
classes are matched to the model's by name). Normalization, image size and channels are the
run's. Overrides may set data=NAME, data.*, paths.* and {", ".join(EVAL_KEYS)}. Writes
RUN_DIR/eval/<YYYY-MM-DD_HH-MM-SS>/ (results.json, plots/, report.html) and prints that folder
as its last line."""


def main() -> None:
    """The `cnntrain-eval` console script."""
    parser = ArgumentParser(prog="cnntrain-eval", description=DESCRIPTION)
    parser.add_argument("run", metavar="RUN_DIR", help="a run folder, or a checkpoint .pt file")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="data overrides")
    args = parser.parse_args()
    register_resolvers()
    log_to_console()
    try:
        check_eval_overrides(args.overrides)
        fresh = preflight([*args.overrides, "paths.output_dir=unused"])
        folder = evaluate_run(args.run, fresh, args.overrides)
    except UserError as e:
        fail(str(e))
    print(accuracy_line(json.loads((folder / "results.json").read_bytes())), flush=True)
    print(folder, flush=True)


def accuracy_line(results: dict) -> str:
    """What the evaluation measured, in one line (the folder follows, as the last line)."""
    if results.get("task") == "multi":
        line = (
            f"test mAP {results['test/mAP']:.2%}, F1 micro {results['test/f1_micro']:.2%} macro "
            f"{results['test/f1_macro']:.2%}, exact match {results['test/acc']:.2%}"
        )
        return f"{line}, loss {results['test/loss']:.4f} on {results['test/count']:,} images"
    line = f"test accuracy {results['test/acc']:.2%}, balanced {results['test/balanced_acc']:.2%}"
    if "test/top5_acc" in results:
        line += f", top-5 {results['test/top5_acc']:.2%}"
    return f"{line}, loss {results['test/loss']:.4f} on {results['test/count']:,} images"


if __name__ == "__main__":
    main()
