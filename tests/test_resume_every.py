"""Every registered model and every shipped recipe resumes exactly: what a model freezes or
initialises from data comes back from the checkpoint (in-process runs, small sizes)."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from cnntrain.core.checkpoint import save_checkpoint
from cnntrain.models import model_names
from tests.conftest import (
    CONF,
    make_image_folder,
    needs_cifar,
    needs_fashion,
    read_jsonl,
    run_cli,
    train_here,
)
from tests.test_resume import TIME_FIELDS

OLD_RUN = Path(__file__).parent / "fixtures" / "run_before_layers"
QUIET = ("logger=none", "trainer.plots=false", "trainer.epochs=1")
FAULT = "+callbacks.fault._target_=tests.faults.Fault"


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    # 24 training images: 3 steps of 8; 16 px is enough for every model (VGG pools to 1×1).
    return make_image_folder(tmp_path_factory.mktemp("data") / "shapes", per_class=12,
                             mode="RGB", size=(16, 16))  # fmt: skip


def interrupted_and_resumed(overrides: list[str], tmp_path) -> tuple:
    """(reference run folder, interrupted-then-resumed run folder) of the same config."""
    reference, resumed = tmp_path / "reference", tmp_path / "resumed"
    train_here(*overrides, output_dir=reference)
    with pytest.raises(SystemExit) as stopped:  # SIGINT during batch 0: stops after it, mid-epoch
        train_here(*overrides, FAULT, "+callbacks.fault.at=sigint-step:1:0", output_dir=resumed)
    assert stopped.value.code == 130
    assert torch.load(resumed / "checkpoints" / "last.pt", weights_only=True)["progress"]["step"]
    train_here(output_dir=resumed, resume=resumed)
    return reference, resumed


def assert_same_run(a, b) -> None:
    last_a, last_b = (torch.load(r / "checkpoints" / "last.pt", weights_only=True) for r in (a, b))
    assert last_a["trainable"] == last_b["trainable"]
    for name, tensor in last_a["model"].items():
        assert torch.equal(tensor, last_b["model"][name]), name
    opt_a, opt_b = last_a["optimizer"]["state"], last_b["optimizer"]["state"]
    assert opt_a.keys() == opt_b.keys()
    for index, state in opt_a.items():
        for key, value in state.items():
            assert torch.equal(torch.as_tensor(value), torch.as_tensor(opt_b[index][key])), key
    strip = lambda rows: [{k: v for k, v in r.items() if k not in TIME_FIELDS} for r in rows]  # noqa: E731
    assert strip(read_jsonl(a / "metrics.jsonl")) == strip(read_jsonl(b / "metrics.jsonl"))


@pytest.mark.parametrize("name", model_names())
def test_every_model_resumes_exactly(name, shapes, tmp_path):
    overrides = ["data=imagefolder", f"data.root={shapes}", f"model={name}", "data.batch_size=8",
                 *QUIET]  # fmt: skip
    assert_same_run(*interrupted_and_resumed(overrides, tmp_path))


RECIPES = sorted(p.stem for p in (CONF / "experiment").glob("*.yaml"))
NEEDS = {"fashion_mnist": needs_fashion}


@pytest.mark.parametrize(
    "recipe", [pytest.param(r, marks=NEEDS.get(r, needs_cifar)) for r in RECIPES]
)
def test_every_recipe_resumes_exactly(recipe, shapes, tmp_path):
    # Recipes for your own images get a folder; finetune's ImageNet weights are left out (random
    # init at the folder's size: its crops, EMA and early stopping still run).
    # (batch 8: 3 steps of its 24 training images, so the stop falls mid-epoch).
    # Mosaics: 320 of them (1,280 CIFAR-10 tiles decoded) instead of all 15,000.
    own = {"finetune": [f"data.root={shapes}", "model.weights=null", "data.batch_size=8"],
           "mosaic_multilabel": ["data.mosaics.train=256", "data.mosaics.test=64"]}  # fmt: skip
    overrides = [f"experiment={recipe}", "data.max_train_samples=64", "data.max_eval_samples=32",
                 "data.batch_size=16", *own.get(recipe, []), *QUIET]  # fmt: skip
    assert_same_run(*interrupted_and_resumed(overrides, tmp_path))


@pytest.mark.slow
def test_a_run_from_an_older_version_resumes_with_todays_defaults_and_is_evaluated(tmp_path):
    """tests/fixtures/run_before_layers: a run written before the package was laid out in
    layers, its checkpoint's config naming `cnntrain.optim.Cosine`. Keys added since (here two
    taken out of its config) take today's defaults of the options its saved config names; it
    resumes in the real `cnntrain` app and cnntrain-eval tests it."""
    run = tmp_path / "run"
    shutil.copytree(OLD_RUN, run)
    path = run / "checkpoints" / "last.pt"
    saved = torch.load(path, weights_only=True)
    assert saved["config"]["scheduler"]["_target_"] == "cnntrain.optim.Cosine"
    del saved["config"]["trainer"]["accumulate"], saved["config"]["data"]["augment"]["policy"]
    save_checkpoint(path, {k: v for k, v in saved.items() if k != "format"})
    run_cli(f"resume={run}", "trainer.epochs=2", cwd=tmp_path)
    resumed = torch.load(path, weights_only=True)["config"]
    assert resumed["trainer"]["accumulate"] == 1 and resumed["data"]["augment"]["policy"] == "none"
    assert [r["epoch"] for r in read_jsonl(run / "metrics.jsonl")] == [1, 2]
    proc = subprocess.run([sys.executable, "-m", "cnntrain.cli.eval", str(run)], cwd=tmp_path,
                          capture_output=True, text=True, timeout=300, check=True)  # fmt: skip
    evaluated = json.loads((Path(proc.stdout.splitlines()[-1]) / "results.json").read_text())
    assert evaluated["test/count"] == 256 and evaluated["model"] == "resnet"
    best = json.loads((run / "results.json").read_text())
    assert evaluated["test/acc"] == pytest.approx(best["test/acc"])


def test_a_resumed_runs_saved_config_is_checked_before_any_work(tmp_path):
    """The config read back from a checkpoint meets the same rules as a command line's, before
    any of it is used (its trainer.devices decides how processes start)."""
    run = tmp_path / "run"
    shutil.copytree(OLD_RUN, run)
    path = run / "checkpoints" / "last.pt"
    saved = torch.load(path, weights_only=True)
    saved["config"]["trainer"]["devices"] = "x"
    save_checkpoint(path, {k: v for k, v in saved.items() if k != "format"})
    proc = run_cli(f"resume={run}", "trainer.epochs=2", cwd=tmp_path, check=False)
    assert proc.returncode == 2
    assert proc.stderr.strip() == (
        "cnntrain: error: trainer.devices='x' is not valid; use an integer ≥ 1 (processes on this "
        "machine)"
    )
    assert not (run / "metrics.jsonl").exists()  # nothing trained, nothing written
