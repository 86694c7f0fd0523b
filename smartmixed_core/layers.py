"""Activation slots: selective (phase 1), mixed (phase 2) and soft mixtures (AdAct, gated).

Every slot maps a pre-activation ``x`` of shape ``[batch, units, *spatial]`` to a tensor of
the same shape; "units" are MLP neurons or ConvNet channels (dimension 1).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.autograd.function import once_differentiable

from smartmixed_core.activations import (
    ACTIVATIONS,
    IDENTITY,
    candidate_basis,
    fused_forms,
    is_pure,
)

# Uniform draws are clamped into [tiny, 1 - eps] of float32: 1 - 1e-10 would round to 1.0
# and give infinite noise, so the upper bound must be representable.
_U_LOW = torch.finfo(torch.float32).tiny
_U_HIGH = 1.0 - torch.finfo(torch.float32).eps


def _per_unit(v: Tensor, x: Tensor) -> Tensor:
    """View a ``[units]`` or ``[batch, units]`` tensor so it broadcasts against ``x``."""
    extra = x.dim() - v.dim() - (1 if v.dim() == 1 else 0)
    shape = (1, -1) if v.dim() == 1 else tuple(v.shape)
    return v.reshape(*shape, *([1] * extra))


def gumbel_noise(
    shape: Sequence[int],
    device: torch.device | str,
    dtype: torch.dtype,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Gumbel(0, 1) noise from clamped uniforms: finite for every draw (paper eq. 1).
    Drawn from ``generator`` (default: torch's global generator of ``device``)."""
    u = torch.rand(shape, device=device, dtype=torch.float32, generator=generator)
    return u.clamp_(_U_LOW, _U_HIGH).log_().neg_().log_().neg_().to(dtype)


def noise_shape(logits: Tensor) -> tuple[int, ...]:
    """The shape of the Gumbel noise for ``logits`` ``[..., units, K]``: ``[..., K, units]``."""
    return (*logits.shape[:-2], logits.shape[-1], logits.shape[-2])


