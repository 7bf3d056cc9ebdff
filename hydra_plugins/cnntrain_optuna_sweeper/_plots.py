"""Optuna's figures of a finished study, in the sweep folder's plots/."""

import logging
import warnings
from pathlib import Path

import optuna

from cnntrain.core.files import atomic_write
from cnntrain.reporting.plots import DPI

log = logging.getLogger("cnntrain")


def write_study_plots(study: optuna.Study, plots_dir: Path, metric: str) -> None:
    """Optuna's own figures (matplotlib): optimization history, parameter importances, parallel
    coordinates, as plots/optuna_*.png; one a study cannot draw yet is skipped."""
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt
    from optuna.importance import PedAnovaImportanceEvaluator
    from optuna.visualization import matplotlib as figures

    drawings = {
        "optuna_history": lambda: figures.plot_optimization_history(study, target_name=metric),
        "optuna_importances": lambda: figures.plot_param_importances(
            study, evaluator=PedAnovaImportanceEvaluator(), target_name=metric
        ),
        "optuna_parallel_coordinate": lambda: figures.plot_parallel_coordinate(
            study, target_name=metric
        ),
    }
    for name, draw in drawings.items():
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # Optuna's "experimental", matplotlib's limits
                if name == "optuna_importances":  # too few trials: "all equal" would mislead
                    warnings.filterwarnings("error", ".*importances will be equal")
                axes = draw()
        except (ValueError, RuntimeError, UserWarning) as e:
            log.info("no %s figure: %s", name, e)
            continue
        save_tight(axes.figure, plots_dir / f"{name}.png")
        plt.close(axes.figure)


def save_tight(figure, path: Path) -> None:
    """The PNG cropped to what is drawn: Optuna's axis labels overhang its figures."""
    atomic_write(path, lambda tmp: figure.savefig(tmp, format="png", dpi=DPI, bbox_inches="tight"))
