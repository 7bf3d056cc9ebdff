"""Sweeps that scale: jobs in other processes land in the sweep folder, share the machine, survive
preemption; the Optuna sweeper's search space, pruning, failed trials and a killed study."""

import contextlib
import csv
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import optuna
import pytest
import yaml
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.trial import TrialState

from cnntrain.config.resolvers import run_token
from cnntrain.core.errors import UserError
from cnntrain.sweeps.jobs import cpu_share, free_slot, jobs_at_once, usable_cores
from hydra_plugins.cnntrain_optuna_sweeper._search import INTERRUPTED, Search
from hydra_plugins.cnntrain_optuna_sweeper._space import build_sampler, grid_points, search_space
from tests.conftest import CONF, REPO, make_image_folder, read_jsonl, train_here

TIMEOUT_S = 240  # any one sweep command here; a hang fails the test instead of the suite


@pytest.fixture(scope="module")
def image_root(tmp_path_factory):
    return make_image_folder(tmp_path_factory.mktemp("data") / "shapes", per_class=24)


def tiny(root: Path, epochs: int = 1) -> list[str]:
    return [
        "data=imagefolder", f"data.root={root}", "model=simplecnn", "data.batch_size=16",
        f"trainer.epochs={epochs}", "logger=none", "trainer.plots=false", "data.num_workers=1",
    ]  # fmt: skip


def sweep_cli(*args: str, cwd: Path, env=None) -> subprocess.CompletedProcess:
    """`cnntrain -m *args` as its own process group, killed with all its workers if it hangs."""
    proc = start_sweep(*args, cwd=cwd, env=env)
    try:
        out, err = proc.communicate(timeout=TIMEOUT_S)
    finally:
        kill_group(proc)
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def start_sweep(*args: str, cwd: Path, env=None) -> subprocess.Popen:
    environment = {**os.environ, "PYTHONUNBUFFERED": "1", "PYTHONPATH": str(REPO), **(env or {})}
    return subprocess.Popen(
        [sys.executable, "-m", "cnntrain", "-m", *args], cwd=cwd, env=environment, text=True,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True,
    )  # fmt: skip


def kill_group(proc: subprocess.Popen) -> None:
    """SIGKILL the sweep and every process it started (workers, submitit jobs)."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)


def summary_rows(sweep: Path) -> list[dict]:
    with open(sweep / "summary.csv") as f:
        return list(csv.DictReader(f))


def job_folders(sweep: Path) -> list[Path]:
    return sorted((p for p in sweep.iterdir() if p.name.isdigit()), key=lambda p: int(p.name))


# ---- units ----


def test_every_job_resolves_the_sweep_folder_its_launching_process_chose():
    """What joblib and submitit do: compose the job's config anew in another process, with the
    sweep config's resolver cache copied in. The token must come from that cache."""
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        sweep = compose("config", return_hydra_config=True)
        chosen = str(sweep.hydra.sweep.dir)
        run_token.cache_clear()  # the job's process never drew the launching process's token
        job = compose("config", return_hydra_config=True)
        OmegaConf.copy_cache(from_config=sweep, to_config=job)
        assert str(job.hydra.sweep.dir) == chosen
        run_token.cache_clear()
        alone = compose("config", return_hydra_config=True)
        assert str(alone.hydra.sweep.dir) != chosen  # without the cache: a folder of its own


