"""A config read back from a file someone else made (a checkpoint's, a run folder's, a sweep's) is
data: every command that reads one refuses code in it in one line, or never reads it."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import optuna
import pytest
import torch
import yaml
from optuna.distributions import FloatDistribution
from optuna.trial import TrialState

from cnntrain.config.resumed import chosen_options, resumed_config
from cnntrain.core.checkpoint import BEST, LAST, checkpoint_path, load_checkpoint, saved_config
from cnntrain.core.errors import UserError
from cnntrain.sweeps.pruning import PRUNER_ATTR
from tests.conftest import REPO, compose_config, make_image_folder, read_jsonl, run_cli

BOUND_S = 120  # s: any one command here; a refusal comes before any training


def payload(marker: Path) -> dict:
    """What Hydra's instantiate would run: `pathlib.Path.touch(marker)`."""
    return {"_target_": "pathlib.Path.touch", "self": str(marker)}


def poison_checkpoint(path: Path, change) -> None:
    """Rewrite the checkpoint at `path` with `change(config)` applied to its saved config."""
    state = torch.load(path, weights_only=True)
    change(state["config"])
    torch.save(state, path)


def one_line_refusal(proc: subprocess.CompletedProcess, *words: str) -> str:
    """The command failed with exit status 2 and one `cnntrain: error:` line naming `words`."""
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2, proc.stderr
    assert lines and lines[-1].startswith("cnntrain: error:"), proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr
    assert all(word in lines[-1] for word in words), lines[-1]
    return lines[-1]


def tool(module: str, *args: str, cwd: Path) -> subprocess.CompletedProcess:
    """`python -m cnntrain.cli.<module> *args`, bounded."""
    return subprocess.run(
        [sys.executable, "-m", f"cnntrain.cli.{module}", *args], cwd=cwd, capture_output=True,
        text=True, timeout=BOUND_S, env={**os.environ, "PYTHONPATH": str(REPO)},
    )  # fmt: skip


@pytest.fixture
def poisoned_run(copied_run, tmp_path) -> tuple[Path, Path]:
    """A received run folder whose checkpoints' configs hold a nested `_target_` that touches a
    marker file (optimizer.dampening, a key SGD takes); the marker's path."""
    marker = tmp_path / "PWNED"
    for name in (LAST, BEST):
        poison_checkpoint(
            checkpoint_path(copied_run, name),
            lambda config: config["optimizer"].update(dampening=payload(marker)),
        )
    return copied_run, marker


def test_resume_of_a_received_run_refuses_code_in_its_checkpoint(poisoned_run, tmp_path):
    run, marker = poisoned_run
    proc = run_cli(f"resume={run}", "trainer.epochs=3", cwd=tmp_path, check=False,
                   timeout=BOUND_S)  # fmt: skip
    one_line_refusal(proc, "optimizer.dampening", "not a key")
    assert not marker.exists()


def test_resume_of_a_downloaded_checkpoint_alone_refuses_code(poisoned_run, tmp_path):
    run, marker = poisoned_run
    downloaded = tmp_path / "downloads" / "model.pt"
    downloaded.parent.mkdir()
    shutil.copy(checkpoint_path(run, LAST), downloaded)
    proc = run_cli(f"resume={downloaded}", "trainer.epochs=3", cwd=tmp_path, check=False,
                   timeout=BOUND_S)  # fmt: skip
    one_line_refusal(proc, str(downloaded), "optimizer.dampening")
    assert not marker.exists()
    assert sorted(p.name for p in downloaded.parent.iterdir()) == ["model.pt"]  # nothing written


@pytest.mark.parametrize("command", ["eval", "predict", "export"])
def test_commands_using_a_received_run_refuse_code_in_its_checkpoint(poisoned_run, tmp_path,
                                                                      command):  # fmt: skip
    run, marker = poisoned_run
    images = make_image_folder(tmp_path / "images", splits=("test",), mode="RGB", size=(32, 32))
    args = {"eval": [str(run)], "predict": [str(run), str(images), "--out", "p.csv"],
            "export": [str(run), "--format", "onnx"]}[command]  # fmt: skip
    before = sorted(p.relative_to(run) for p in run.rglob("*"))
    one_line_refusal(tool(command, *args, cwd=tmp_path), "optimizer.dampening")
    assert not marker.exists()
    assert sorted(p.relative_to(run) for p in run.rglob("*")) == before
    assert not (tmp_path / "p.csv").exists()


def test_init_from_a_received_run_refuses_code_in_its_checkpoint(poisoned_run, tmp_path):
    run, marker = poisoned_run
    images = make_image_folder(tmp_path / "images", mode="RGB", size=(32, 32))
    proc = run_cli("data=imagefolder", f"data.root={images}", "model=cifar10cnn", "logger=none",
                   f"model.init_from={run}", "trainer.epochs=1", cwd=tmp_path, check=False,
                   timeout=BOUND_S)  # fmt: skip
    one_line_refusal(proc, "best.pt", "optimizer.dampening")
    assert not marker.exists()