def hard_gumbel_softmax(logits: Tensor, tau: float,
                        noise: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """Straight-through Gumbel-Softmax over the last dimension (paper eqs. 1-4).

    Returns ``(y, index)``: the soft sample ``y`` (carries the gradient) and the hard choice.
    The one-hot forward value is ``one_hot(index) + (y - y.detach())``.  ``noise`` (shape
    :func:`noise_shape`, overwritten; default: drawn here) is laid out ``[K, units]``, the
    layout the softmax works in: over a short last dimension of size K it costs ten times
    more on a CPU.
    """
    if noise is None:
        noise = gumbel_noise(noise_shape(logits), logits.device, logits.dtype)
    z = noise.add_(logits.transpose(-1, -2)).div_(tau)
    return torch.softmax(z, -2).transpose(-1, -2), z.max(-2).indices


def sort_units(choice: Tensor, k: int) -> tuple[Tensor, list[int]]:
    """The permutation that groups units by choice (stable) and each group's size."""
    return torch.argsort(choice, stable=True), torch.bincount(choice, minlength=k).tolist()


def inverse(perm: Tensor) -> Tensor:
    """``inv`` with ``inv[perm[i]] = i``: gathering with it undoes gathering with ``perm``
    (a gather is cheaper than the scatter ``index_copy_``)."""
    return torch.empty_like(perm).scatter_(0, perm, torch.arange(len(perm), device=perm.device))


def apply_choices(x: Tensor, choice: Tensor, fns: Sequence, dim: int = 1) -> Tensor:
    """Apply ``fns[choice[i]]`` to unit ``i`` of ``x`` (units in any order, along ``dim``)."""
    perm, counts = sort_units(choice, len(fns))
    outs = _grouped_apply(x.index_select(dim, perm), counts, fns, dim)
    return outs.index_select(dim, inverse(perm))


def _grouped_apply(xp: Tensor, counts: Sequence[int], fns: Sequence, dim: int = 1) -> Tensor:
    """``fns[j]`` on the ``j``-th contiguous block of ``counts[j]`` units (along ``dim``)."""
    used = [(fn, c) for fn, c in zip(fns, counts) if c]
    if len(used) == 1:
        return used[0][0](xp)
    chunks = xp.split([c for _, c in used], dim=dim)
    return torch.cat([fn(c) for (fn, _), c in zip(used, chunks)], dim=dim)


def _activate_blocks(x: Tensor, sizes: Sequence[int], fns: Sequence, dim: int) -> Tensor:
    """Overwrite each block of ``sizes[j]`` units (along ``dim``) of ``x`` with ``fns[j]``
    (in-place forms); empty blocks are skipped.  Returns ``x``."""
    for fn, block, n in zip(fns, x.split(list(sizes), dim), sizes):
        if n:
            fn(block)
    return x


def _grad_from_output(grad: Tensor, out: Tensor, sizes: Sequence[int], grads: Sequence,
                      dim: int) -> Tensor:
    """The input gradient of :func:`_activate_blocks`, block by block from its output."""
    grad_x = torch.empty_like(out)
    split = list(sizes)
    parts = zip(grad.split(split, dim), out.split(split, dim), grad_x.split(split, dim))
    for fn, (g, y, gx), n in zip(grads, parts, sizes):
        if n:
            fn(g, y, gx)
    return grad_x


class _GroupedInPlace(torch.autograd.Function):
    """Contiguous activation groups as one autograd node.

    Forward copies ``x`` once and overwrites each group with its in-place activation;
    backward writes each group's input gradient, computed from the saved output, into one
    buffer.  The plain form (split, one op per group, cat) costs two extra copies and
    ``2 + groups`` autograd nodes per layer, which at small batches outweighs the activations.
    """

    @staticmethod
    def forward(ctx, x: Tensor, sizes: list[int], fns: tuple, grads: tuple, dim: int) -> Tensor:  # type: ignore[override]
        out = _activate_blocks(x.clone(), sizes, fns, dim)
        ctx.save_for_backward(out)
        ctx.sizes, ctx.grads, ctx.dim = sizes, grads, dim
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: Tensor):  # type: ignore[override]
        (out,) = ctx.saved_tensors
        return _grad_from_output(grad, out, ctx.sizes, ctx.grads, ctx.dim), None, None, None, None


class SelectionForms(NamedTuple):
    """What the fused straight-through selection needs of a pool (empty for an impure one)."""

    fns: tuple  # the pool's pure functions
    inplace: tuple | None  # their in-place forms (None unless every member has one)
    grads: tuple | None  # their input gradients from outputs (None unless every member has one)
    evals: tuple  # the candidate sums' basis: (inplace, fn) each, (None, None) for x itself


def selection_forms(pool: Sequence[str]) -> tuple[SelectionForms, Tensor | None]:
    """The :class:`SelectionForms` of ``pool`` and its basis matrix
    (:func:`~smartmixed_core.activations.candidate_basis`; None: the basis is the pool)."""
    if not is_pure(pool):
        return SelectionForms((), None, None, ()), None
    basis, matrix = candidate_basis(pool)
    evals = tuple((None, None) if b == IDENTITY else (ACTIVATIONS[b].inplace, ACTIVATIONS[b].fn)
                  for b in basis)
    forms = SelectionForms(tuple(ACTIVATIONS[n].fn for n in pool), *fused_forms(pool), evals)
    # float64: a module moved to float64 keeps the exact coefficients (rounded on use).
    return forms, None if matrix is None else torch.tensor(matrix, dtype=torch.float64)


def straight_through(x: Tensor, y: Tensor, choice: Tensor, forms: SelectionForms,
                     matrix: Tensor | None, dim: int) -> Tensor:
    """The fused hard straight-through selection of the sample ``(y, choice)`` (``[units,
    K]``, ``[units]``; units along ``dim`` of ``x``): :class:`_SelectST`."""
    return _SelectST.apply(x, y, choice, *forms, matrix, dim)


