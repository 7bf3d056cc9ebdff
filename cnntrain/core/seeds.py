"""Seeds: one derived seed from several counters, every generator seeded at once, and the RNG states
a checkpoint saves and restores."""

import random

import numpy as np
import torch


def derived_seed(*values: int) -> int:
    """One 63-bit seed from several integers (run seed, epoch, batch...), well scrambled."""
    return int(np.random.SeedSequence(list(values)).generate_state(2, np.uint64)[0] >> np.uint64(1))


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)  # also seeds every CUDA device


def rng_states(device: torch.device) -> dict:
    """Every RNG a run draws from; for a GPU only the training device's generator."""
    np_state = np.random.get_state()
    return {
        "python": random.getstate(),
        "numpy": (np_state[0], torch.from_numpy(np_state[1].copy()), *np_state[2:]),
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state(device) if device.type == "cuda" else None,
    }


def set_rng_states(states: dict, device: torch.device) -> None:
    random.setstate(states["python"])
    numpy = states["numpy"]
    np.random.set_state((numpy[0], numpy[1].numpy(), *numpy[2:]))
    torch.set_rng_state(states["torch"])
    cuda = states["cuda"]
    if isinstance(cuda, list):  # checkpoints before this format kept one state per visible GPU
        cuda = cuda[0] if cuda else None
    if cuda is not None and device.type == "cuda":
        torch.cuda.set_rng_state(cuda, device)
