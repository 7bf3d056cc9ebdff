"""MLflow: one MLflow run per cnntrain run, in `logger.mlflow.tracking_uri` (MLFLOW_TRACKING_URI,
else the SQLite database `<paths.log_dir>/mlflow.db`, which `mlflow ui --backend-store-uri
sqlite:///outputs/mlflow.db` shows).

Run name: the run folder's name; params: the flat config; metrics: each epoch's row at
step=epoch; artifacts at the end: results.json, report.html, plots/, summary.txt (checkpoints
with `log_checkpoints`). A sweep's jobs carry their sweep folder as the tag `cnntrain.sweep`.

An epoch is sent once its checkpoint is written (every epoch by default), and a resumed run
reattaches to its MLflow run (the id is saved in the checkpoint) and first sends the checkpoint's
epochs the server lacks: MLflow holds exactly one value per epoch, the one the run continued from.
"""

import logging
import time
from pathlib import Path

from cnntrain.core.checkpoint import BEST
from cnntrain.core.errors import UserError
from cnntrain.loggers.params import flat_config, sweep_folder
from cnntrain.loggers.rows import EpochRows, numbers

log = logging.getLogger("cnntrain")
STATUS = {"finished": "FINISHED", "interrupted": "KILLED", "failed": "FAILED"}
ARTIFACTS = ("results.json", "report.html", "summary.txt")  # plus plots/
BATCH = 100  # MLflow's limit of params per log_batch call
SQLITE = "sqlite:///"


class MLflowLogger(EpochRows):
    def __init__(self, tracking_uri: str, experiment_name: str = "cnntrain",
                 log_checkpoints: bool = False):  # fmt: skip
        self.tracking_uri, self.experiment_name = tracking_uri, experiment_name
        self.log_checkpoints = log_checkpoints

    def on_fit_start(self, loop) -> None:
        from mlflow import MlflowClient  # imported only when tracking (about a second)
        from mlflow.exceptions import MlflowException

        self.client = MlflowClient(self.tracking_uri)
        try:
            if self.run_id is not None and self.reattach():
                log.info("mlflow: continuing run %s in %s", self.run_id, self.tracking_uri)
            else:
                self.start_run(loop)
            self.send_rows(loop.state.rows)
        except (MlflowException, OSError) as e:
            reason = (str(e).splitlines() or [type(e).__name__])[0][:200]
            raise UserError(
                f"logger=mlflow cannot use the tracking URI {self.tracking_uri} ({reason}); "
                "start the server, set MLFLOW_TRACKING_URI or logger.mlflow.tracking_uri, or use "
                "logger=none"
            ) from e

    def reattach(self) -> bool:
        """Continue the saved run if this store has it; `sent` from the server's own history."""
        from mlflow.exceptions import MlflowException

        try:
            self.client.update_run(self.run_id, status="RUNNING")
        except MlflowException:
            log.warning("mlflow: run %s is not in %s; starting a new one", self.run_id,
                        self.tracking_uri)  # fmt: skip
            return False
        history = self.client.get_metric_history(self.run_id, "val/acc")
        self.sent = max((m.step for m in history), default=0)
        return True

    def start_run(self, loop) -> None:
        from mlflow.entities import Param

        tags = {"cnntrain.run_dir": str(loop.run_dir.resolve())}
        sweep = sweep_folder()
        if sweep:
            tags["cnntrain.sweep"] = sweep
        run = self.client.create_run(self.experiment_id(), tags=tags, run_name=loop.run_dir.name)
        self.run_id, self.sent = run.info.run_id, 0
        params = [Param(k, str(v)[:6000]) for k, v in flat_config(loop.cfg).items()]
        for i in range(0, len(params), BATCH):
            self.client.log_batch(self.run_id, params=params[i : i + BATCH])
        log.info("mlflow: run %s in %s", self.run_id, self.tracking_uri)

    def experiment_id(self) -> str:
        experiment = self.client.get_experiment_by_name(self.experiment_name)
        if experiment is not None:
            return experiment.experiment_id
        location = None
        if self.tracking_uri.startswith(SQLITE):  # artifacts beside the database, not in ./mlruns
            database = Path(self.tracking_uri.removeprefix(SQLITE))
            location = (database.parent / "mlartifacts").resolve().as_uri()
        return self.client.create_experiment(self.experiment_name, artifact_location=location)

    def send_row(self, row: dict) -> None:
        """One row at step=epoch, in one call."""
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        metrics = [Metric(k, float(v), now, row["epoch"]) for k, v in numbers(row).items()]
        self.client.log_batch(self.run_id, metrics=metrics)

    def on_fit_end(self, loop, results: dict) -> None:
        from mlflow.entities import Metric

        self.send_rows(loop.state.rows)
        now, step = int(time.time() * 1000), loop.state.epoch
        final = [Metric(key, float(value), now, step) for key, value in numbers(results).items()]
        self.client.log_batch(self.run_id, metrics=final)
        for name in ARTIFACTS:
            if (loop.run_dir / name).exists():
                self.client.log_artifact(self.run_id, str(loop.run_dir / name))
        if (loop.run_dir / "plots").is_dir():
            self.client.log_artifacts(self.run_id, str(loop.run_dir / "plots"), "plots")
        if self.log_checkpoints:
            self.client.log_artifacts(self.run_id, str(loop.checkpoint_path(BEST).parent),
                                      "checkpoints")  # fmt: skip

    def on_close(self, loop, status: str) -> None:
        if self.run_id is not None:
            self.client.set_terminated(self.run_id, STATUS[status])