def test_each_job_gets_its_share_of_the_cores():
    cores = usable_cores()
    joblib = OmegaConf.create({"n_jobs": 2})
    assert jobs_at_once(joblib) == 2 and cpu_share(joblib, 2) == max(1, cores // 2)
    every_core = OmegaConf.create({"n_jobs": -1})
    assert jobs_at_once(every_core) == cores and cpu_share(every_core, cores) == 1
    submitit = OmegaConf.create({"cpus_per_task": 3, "tasks_per_node": 1})
    assert jobs_at_once(submitit) == 1 and cpu_share(submitit, 1) == 3
    assert cpu_share(OmegaConf.create({}), 1) is None  # one job at a time keeps torch's default


def test_slots_go_to_one_holder_each_and_a_late_job_waits_for_one(tmp_path):
    got = []
    with free_slot(tmp_path, 2) as first, free_slot(tmp_path, 2) as second:
        assert {first, second} == {0, 1}

        def third_job():
            with free_slot(tmp_path, 2, poll_s=0.05) as slot:
                got.append(slot)

        waiter = threading.Thread(target=third_job)
        waiter.start()
        time.sleep(0.5)
        assert got == []  # both GPUs held: it waits, it does not share one
    waiter.join(timeout=10)
    assert got == [0]


def test_the_search_space_reads_hydra_optuna_sweepers_syntax():
    space, fixed = search_space([
        "optimizer.lr=tag(log, interval(1e-4, 1e-1))", "loss.label_smoothing=interval(0, 0.2)",
        "data.batch_size=choice(64, 128)", "trainer.epochs=range(2, 8, 2)",
        "optimizer=sgd,adam", "model=simplecnn",
    ])  # fmt: skip
    assert space == {
        "optimizer.lr": FloatDistribution(1e-4, 1e-1, log=True),
        "loss.label_smoothing": FloatDistribution(0.0, 0.2),
        "data.batch_size": CategoricalDistribution([64, 128]),
        "trainer.epochs": IntDistribution(2, 6, step=2),  # Hydra's range leaves out its stop
        "optimizer": CategoricalDistribution(["sgd", "adam"]),
    }
    assert fixed == ["model=simplecnn"]
    assert grid_points({"trainer.epochs": space["trainer.epochs"]}) == {"trainer.epochs": [2, 4, 6]}
    with pytest.raises(UserError, match=r"grid needs discrete values, but optimizer\.lr"):
        grid_points(space)
    with pytest.raises(UserError, match="needs a search space"):
        search_space(["model=simplecnn"])


@pytest.mark.parametrize("sampler", ["tpe", "random"])
def test_a_continued_study_draws_new_parameters(tmp_path, sampler):
    """The same command again in the same sweep folder continues the study: its sampler, seeded
    as the first sweep's, must not replay that sweep's draws (trials with equal parameters)."""
    space, _ = search_space(["optimizer.lr=tag(log, interval(1e-3, 1e-1))",
                             "data.batch_size=choice(16, 32, 64, 128)"])  # fmt: skip
    url = f"sqlite:///{tmp_path / 'optuna.db'}"
    drawn = []
    for _ in range(2):  # a sweep of 3 trials, then the same command continuing it
        search = Search(launcher=None, sweep_dir=tmp_path, fixed=[], metric="best_val/acc",
                        url=url, study_name="s")  # fmt: skip
        search.open(build_sampler(sampler, search.continued_seed(0), space), "maximize", "none")
        for _ in range(3):
            trial = search.study.ask(space)
            search.study.tell(trial, 0.5)
            drawn.append(tuple(sorted(trial.params.items())))
    assert len(set(drawn)) == len(drawn) == 6


def test_a_job_reports_every_epoch_to_its_trial_and_stops_when_pruned(image_root, tmp_path):
    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    study = optuna.create_study(study_name="s", storage=storage, direction="maximize")
    median = {"_target_": "optuna.pruners.MedianPruner", "n_startup_trials": 1, "n_warmup_steps": 0}
    study.set_user_attr("cnntrain.pruner", median)
    done = study.ask()
    for epoch in (1, 2):
        done.report(1.0, epoch)
    study.tell(done, 1.0)
    hopeless = study.ask()
    results = train_here(
        *tiny(image_root, epochs=2), "optimizer.lr=1e-7",
        "+callbacks.optuna_pruning._target_=cnntrain.sweeps.pruning.OptunaPruning",
        f"+callbacks.optuna_pruning.storage={storage}", "+callbacks.optuna_pruning.study_name=s",
        f"+callbacks.optuna_pruning.trial_number={hopeless.number}",
        output_dir=tmp_path / "run",
    )  # fmt: skip
    assert results["stopped_by"] == "pruned" and results["epochs"] == 1
    reported = study.trials[hopeless.number].intermediate_values
    assert reported == {1: results["best_val/acc"]} and reported[1] < 1.0


# ---- launchers, for real ----


@pytest.mark.slow
def test_joblib_runs_two_jobs_at_once_on_a_cold_cache_into_one_sweep_folder(image_root, tmp_path):
    # Each job waits at its start until both jobs got there: they must run at the same time.
    barrier = ("+callbacks.fault._target_=tests.faults.Fault",
               f"+callbacks.fault.at=barrier:2:{tmp_path / 'started'}")  # fmt: skip
    proc = sweep_cli(
        "hydra/launcher=joblib", "hydra.launcher.n_jobs=2", *tiny(image_root), *barrier,
        "optimizer=sgd,adam", cwd=tmp_path, env={"CNNTRAIN_CACHE_DIR": str(tmp_path / "cache")},
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    (sweep,) = (tmp_path / "outputs" / "multirun").glob("*/*")
    assert list((tmp_path / "outputs").iterdir()) == [tmp_path / "outputs" / "multirun"]
    a, b = job_folders(sweep)
    rows = summary_rows(sweep)
    assert sorted(r["job"] for r in rows) == ["0", "1"]
    assert all(r["status"] == "completed" for r in rows)
    assert len(list((tmp_path / "started").iterdir())) == 2  # two processes met at the barrier
    share = max(1, usable_cores() // 2)
    for job in (a, b):
        assert f"sweep job: {share} CPU thread(s)" in (job / "train.log").read_text()
    assert (sweep / "report.html").is_file()


@pytest.mark.slow
def test_submitit_local_requeues_a_preempted_job_which_continues_its_run(image_root, tmp_path):
    proc = sweep_cli(
        "hydra/launcher=submitit_local", "hydra.launcher.cpus_per_task=1", *tiny(image_root),
        "+callbacks.fault._target_=tests.faults.Fault", "+callbacks.fault.at=preempt-step:1:1",
        cwd=tmp_path,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    (sweep,) = (tmp_path / "outputs" / "multirun").glob("*/*")
    assert [r["status"] for r in summary_rows(sweep)] == ["completed"]
    (job,) = job_folders(sweep)
    log = (job / "train.log").read_text()
    assert "SIGUSR2 received" in log and "requeued: continuing" in log
    assert re.search(r"resuming .* from epoch 0, step [1-9]", log)  # mid-epoch, from its save
    assert "sweep job: 1 CPU thread(s)" in log
    assert [r["epoch"] for r in read_jsonl(job / "metrics.jsonl")] == [1]
    assert json.loads((job / "results.json").read_text())["epochs"] == 1


# ---- Optuna, for real ----


def load_study(sweep: Path) -> optuna.Study:
    return optuna.load_study(study_name=str(sweep), storage=f"sqlite:///{sweep / 'optuna.db'}")


def wait_for(condition, proc: subprocess.Popen, timeout_s: float = TIMEOUT_S) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert proc.poll() is None, proc.communicate()[1]
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.2)


@pytest.mark.slow
def test_a_killed_optuna_sweep_continues_its_study_to_n_trials(image_root, tmp_path):
    sweep = tmp_path / "search"
    args = (
        "hydra/sweeper=optuna", f"hydra.sweep.dir={sweep}", "hydra.sweeper.n_trials=3",
        "hydra.sweeper.sampler=random", "hydra.sweeper.seed=0", "hydra.sweeper.pruner=none",
        *tiny(image_root, epochs=2), "optimizer.lr=tag(log, interval(1e-3, 1e-1))",
        "+callbacks.fault._target_=tests.faults.Fault", "+callbacks.fault.at=hang-in-job:1:1",
    )  # fmt: skip
    proc = start_sweep(*args, cwd=tmp_path)
    try:  # kill the sweep while trial 1 runs, with a checkpoint after its first epoch
        wait_for(lambda: (sweep / "1" / "checkpoints" / "last.pt").is_file(), proc)
    finally:
        kill_group(proc)
    first = (sweep / "0" / "results.json").read_bytes()
    assert [t.state for t in load_study(sweep).trials] == [TrialState.COMPLETE, TrialState.RUNNING]

    again = sweep_cli(*args, cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    trials = load_study(sweep).trials
    interrupted = [t for t in trials if t.user_attrs.get(INTERRUPTED)]
    assert [t.number for t in interrupted] == [1] and interrupted[0].state == TrialState.FAIL
    completed = [t for t in trials if t.state == TrialState.COMPLETE]
    assert len(completed) == 3 and len(trials) == 4  # n_trials counts the retry, not the loss
    retry = trials[2]
    assert retry.params == trials[1].params and retry.user_attrs["job"] == 1
    assert (sweep / "0" / "results.json").read_bytes() == first  # a finished trial is not rerun
    log = (sweep / "1" / "train.log").read_text()
    assert "resuming" in log and "from epoch 1" in log  # the retry continued job 1's run
    assert [r["epoch"] for r in read_jsonl(sweep / "1" / "metrics.jsonl")] == [1, 2]
    assert [r["status"] for r in summary_rows(sweep)] == ["completed"] * 3
    best = yaml.safe_load((sweep / "best.yaml").read_text())
    top = max(completed, key=lambda t: t.value)
    assert best["best_value"] == top.value and best["best_params"] == top.params
    assert best["trials"] == {"complete": 3, "fail": 1}


@pytest.mark.slow
def test_optuna_trials_run_side_by_side_are_pruned_or_failed_and_the_study_goes_on(
    image_root, tmp_path
):
    sweep = tmp_path / "search"
    proc = sweep_cli(
        "hydra/sweeper=optuna", f"hydra.sweep.dir={sweep}", "hydra.sweeper.n_trials=9",
        "hydra.sweeper.sampler=grid", "hydra.sweeper.seed=0",
        "hydra.sweeper.pruner={_target_:tests.pruners.PruneFrom,number:2}",
        "hydra.sweeper.n_jobs=2", "hydra/launcher=joblib", "hydra.launcher.n_jobs=2",
        *tiny(image_root, epochs=2), "optimizer.lr=choice(0.05, 0.03, 0.02, -1)",
        cwd=tmp_path,
    )  # fmt: skip
    assert proc.returncode == 1  # a trial failed: the sweep says so, after finishing the study
    assert "1 job(s) did not complete" in proc.stderr
    trials = load_study(sweep).trials
    assert len(trials) == 4  # n_trials=9, but the grid has 4 points
    status = {r["job"]: r["status"] for r in summary_rows(sweep)}
    for t in trials:
        job = sweep / str(t.number)
        if t.params["optimizer.lr"] == -1:
            assert t.state == TrialState.FAIL and status[str(t.number)].startswith("failed: ")
            assert "optimizer.lr=-1 is not valid" in (job / "error.txt").read_text()
        elif t.number >= 2:
            assert t.state == TrialState.PRUNED and status[str(t.number)] == "pruned"
            results = json.loads((job / "results.json").read_text())
            assert results["stopped_by"] == "pruned" and results["epochs"] == 1
        else:
            assert t.state == TrialState.COMPLETE and status[str(t.number)] == "completed"
            assert t.intermediate_values.keys() == {1, 2}
    assert TrialState.PRUNED in {t.state for t in trials}
    page = (sweep / "report.html").read_text()
    assert "search (Optuna): best.yaml" in page and "pruned" in page
    assert (sweep / "plots" / "optuna_history.png").is_file()
    assert page.count("data:image/png;base64,") >= 2  # the history and the swept lr
