"""A plain hand-written PyTorch BCE loop on the CIFAR-10 mosaics, the baseline
`experiment=mosaic_multilabel` is measured against: the same mosaics (cnntrain's own data=mosaic
arrays), the same network (built by cnntrain's model registry from the experiment's model config,
its whitening stem fitted on 5,000 training images as cnntrain does), the same number of training
images (the experiment's data.val_split held out, here at random), batch size, epochs, SGD and
one-cycle schedule; BCEWithLogitsLoss on sigmoid outputs, random horizontal flips, fp32, a
DataLoader over a TensorDataset, no validation. At the end: test mAP by scikit-learn
(`average_precision_score`, macro over the labels with positives). Prints one JSON line.

    CNNTRAIN_DATA_DIR=../shared/datasets python -m bench.mosaic_loop [OVERRIDES…]

OVERRIDES are cnntrain's (e.g. `trainer.epochs=1 data.mosaics.train=512`): the recipe is read from
`cnntrain experiment=mosaic_multilabel OVERRIDES…`'s config, so both sides train the same one.
"""

import argparse
import json
import time

STARTED = time.perf_counter()  # whole-process time starts before the heavy imports

import numpy as np  # noqa: E402
import torch  # noqa: E402
from hydra import compose, initialize_config_dir  # noqa: E402
from sklearn.metrics import average_precision_score  # noqa: E402
from torch import nn  # noqa: E402
from torch.utils.data import DataLoader, TensorDataset  # noqa: E402

from bench.common import REPO, machine  # noqa: E402
from bench.plain_loop import clock, pick_device  # noqa: E402
from cnntrain.config.resolvers import register_resolvers  # noqa: E402
from cnntrain.core.spec import InputSpec  # noqa: E402
from cnntrain.data.known import open_splits  # noqa: E402
from cnntrain.models.registry import build_model  # noqa: E402

EXPERIMENT = "mosaic_multilabel"
STEM_SAMPLE = 5000  # training images FastNet's whitening stem is fitted on (as train.py does)


def recipe(overrides: list[str]):
    """The config `cnntrain experiment=mosaic_multilabel overrides…` would run."""
    register_resolvers()
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        cfg = compose("config", overrides=[f"experiment={EXPERIMENT}", *overrides])
    if cfg.optimizer._target_ != "torch.optim.SGD" or cfg.scheduler.name != "onecycle":
        raise SystemExit(
            f"this loop writes SGD with a one-cycle schedule; experiment={EXPERIMENT} "
            f"now uses {cfg.optimizer._target_} and {cfg.scheduler.name}: match them"
        )
    return cfg


def as_tensors(source) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, 3, H, W) uint8 images and (N, L) float32 targets of a data=mosaic split."""
    return torch.from_numpy(source.arrays).permute(0, 3, 1, 2), torch.from_numpy(source.targets)


def normalizer(images: torch.Tensor):
    """x ↦ (x/255 − mean) / std per channel, with the training images' statistics."""
    floats = images.float() / 255
    mean, std = floats.mean((0, 2, 3))[:, None, None], floats.std((0, 2, 3))[:, None, None]
    return lambda x: (x.float() / 255 - mean) / std


def mean_average_precision(targets: np.ndarray, scores: np.ndarray) -> float:
    """Macro average precision over the labels that have a positive in `targets` (N, L)."""
    present = targets.sum(0) > 0
    return float(average_precision_score(targets[:, present], scores[:, present], average="macro"))


def evaluate(model, images, targets, normalize, batch: int, device) -> float:
    model.eval()
    with torch.no_grad():
        scores = [torch.sigmoid(model(normalize(x).to(device))).cpu() for x in images.split(batch)]
    return mean_average_precision(targets.numpy(), torch.cat(scores).numpy())


def run(cfg, device_name: str) -> dict:
    torch.manual_seed(cfg.trainer.seed)
    device = pick_device(device_name)
    found = open_splits(cfg.data, cfg.paths.data_dir, cfg.paths.cache_dir)
    images, targets = as_tensors(found.splits["train"])
    kept = torch.randperm(len(images))[: round(len(images) * (1 - cfg.data.val_split))]
    images, targets = images[kept], targets[kept]
    test_images, test_targets = as_tensors(found.splits["test"])
    normalize = normalizer(images)
    spec = InputSpec(3, images.shape[2], images.shape[3], len(found.classes))
    model = build_model(cfg.model, spec)
    if hasattr(model, "init_from_data"):  # FastNet: its frozen stem whitens the data's patches
        model.init_from_data(normalize(images[torch.randperm(len(images))[:STEM_SAMPLE]]))
    model.to(device)
    loader = DataLoader(TensorDataset(images, targets), batch_size=cfg.data.batch_size,
                        shuffle=True)  # fmt: skip
    o, s, epochs = cfg.optimizer, cfg.scheduler, cfg.trainer.epochs
    optimizer = torch.optim.SGD(model.parameters(), lr=o.lr, momentum=o.momentum,
                                nesterov=o.nesterov, weight_decay=o.weight_decay)  # fmt: skip
    scheduler = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=o.lr, total_steps=epochs * len(loader), pct_start=s.pct_start,
        div_factor=s.div_factor, final_div_factor=s.final_div_factor,
        anneal_strategy=s.anneal_strategy, cycle_momentum=False,
    )  # fmt: skip
    criterion = nn.BCEWithLogitsLoss()
    history, train_time = [], 0.0
    for epoch in range(1, epochs + 1):
        model.train()
        began, total = clock(device), 0.0
        for x, y in loader:
            x, y = normalize(x).to(device), y.to(device)
            flip = torch.rand(len(x), device=device) < 0.5  # mirror half of the batch
            x = torch.where(flip[:, None, None, None], x.flip(3), x)
            optimizer.zero_grad()
            loss = criterion(model(x), y)
            loss.backward()
            optimizer.step()
            scheduler.step()
            total += loss.item() * len(x)
        train_time += clock(device) - began
        history.append({"epoch": epoch, "train_loss": round(total / len(images), 4),
                        "train_time_s": round(train_time, 3)})  # fmt: skip
    test_map = evaluate(model, test_images, test_targets, normalize, cfg.data.eval_batch_size,
                        device)  # fmt: skip
    return {
        "wall_s": round(time.perf_counter() - STARTED, 3),
        "train_time_s": round(train_time, 3),
        "train_images_per_s": round(epochs * len(images) / train_time, 1),
        "test_mAP": round(test_map, 4),
        "train_images": len(images),
        "test_images": len(test_images),
        "epochs": history,
        "device": str(device),
        "precision": "float32",
        "machine": machine(str(device)),
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("overrides", nargs="*", help="cnntrain overrides of the experiment")
    ap.add_argument("--device", default="auto", help="auto (cuda if present), cpu, cuda, cuda:N")
    args = ap.parse_args()
    cfg = recipe(args.overrides)
    print(json.dumps({"bench": "mosaic_loop", "overrides": args.overrides,
                      **run(cfg, args.device)}))  # fmt: skip


if __name__ == "__main__":
    main()
