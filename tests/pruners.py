"""A pruner whose decisions a test knows in advance (Optuna's own depend on the trials' values):

cnntrain -m hydra/sweeper=optuna 'hydra.sweeper.pruner={_target_:tests.pruners.PruneFrom,
                                                        number:2}' …
"""

from optuna.pruners import BasePruner


class PruneFrom(BasePruner):
    """Prunes every trial numbered `number` or higher at the first epoch it reports."""

    def __init__(self, number: int):
        self.number = number

    def prune(self, study, trial) -> bool:
        return trial.number >= self.number