def test_summary_of_a_config_starting_from_a_received_run_never_reads_its_config(
    poisoned_run, tmp_path
):
    run, marker = poisoned_run
    proc = tool("summary", "model=cifar10cnn", f"model.init_from={run}", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "Conv2d" in proc.stdout
    assert not marker.exists()


def test_resume_never_reads_a_received_folders_overrides(copied_run, tmp_path):
    """Lines appended to .hydra/overrides.yaml — a nested `_target_` and an `${oc.env:}` that
    would copy a secret into the checkpoints — are not read: the run resumes with its saved
    values, and neither reaches a file."""
    marker, secret = tmp_path / "PWNED", "s3cr3t-token-4711"
    overrides = copied_run / ".hydra" / "overrides.yaml"
    lines = yaml.safe_load(overrides.read_text())
    lines += [f"+optimizer.dampening={{_target_:pathlib.Path.touch,self:'{marker}'}}",
              "+trainer.note=${oc.env:CNNTRAIN_TEST_SECRET}", "model.dropout=0.3"]  # fmt: skip
    overrides.write_text(yaml.safe_dump(lines))
    proc = run_cli(f"resume={copied_run}", "trainer.epochs=3", cwd=tmp_path, check=False,
                   timeout=BOUND_S * 2, env={"CNNTRAIN_TEST_SECRET": secret})  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert not marker.exists()
    config = saved_config(load_checkpoint(checkpoint_path(copied_run, LAST)), copied_run)
    assert "dampening" not in config["optimizer"] and "note" not in config["trainer"]
    assert config["model"]["dropout"] == 0.5 and config["trainer"]["epochs"] == 3
    for path in copied_run.rglob("*"):
        if path.is_file():
            assert secret.encode() not in path.read_bytes(), path


def test_a_resumed_run_takes_its_groups_defaults_from_its_saved_config_alone(finished_run):
    """Keys added since a run was saved come from today's files of the options its saved config
    names, with no .hydra/ file read."""
    path = checkpoint_path(finished_run, LAST)
    saved = saved_config(load_checkpoint(path), path)
    assert chosen_options(saved) == ["data=cifar10", "model=cifar10cnn", "optimizer=sgd",
                                     "scheduler=cosine", "loss=default"]  # fmt: skip
    saved["model"], saved["optimizer"]["_target_"] = {"name": "resnet"}, "torch.optim.AdamW"
    assert chosen_options(saved)[1:3] == ["model=resnet", "optimizer=adamw"]


@pytest.mark.parametrize(
    "key, value, words",
    [
        (("scheduler", "_target_"), "pathlib.Path.touch", ["scheduler._target_", "one of"]),
        (("optimizer", "_target_"), "joblib.load", ["optimizer._target_"]),
        (("trainer", "device"), "${oc.env:HOME}", ["trainer.device", "interpolation"]),
        (("data", "augment"), "hflip", ["data.augment", "a value where"]),
        (("model", "dropout"), {"_target_": "os.getcwd"}, ["model.dropout", "a mapping"]),
        (("data", "mean"), [{"_target_": "os.getcwd"}], ["data.mean", "plain values"]),
        (("data", "eval_augment"), {"x": 1}, ["data.eval_augment.x"]),
    ],
)
def test_a_saved_config_holds_only_what_the_config_files_set(finished_run, key, value, words):
    path = checkpoint_path(finished_run, LAST)
    state = load_checkpoint(path)
    state["config"][key[0]][key[1]] = value
    with pytest.raises(UserError) as refused:
        saved_config(state, path)
    assert all(word in str(refused.value) for word in words), refused.value
    assert "\n" not in str(refused.value)


def test_a_saved_config_drops_trackers_and_callbacks_and_keeps_moved_targets(finished_run):
    path = checkpoint_path(finished_run, LAST)
    state = load_checkpoint(path)
    state["config"]["callbacks"] = {"mine": {"_target_": "my.Callback"}}
    state["config"]["scheduler"]["_target_"] = "cnntrain.optim.Cosine"  # before the layers
    config = saved_config(state, path)
    assert "callbacks" not in config and "logger" not in config
    assert config["scheduler"]["_target_"] == "cnntrain.training.schedules.Cosine"


@pytest.mark.slow
def test_a_continued_sweep_refuses_code_in_a_received_job_folder(poisoned_run, tmp_path):
    """A received Optuna sweep folder whose study says job 0 was running and holds a pruner that
    runs code: the continued sweep replaces that pruner by its own before any job builds it, and
    retries job 0 in its folder (resume=), which refuses the poisoned checkpoint; the trial fails,
    the sweep goes on (and says at its end that job 0 did not complete), nothing runs."""
    run, marker = poisoned_run
    sweep = (tmp_path / "search").resolve()
    shutil.copytree(run, sweep / "0")
    (sweep / "0" / "results.json").unlink()  # it stopped while running
    study = optuna.create_study(study_name=str(sweep), direction="maximize",
                                storage=f"sqlite:///{sweep / 'optuna.db'}")  # fmt: skip
    trial = study.ask({"optimizer.lr": FloatDistribution(1e-3, 1e-1, log=True)})
    trial.set_user_attr("job", 0)
    trial.set_user_attr("sweep_dir", str(sweep))
    study.set_user_attr(PRUNER_ATTR, payload(marker))  # jobs build the study's pruner
    images = make_image_folder(tmp_path / "images", mode="RGB", size=(32, 32))
    proc = run_cli(
        "-m", "hydra/sweeper=optuna", f"hydra.sweep.dir={sweep}", "hydra.sweeper.n_trials=2",
        "hydra.sweeper.pruner=none", "optimizer.lr=tag(log, interval(1e-3, 1e-1))",
        "data=imagefolder", f"data.root={images}", "model=simplecnn", "trainer.epochs=1",
        "logger=none", "trainer.plots=false", cwd=tmp_path, check=False, timeout=BOUND_S * 2,
    )  # fmt: skip
    assert proc.returncode == 1 and "1 job(s) did not complete: 0" in proc.stderr, proc.stderr
    assert not marker.exists()
    error = (sweep / "0" / "error.txt").read_text()
    assert "optimizer.dampening" in error and len(error.strip().splitlines()) == 1
    states = [t.state for t in optuna.load_study(study_name=str(sweep),
              storage=f"sqlite:///{sweep / 'optuna.db'}").trials]  # fmt: skip
    assert TrialState.FAIL in states and TrialState.COMPLETE in states


RUN_BEFORE = Path(__file__).parent.parent / "fixtures" / "run_before_security"


@pytest.mark.slow
def test_a_run_written_before_these_checks_evaluates_predicts_and_resumes(tmp_path):
    """tests/fixtures/run_before_security, written by main before received configs were checked:
    its checkpoints pass the checks, evaluate to its own test accuracy, predict, and resume."""
    run = Path(shutil.copytree(RUN_BEFORE, tmp_path / "run"))
    proc = tool("eval", str(run), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    evaluated = json.loads((Path(proc.stdout.splitlines()[-1]) / "results.json").read_text())
    assert evaluated["test/acc"] == pytest.approx(
        json.loads((run / "results.json").read_text())["test/acc"]
    )
    images = make_image_folder(tmp_path / "images", splits=("test",), per_class=2, size=(28, 28))
    proc = tool("predict", str(run), str(images), "--out", "p.csv", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert len((tmp_path / "p.csv").read_text().splitlines()) == 1 + 4
    run_cli(f"resume={run}", "trainer.epochs=2", cwd=tmp_path, timeout=BOUND_S * 2)
    assert [r["epoch"] for r in read_jsonl(run / "metrics.jsonl")] == [1, 2]


@pytest.mark.parametrize(
    "name, content, refused",
    [
        ("results.json", "{", False),  # not JSON: the report goes on without it
        (".hydra/config.yaml", "!!python/object/apply:pathlib.Path.touch [MARKER]", False),
        ("results.json", '{"test/acc": 0.5, "classes": 3}', True),  # JSON, not cnntrain's
    ],
)
def test_a_report_of_a_received_folder_reads_its_files_as_data(tmp_path, name, content, refused):
    run = Path(shutil.copytree(RUN_BEFORE, tmp_path / "run"))
    marker = tmp_path / "PWNED"
    (run / name).write_text(content.replace("MARKER", str(marker)))
    proc = tool("report", str(run), cwd=tmp_path)
    if refused:
        one_line_refusal(proc, str(run), "not as cnntrain writes it")
    else:
        assert proc.returncode == 0 and (run / "report.html").is_file(), proc.stderr
    assert not marker.exists()


def test_a_resumed_run_keeps_its_trackers_by_name_with_this_machines_settings(
    finished_run, tmp_path
):
    """`cnntrain resume=RUN` tracks where the run did (its trackers' names), set up as today's
    conf/logger/ says: a received tracking URI is not taken; the command line's `logger=` wins."""
    run = Path(shutil.copytree(finished_run, tmp_path / "run"))
    poison_checkpoint(
        checkpoint_path(run, LAST),
        lambda config: config["logger"].update(
            mlflow={"_target_": "cnntrain.loggers.mlflow.MLflowLogger",
                    "tracking_uri": "http://attacker.example", "experiment_name": "x",
                    "log_checkpoints": True},
            mine={"_target_": "my.Tracker"},
        ),
    )  # fmt: skip
    resumed = resumed_config(compose_config(f"resume={run}"), [f"resume={run}"])
    assert sorted(resumed.logger) == ["mlflow", "tensorboard"]
    assert "attacker" not in str(resumed.logger.mlflow.tracking_uri)
    assert resumed.logger.mlflow.log_checkpoints is False
    for override, names in (("logger=none", []), ("logger=mlflow", ["mlflow"])):
        cfg = compose_config(f"resume={run}", override)
        assert sorted(resumed_config(cfg, [f"resume={run}", override]).logger) == names