def activate_groups(x: Tensor, sizes: Sequence[int], inplace: Sequence, grads: Sequence,
                    dim: int) -> Tensor:
    """``inplace[j]`` on the ``j``-th contiguous block of ``sizes[j]`` units of a copy of
    ``x`` (along ``dim``; empty blocks skipped), as one autograd node whose backward uses
    ``grads`` (output-gradient forms, :class:`_GroupedInPlace`)."""
    return _GroupedInPlace.apply(x, list(sizes), tuple(inplace), tuple(grads), dim)


def _candidate_sums(x: Tensor, grad: Tensor, evals: Sequence, matrix: Tensor | None,
                    dim: int) -> Tensor:
    """``[units, K]``: the sum over every dimension but ``dim`` of ``grad * act_j(x)`` for
    each pool member ``j``, from the pool's basis functions ``evals`` (``(inplace, fn)``
    pairs, ``(None, None)`` for the identity) combined by ``matrix`` (None: the basis is the
    pool).  One scratch buffer serves every in-place evaluation."""
    dims = [d for d in range(x.dim()) if d != dim]
    buf = torch.empty_like(x)
    cols = []
    for inplace, fn in evals:
        if fn is None:
            t = torch.mul(x, grad, out=buf)
        elif inplace is not None:
            t = inplace(buf.copy_(x)).mul_(grad)
        else:
            t = fn(x).mul_(grad)
        cols.append(t.sum(dims))
    sums = torch.stack(cols)  # [basis, units]: the softmax's layout (hard_gumbel_softmax)
    return (sums if matrix is None else matrix.t().to(sums.dtype) @ sums).t()


class _SelectST(torch.autograd.Function):
    """Fused hard straight-through selection for pure activations.

    Forward sorts the units by choice along ``dim`` (one gather), activates each contiguous
    block of the sorted copy in place and gathers back with the inverse permutation: a fixed
    number of kernels whatever the choices.
    Backward: the input gradient flows through the chosen activation, written per block from
    the saved sorted output by ATen's backward kernels (``grads``; without them, autograd
    through a recomputed forward); the gradient of the soft sample ``y`` is
    ``sum_batch(grad * act_j(x))`` for every candidate ``j``, evaluated only now, one basis
    function at a time (:func:`_candidate_sums`), so no ``[K, batch, units]`` stack is ever
    stored.
    """

    @staticmethod
    def forward(ctx, x: Tensor, y: Tensor, choice: Tensor, fns: tuple,  # type: ignore[override]
                inplace: tuple | None, grads: tuple | None, evals: tuple,
                matrix: Tensor | None, dim: int) -> Tensor:
        perm, counts = sort_units(choice, len(fns))
        inv = inverse(perm)
        xs = x.index_select(dim, perm)
        if inplace is not None:
            outs = _activate_blocks(xs, counts, inplace, dim)  # xs is a fresh copy
        else:
            outs = _grouped_apply(xs, counts, fns, dim)
        ctx.save_for_backward(x, perm, inv, outs if grads is not None else None)
        ctx.fns, ctx.grads, ctx.counts, ctx.dim = fns, grads, counts, dim
        ctx.evals, ctx.matrix = evals, matrix
        return outs.index_select(dim, inv)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: Tensor):  # type: ignore[override]
        x, perm, inv, outs = ctx.saved_tensors
        dim, counts = ctx.dim, ctx.counts
        grad_x = grad_y = None
        if ctx.needs_input_grad[0]:
            gs = grad.index_select(dim, perm)
            if outs is not None:
                gxs = _grad_from_output(gs, outs, counts, ctx.grads, dim)
            else:
                with torch.enable_grad():
                    xp = x.index_select(dim, perm).requires_grad_(True)
                    (gxs,) = torch.autograd.grad(_grouped_apply(xp, counts, ctx.fns, dim), xp, gs)
            grad_x = gxs.index_select(dim, inv)
        if ctx.needs_input_grad[1]:
            grad_y = _candidate_sums(x, grad, ctx.evals, ctx.matrix, dim)
        return grad_x, grad_y, None, None, None, None, None, None, None


