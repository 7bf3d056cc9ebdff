"""Per-image random numbers for batch augmentation: from one generator (Draws), or from tables
drawn once per epoch so an image's draws depend on (seed, epoch, its index) only (EpochDraws)."""

import math

import torch

from cnntrain.core.seeds import derived_seed

GAMMA_TRIES = 8  # candidates per Gamma draw (Draws.gamma)


class Draws:
    """Per-image random numbers from one generator, on the batch's device."""

    def __init__(self, n: int, generator: torch.Generator, device: torch.device):
        self.n, self.generator, self.device = n, generator, device

    def uniform(self, lo: float, hi: float, *trailing: int) -> torch.Tensor:
        """(N, *trailing) float32 in [lo, hi)."""
        u = torch.rand((self.n, *trailing), generator=self.generator, device=self.device)
        return u * (hi - lo) + lo

    def integers(self, high: int) -> torch.Tensor:
        """(N,) int64 in [0, high)."""
        return torch.randint(high, (self.n,), generator=self.generator, device=self.device)

    def chance(self, p: float) -> torch.Tensor:
        """(N,) bool, each True with probability p."""
        return self.uniform(0, 1) < p

    def below(self, high: torch.Tensor) -> torch.Tensor:
        """(N,) int64, image i's uniform in [0, high[i]): a bound per image."""
        return (self.uniform(0, 1) * high).floor_().long().clamp_(max=high - 1)

    def gamma(self, alpha: float, *trailing: int) -> torch.Tensor:
        """(N, *trailing) float32 ~ Gamma(alpha, 1), from uniforms only: Marsaglia and Tsang's
        method with GAMMA_TRIES candidates per number, the first accepted kept (each is accepted
        with probability > 0.95, so all are rejected with probability < 1e-10); alpha < 1 as
        Gamma(alpha + 1)·U^(1/alpha)."""
        a = alpha + 1 if alpha < 1 else alpha
        d = a - 1 / 3
        c = 1 / math.sqrt(9 * d)
        u1, u2, u3 = (self.uniform(0, 1, *trailing, GAMMA_TRIES) for _ in range(3))
        z = (-2 * torch.log1p(-u1)).sqrt() * torch.cos(2 * math.pi * u2)  # Box–Muller: N(0, 1)
        v = (1 + c * z) ** 3
        accept = (v > 0) & (
            torch.log1p(-u3) < 0.5 * z * z + d - d * v + d * v.clamp(min=1e-30).log()
        )
        first = accept.int().argmax(-1, keepdim=True)  # the first accepted candidate (0 if none)
        g = (d * v).gather(-1, first).squeeze(-1).clamp_(min=1e-30)
        if alpha < 1:
            g = g * (1 - self.uniform(0, 1, *trailing)).pow(1 / alpha)
        return g

    def dirichlet(self, alpha: float, k: int) -> torch.Tensor:
        """(N, k) float32, each row ~ Dirichlet(alpha, …, alpha): normalized Gamma draws."""
        g = self.gamma(alpha, k)
        return g / g.sum(1, keepdim=True)


class EpochDraws:
    """Draws for one batch of an epoch, each a row of a table drawn once for all `count` images
    of the epoch: the k-th call of every batch reads table k, which Draws' method drew for all
    images from a generator seeded by (seed, epoch, k), at the rows of the batch's image indices
    `index` (n,). So an image's draws depend on (seed, epoch, its index) only — not on its batch,
    its place in it, the number of processes sharing the batch, or where a restarted epoch
    resumed. Any Draws method serves; every batch makes the same calls, the per-image choices
    living in the values drawn (BatchAugment's do)."""

    def __init__(self, tables: dict, count: int, seed: int, epoch: int, index: torch.Tensor):
        self.tables = tables  # k → (method name, (count, …) table): shared by the epoch's batches
        self.count, self.seed, self.epoch, self.index = count, seed, epoch, index
        self.n, self.device = len(index), index.device
        self.calls = 0

    # A bound per image (n,) is the batch's, not the table's: Draws' own method, reading a table
    # of uniforms through this class.
    below = Draws.below

    def __getattr__(self, name: str):
        method = getattr(Draws, name)

        def draw(*args):
            k, self.calls = self.calls, self.calls + 1
            if k not in self.tables:
                generator = torch.Generator(self.device).manual_seed(
                    derived_seed(self.seed, self.epoch, k)
                )
                self.tables[k] = name, method(Draws(self.count, generator, self.device), *args)
            drawn_by, table = self.tables[k]
            if drawn_by != name:
                raise RuntimeError(f"draw {k} of a batch is {name}, of an earlier one {drawn_by}")
            return table[self.index]

        return draw
