"""The article's own CIFAR-10 training loop, as the baseline cnntrain is measured against.

Its model (CIFAR10CNN), its torchvision PIL transforms in a DataLoader with num_workers=2, fp32,
SGD(lr 0.01, momentum 0.9, weight decay 5e-4), StepLR(20, 0.1) stepped per epoch, evaluation on
the test set after every epoch, stopping at 90%. Only the choice of training images comes from
cnntrain (`seeded_subset`), so both train on the same subset. Prints one JSON line.

    python bench/article_loop.py --root CIFAR_IMAGEFOLDER --train-samples 4096 --epochs 3
"""

import argparse
import json
import time

STARTED = time.perf_counter()  # whole-process time starts before the heavy imports

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torchvision.transforms as T  # noqa: E402
from torch import nn  # noqa: E402
from torch.utils.data import DataLoader, Subset  # noqa: E402
from torchvision.datasets import ImageFolder  # noqa: E402

from cnntrain.data.splits import seeded_subset  # noqa: E402
from cnntrain.models.article import CIFAR10CNN  # noqa: E402

MEAN, STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)


def loaders(root: str, train_samples: int | None, split_seed: int):
    train_tf = T.Compose([
        T.RandomCrop(32, padding=4),
        T.RandomHorizontalFlip(),
        T.RandomRotation(15),
        T.ColorJitter(brightness=0.2, contrast=0.2, saturation=0.2, hue=0.1),
        T.ToTensor(),
        T.Normalize(MEAN, STD),
    ])  # fmt: skip
    test_tf = T.Compose([T.ToTensor(), T.Normalize(MEAN, STD)])
    train_set = ImageFolder(f"{root}/train", train_tf)
    indices = seeded_subset(np.arange(len(train_set)), train_samples, split_seed)
    train_set = Subset(train_set, indices.tolist())
    test_set = ImageFolder(f"{root}/test", test_tf)
    train_loader = DataLoader(train_set, batch_size=128, shuffle=True, num_workers=2)
    test_loader = DataLoader(test_set, batch_size=128, shuffle=False, num_workers=2)
    return train_loader, test_loader


def evaluate(model, loader, device) -> float:
    model.eval()
    correct = total = 0
    with torch.no_grad():
        for images, labels in loader:
            images, labels = images.to(device), labels.to(device)
            correct += (model(images).argmax(1) == labels).sum().item()
            total += labels.size(0)
    return correct / total


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--root", required=True, help="CIFAR-10 ImageFolder with train/ and test/")
    ap.add_argument("--train-samples", type=int, default=None)
    ap.add_argument("--epochs", type=int, default=50)
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--split-seed", type=int, default=0)
    args = ap.parse_args()
    torch.manual_seed(args.seed)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    train_loader, test_loader = loaders(args.root, args.train_samples, args.split_seed)
    model = CIFAR10CNN().to(device)
    criterion = nn.CrossEntropyLoss()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=20, gamma=0.1)
    history, train_time, images = [], 0.0, 0
    for epoch in range(1, args.epochs + 1):
        model.train()
        began = time.perf_counter()
        for inputs, labels in train_loader:
            inputs, labels = inputs.to(device), labels.to(device)
            optimizer.zero_grad()
            loss = criterion(model(inputs), labels)
            loss.backward()
            optimizer.step()
            images += labels.size(0)
        scheduler.step()
        train_time += time.perf_counter() - began
        acc = evaluate(model, test_loader, device)
        history.append({"epoch": epoch, "test_acc": acc, "train_time_s": round(train_time, 3),
                        "wall_s": round(time.perf_counter() - STARTED, 3)})  # fmt: skip
        if acc >= 0.90:
            break
    print(json.dumps({
        "wall_s": round(time.perf_counter() - STARTED, 3),
        "train_time_s": round(train_time, 3),
        "train_images_per_s": round(images / train_time, 1),
        "test_acc": history[-1]["test_acc"],
        "epochs": history,
        "device": str(device),
    }))  # fmt: skip


if __name__ == "__main__":
    main()
