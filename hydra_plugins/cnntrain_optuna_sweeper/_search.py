"""An Optuna study run as a Hydra sweep: the search space from Hydra's sweep syntax, trials as
jobs of the launcher, a study that survives the sweep's death, and at the end best.yaml and
Optuna's figures in the sweep folder.

A study is continued by running the same command with the same `hydra.sweep.dir`: `n_trials`
counts every trial the study holds; a trial the dead sweep left running is recorded from its
job's results.json when the job got that far, else failed and retried in its job folder
(continuing from the job's last checkpoint).
"""

import json
import logging
import math
import time
from pathlib import Path

import optuna
import yaml
from filelock import FileLock, Timeout
from hydra.core.utils import JobStatus
from omegaconf import DictConfig, OmegaConf
from optuna.trial import FrozenTrial, TrialState

from cnntrain.cli.common import fail
from cnntrain.core.errors import UserError
from cnntrain.core.files import write_text
from cnntrain.core.seeds import derived_seed
from cnntrain.sweeps.jobs import job_is_running
from cnntrain.sweeps.pruning import PRUNER_ATTR, build_pruner, open_storage
from hydra_plugins.cnntrain_optuna_sweeper._plots import write_study_plots
from hydra_plugins.cnntrain_optuna_sweeper._space import (
    build_sampler,
    flat_params,
    grid_size,
    override_value,
    search_space,
    study_direction,
)

log = logging.getLogger("cnntrain")

LOCK = ".optuna.lock"  # in the sweep folder: one sweep process drives a folder's study at a time
INTERRUPTED = "cnntrain.interrupted"  # user attribute of a trial its dead sweep left running


def run_search(
    *, config: DictConfig, launcher, arguments: list[str], n_trials: int, n_jobs: int,
    direction: str, sampler, seed, pruner, storage, study_name, params,
) -> None:  # fmt: skip
    """The sweep: settle what a dead sweep left, run trials until the study holds `n_trials`,
    then write best.yaml and the study's figures."""
    sweep_dir = Path(str(config.hydra.sweep.dir)).resolve()
    sweep_dir.mkdir(parents=True, exist_ok=True)
    OmegaConf.save(config, sweep_dir / "multirun.yaml")
    lock = FileLock(sweep_dir / LOCK)
    try:
        lock.acquire(timeout=0)
    except Timeout:
        fail(f"another Optuna sweep is running in {sweep_dir}; wait for it, or give another "
             "hydra.sweep.dir")  # fmt: skip
    try:
        space, fixed = search_space([*flat_params(params), *arguments])
        build_pruner(pruner)  # refuse a bad pruner now, not in every job
        search = Search(
            launcher=launcher, sweep_dir=sweep_dir, fixed=fixed, metric=config.optimized_metric,
            url=storage or f"sqlite:///{sweep_dir / 'optuna.db'}",
            study_name=study_name or str(sweep_dir),
        )  # fmt: skip
        search.open(build_sampler(sampler, search.continued_seed(seed), space), direction, pruner)
        total = min(n_trials, grid_size(space)) if sampler == "grid" else n_trials
        search.recover()
        while (to_go := total - len(counted(search.study))) > 0:
            search.run_trials([search.study.ask(space) for _ in range(min(n_jobs, to_go))])
        search.write_best()
        write_study_plots(search.study, sweep_dir / "plots", search.metric)
    except UserError as e:
        fail(str(e))
    finally:
        lock.release()


# ---- the study ----


def counted(study: optuna.Study) -> list[FrozenTrial]:
    """The trials `n_trials` counts: all but those waiting to start and those a dead sweep
    left running (their retries count instead)."""
    return [
        t
        for t in study.get_trials(deepcopy=False)
        if t.state != TrialState.WAITING and not t.user_attrs.get(INTERRUPTED)
    ]


