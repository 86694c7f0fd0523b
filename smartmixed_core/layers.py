"""Activation slots: fixed, selective (phase 1), mixed (phase 2) and soft mixtures (AdAct, gated).

Every slot maps a pre-activation ``x`` of shape ``[S, batch, units, *spatial]`` to a tensor
of the same shape: S seeds (:mod:`smartmixed_core.seeded`), "units" MLP neurons or ConvNet
channels (dimension 2).  Per-seed parameters have a leading S dimension; noise comes from the
per-seed generators of :attr:`noise` (set by the backbone's ``use_noise``), never from torch's
global generator.  The selective and mixed slots group units by choice
(:mod:`smartmixed_core.grouping`).  Under ``torch.compile`` (``compiled = True``) a selective
slot uses the select-by-mask form instead, which has no data-dependent shapes and which the
compiler fuses into one elementwise kernel, and a mixed slot activates its groups as static
slices (its counts are fixed when it is built).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from smartmixed_core.activations import ACTIVATIONS, fused_forms
from smartmixed_core.grouping import (
    activate_blocks,
    activate_groups,
    apply_choices,
    grouped_apply,
    selection_forms,
    straight_through,
)
from smartmixed_core.names import GATES
from smartmixed_core.seeded import SeedLinear, SeedNoise, per_seed

# Uniform draws are clamped into [tiny, 1 - eps] of float32: 1 - 1e-10 would round to 1.0
# and give infinite noise, so the upper bound must be representable.
_U_LOW = torch.finfo(torch.float32).tiny
_U_HIGH = 1.0 - torch.finfo(torch.float32).eps
RRELU_LOWER, RRELU_UPPER = 1.0 / 8, 1.0 / 3  # nn.RReLU's defaults


def gumbel_noise(
    shape: Sequence[int],
    device: torch.device | str,
    dtype: torch.dtype,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Gumbel(0, 1) noise from clamped uniforms: finite for every draw (paper eq. 1)."""
    u = torch.rand(shape, device=device, dtype=torch.float32, generator=generator)
    return u.clamp_(_U_LOW, _U_HIGH).log_().neg_().log_().neg_().to(dtype)


def noise_shape(logits: Tensor) -> tuple[int, ...]:
    """The shape of the Gumbel noise for ``logits`` ``[..., units, K]``: ``[..., K, units]``."""
    return (*logits.shape[:-2], logits.shape[-1], logits.shape[-2])


def hard_gumbel_softmax(logits: Tensor, tau: float, noise: Tensor) -> tuple[Tensor, Tensor]:
    """Straight-through Gumbel-Softmax over the last dimension (paper eqs. 1-4).

    Returns ``(y, index)``: the soft sample ``y`` (carries the gradient) and the hard choice.
    The one-hot forward value is ``one_hot(index) + (y - y.detach())``.  ``noise`` (shape
    :func:`noise_shape`, overwritten) is laid out ``[K, units]``, the layout the softmax
    works in: over a short last dimension of size K it costs ten times more on a CPU.
    """
    z = noise.add_(logits.transpose(-1, -2)).div_(tau)
    return torch.softmax(z, -2).transpose(-1, -2), z.max(-2).indices


def flat_units(x: Tensor) -> Tensor:
    """``[S, batch, units, *spatial]`` -> ``[batch, S * units, *spatial]`` (a view for S = 1)."""
    return x.transpose(0, 1).flatten(1, 2)


def unflat_units(y: Tensor, seeds: int) -> Tensor:
    """The inverse of :func:`flat_units` (seeds-first contiguous)."""
    return y.unflatten(1, (seeds, -1)).transpose(0, 1).contiguous()


def seed_by_seed(fn: Callable[[Tensor, int], Tensor], x: Tensor) -> Tensor:
    """``fn(x[s], s)`` for every seed, stacked (no copy for one seed).

    The eager slots run elementwise work seed by seed on each seed's own contiguous slice:
    the split of a row between vector loop and scalar tail (whose exp/tanh differ in the last
    bit) and the order of every reduction then depend only on that seed's shapes, so a seed
    trained beside others equals the seed trained alone, bit for bit."""
    if x.shape[0] == 1:  # views both ways: no stack (and no copy in backward)
        return fn(x.squeeze(0), 0).unsqueeze(0)
    return torch.stack([fn(xs, s) for s, xs in enumerate(x.unbind(0))])


