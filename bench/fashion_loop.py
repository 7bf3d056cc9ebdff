"""A plain hand-written PyTorch loop on Fashion-MNIST, the baseline `experiment=fashion_mnist` is
measured against: the tutorial's SimpleCNN with one input channel, torchvision's `FashionMNIST`
with ToTensor + Normalize, Adam (lr 1e-3), batch 128, 5 epochs, a 2-worker DataLoader, test
evaluation after every epoch (the loop itself: bench/plain_loop.py). Prints one JSON line.

    CNNTRAIN_DATA_DIR=../shared/datasets python -m bench.fashion_loop [--root TORCHVISION_ROOT]

Without --root it reads the four raw idx .gz files of `$CNNTRAIN_DATA_DIR/fashion-mnist/`
through a temporary folder in torchvision's layout: `FashionMNIST/raw/` holding links to them and
their unpacked copies (torchvision reads only unpacked idx files; its download cannot be used,
since it would refetch these re-compressed copies, whose .gz MD5s differ from its own).
"""

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

STARTED = time.perf_counter()  # whole-process time starts before the heavy imports

import torch  # noqa: E402
import torchvision.transforms as T  # noqa: E402
from torch.utils.data import DataLoader  # noqa: E402
from torchvision.datasets import FashionMNIST  # noqa: E402
from torchvision.datasets.utils import extract_archive  # noqa: E402

from bench.plain_loop import pick_device, train  # noqa: E402
from cnntrain.models.article import SimpleCNN  # noqa: E402

MEAN, STD = (0.2860,), (0.3530,)  # of the 60,000 training images


def torchvision_root(idx_dir: Path, root: Path) -> Path:
    """Make `root` a FashionMNIST root: raw/ links to the .gz files in `idx_dir`, unpacked."""
    raw = root / "FashionMNIST" / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    for name, _ in FashionMNIST.resources:  # (file name, MD5 of torchvision's download)
        (raw / name).symlink_to((idx_dir / name).resolve())
        extract_archive(str(raw / name), str(raw))  # torchvision's own unpacking of a download
    return root


def loaders(root: Path):
    transform = T.Compose([T.ToTensor(), T.Normalize(MEAN, STD)])
    train_set = FashionMNIST(str(root), train=True, transform=transform)
    test_set = FashionMNIST(str(root), train=False, transform=transform)
    train_loader = DataLoader(train_set, batch_size=128, shuffle=True, num_workers=2)
    test_loader = DataLoader(test_set, batch_size=128, shuffle=False, num_workers=2)
    return train_loader, test_loader


def run(root: Path, epochs: int, seed: int, device_name: str) -> dict:
    torch.manual_seed(seed)
    device = pick_device(device_name)
    train_loader, test_loader = loaders(root)
    model = SimpleCNN(in_channels=1, image_size=(28, 28)).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    return train(model=model, optimizer=optimizer, scheduler=None,
                 train_loader=train_loader, test_loader=test_loader, epochs=epochs,
                 device=device, started=STARTED)  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--root", type=Path, default=None, help="a prepared torchvision root")
    ap.add_argument("--epochs", type=int, default=5)
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--device", default="auto", help="auto (cuda if present), cpu, cuda, cuda:N")
    args = ap.parse_args()
    if args.root:
        figures = run(args.root, args.epochs, args.seed, args.device)
    else:
        idx_dir = Path(os.environ.get("CNNTRAIN_DATA_DIR", "data")) / "fashion-mnist"
        with tempfile.TemporaryDirectory(prefix="bench-fashion-") as tmp:
            began = time.perf_counter()
            root = torchvision_root(idx_dir, Path(tmp))
            layout_s = round(time.perf_counter() - began, 3)
            figures = run(root, args.epochs, args.seed, args.device) | {"layout_s": layout_s}
    print(json.dumps({"bench": "fashion_loop", **figures}))


if __name__ == "__main__":
    main()