class SelectiveActivation(nn.Module):
    """Phase 1: every unit learns logits over ``pool`` (paper §III-B).

    Training: one hard straight-through Gumbel-Softmax sample per unit per forward pass
    (shared by the batch). Eval: the argmax of the logits (deterministic, eq. 7).
    """

    def __init__(self, units: int, pool: Sequence[str], tau: float = 0.3, fused: bool = True):
        super().__init__()
        self.pool = tuple(pool)
        self.tau = float(tau)
        self.logits = nn.Parameter(torch.zeros(units, len(self.pool)))
        self.candidates = nn.ModuleList(ACTIVATIONS[n].module() for n in self.pool)
        # The fused path needs plain functions; PReLU/RReLU use the stacked reference path.
        self.fused = fused and is_pure(self.pool)
        self._forms, matrix = selection_forms(self.pool)
        # Not in the state dict; moves with .to() like the logits.
        self.register_buffer("_basis_matrix", matrix, persistent=False)

    @property
    def units(self) -> int:
        return self.logits.shape[0]

    def choices(self) -> Tensor:
        """Each unit's current argmax choice (an index into ``pool``)."""
        return self.logits.detach().argmax(-1)

    def forward(self, x: Tensor) -> Tensor:
        return self._select(x, 1)

    def _select(self, x: Tensor, dim: int) -> Tensor:
        if not self.training:
            return apply_choices(x, self.choices(), self._forms.fns or tuple(self.candidates), dim)
        y, choice = hard_gumbel_softmax(self.logits, self.tau)
        if self.fused:
            return straight_through(x, y, choice, self._forms, self._basis_matrix, dim)
        if dim != 1:
            raise ValueError("the stacked (unfused) selective layer takes units on dimension 1")
        return self.stacked(x, y, choice)

    def stacked(self, x: Tensor, y: Tensor, choice: Tensor) -> Tensor:
        """The straightforward form: all K activations weighted by h (the reference)."""
        h = F.one_hot(choice, len(self.pool)).to(y.dtype) + (y - y.detach())
        out = torch.zeros_like(x)
        for j, act in enumerate(self.candidates):
            out = out + _per_unit(h[:, j], x) * act(x)
        return out

    def extra_repr(self) -> str:
        return f"units={self.units}, pool={list(self.pool)}, tau={self.tau:g}, fused={self.fused}"


class MixedActivation(nn.Module):
    """Phase 2: fixed choices, units grouped as contiguous slices in ``pool`` order.

    ``counts[j]`` units (a contiguous slice) use ``pool[j]``; :func:`smartmixed_core.freeze`
    permutes the surrounding weights so that this layout holds.  :meth:`forward` takes units
    on dimension 1 (any backbone).
    """

    def __init__(
        self, pool: Sequence[str], counts: Sequence[int], candidates: nn.ModuleList | None = None
    ):
        super().__init__()
        self.pool = tuple(pool)
        self.counts = [int(c) for c in counts]
        if len(self.counts) != len(self.pool):
            raise ValueError("counts must have one entry per pool member")
        self.candidates = candidates or nn.ModuleList(ACTIVATIONS[n].module() for n in self.pool)
        # The used groups' sizes, in-place builtins and gradients from outputs.
        used = [(n, c) for n, c in zip(self.pool, self.counts) if c]
        self._sizes = [c for _, c in used]
        self._inplace, self._grads = fused_forms([n for n, _ in used])

    @property
    def units(self) -> int:
        return sum(self.counts)

    def choices(self) -> Tensor:
        return torch.repeat_interleave(torch.arange(len(self.pool)), torch.tensor(self.counts))

    def forward(self, x: Tensor) -> Tensor:
        return self._grouped(x, 1)

    def _grouped(self, x: Tensor, dim: int) -> Tensor:
        if self._inplace is not None and (self._grads is not None or not torch.is_grad_enabled()):
            return activate_groups(x, self._sizes, self._inplace, self._grads, dim)
        return _grouped_apply(x, self.counts, self.candidates, dim)

    def extra_repr(self) -> str:
        return ", ".join(f"{n}={c}" for n, c in zip(self.pool, self.counts) if c)


