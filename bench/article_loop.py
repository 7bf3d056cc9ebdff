"""The article's own CIFAR-10 training loop, as the baseline cnntrain is measured against.

Its model (CIFAR10CNN), its torchvision PIL transforms in a DataLoader with num_workers=2, fp32,
SGD(lr 0.01, momentum 0.9, weight decay 5e-4), StepLR(20, 0.1) stepped per epoch, evaluation on
the test set after every epoch, stopping at 90% (the loop itself: bench/plain_loop.py). Only the
choice of images comes from cnntrain (`seeded_subset`), so both train on the same subset.
Prints one JSON line.

    python -m bench.article_loop --root CIFAR_IMAGEFOLDER --train-samples 4096 --epochs 3 \
        [--test-samples N] [--device auto|cpu|cuda]
"""

import argparse
import json
import time

STARTED = time.perf_counter()  # whole-process time starts before the heavy imports

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torchvision.transforms as T  # noqa: E402
from torch.utils.data import DataLoader, Subset  # noqa: E402
from torchvision.datasets import ImageFolder  # noqa: E402

from bench.plain_loop import pick_device, train  # noqa: E402
from cnntrain.data.splits import seeded_subset  # noqa: E402
from cnntrain.models.article import CIFAR10CNN  # noqa: E402

MEAN, STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)


def subset(dataset, samples: int | None, split_seed: int):
    indices = seeded_subset(np.arange(len(dataset)), samples, split_seed)
    return Subset(dataset, indices.tolist())


def loaders(root: str, train_samples: int | None, test_samples: int | None, split_seed: int):
    train_tf = T.Compose([
        T.RandomCrop(32, padding=4),
        T.RandomHorizontalFlip(),
        T.RandomRotation(15),
        T.ColorJitter(brightness=0.2, contrast=0.2, saturation=0.2, hue=0.1),
        T.ToTensor(),
        T.Normalize(MEAN, STD),
    ])  # fmt: skip
    test_tf = T.Compose([T.ToTensor(), T.Normalize(MEAN, STD)])
    train_set = subset(ImageFolder(f"{root}/train", train_tf), train_samples, split_seed)
    test_set = subset(ImageFolder(f"{root}/test", test_tf), test_samples, split_seed)
    train_loader = DataLoader(train_set, batch_size=128, shuffle=True, num_workers=2)
    test_loader = DataLoader(test_set, batch_size=128, shuffle=False, num_workers=2)
    return train_loader, test_loader


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--root", required=True, help="CIFAR-10 ImageFolder with train/ and test/")
    ap.add_argument("--train-samples", type=int, default=None)
    ap.add_argument("--test-samples", type=int, default=None, help="default: all 10,000")
    ap.add_argument("--epochs", type=int, default=50)
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--split-seed", type=int, default=0)
    ap.add_argument("--device", default="auto", help="auto (cuda if present), cpu, cuda, cuda:N")
    args = ap.parse_args()
    torch.manual_seed(args.seed)
    device = pick_device(args.device)
    train_loader, test_loader = loaders(
        args.root, args.train_samples, args.test_samples, args.split_seed
    )
    model = CIFAR10CNN().to(device)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=20, gamma=0.1)
    figures = train(model=model, optimizer=optimizer, scheduler=scheduler,
                    train_loader=train_loader, test_loader=test_loader, epochs=args.epochs,
                    device=device, started=STARTED, stop_at=0.90)  # fmt: skip
    print(json.dumps({"bench": "article_loop", **figures}))


if __name__ == "__main__":
    main()
