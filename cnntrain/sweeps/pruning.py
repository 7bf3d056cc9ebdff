"""Optuna pruning for sweep jobs: a job reports its optimized metric after every epoch to its
trial, through the study's storage, and stops early when the study's pruner says so."""

import logging

from hydra.utils import instantiate

from cnntrain.core.errors import UserError
from cnntrain.training.events import Callback

log = logging.getLogger("cnntrain")

PRUNER_ATTR = "cnntrain.pruner"  # the study's user attribute holding the sweep's pruner spec
PRUNERS = {
    "median": "optuna.pruners.MedianPruner",  # below the median of earlier trials at this epoch
    "hyperband": "optuna.pruners.HyperbandPruner",  # successive halving over brackets of epochs
    "none": "optuna.pruners.NopPruner",
}
# What an epoch's metrics row has of each optimizable results.json field (rows have no test
# metrics: validation stands in for them); best_val/acc (best_val/mAP) is the best val/acc
# (val/mAP) so far.
EPOCH_KEYS = {
    "final_val/acc": "val/acc",
    "test/acc": "val/acc",
    "test/mAP": "val/mAP",
    "test/balanced_acc": "val/acc",
    "test/top5_acc": "val/acc",
    "test/loss": "val/loss",
    "train_time_s": "elapsed_s",
}


def named_object(key: str, spec, names: dict[str, str], **arguments):
    """An Optuna object from a short name of `names` (called with `arguments`), or from a
    {_target_: …, its arguments…} mapping."""
    if isinstance(spec, str):
        if spec not in names:
            raise UserError(
                f"{key}={spec!r} is not known; use one of {', '.join(names)} "
                f"or {{_target_: optuna.…, …}}"
            )
        spec = {"_target_": names[spec], **arguments}
    try:
        return instantiate(spec)
    except Exception as e:
        raise UserError(f"{key}={spec} cannot be built: {e}") from e


def build_pruner(spec):
    return named_object("hydra.sweeper.pruner", spec, PRUNERS)


def open_storage(url: str):
    """The Optuna storage at `url`. SQLite waits up to a minute for a lock: the sweep and its
    running jobs write to the same file at once."""
    import optuna

    engine = {"connect_args": {"timeout": 60}} if url.startswith("sqlite") else {}
    return optuna.storages.RDBStorage(url, engine_kwargs=engine)


def epoch_value(metric: str, rows: list[dict]) -> float:
    """The per-epoch stand-in for `metric` after the last of `rows`."""
    if metric.startswith("best_val/"):
        return max(r[metric.removeprefix("best_")] for r in rows)
    return rows[-1][EPOCH_KEYS[metric]]


class OptunaPruning(Callback):
    """Reports `optimized_metric` (its per-epoch stand-in) after every epoch to trial
    `trial_number` of the study, and stops the run (`stopped_by: pruned`) when the study's
    pruner (the sweep's `hydra.sweeper.pruner`, kept in the study) prunes the trial. The Optuna
    sweeper adds it to every trial's job; its storage failing mid-run only ends the pruning."""

    is_tracker = True

    def __init__(self, storage: str, study_name: str, trial_number: int):
        self.storage, self.study_name, self.trial_number = storage, study_name, trial_number

    def on_fit_start(self, loop) -> None:
        import optuna

        storage = open_storage(self.storage)
        study = optuna.load_study(study_name=self.study_name, storage=storage)
        study.pruner = build_pruner(study.user_attrs.get(PRUNER_ATTR, "none"))
        study_id = storage.get_study_id_from_name(self.study_name)
        trial_id = storage.get_trial_id_from_study_id_trial_number(study_id, self.trial_number)
        self.trial = optuna.trial.Trial(study, trial_id)
        self.metric = loop.cfg.optimized_metric
        reported = storage.get_trial(trial_id).intermediate_values
        rows = loop.state.rows  # a resumed run's epochs so far: a retried trial starts bare
        for n in range(len(rows)):
            if rows[n]["epoch"] not in reported:
                self.trial.report(epoch_value(self.metric, rows[: n + 1]), rows[n]["epoch"])

    def on_epoch_end(self, loop, row: dict) -> None:
        self.trial.report(epoch_value(self.metric, loop.state.rows), row["epoch"])
        if self.trial.should_prune():
            log.info("trial %d pruned after epoch %d", self.trial_number, row["epoch"])
            loop.stop("pruned")
