"""The training recipes' pieces: MixUp / CutMix with soft targets (torchvision's laws, seeded per
batch), gradient accumulation (the same steps as one big batch), each option training on both
data paths, exact resumes with them on, and the shipped recipe."""

import math

import pytest
import torch
from torch import nn

from cnntrain.data.augment.options import read_options
from cnntrain.models import InputSpec, build_model
from cnntrain.training.mixing import BatchMix
from cnntrain.training.precision import Arithmetic
from cnntrain.training.schedules import Cosine
from cnntrain.training.step import StepParts, Totals, train_batch
from tests.conftest import compose_config, make_image_folder, read_jsonl, train_epoch, train_here
from tests.test_augment import KS, Z, augment_cfg, ks_uniform
from tests.test_resume_every import assert_same_run, interrupted_and_resumed

CPU = torch.device("cpu")
CLASSES = 5
QUIET = ("logger=none", "trainer.plots=false", "trainer.epochs=1")


def batch_mix(**options) -> BatchMix:
    return BatchMix(read_options(augment_cfg(**options)), CLASSES, seed=7)


def distinct_labels(n: int) -> torch.Tensor:
    """(N,) labels, N even, whose neighbours (the images each is mixed with) all differ."""
    assert n % 2 == 0
    return torch.arange(n) % 2 * 3


# --- MixUp and CutMix ----------------------------------------------------------------------------


def test_mixup_blends_neighbours_with_beta_weights_and_soft_targets_that_sum_to_one():
    mix, n = batch_mix(mixup=1.0), 8
    x, y = torch.rand(n, 3, 6, 6), distinct_labels(n)
    weights = []
    for batch in range(300):
        mixed, soft = mix(x, y, epoch=1, batch=batch)
        assert soft.shape == (n, CLASSES)
        torch.testing.assert_close(soft.sum(1), torch.ones(n))
        lam = soft[0, y[0]]  # the image's own share; its neighbour's label has the rest
        torch.testing.assert_close(soft[torch.arange(n), y.roll(1)], (1 - lam).expand(n))
        torch.testing.assert_close(mixed, lam * x + (1 - lam) * x.roll(1, 0))
        weights.append(float(lam))
    assert ks_uniform(torch.tensor(weights), 0, 1) < KS / math.sqrt(300)  # Beta(1, 1)


def test_mixup_weights_follow_beta_alpha_alpha():
    mix, y = batch_mix(mixup=2.0), distinct_labels(4)
    lam = torch.tensor([float(mix(torch.rand(4, 1, 2, 2), y, 0, b)[1][0, 0]) for b in range(400)])
    beta_2_2_cdf = 3 * lam**2 - 2 * lam**3  # Beta(2, 2)'s CDF
    assert ks_uniform(beta_2_2_cdf, 0, 1) < KS / math.sqrt(400)


def test_cutmix_pastes_one_box_whose_area_is_the_neighbours_share():
    mix, n, (h, w) = batch_mix(cutmix=1.0), 6, (12, 16)
    x, y = torch.rand(n, 3, h, w), distinct_labels(n)
    for batch in range(100):
        mixed, soft = mix(x, y, epoch=2, batch=batch)
        pasted = (mixed != x).any(1)  # (N, H, W): where the neighbour shows
        assert torch.equal(mixed[pasted.unsqueeze(1).expand_as(x)],
                           x.roll(1, 0)[pasted.unsqueeze(1).expand_as(x)])  # fmt: skip
        rows, cols = pasted[0].any(1), pasted[0].any(0)
        assert torch.equal(pasted[0], rows.view(h, 1) & cols.view(1, w))  # one box
        assert (pasted == pasted[0]).all()  # the same box in every image
        area = pasted[0].sum() / (h * w)
        torch.testing.assert_close(soft[torch.arange(n), y], (1 - area).expand(n))  # λ adjusted
        torch.testing.assert_close(soft.sum(1), torch.ones(n))


def test_both_on_pick_one_of_them_per_batch_with_even_odds():
    mix, x, y = batch_mix(mixup=0.5, cutmix=1.0), torch.rand(4, 1, 8, 8), distinct_labels(4)
    cutmix = 0
    for batch in range(300):
        mixed, _ = mix(x, y, epoch=0, batch=batch)
        changed = (mixed != x).any(1)[0]
        cutmix += int(not changed.all())  # MixUp changes every pixel, CutMix a box
    assert abs(cutmix / 300 - 0.5) < Z * math.sqrt(0.25 / 300)