def select(x: Tensor, choice: Tensor, acts: Sequence) -> Tensor:
    """``acts[choice[s, n]]`` on unit ``n`` of seed ``s`` by masks.  Every member is evaluated
    (RReLU draws its noise whether chosen or not, so a seed's draws do not depend on what
    the other seeds chose); no data-dependent shapes, so ``torch.compile`` fuses it."""
    out = acts[0](x)
    for j in range(1, len(acts)):
        out = torch.where(per_seed(choice == j, x), acts[j](x), out)
    return out


class Activation(nn.Module):
    """One registry activation for S seeds: PReLU has one slope per seed, RReLU draws its
    training slopes from each seed's generator (eval: the mean slope)."""

    def __init__(self, name: str, seeds: int = 1):
        super().__init__()
        self.name = name
        self.fn = ACTIVATIONS[name].fn
        self.noise: SeedNoise | None = None
        self.compiled = False
        if name == "prelu":
            self.weight = nn.Parameter(torch.full((seeds,), 0.25))

    def init_seed(self, s: int, gen: torch.Generator) -> None:
        if self.name == "prelu":
            with torch.no_grad():
                self.weight[s] = 0.25

    def forward(self, x: Tensor) -> Tensor:
        if self.fn is not None:
            fn = self.fn
            return fn(x) if self.compiled else seed_by_seed(lambda xs, s: fn(xs), x)
        if self.name == "prelu":
            return torch.where(x >= 0, x, per_seed(self.weight, x) * x)
        if self.name == "rrelu":
            if not self.training:
                return F.leaky_relu(x, (RRELU_LOWER + RRELU_UPPER) / 2)
            if self.noise is None:  # standalone use: seeds 0..S-1
                self.noise = SeedNoise.of(range(x.shape[0]))
            slopes = self.noise.draw(lambda g: torch.empty(x.shape[1:]).uniform_(
                RRELU_LOWER, RRELU_UPPER, generator=g), x)
            return torch.where(x >= 0, x, slopes * x)
        raise ValueError(f"no per-seed form for {self.name}")

    def extra_repr(self) -> str:
        return self.name


def candidates(pool: Sequence[str], seeds: int) -> nn.ModuleList:
    return nn.ModuleList(Activation(n, seeds) for n in pool)


class SelectiveActivation(nn.Module):
    """Phase 1: every unit of every seed learns logits ``[S, units, K]`` over ``pool``.

    Training: one hard straight-through Gumbel-Softmax sample per unit per forward pass
    (shared by the batch), noise from each seed's generator.  Eval: the argmax (eq. 7).
    """

    def __init__(self, units: int, pool: Sequence[str], tau: float = 0.3, fused: bool = True,
                 seeds: int = 1):
        super().__init__()
        self.pool = tuple(pool)
        self.tau = float(tau)
        self.logits = nn.Parameter(torch.zeros(seeds, units, len(self.pool)))
        self.candidates = candidates(self.pool, seeds)
        self._forms, matrix = selection_forms(self.pool)
        self.fused = fused and bool(self._forms.fns)  # PReLU/RReLU: the stacked form
        self.compiled = False
        self.sample_eval = False
        """Sample in eval mode too (:class:`~smartmixed_core.phase1.SampledEval`)."""
        self.noise: SeedNoise | None = None
        # Not in the state dict; moves with .to() like the logits.
        self.register_buffer("_basis_matrix", matrix, persistent=False)

    def init_seed(self, s: int, gen: torch.Generator) -> None:
        with torch.no_grad():
            self.logits[s].zero_()

    @property
    def units(self) -> int:
        return self.logits.shape[1]

    def choices(self) -> Tensor:
        """``[S, units]``: each unit's current argmax choice (an index into ``pool``)."""
        return self.logits.detach().argmax(-1)

    def sample(self) -> tuple[Tensor, Tensor]:
        """A Gumbel-Softmax sample ``(y [S, units, K], choice [S, units])``."""
        if self.noise is None:  # standalone use: seeds 0..S-1
            self.noise = SeedNoise.of(range(self.logits.shape[0]))
        noise, k, n = self.noise, len(self.pool), self.units
        g = noise.draw(lambda gen: gumbel_noise((k, n), "cpu", torch.float32, gen), self.logits)
        return hard_gumbel_softmax(self.logits, self.tau, g)

    def forward(self, x: Tensor) -> Tensor:
        eager = self.fused and not self.compiled
        if not (self.training or self.sample_eval):
            choice = self.choices()
            if eager:
                fns = self._forms.fns
                return seed_by_seed(lambda xs, s: apply_choices(xs, choice[s], fns), x)
            return select(x, choice, self.candidates)
        y, choice = self.sample()
        if eager:
            forms, matrix = self._forms, self._basis_matrix
            return seed_by_seed(lambda xs, s: straight_through(xs, y[s], choice[s], forms,
                                                              matrix), x)
        return self.stacked(x, y, choice)

    def stacked(self, x: Tensor, y: Tensor, choice: Tensor) -> Tensor:
        """The straightforward form: all K activations weighted by h (the reference)."""
        h = F.one_hot(choice, len(self.pool)).to(y.dtype) + (y - y.detach())
        out = torch.zeros_like(x)
        for j, act in enumerate(self.candidates):
            out = out + per_seed(h[..., j], x) * act(x)
        return out

    def extra_repr(self) -> str:
        return f"units={self.units}, pool={list(self.pool)}, tau={self.tau:g}, fused={self.fused}"


