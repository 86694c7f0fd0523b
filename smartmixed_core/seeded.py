"""Per-seed building blocks: every parameter carries a leading *seeds* dimension S.

Several seeds of one configuration train as one model whose weights are stacked along S
(a single seed is S = 1); each layer runs as one batched kernel (``baddbmm``, a grouped
convolution), so S small networks cost a few kernels instead of S times as many.  Nothing
couples the seeds: seed ``s`` reads and writes only slice ``s`` of every tensor.

Randomness is per seed as well.  :func:`seed_generator` gives each seed independent streams
(initialisation, batch order, noise, phase-2 re-initialisation); draws are made on the CPU
and moved to the model's device, so a seed's numbers depend neither on the other seeds nor
on the device.  Why a seeds dimension rather than ``torch.func.vmap`` over stacked modules:
the selective and mixed layers group units by their (data-dependent) choices, which vmap
cannot batch, and the per-seed generators cannot be used inside vmap; the mask form vmap
could batch evaluates every activation on every unit, slower than the fused layer's train
step in three of four benchmark runs on the paper net (docs/performance.md, stack-all-K).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.autograd.function import once_differentiable

INIT, BATCHES, NOISE, REINIT = range(4)
"""The purposes of a seed's independent generator streams (:func:`seed_generator`)."""


def seed_generator(seed: int, purpose: int) -> torch.Generator:
    """A CPU generator for one purpose of one seed (independent of every other pair)."""
    return torch.Generator().manual_seed(int(seed) * 4 + purpose)


class SeedNoise:
    """Per-seed generators that the slots draw their noise from (Gumbel, RReLU slopes).

    Shared by reference: a copied model (:func:`~smartmixed_core.phase2.freeze`) keeps
    drawing from the same streams."""

    def __init__(self, generators: Sequence[torch.Generator]):
        self.generators = list(generators)
        self.active: list[bool] | None = None
        """Seeds that draw (None: all); the others get throw-away draws, so a seed that
        stopped training keeps its generator where it stopped."""

    @classmethod
    def of(cls, seeds: Sequence[int]) -> SeedNoise:
        return cls([seed_generator(s, NOISE) for s in seeds])

    def __deepcopy__(self, memo: dict) -> SeedNoise:
        return self

    @torch.compiler.disable  # generators stay outside compiled graphs
    def draw(self, sample: Callable[[torch.Generator], Tensor], like: Tensor) -> Tensor:
        """``[S, ...]``: ``sample(generator)`` of every seed (on the CPU), on ``like``'s
        device and dtype."""
        active = self.active or [True] * len(self.generators)
        return torch.stack([sample(g if a else torch.Generator())
                            for g, a in zip(self.generators, active)]).to(like)


def uniform_(param: Tensor, s: int, bound: float, gen: torch.Generator) -> None:
    """Slice ``s`` of ``param`` drawn from U(-bound, bound) with ``gen`` (on the CPU)."""
    with torch.no_grad():
        draw = torch.empty(param.shape[1:], dtype=param.dtype).uniform_(-bound, bound,
                                                                       generator=gen)
        param[s].copy_(draw)


def per_seed(v: Tensor, x: Tensor, dim: int = 2) -> Tensor:
    """View ``v`` (``[S]``, ``[S, n]``, ``[S, batch, n]`` ...) so it broadcasts against ``x``
    ``[S, batch, units, *spatial]``: its trailing dimension at ``dim`` (none for ``[S]``)."""
    if v.dim() == 1:
        return v.reshape(-1, *([1] * (x.dim() - 1)))
    lead = v.shape[:-1]
    shape = [*lead, *([1] * (dim - len(lead))), v.shape[-1]]
    return v.reshape(*shape, *([1] * (x.dim() - len(shape))))


