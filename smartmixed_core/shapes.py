"""Activations with a learned *shape*, one per hidden layer (comparison baselines).

* :class:`PadeActivation` -- a Padé activation unit (PAU, Molina et al. 2020, "Padé
  Activation Units", ICLR), the *safe* form with degrees (5, 4)::

      F(x) = (a0 + a1 x + ... + a5 x^5) / (1 + |b1| |x| + |b2| |x|^2 + ... + |b4| |x|^4)

  The denominator is at least 1, so F has no poles.  Coefficients start at a least-squares fit
  of leaky ReLU (slope 0.01) on [-3, 3], as the paper initialises its units.
* :class:`SwishBeta` -- Swish with a learnable beta (Ramachandran et al. 2017),
  ``x * sigmoid(beta * x)``, beta starting at 1 (SiLU).

Plain PyTorch (the ``pau``/``rational_activations`` packages build CUDA extensions against
particular torch versions and do not install here).  Parameters carry the leading seeds
dimension of :mod:`smartmixed_core.seeded`; eager forward passes run seed by seed, so a seed
trained beside others equals the seed alone, bit for bit.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from smartmixed_core.layers import seed_by_seed
from smartmixed_core.seeded import per_seed

PAU_NUMERATOR = (0.029833, 0.617899, 2.318571, 3.042791, 1.479796, 0.2499)
PAU_DENOMINATOR = (1.136231, 4.384481, 0.865946, 0.346007)
"""Initial (a0..a5) and (b1..b4): leaky ReLU fitted on [-3, 3] (max error 0.03)."""


def pade(x: Tensor, a: Tensor, b: Tensor) -> Tensor:
    """The safe Padé form for ``x`` ``[S, ...]`` with each seed's coefficients ``a [S, m+1]``
    (numerator) and ``b [S, n]`` (denominator)."""
    p = per_seed(a[:, -1], x) * x + per_seed(a[:, -2], x)
    for j in range(a.shape[1] - 3, -1, -1):
        p = p * x + per_seed(a[:, j], x)
    ax, babs = x.abs(), b.abs()
    q = per_seed(babs[:, -1], x) * ax
    for j in range(b.shape[1] - 2, -1, -1):
        q = (q + per_seed(babs[:, j], x)) * ax
    return p / (q + 1)


class PadeActivation(nn.Module):
    """A PAU shared by the units of one layer, per seed (``numerator [S, 6]``,
    ``denominator [S, 4]``)."""

    def __init__(self, seeds: int = 1):
        super().__init__()
        self.numerator = nn.Parameter(torch.tensor(PAU_NUMERATOR).repeat(seeds, 1))
        self.denominator = nn.Parameter(torch.tensor(PAU_DENOMINATOR).repeat(seeds, 1))
        self.compiled = False

    def init_seed(self, s: int, gen: torch.Generator) -> None:
        with torch.no_grad():
            self.numerator[s] = torch.tensor(PAU_NUMERATOR)
            self.denominator[s] = torch.tensor(PAU_DENOMINATOR)

    def forward(self, x: Tensor) -> Tensor:
        a, b = self.numerator, self.denominator
        if self.compiled:  # all seeds at once
            return pade(x, a, b)
        return seed_by_seed(
            lambda xs, s: pade(xs.unsqueeze(0), a[s : s + 1], b[s : s + 1]).squeeze(0), x)


class SwishBeta(nn.Module):
    """``x * sigmoid(beta * x)`` with one learnable beta per layer and seed (``beta [S]``)."""

    def __init__(self, seeds: int = 1):
        super().__init__()
        self.beta = nn.Parameter(torch.ones(seeds))
        self.compiled = False

    def init_seed(self, s: int, gen: torch.Generator) -> None:
        with torch.no_grad():
            self.beta[s] = 1.0

    def forward(self, x: Tensor) -> Tensor:
        beta = self.beta
        if self.compiled:  # all seeds at once
            return x * torch.sigmoid(per_seed(beta, x) * x)
        return seed_by_seed(lambda xs, s: xs * torch.sigmoid(beta[s] * xs), x)


def learned_shapes(model: nn.Module, seed: int = 0) -> dict[str, dict[str, float]]:
    """``{"layer_1": {"beta": 1.3}, ...}`` (Swish-beta) or ``{"layer_1": {"a0": ..., "a5": ...,
    "b1": ..., "b4": ...}}`` (PAU) of seed ``seed``; empty for other slots."""
    out: dict[str, dict[str, float]] = {}
    for i, slot in enumerate(getattr(model, "acts", ())):
        if isinstance(slot, SwishBeta):
            out[f"layer_{i + 1}"] = {"beta": float(slot.beta[seed].detach())}
        elif isinstance(slot, PadeActivation):
            a, b = slot.numerator[seed].tolist(), slot.denominator[seed].tolist()
            out[f"layer_{i + 1}"] = {**{f"a{j}": v for j, v in enumerate(a)},
                                     **{f"b{j + 1}": v for j, v in enumerate(b)}}
    return out
