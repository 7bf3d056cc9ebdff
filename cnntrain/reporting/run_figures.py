"""A finished run's figures in two groups drawn side by side (core.side_by_side): the trust
figures (reliability, class-activation maps: grad-cam's import and a backward pass) in a forked
child, the run's own figures (curves, classes, feature maps, filters, test figures) here."""

from pathlib import Path

import torch
from torch import nn

from cnntrain.core.side_by_side import run_side_by_side
from cnntrain.reporting.calibration_plots import write_calibration_plots
from cnntrain.reporting.cam import SplitImages, write_cam_plots
from cnntrain.reporting.multilabel_plots import write_multilabel_plots
from cnntrain.reporting.plots import write_model_plots, write_run_plots


def write_figures(plots: Path, rows: list[dict], counts: dict[str, int], test: SplitImages,
                  net: nn.Module, temperature: float | None, cam: str,
                  cam_layer: str | None) -> None:  # fmt: skip
    """Every figure of a run with one label per image into `plots` (run_dir/plots). rows: the
    epochs' metrics rows; counts: training images per class; test: the test split's images and
    outputs; temperature: the fitted one (None: none); cam, cam_layer: trainer.cam, .cam_layer."""

    def trust() -> None:
        write_calibration_plots(plots, test.logits, test.targets, temperature)
        write_cam_plots(plots, net, test, cam, cam_layer)

    run_side_by_side(trust, lambda: write_run_plots(
        plots.parent, rows, test.classes, test.logits, test.targets, test.images_at, test.prep,
        net, counts, test.names))  # fmt: skip


def write_multilabel_figures(plots: Path, rows: list[dict], counts: dict[str, int],
                             test: SplitImages, net: nn.Module, thresholds: torch.Tensor,
                             cam: str, cam_layer: str | None) -> None:  # fmt: skip
    """Every figure of a run with several labels per image into `plots`: as write_figures, with
    the labels' (L,) decision thresholds instead of a temperature."""

    def own() -> None:
        write_model_plots(plots, rows, counts, test.images_at, test.prep, net)
        write_multilabel_plots(plots, test.logits, test.targets, thresholds, test.classes,
                               test.images_at, test.names)  # fmt: skip

    run_side_by_side(lambda: write_cam_plots(plots, net, test, cam, cam_layer), own)
