"""The two data paths, one interface: `loader.batches(epoch, start)` yields ready device batches.

- TensorLoader: the whole split lives on the training device as uint8 (N, C, H, W); shuffling,
  augmentation and normalization run on whole batches there (no worker, no PIL, no copies).
- FileLoader: torch's DataLoader with worker processes decoding and augmenting one PIL image at a
  time; for data larger than the memory budget.

Randomness is a pure function of (seed, epoch, image index), so an epoch can be restarted at any
batch and draw exactly what an uninterrupted run would, and an image is augmented alike at any
world size. With several processes (distributed/) each rank yields its part of every global
batch: `len(loader)` and the batch indices are global, the same on every rank.
"""

import signal

import torch
from torch.utils.data import DataLoader, Dataset, Sampler
from torchvision.transforms import v2

from cnntrain.core.seeds import derived_seed
from cnntrain.data.augment.draws import EpochDraws
from cnntrain.data.decode import conform
from cnntrain.data.geometry import as_fit, centre_crop
from cnntrain.data.sources import ImageSource
from cnntrain.data.splits import batch_bounds, epoch_order
from cnntrain.distributed import SINGLE, World, mask_padding


class BatchPrep:
    """On the device, for every batch: uint8 → float in [0, 1], augment (train), normalize.

    `size`: the model's input (H, W); a batch stored larger (a training split kept for
    RandomResizedCrop) and given without draws (unaugmented: a data-dependent init, a warm-up)
    is centre-cropped to it, as evaluation's images are."""

    def __init__(self, mean, std, device: torch.device, channels_last: bool, augment=None,
                 size: tuple[int, int] | None = None):  # fmt: skip
        self.mean = torch.tensor(mean, device=device).view(1, -1, 1, 1)
        self.std = torch.tensor(std, device=device).view(1, -1, 1, 1)
        self.device = device
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        self.augment = augment  # a BatchAugment, or None
        self.size = size

    def __call__(self, x: torch.Tensor, draws: EpochDraws | None = None) -> torch.Tensor:
        x = x.to(self.device, non_blocking=True).float().div_(255)  # (B, C, H, W) in [0, 1]
        if self.augment is not None and draws is not None:
            x = self.augment(x, draws)
        elif self.size is not None and tuple(x.shape[-2:]) != tuple(self.size):
            x = centre_crop(x, self.size)
        x = (x - self.mean) / self.std
        return x.contiguous(memory_format=self.memory_format)


class TensorLoader:
    def __init__(self, images, targets, batch_size, train, seed, prep: BatchPrep, weights=None,
                 flip=None, world: World = SINGLE):  # fmt: skip
        self.images = images.to(prep.device)  # (N, C, H, W) uint8
        self.targets = targets.to(prep.device)  # (N,) int64, or (N, L) float32 0/1 labels
        self.train, self.seed, self.prep, self.weights = train, seed, prep, weights
        self.flip = flip  # an AlternatingFlip (training), or None
        self.bounds = batch_bounds(len(targets), batch_size, drop_last=train)
        self.world = world

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
        tables = {}  # the epoch's augmentation draws for all n images, made by the first batch
        for b in range(start, len(self.bounds)):
            idx, padding = self.world.shard(order, *self.bounds[b], pad=not self.train)
            draws = EpochDraws(tables, n, self.seed, epoch, idx) if self.train else None
            x = self.images[idx] if self.flip is None else self.flip(self.images[idx], idx, epoch)
            yield self.prep(x, draws), mask_padding(self.targets[idx], padding)


class SampleDataset(Dataset):
    """Images of a source, conformed and transformed; keys are (epoch, index) pairs.

    The transforms' random draws are seeded per (seed, epoch, index): the same image gets the
    same augmentation in any worker, after any restart, however the workers were scheduled.
    """

    def __init__(self, source: ImageSource, channels, fit, seed: int, transform=None, flip=None):
        """`fit`: how images are stored (a geometry.Fit, or an (H, W) size, conform's).
        `transform`: PIL image → (C, H, W) uint8 tensor, random; None = PILToTensor only.
        `flip`: an AlternatingFlip, applied to the image first (as on the tensor path)."""
        self.source, self.channels, self.fit, self.seed = source, channels, as_fit(fit), seed
        self.flip = flip
        self.random = transform is not None
        self.transform = transform if self.random else v2.PILToTensor()

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, key: tuple[int, int]):
        epoch, i = key
        img = conform(self.source.open(i), self.channels, self.fit)
        if self.flip is not None and self.flip.mirrored(i, epoch):
            img = v2.functional.horizontal_flip(img)
        if not self.random:
            return self.transform(img), self.target(i)
        # The CPU generator only, saved and restored around the transform: torch.manual_seed
        # would also reseed every GPU's, which fork_rng(devices=[]) leaves unrestored (with
        # data.num_workers=0 the training process's dropout would then follow the batch).
        with torch.random.fork_rng(devices=[]):
            torch.default_generator.manual_seed(derived_seed(self.seed, epoch, i))
            return self.transform(img), self.target(i)

    def target(self, i: int):
        """Image i's class index, or its (L,) float32 0/1 labels with several per image."""
        target = self.source.targets[i]
        return torch.from_numpy(target) if target.ndim else int(target)


class EpochBatchSampler(Sampler):
    """Yields lists of (epoch, index) keys: the same order and shards as TensorLoader, from
    batch `start`."""

    def __init__(self, n, batch_size, train, seed, weights=None, world: World = SINGLE):
        self.n, self.train, self.seed, self.weights, self.world = n, train, seed, weights, world
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
            part, _ = self.world.shard(order, lo, hi, pad=not self.train)
            yield [(self.epoch, int(i)) for i in part]

    def padding(self, b: int) -> int:
        """How many keys of batch `b` pad an evaluation shard (`World.shard`)."""
        return 0 if self.train else self.world.padding(*self.bounds[b])


def leave_signals_to_the_trainer(worker_id: int) -> None:
    """In each DataLoader worker: ignore SIGINT/SIGTERM (torchrun signals a rank's whole process
    group). The training process decides when to stop — after agreeing on a step with the other
    ranks, batches later — and then ends its workers."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


class FileLoader:
    def __init__(self, dataset: SampleDataset, batch_size, train, seed, prep, workers,
                 weights=None, world: World = SINGLE):  # fmt: skip
        self.targets = torch.as_tensor(dataset.source.targets)
        self.prep = prep
        self.sampler = EpochBatchSampler(len(dataset), batch_size, train, seed, weights, world)
        self.loader = DataLoader(
            dataset,
            batch_sampler=self.sampler,
            num_workers=workers,
            pin_memory=prep.device.type == "cuda",  # page-locked host memory: async copies
            persistent_workers=workers > 0,  # keep workers (and their file handles) across epochs
            prefetch_factor=4 if workers > 0 else None,
            worker_init_fn=leave_signals_to_the_trainer,
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
        images = (conform(d.source.open(int(i)), d.channels, d.fit) for i in indices)
        return torch.stack([v2.functional.pil_to_tensor(img) for img in images])

    def batches(self, epoch: int = 0, start: int = 0):
        self.sampler.epoch, self.sampler.start = epoch, start
        for b, (x, y) in enumerate(self.loader, start):  # x: (B, C, H, W) uint8, augmented
            y = mask_padding(y.to(self.prep.device, non_blocking=True), self.sampler.padding(b))
            yield self.prep(x), y