def tell(study: optuna.Study, trial, state: TrialState, value: float | None) -> None:
    try:
        study.tell(trial, value if state == TrialState.COMPLETE else None, state=state)
    except RuntimeError:
        # The grid sampler stops the study once its last point is told, which Optuna allows only
        # inside study.optimize(); the trial is recorded all the same.
        if not isinstance(study.sampler, optuna.samplers.GridSampler):
            raise


# ---- trials and jobs ----


def outcome(job_dir: Path, metric: str) -> tuple[TrialState, float | None, str]:
    """A finished job's trial state, objective value and a few words for the log."""
    results_file = job_dir / "results.json"
    if not results_file.is_file():
        error = job_dir / "error.txt"
        reason = error.read_text().strip() if error.is_file() else "no results.json"
        return TrialState.FAIL, None, f"failed: {reason}"
    results = json.loads(results_file.read_bytes())
    if results.get("stopped_by") == "pruned":
        return TrialState.PRUNED, None, f"pruned after epoch {results.get('epochs')}"
    value = results.get(metric)
    if not isinstance(value, int | float) or not math.isfinite(value):
        return TrialState.FAIL, None, f"failed: {metric}={value}"
    return TrialState.COMPLETE, float(value), f"{metric}={value:.4f}"


class Search:
    """A sweep folder's study: its storage, and the jobs its trials run as."""

    def __init__(self, *, launcher, sweep_dir: Path, fixed: list[str], metric: str, url: str,
                 study_name: str) -> None:  # fmt: skip
        self.launcher, self.sweep_dir, self.fixed, self.metric = launcher, sweep_dir, fixed, metric
        self.url, self.study_name = url, study_name
        self.storage = open_storage(url)

    def continued_seed(self, seed: int | None) -> int | None:
        """The sampler's seed for this sweep of the study: `seed` for a new study; for one that
        already holds N trials, a seed derived from both. A sampler seeded as before would
        replay its first draws, and a continued study would repeat its trials' parameters."""
        try:
            study_id = self.storage.get_study_id_from_name(self.study_name)
        except KeyError:
            return seed
        held = len(self.storage.get_all_trials(study_id, deepcopy=False))
        if seed is None or held == 0:
            return seed
        return derived_seed(seed, held) % 2**32  # numpy's RandomState, under Optuna, takes 32 bits

    def open(self, sampler, direction: str, pruner) -> None:
        """Create the study, or load it to continue; keep the pruner for the jobs to build."""
        self.study = optuna.create_study(
            storage=self.storage,
            study_name=self.study_name,
            sampler=sampler,
            direction=study_direction(direction, self.metric),
            load_if_exists=True,
        )
        spec = OmegaConf.to_container(pruner) if OmegaConf.is_config(pruner) else pruner
        self.study.set_user_attr(PRUNER_ATTR, spec)

    def trial(self, number: int) -> optuna.trial.Trial:
        """The study's trial `number`, to change while it runs."""
        study_id = self.storage.get_study_id_from_name(self.study_name)
        trial_id = self.storage.get_trial_id_from_study_id_trial_number(study_id, number)
        return optuna.trial.Trial(self.study, trial_id)

    def recover(self) -> None:
        """Settle the trials a dead sweep of this folder left running: wait for a job still
        running, record one that finished, fail and retry (in its folder) one that did not."""
        for frozen in self.study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            if frozen.user_attrs.get("sweep_dir") != str(self.sweep_dir):
                continue  # another sweep's, on a shared storage
            job = frozen.user_attrs["job"]
            job_dir = self.sweep_dir / str(job)
            while job_is_running(job_dir):
                log.info("job %s (trial %d) is still running; waiting for it", job, frozen.number)
                time.sleep(10)
            trial = self.trial(frozen.number)
            state, value, what = outcome(job_dir, self.metric)
            if state == TrialState.FAIL:
                trial.set_user_attr(INTERRUPTED, True)
                retry = {"job": job, "retry_of": frozen.number}
                self.study.enqueue_trial(frozen.params, user_attrs=retry)
                what = "the sweep stopped while it ran; retried"
            tell(self.study, trial, state, value)
            log.info("trial %d (job %s), left by a stopped sweep: %s", frozen.number, job, what)

    def overrides(self, trial: optuna.trial.Trial, job_dir: Path) -> list[str]:
        """A trial's job: the fixed overrides, its parameters, the pruning callback reporting to
        it, and `resume=` its folder when it retries a job that left a checkpoint."""
        wiring = "++callbacks.optuna_pruning."
        overrides = [
            *self.fixed,
            *(f"{key}={override_value(value)}" for key, value in trial.params.items()),
            f"{wiring}_target_=cnntrain.sweeps.pruning.OptunaPruning",
            f"{wiring}storage={override_value(self.url)}",
            f"{wiring}study_name={override_value(self.study_name)}",
            f"{wiring}trial_number={trial.number}",
        ]
        if "retry_of" in trial.user_attrs and (job_dir / "checkpoints" / "last.pt").is_file():
            overrides.append(f"resume={override_value(str(job_dir))}")
        return overrides

    def run_trials(self, trials: list[optuna.trial.Trial]) -> None:
        """Launch the trials' jobs (job number = trial number, or the folder a retry continues
        in) and tell the study how each ended."""
        jobs = []
        for trial in trials:
            job = trial.user_attrs.get("job", trial.number)
            trial.set_user_attr("job", job)
            trial.set_user_attr("sweep_dir", str(self.sweep_dir))
            jobs.append((job, trial))
        for first, group in consecutive_groups(jobs):
            overrides = [self.overrides(t, self.sweep_dir / str(j)) for j, t in group]
            returns = self.launcher.launch(overrides, initial_job_idx=first)
            for (job, trial), ret in zip(group, returns, strict=True):
                job_dir = self.sweep_dir / str(job)
                if ret.status == JobStatus.FAILED and not (job_dir / "error.txt").exists():
                    error = ret._return_value  # the job's exception (return_value re-raises it)
                    write_text(job_dir / "error.txt", f"{type(error).__name__}: {error}\n")
                state, value, what = outcome(job_dir, self.metric)
                tell(self.study, trial, state, value)
                log.info("trial %d (job %s): %s", trial.number, job, what)

    def write_best(self) -> None:
        """best.yaml: the best trial's parameters and value, and how many trials ended how."""
        from sqlalchemy.engine import make_url

        trials = self.study.get_trials(deepcopy=False)
        states = {}
        for t in trials:
            states[t.state.name.lower()] = states.get(t.state.name.lower(), 0) + 1
        best = self.study.best_trial if states.get("complete") else None
        summary = {
            "optimized_metric": self.metric,
            "direction": self.study.direction.name.lower(),
            "best_value": best.value if best else None,
            "best_params": dict(best.params) if best else None,
            "best_trial": best.number if best else None,
            "best_job": best.user_attrs.get("job") if best else None,
            "trials": states,
            "study_name": self.study_name,
            "storage": make_url(self.url).render_as_string(hide_password=True),
        }
        write_text(self.sweep_dir / "best.yaml", yaml.safe_dump(summary, sort_keys=False))
        if best:
            log.info("best: trial %d (job %s), %s=%.4f with %s", best.number, summary["best_job"],
                     self.metric, best.value, best.params)  # fmt: skip
        else:
            log.warning("no trial completed; best.yaml has no best parameters")


def consecutive_groups(pairs: list[tuple[int, object]]):
    """(first job number, pairs) for each run of consecutive job numbers: a launcher numbers the
    jobs of one launch consecutively."""
    group = []
    for pair in pairs:
        if group and pair[0] != group[-1][0] + 1:
            yield group[0][0], group
            group = []
        group.append(pair)
    if group:
        yield group[0][0], group
