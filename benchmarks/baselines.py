"""Straightforward implementations kept only as benchmark baselines."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from smartmixed_core.activations import ACTIVATIONS
from smartmixed_core.layers import gumbel_noise, hard_gumbel_softmax
from smartmixed_core.seeded import SeedNoise


class StackAllK(nn.Module):
    """Phase 1 the obvious way: stack all K activations into ``[1, batch, units, K]`` (one
    seed; noise from seed 0's generator, as a standalone selective layer draws it)."""

    def __init__(self, units: int, pool: Sequence[str], tau: float = 0.3):
        super().__init__()
        self.fns = [ACTIVATIONS[n].fn for n in pool]
        self.logits = nn.Parameter(torch.zeros(1, units, len(pool)))
        self.tau = tau
        self.noise = SeedNoise.of([0])

    def forward(self, x: Tensor) -> Tensor:
        k, n = self.logits.shape[2], self.logits.shape[1]
        g = self.noise.draw(lambda gen: gumbel_noise((k, n), "cpu", torch.float32, gen),
                            self.logits)
        y, idx = hard_gumbel_softmax(self.logits, self.tau, g)
        h = F.one_hot(idx, y.shape[-1]).to(y.dtype) + (y - y.detach())
        return (torch.stack([fn(x) for fn in self.fns], -1) * h.unsqueeze(1)).sum(-1)


class GatherScatterMixed(nn.Module):
    """Phase 2 as in the public reference: per group, gather by index and scatter back, with
    the index tensors copied to the device on every forward."""

    def __init__(self, pool: Sequence[str], choice: Tensor):
        super().__init__()
        self.fns = [ACTIVATIONS[n].fn for n in pool]
        choice = choice[0]  # one seed
        self.groups = [(j, (choice == j).nonzero().flatten().tolist()) for j in range(len(pool))]

    def forward(self, x: Tensor) -> Tensor:
        out = torch.zeros_like(x)
        for j, idx in self.groups:
            if idx:
                index = torch.tensor(idx, device=x.device)
                out[:, :, index] = self.fns[j](x[:, :, index])
        return out


def mnist_like_loader(batch: int, n: int = 54_000) -> tuple[object, Tensor, Tensor]:
    """The reference input pipeline on MNIST-sized data: torchvision's MNIST dataset (one PIL
    image per sample, ``ToTensor`` + ``Normalize``) behind a shuffling ``DataLoader``.  The
    images are random (no download here); the per-sample work is what MNIST does."""
    from torch.utils.data import DataLoader
    from torchvision import datasets, transforms

    gen = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (n, 28, 28), dtype=torch.uint8, generator=gen)
    labels = torch.randint(0, 10, (n,), generator=gen)
    ds = datasets.MNIST.__new__(datasets.MNIST)  # the class's __getitem__, our tensors
    ds.data, ds.targets, ds.target_transform = images, labels, None
    ds.transform = transforms.Compose(
        [transforms.ToTensor(), transforms.Normalize((0.1307,), (0.3081,))]
    )
    return DataLoader(ds, batch_size=batch, shuffle=True), images, labels