class _Affine(torch.autograd.Function):
    """``baddbmm(bias, x, weight^T)`` whose weight gradient is computed in the weight's own
    ``[S, out, in]`` layout, ``bmm(grad^T, x)``.  Through autograd's ``baddbmm`` it came as
    ``x^T @ grad`` (``[S, in, out]``), which the gradient accumulation then copied into the
    parameter's layout on every backward: a one-seed MLP's CPU epoch took about 1.6x as long
    as with ``F.linear`` (docs/performance.md).  Every product here is per seed (a seed's
    slice of each result equals the seed computed alone, bit for bit)."""

    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor, bias: Tensor) -> Tensor:  # type: ignore[override]
        ctx.save_for_backward(x, weight)
        return torch.baddbmm(bias.unsqueeze(1), x, weight.transpose(1, 2))

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: Tensor):  # type: ignore[override]
        x, weight = ctx.saved_tensors
        need_x, need_w, need_b = ctx.needs_input_grad
        return (torch.bmm(grad, weight) if need_x else None,
                torch.bmm(grad.transpose(1, 2), x) if need_w else None,
                grad.sum(1) if need_b else None)


class SeedLinear(nn.Module):
    """``y[s] = x[s] @ weight[s].T + bias[s]`` for ``x`` ``[S, batch, in]``; initialised like
    ``nn.Linear`` (U(±1/sqrt(in)))."""

    def __init__(self, in_features: int, out_features: int, seeds: int = 1):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(seeds, out_features, in_features))
        self.bias = nn.Parameter(torch.empty(seeds, out_features))
        for s in range(seeds):
            self.init_seed(s, torch.Generator().manual_seed(s))

    def init_seed(self, s: int, gen: torch.Generator) -> None:
        bound = 1 / math.sqrt(self.weight.shape[2])
        uniform_(self.weight, s, bound, gen)
        uniform_(self.bias, s, bound, gen)

    def forward(self, x: Tensor) -> Tensor:
        return _Affine.apply(x, self.weight, self.bias)

    def extra_repr(self) -> str:
        s, o, i = self.weight.shape
        return f"seeds={s}, in_features={i}, out_features={o}"


class SeedConv2d(nn.Module):
    """A 3x3 convolution (padding 1) per seed on the folded layout ``[batch, S * in, H, W]``
    (one grouped convolution); Kaiming-uniform (ReLU) weights, ``nn.Conv2d``'s bias."""

    def __init__(self, in_channels: int, out_channels: int, seeds: int = 1):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(seeds, out_channels, in_channels, 3, 3))
        self.bias = nn.Parameter(torch.empty(seeds, out_channels))
        for s in range(seeds):
            self.init_seed(s, torch.Generator().manual_seed(s))

    def init_seed(self, s: int, gen: torch.Generator) -> None:
        fan_in = self.weight[0, 0].numel()
        uniform_(self.weight, s, math.sqrt(6.0 / fan_in), gen)
        uniform_(self.bias, s, 1 / math.sqrt(fan_in), gen)

    def forward(self, x: Tensor) -> Tensor:
        return F.conv2d(x, self.weight.flatten(0, 1), self.bias.flatten(), padding=1,
                        groups=self.weight.shape[0])


class SeedBatchNorm2d(nn.Module):
    """``nn.BatchNorm2d`` per seed and channel on the folded layout ``[batch, S * C, H, W]``
    (its default momentum and eps, which are ``F.batch_norm``'s defaults too)."""

    def __init__(self, channels: int, seeds: int = 1):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(seeds, channels))
        self.bias = nn.Parameter(torch.zeros(seeds, channels))
        self.register_buffer("running_mean", torch.zeros(seeds, channels))
        self.register_buffer("running_var", torch.ones(seeds, channels))

    def init_seed(self, s: int, gen: torch.Generator) -> None:
        with torch.no_grad():
            for t, v in ((self.weight, 1.0), (self.bias, 0.0), (self.running_mean, 0.0),
                         (self.running_var, 1.0)):
                t[s].fill_(v)

    def forward(self, x: Tensor) -> Tensor:
        # Views of the [S, C] buffers: batch_norm updates the running statistics in place.
        return F.batch_norm(x, self.running_mean.view(-1), self.running_var.view(-1),
                            self.weight.flatten(), self.bias.flatten(), self.training)
