"""The plain hand-written PyTorch loop of the baselines: train, test after every epoch, time it.

It is the loop a tutorial writes (fp32, NCHW, `model.train()` / `model.eval()`, no tricks), shared
by `bench/article_loop.py` (CIFAR-10) and `bench/fashion_loop.py` (Fashion-MNIST).
"""

import time

import torch
from torch import nn

from bench.common import machine


def clock(device: torch.device) -> float:
    """time.perf_counter() once the device has finished its queued work (CUDA runs async)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter()


def pick_device(name: str) -> torch.device:
    """`auto`: the GPU when there is one, as the tutorial does; else the named device."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def evaluate(model: nn.Module, loader, device: torch.device) -> float:
    """Top-1 accuracy of `model` over `loader`."""
    model.eval()
    correct = total = 0
    with torch.no_grad():
        for images, labels in loader:
            images, labels = images.to(device), labels.to(device)
            correct += (model(images).argmax(1) == labels).sum().item()
            total += labels.size(0)
    return correct / total


def train(*, model, optimizer, scheduler, train_loader, test_loader, epochs: int,
          device: torch.device, started: float, stop_at: float | None = None) -> dict:  # fmt: skip
    """Train `epochs` epochs (or until test accuracy ≥ stop_at), testing after each.

    Returns the figures of the JSON line: whole-process wall time since `started`, training time
    (optimisation steps only), training images/s, test accuracy per epoch, what the loop ran in
    and on (machine()).
    """
    criterion = nn.CrossEntropyLoss()
    history, train_time, images = [], 0.0, 0
    for epoch in range(1, epochs + 1):
        model.train()
        began = clock(device)
        for inputs, labels in train_loader:
            inputs, labels = inputs.to(device), labels.to(device)
            optimizer.zero_grad()
            loss = criterion(model(inputs), labels)
            loss.backward()
            optimizer.step()
            images += labels.size(0)
        if scheduler is not None:
            scheduler.step()
        train_time += clock(device) - began
        acc = evaluate(model, test_loader, device)
        history.append({"epoch": epoch, "test_acc": acc, "train_time_s": round(train_time, 3),
                        "wall_s": round(time.perf_counter() - started, 3)})  # fmt: skip
        if stop_at is not None and acc >= stop_at:
            break
    peak = torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None
    return {
        "wall_s": round(time.perf_counter() - started, 3),
        "train_time_s": round(train_time, 3),
        "train_images_per_s": round(images / train_time, 1),
        "test_acc": history[-1]["test_acc"],
        "epochs": history,
        "device": str(device),
        "precision": "float32",
        "channels_last": False,
        "peak_device_memory_mb": None if peak is None else round(peak, 1),
        "machine": machine(str(device)),
    }