def test_mixing_is_a_function_of_seed_epoch_and_batch_and_leaves_the_global_rng_alone():
    mix, x, y = batch_mix(mixup=0.2, cutmix=1.0), torch.rand(8, 3, 8, 8), distinct_labels(8)
    state = torch.random.get_rng_state()
    a, b, c = mix(x, y, 3, 5), mix(x, y, 3, 5), mix(x, y, 3, 6)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(a[1], c[1])
    assert torch.equal(torch.random.get_rng_state(), state)


def test_label_smoothing_composes_with_soft_targets():
    """torch's CrossEntropyLoss smooths class probabilities as it does indices: (1-ε)·t + ε/K."""
    logits, eps = torch.randn(6, CLASSES), 0.1
    soft = torch.softmax(torch.randn(6, CLASSES), 1)
    loss = nn.CrossEntropyLoss(label_smoothing=eps)(logits, soft)
    smoothed = (1 - eps) * soft + eps / CLASSES
    torch.testing.assert_close(loss, -(smoothed * logits.log_softmax(1)).sum(1).mean())


# --- gradient accumulation ----------------------------------------------------------------------


class Batches:
    """What the epoch loop needs of a loader: len() and batches(epoch, start)."""

    def __init__(self, x, y, size):
        self.items = list(zip(x.split(size), y.split(size), strict=True))

    def __len__(self):
        return len(self.items)

    def batches(self, epoch=0, start=0):
        yield from self.items[start:]


def lenet_parts(accumulate: int, steps_per_epoch: int, **options) -> StepParts:
    torch.manual_seed(0)
    model = build_model({"name": "lenet5"}, InputSpec(1, 8, 8, CLASSES))  # no BN, no dropout
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
    scheduler = Cosine(optimizer, total_steps=2 * steps_per_epoch, steps_per_epoch=steps_per_epoch,
                       warmup_epochs=0.5)  # fmt: skip
    return StepParts(model, optimizer, scheduler, nn.CrossEntropyLoss(), Arithmetic(CPU, None),
                     accumulate=accumulate, **options)  # fmt: skip


def test_batch_64_times_2_takes_the_steps_of_batch_128():
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(256, 1, 8, 8, generator=g), torch.randint(CLASSES, (256,), generator=g)
    big, small = lenet_parts(1, 2), lenet_parts(2, 2)
    for epoch in (1, 2):  # 2 optimizer steps per epoch each, through the warm-up and the decay
        for parts, size in ((big, 128), (small, 64)):
            train_epoch(parts, Batches(x, y, size), epoch, Totals.zeros(CPU))
    assert small.scheduler.last_epoch == big.scheduler.last_epoch == 4  # optimizer steps
    assert small.optimizer.param_groups[0]["lr"] == big.optimizer.param_groups[0]["lr"]
    for a, b in zip(big.model.parameters(), small.model.parameters(), strict=True):
        torch.testing.assert_close(a, b, atol=2e-6, rtol=1e-5)
    moved = sum((p - q).abs().sum() for p, q in zip(big.model.parameters(),
                lenet_parts(1, 2).model.parameters(), strict=True))  # fmt: skip
    assert moved > 0.1  # the weights did train (far beyond the tolerance above)


def test_an_epoch_that_does_not_divide_steps_on_its_remainder_and_ends_steps_in_groups():
    g = torch.Generator().manual_seed(2)
    x, y = torch.randn(320, 1, 8, 8, generator=g), torch.randint(CLASSES, (320,), generator=g)
    parts = lenet_parts(2, 3, ema=None)
    totals = Totals.zeros(CPU)
    batches = Batches(x, y, 64)
    ended = [train_batch(parts, x, y, 1, step, len(batches), totals)
             for step, (x, y) in enumerate(batches.batches(1, 0))]  # fmt: skip
    assert ended == [False, True, False, True, True]  # the loop stops only after a True
    assert parts.scheduler.last_epoch == 3  # 5 batches: steps of 2, 2 and the last 1
    assert totals.count == 320


