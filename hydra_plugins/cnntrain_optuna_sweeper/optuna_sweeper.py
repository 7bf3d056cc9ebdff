"""The Hydra sweeper behind `cnntrain -m hydra/sweeper=optuna …` (conf/hydra/sweeper/optuna.yaml):
an Optuna ≥ 4 study whose trials are the sweep's jobs. Hydra imports this module at every start
to find its plugins, so the search itself (_search.py, Optuna, cnntrain) loads only when a sweep
begins: a plain `cnntrain` run pays nothing, and works without Optuna installed."""

from hydra.core.plugins import Plugins
from hydra.plugins.sweeper import Sweeper


class OptunaSweeper(Sweeper):
    """Asks the study for `n_jobs` trials at a time, runs them as jobs of the configured launcher
    and tells it each job's `optimized_metric`, until the study holds `n_trials` trials."""

    def __init__(self, **settings) -> None:
        self.settings = settings  # the keys of conf/hydra/sweeper/optuna.yaml

    def setup(self, *, hydra_context, task_function, config) -> None:
        self.config = config
        self.launcher = Plugins.instance().instantiate_launcher(
            hydra_context=hydra_context, task_function=task_function, config=config
        )

    def sweep(self, arguments: list[str]) -> None:
        from cnntrain.cli.common import fail
        from cnntrain.core.extras import install_command

        try:
            from ._search import run_search
        except ImportError as e:
            fail(f"hydra/sweeper=optuna needs Optuna ≥ 4 ({e}); {install_command('sweeps')}")
        run_search(config=self.config, launcher=self.launcher, arguments=arguments,
                   **self.settings)  # fmt: skip