class MixedActivation(nn.Module):
    """Phase 2: fixed choices, each seed's units grouped as contiguous slices in ``pool`` order.

    ``counts[s][j]`` units of seed ``s`` (a contiguous slice) use ``pool[j]``;
    :func:`~smartmixed_core.phase2.freeze` permutes the surrounding weights so that this
    layout holds.
    ``counts`` may be one seed's list.
    """

    def __init__(self, pool: Sequence[str], counts: Sequence[Sequence[int]] | Sequence[int],
                 candidates_: nn.ModuleList | None = None):
        super().__init__()
        self.pool = tuple(pool)
        rows = [counts] if counts and isinstance(counts[0], int) else counts
        self.seed_counts = [[int(c) for c in row] for row in rows]  # type: ignore[union-attr]
        if any(len(row) != len(self.pool) for row in self.seed_counts):
            raise ValueError("counts must have one entry per pool member")
        if len({sum(row) for row in self.seed_counts}) != 1:
            raise ValueError("every seed must have the same number of units")
        self.candidates = candidates_ or candidates(self.pool, len(self.seed_counts))
        self.compiled = False
        self._fns = [ACTIVATIONS[n].fn for n in self.pool]
        self._inplace, self._grads = fused_forms(self.pool)
        self.register_buffer("_choice", torch.stack([
            torch.repeat_interleave(torch.arange(len(self.pool)), torch.tensor(row))
            for row in self.seed_counts]), persistent=False)

    @property
    def counts(self) -> list[int]:
        """Seed 0's counts (the only seed's, once :meth:`select_seeds` took one)."""
        return self.seed_counts[0]

    def choices(self) -> Tensor:
        """``[S, units]``."""
        return self._choice

    def select_seeds(self, idx: Sequence[int]) -> None:
        self.seed_counts = [self.seed_counts[i] for i in idx]
        self._choice = self._choice[list(idx)]

    def _seed(self, x: Tensor, s: int) -> Tensor:
        """Seed ``s``'s contiguous groups, each activated once (in place, one autograd node
        when the pool has in-place and output-gradient forms).  Without autograd the groups
        are activated in ``x`` itself: the backbone hands each slot a fresh tensor."""
        if self._grads is not None:
            used = [j for j, c in enumerate(self.seed_counts[s]) if c]
            sizes = [self.seed_counts[s][j] for j in used]
            inplace = [self._inplace[j] for j in used]
            if not torch.is_grad_enabled():
                return activate_blocks(x, sizes, inplace)
            return activate_groups(x, sizes, inplace, [self._grads[j] for j in used])
        return apply_choices(x, self._choice[s], self._fns)

    def forward(self, x: Tensor) -> Tensor:
        if self._inplace is None:  # PReLU/RReLU: per-seed parameters or noise
            return select(x, self._choice, self.candidates)
        if self.compiled:  # the counts are Python ints: static slices, one fused kernel
            fns, counts = self._fns, self.seed_counts
            return seed_by_seed(lambda xs, s: grouped_apply(xs, counts[s], fns), x)
        return seed_by_seed(self._seed, x)

    def extra_repr(self) -> str:
        return "; ".join(", ".join(f"{n}={c}" for n, c in zip(self.pool, row) if c)
                         for row in self.seed_counts)


