"""`cnntrain-export RUN_DIR --format onnx|torchscript [--out FILE]`: ship a run's network."""

from pathlib import Path

from cnntrain.cli.common import ArgumentParser, fail, log_to_console, preflight
from cnntrain.config.resolvers import register_resolvers
from cnntrain.core.errors import UserError
from cnntrain.trained.export import FILE_NAMES, TOLERANCE, export_run

DESCRIPTION = f"""Export the best weights of a cnntrain run (its EMA weights when it kept an
EMA) as ONNX or TorchScript. The exported network takes float32 pixels in [0, 1], shape
(N, C, H, W) with any N, and returns logits (N, classes): the run's normalization is inside.
Class names, mean/std, input size and the temperature fitted on the validation split travel as
metadata (ONNX metadata_props, TorchScript extra files); --calibrated divides the logits by that
temperature inside the graph (metadata `calibrated`: true). The file is checked before it is
kept: ONNX Runtime / torch.jit.load must give PyTorch's logits (divided by the temperature with
--calibrated) within {TOLERANCE:g} on images of the run's test split."""


def main() -> None:
    """The `cnntrain-export` console script."""
    parser = ArgumentParser(prog="cnntrain-export", description=DESCRIPTION)
    parser.add_argument("run", metavar="RUN_DIR", help="a run folder, or a checkpoint .pt file")
    parser.add_argument("--format", required=True, choices=list(FILE_NAMES))
    parser.add_argument("--out", type=Path, metavar="FILE", help="default: RUN_DIR/export/"
                        + " or ".join(FILE_NAMES.values()))  # fmt: skip
    parser.add_argument("--calibrated", action="store_true",
                        help="output logits divided by the run's temperature (softmax: "
                        "calibrated); default: raw logits, with T in the metadata")  # fmt: skip
    args = parser.parse_args()
    register_resolvers()
    log_to_console()
    try:
        fresh = preflight(["paths.output_dir=unused"])  # this machine's paths, to find test data
        exported = export_run(args.run, args.format, args.out, fresh, args.calibrated)
    except UserError as e:
        fail(str(e))
    print(
        f"checked on {exported.checked_on}: the logits differ from PyTorch's by at most "
        f"{exported.max_difference:.2g} (tolerance {TOLERANCE:g})",
        flush=True,
    )
    print(exported.path, flush=True)


if __name__ == "__main__":
    main()
