"""The two data paths, one interface: `loader.batches(epoch, start)` yields ready device batches.

- TensorLoader: the whole split lives on the training device as uint8 (N, C, H, W); shuffling,
  augmentation and normalization run on whole batches there (no worker, no PIL, no copies).
- FileLoader: torch's DataLoader with worker processes decoding and augmenting one PIL image at a
  time; for data larger than the memory budget.

Randomness is a pure function of (seed, epoch, batch or sample index), so an epoch can be
restarted at any batch and draw exactly what an uninterrupted run would.
"""

import torch
from torch.utils.data import DataLoader, Dataset, Sampler
from torchvision.transforms import v2

from cnntrain.data.decode import conform
from cnntrain.data.sources import ImageSource
from cnntrain.data.splits import batch_bounds, epoch_order, mix


class BatchPrep:
    """On the device, for every batch: uint8 → float in [0, 1], augment (train), normalize."""

    def __init__(self, mean, std, device: torch.device, channels_last: bool, augment=None):
        self.mean = torch.tensor(mean, device=device).view(1, -1, 1, 1)
        self.std = torch.tensor(std, device=device).view(1, -1, 1, 1)
        self.device = device
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        self.augment = augment  # a BatchAugment, or None

    def __call__(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        x = x.to(self.device, non_blocking=True).float().div_(255)  # (B, C, H, W) in [0, 1]
        if self.augment is not None and generator is not None:
            x = self.augment(x, generator)
        x = (x - self.mean) / self.std
        return x.contiguous(memory_format=self.memory_format)


class TensorLoader:
    def __init__(self, images, targets, batch_size, train, seed, prep: BatchPrep, weights=None,
                 flip=None):  # fmt: skip
        self.images = images.to(prep.device)  # (N, C, H, W) uint8
        self.targets = targets.to(prep.device)  # (N,) int64
        self.train, self.seed, self.prep, self.weights = train, seed, prep, weights
        self.flip = flip  # an AlternatingFlip (training), or None
        self.bounds = batch_bounds(len(targets), batch_size, drop_last=train)
        self.generator = torch.Generator(prep.device)

    def __len__(self) -> int:
        return len(self.bounds)

    @property
    def count(self) -> int:
        return len(self.targets)

    def images_at(self, indices) -> torch.Tensor:
        """Images `indices` (in evaluation order) as stored: (n, C, H, W) uint8 on the CPU."""
        return self.images[torch.as_tensor(indices, device=self.images.device)].cpu()

    def batches(self, epoch: int = 0, start: int = 0):
        n = len(self.targets)
        order = epoch_order(n, self.seed, epoch, self.weights) if self.train else torch.arange(n)
        order = order.to(self.prep.device)
        for b in range(start, len(self.bounds)):
            lo, hi = self.bounds[b]
            idx = order[lo:hi]
            generator = None
            if self.train:
                generator = self.generator.manual_seed(mix(self.seed, epoch, b))
            x = self.images[idx] if self.flip is None else self.flip(self.images[idx], idx, epoch)
            yield self.prep(x, generator), self.targets[idx]


class SampleDataset(Dataset):
    """Images of a source, conformed and transformed; keys are (epoch, index) pairs.

    The transforms' random draws are seeded per (seed, epoch, index): the same image gets the
    same augmentation in any worker, after any restart, however the workers were scheduled.
    """

    def __init__(self, source: ImageSource, channels, size, seed: int, transform=None, flip=None):
        """`transform`: PIL image → (C, H, W) uint8 tensor, random; None = PILToTensor only.
        `flip`: an AlternatingFlip, applied to the image first (as on the tensor path)."""
        self.source, self.channels, self.size, self.seed = source, channels, size, seed
        self.flip = flip
        self.random = transform is not None
        self.transform = transform if self.random else v2.PILToTensor()

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, key: tuple[int, int]):
        epoch, i = key
        img = conform(self.source.open(i), self.channels, self.size)
        if self.flip is not None and self.flip.mirrored(i, epoch):
            img = v2.functional.horizontal_flip(img)
        if not self.random:
            return self.transform(img), int(self.source.targets[i])
        with torch.random.fork_rng(devices=[]):  # leave the caller's RNG untouched
            torch.manual_seed(mix(self.seed, epoch, i))
            return self.transform(img), int(self.source.targets[i])


class EpochBatchSampler(Sampler):
    """Yields lists of (epoch, index) keys: the same order as TensorLoader, from batch `start`."""

    def __init__(self, n, batch_size, train, seed, weights=None):
        self.n, self.train, self.seed, self.weights = n, train, seed, weights
        self.bounds = batch_bounds(n, batch_size, drop_last=train)
        self.epoch, self.start = 0, 0

    def __len__(self) -> int:
        return len(self.bounds) - self.start

    def __iter__(self):
        n = self.n
        order = (
            epoch_order(n, self.seed, self.epoch, self.weights) if self.train else torch.arange(n)
        )
        for lo, hi in self.bounds[self.start :]:
            yield [(self.epoch, int(i)) for i in order[lo:hi]]


class FileLoader:
    def __init__(
        self, dataset: SampleDataset, batch_size, train, seed, prep, workers, weights=None
    ):
        self.targets = torch.as_tensor(dataset.source.targets)
        self.prep = prep
        self.sampler = EpochBatchSampler(len(dataset), batch_size, train, seed, weights)
        self.loader = DataLoader(
            dataset,
            batch_sampler=self.sampler,
            num_workers=workers,
            pin_memory=prep.device.type == "cuda",  # page-locked host memory: async copies
            persistent_workers=workers > 0,  # keep workers (and their file handles) across epochs
            prefetch_factor=4 if workers > 0 else None,
            # Its own generator: iterator start-up draws a worker base seed, which must not come
            # from the global RNG that dropout uses (a resumed run would draw at another point).
            generator=torch.Generator().manual_seed(seed),
        )

    def __len__(self) -> int:
        return len(self.sampler.bounds)

    @property
    def count(self) -> int:
        return len(self.targets)

    def images_at(self, indices) -> torch.Tensor:
        """Images `indices` (in evaluation order) as stored: (n, C, H, W) uint8 on the CPU."""
        d = self.loader.dataset
        images = (conform(d.source.open(int(i)), d.channels, d.size) for i in indices)
        return torch.stack([v2.functional.pil_to_tensor(img) for img in images])

    def batches(self, epoch: int = 0, start: int = 0):
        self.sampler.epoch, self.sampler.start = epoch, start
        for x, y in self.loader:  # x: (B, C, H, W) uint8, augmented in the workers
            yield self.prep(x), y.to(self.prep.device, non_blocking=True)