class MixtureActivation(nn.Module):
    """Soft mixture ``sum_k g_k act_k(x)`` with ``g = softmax(z / temperature)``, per seed.

    * AdAct: ``gate="layer"`` (one weight vector per layer; ``"neuron"`` per unit), T = 1.
    * Gated mixtures: ``gate="layer"`` (static) or ``"input"`` (a linear head on the
      spatially pooled pre-activation produces per-sample logits), temperature T and an
      entropy weight: :meth:`aux_loss` is ``-entropy_weight * H(g)`` (summed over seeds), so a
      positive weight rewards diverse gates and a negative one pushes towards one-hot.
    """

    def __init__(self, units: int, pool: Sequence[str], gate: str = "layer",
                 temperature: float = 1.0, entropy_weight: float = 0.0, seeds: int = 1):
        super().__init__()
        if gate not in GATES:
            raise ValueError(f"gate must be one of {GATES}")
        self.pool = tuple(pool)
        self.gate = gate
        self.temperature = float(temperature)
        self.entropy_weight = float(entropy_weight)
        k = len(self.pool)
        self.candidates = candidates(self.pool, seeds)
        self.head = SeedLinear(units, k, seeds) if gate == "input" else None
        shape = (seeds, units, k) if gate == "neuron" else (seeds, k)
        self.weights = None if gate == "input" else nn.Parameter(torch.zeros(shape))
        self.register_buffer("gate_mean", torch.full((seeds, k), 1.0 / k))
        self._entropy: Tensor | None = None

    def init_seed(self, s: int, gen: torch.Generator) -> None:
        if self.weights is not None:
            with torch.no_grad():
                self.weights[s].zero_()

    def gates(self, x: Tensor) -> Tensor:
        """``[S, K]`` (layer), ``[S, units, K]`` (neuron) or ``[S, batch, K]`` (input)."""
        if self.head is not None:
            z = self.head(x.mean(dim=tuple(range(3, x.dim()))) if x.dim() > 3 else x)
        else:
            z = self.weights
        return torch.softmax(z / self.temperature, dim=-1)

    def forward(self, x: Tensor) -> Tensor:
        g = self.gates(x)
        seeds = g.shape[0]
        ent = -(g * torch.log(g.clamp_min(1e-12))).sum(-1).reshape(seeds, -1).mean(1)
        self._entropy = ent if self.entropy_weight else None
        with torch.no_grad():
            self.gate_mean.copy_(g.reshape(seeds, -1, g.shape[-1]).mean(1))
        out = torch.zeros_like(x)
        dim = 1 if self.gate == "input" else 2
        for k, act in enumerate(self.candidates):
            out = out + per_seed(g[..., k], x, dim) * act(x)
        return out

    def aux_loss(self) -> Tensor | None:
        """The entropy term of the last forward pass (``None`` when the weight is 0)."""
        if self._entropy is None:
            return None
        return -self.entropy_weight * self._entropy.sum()

    def dominant(self, seed: int = 0) -> str:
        """The highest-weight activation (mean gate of the last forward pass), AdAct's export."""
        return self.pool[int(self.gate_mean[seed].argmax())]

    def extra_repr(self) -> str:
        return (
            f"pool={list(self.pool)}, gate={self.gate}, T={self.temperature:g}, "
            f"entropy_weight={self.entropy_weight:g}"
        )


def gate_entropy(g: Tensor) -> float:
    """Entropy (nats) of a gate distribution, normalised by log K into [0, 1]."""
    g = g.reshape(-1, g.shape[-1])
    ent = -(g * torch.log(g.clamp_min(1e-12))).sum(-1).mean()
    return float(ent) / math.log(g.shape[-1])