# --- every option on both data paths, on small real images --------------------------------------


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    # 40 training images of 16 px: 5 batches of 8; val/ gives the final evaluation too.
    return make_image_folder(tmp_path_factory.mktemp("data") / "shapes", per_class=20,
                             mode="RGB", size=(16, 16))  # fmt: skip


OPTION_SETS = {
    "randaugment-erasing-mixup-cutmix": ["data.augment.policy=randaugment",
                                         "data.augment.random_erasing=0.5",
                                         "data.augment.mixup=0.2", "data.augment.cutmix=1.0",
                                         "loss.label_smoothing=0.1"],
    # trivialaugment, accumulation and all mixing on both paths: the resume test below
    "autoaugment-cutmix": ["data.augment.policy=autoaugment",
                           "data.augment.autoaugment_policy=cifar10", "data.augment.cutmix=1.0"],
    "augmix-mixup-accumulate": ["data.augment.policy=augmix", "data.augment.mixup=0.4",
                                "trainer.accumulate=3"],
}  # fmt: skip


def run_on(shapes, loader: str, *overrides: str, output_dir) -> dict:
    return train_here("data=imagefolder", f"data.root={shapes}", "model=lenet5",
                      "data.batch_size=8", f"data.loader={loader}", "data.num_workers=0",
                      *QUIET, *overrides, output_dir=output_dir)  # fmt: skip


@pytest.fixture(scope="module")
def plain_losses(shapes, tmp_path_factory):
    """The first epoch's training loss of each path without any of the options."""
    folder = tmp_path_factory.mktemp("plain")
    return {
        loader: read_jsonl(folder / loader / "metrics.jsonl")[0]["train/loss"]
        for loader in ("tensor", "dataloader")
        if run_on(shapes, loader, output_dir=folder / loader)
    }


@pytest.mark.parametrize("options", OPTION_SETS)
@pytest.mark.parametrize("loader", ["tensor", "dataloader"])
def test_each_option_trains_on_both_paths(options, loader, shapes, plain_losses, tmp_path,
                                          caplog):  # fmt: skip
    overrides = OPTION_SETS[options]
    with caplog.at_level("INFO", logger="cnntrain"):
        results = run_on(shapes, loader, *overrides, output_dir=tmp_path)
    assert results["loader"] == loader
    (row,) = read_jsonl(tmp_path / "metrics.jsonl")
    assert math.isfinite(row["train/loss"]) and row["train/loss"] != plain_losses[loader]
    saved = torch.load(tmp_path / "checkpoints" / "last.pt", weights_only=True)
    accumulate = compose_config(*overrides).trainer.accumulate
    assert saved["scheduler"]["last_epoch"] == math.ceil(5 / accumulate)  # optimizer steps
    mixing = any("mixup" in o or "cutmix" in o for o in overrides)
    assert ("train/acc counts a mixed image's label of larger weight" in caplog.text) == mixing


@pytest.mark.parametrize("loader", ["tensor", "dataloader"])
def test_runs_with_mixing_policies_and_accumulation_resume_exactly(loader, shapes, tmp_path):
    overrides = ["data=imagefolder", f"data.root={shapes}", "model=lenet5", "data.batch_size=8",
                 f"data.loader={loader}", "data.num_workers=0",
                 "data.augment.policy=trivialaugment", "data.augment.mixup=0.2",
                 "data.augment.cutmix=1.0", "data.augment.random_erasing=0.5",
                 "trainer.accumulate=2", "trainer.ema=0.9", *QUIET]  # fmt: skip
    reference, resumed = interrupted_and_resumed(overrides, tmp_path)
    last = torch.load(resumed / "checkpoints" / "last.pt", weights_only=True)
    assert last["scheduler"]["last_epoch"] == 3  # 5 batches, accumulate 2: 3 optimizer steps
    assert_same_run(reference, resumed)


def test_the_recipe_composes_its_pieces():
    cfg = compose_config("experiment=cifar10_resnet18_sota")
    augment = read_options(cfg.data.augment)
    assert (cfg.model.name, cfg.scheduler.name) == ("resnet18", "cosine")
    assert augment.policy == "trivialaugment" and augment.random_erasing > 0
    assert augment.mixup > 0 and augment.cutmix > 0
    assert cfg.loss.label_smoothing > 0 and cfg.trainer.ema