GATES = ("layer", "neuron", "input")


class MixtureActivation(nn.Module):
    """Soft mixture ``sum_k g_k act_k(x)`` with ``g = softmax(z / temperature)``.

    * AdAct: ``gate="layer"`` (one weight vector per layer; ``"neuron"`` per unit), T = 1.
    * Gated mixtures: ``gate="layer"`` (static) or ``"input"`` (a linear head on the
      spatially pooled pre-activation produces per-sample logits), temperature T and an
      entropy weight: :meth:`aux_loss` is ``-entropy_weight * H(g)``, so a positive weight
      rewards diverse gates (counters collapse) and a negative one pushes towards one-hot.
    """

    def __init__(
        self,
        units: int,
        pool: Sequence[str],
        gate: str = "layer",
        temperature: float = 1.0,
        entropy_weight: float = 0.0,
    ):
        super().__init__()
        if gate not in GATES:
            raise ValueError(f"gate must be one of {GATES}")
        self.pool = tuple(pool)
        self.gate = gate
        self.temperature = float(temperature)
        self.entropy_weight = float(entropy_weight)
        k = len(self.pool)
        self.candidates = nn.ModuleList(ACTIVATIONS[n].module() for n in self.pool)
        self.head = nn.Linear(units, k) if gate == "input" else None
        self.weights: nn.Parameter | None
        if gate == "input":
            self.register_parameter("weights", None)
        else:
            shape = (units, k) if gate == "neuron" else (k,)
            self.weights = nn.Parameter(torch.zeros(shape))
        self.register_buffer("gate_mean", torch.full((k,), 1.0 / k))
        self._entropy: Tensor | None = None

    def gates(self, x: Tensor) -> Tensor:
        """``[K]`` (layer), ``[units, K]`` (neuron) or ``[batch, K]`` (input) gate weights."""
        if self.head is not None:
            z = self.head(x.mean(dim=tuple(range(2, x.dim()))) if x.dim() > 2 else x)
        else:
            z = self.weights
        return torch.softmax(z / self.temperature, dim=-1)

    def forward(self, x: Tensor) -> Tensor:
        g = self.gates(x)
        ent = -(g * torch.log(g.clamp_min(1e-12))).sum(-1).mean()
        self._entropy = ent if self.entropy_weight else None
        with torch.no_grad():
            self.gate_mean.copy_(g.reshape(-1, g.shape[-1]).mean(0))
        out = torch.zeros_like(x)
        for k, act in enumerate(self.candidates):
            w = g[..., k]
            if self.gate == "layer":
                out = out + w * act(x)
            elif self.gate == "neuron":
                out = out + _per_unit(w, x) * act(x)
            else:  # per-sample weights: [batch] -> [batch, 1, ...]
                out = out + w.reshape(-1, *([1] * (x.dim() - 1))) * act(x)
        return out

    def aux_loss(self) -> Tensor | None:
        """The entropy term of the last forward pass (``None`` when the weight is 0)."""
        if self._entropy is None:
            return None
        return -self.entropy_weight * self._entropy

    def dominant(self) -> str:
        """The highest-weight activation (mean gate of the last forward pass), AdAct's export."""
        return self.pool[int(self.gate_mean.argmax())]

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
