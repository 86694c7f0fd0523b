"""Grouped activations as plain-PyTorch autograd functions (the fused layers' machinery).

Units sit along dimension 1 of ``x`` (one seed's ``[batch, units, *spatial]``: the selective
and mixed slots call these seed by seed).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from smartmixed_core.activations import ACTIVATIONS, IDENTITY, candidate_basis, fused_forms, is_pure


def sort_units(choice: Tensor, k: int) -> tuple[Tensor, list[int]]:
    """The permutation that groups units by choice (stable) and each group's size."""
    return torch.argsort(choice, stable=True), torch.bincount(choice, minlength=k).tolist()


def inverse(perm: Tensor) -> Tensor:
    """``inv`` with ``inv[perm[i]] = i``: gathering with it undoes gathering with ``perm``
    (a gather is cheaper than the scatter ``index_copy_``)."""
    return torch.empty_like(perm).scatter_(0, perm, torch.arange(len(perm), device=perm.device))


def apply_choices(x: Tensor, choice: Tensor, fns: Sequence) -> Tensor:
    """Apply ``fns[choice[i]]`` to unit ``i`` of ``x`` (units in any order)."""
    perm, counts = sort_units(choice, len(fns))
    outs = grouped_apply(x.index_select(1, perm), counts, fns)
    return outs.index_select(1, inverse(perm))


def grouped_apply(xp: Tensor, counts: Sequence[int], fns: Sequence) -> Tensor:
    """``fns[j]`` on the ``j``-th contiguous block of ``counts[j]`` units."""
    used = [(fn, c) for fn, c in zip(fns, counts) if c]
    if len(used) == 1:
        return used[0][0](xp)
    chunks = xp.split([c for _, c in used], dim=1)
    return torch.cat([fn(c) for (fn, _), c in zip(used, chunks)], dim=1)


def activate_blocks(x: Tensor, sizes: Sequence[int], fns: Sequence) -> Tensor:
    """Overwrite each block of ``sizes[j]`` units of ``x`` with ``fns[j]`` (in-place forms);
    empty blocks are skipped.  Returns ``x``."""
    for fn, block, n in zip(fns, x.split(list(sizes), 1), sizes):
        if n:
            fn(block)
    return x


def _grad_from_output(grad: Tensor, out: Tensor, sizes: Sequence[int], grads: Sequence) -> Tensor:
    """The input gradient of :func:`activate_blocks`, block by block from its output."""
    grad_x = torch.empty_like(out)
    split = list(sizes)
    parts = zip(grad.split(split, 1), out.split(split, 1), grad_x.split(split, 1))
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
    def forward(ctx, x: Tensor, sizes: list[int], fns: tuple, grads: tuple) -> Tensor:  # type: ignore[override]
        out = activate_blocks(x.clone(), sizes, fns)
        ctx.save_for_backward(out)
        ctx.sizes, ctx.grads = sizes, grads
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: Tensor):  # type: ignore[override]
        (out,) = ctx.saved_tensors
        return _grad_from_output(grad, out, ctx.sizes, ctx.grads), None, None, None


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
                     matrix: Tensor | None) -> Tensor:
    """The fused hard straight-through selection of the sample ``(y, choice)`` (``[units,
    K]``, ``[units]``): :class:`_SelectST`."""
    return _SelectST.apply(x, y, choice, *forms, matrix)


def activate_groups(x: Tensor, sizes: Sequence[int], inplace: Sequence,
                    grads: Sequence) -> Tensor:
    """``inplace[j]`` on the ``j``-th contiguous block of ``sizes[j]`` units of a copy of
    ``x`` (empty blocks skipped), as one autograd node whose backward uses ``grads``
    (output-gradient forms, :class:`_GroupedInPlace`)."""
    return _GroupedInPlace.apply(x, list(sizes), tuple(inplace), tuple(grads))


def _candidate_sums(x: Tensor, grad: Tensor, evals: Sequence, matrix: Tensor | None) -> Tensor:
    """``[units, K]``: the sum over every dimension but the units' of ``grad * act_j(x)`` for
    each pool member ``j``, from the pool's basis functions ``evals`` (``(inplace, fn)``
    pairs, ``(None, None)`` for the identity) combined by ``matrix`` (None: the basis is the
    pool).  One scratch buffer serves every in-place evaluation."""
    dims = [d for d in range(x.dim()) if d != 1]
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

    Forward sorts the units by choice (one gather), activates each contiguous
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
                matrix: Tensor | None) -> Tensor:
        perm, counts = sort_units(choice, len(fns))
        inv = inverse(perm)
        xs = x.index_select(1, perm)
        if inplace is not None:
            outs = activate_blocks(xs, counts, inplace)  # xs is a fresh copy
        else:
            outs = grouped_apply(xs, counts, fns)
        ctx.save_for_backward(x, perm, inv, outs if grads is not None else None)
        ctx.fns, ctx.grads, ctx.counts = fns, grads, counts
        ctx.evals, ctx.matrix = evals, matrix
        return outs.index_select(1, inv)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: Tensor):  # type: ignore[override]
        x, perm, inv, outs = ctx.saved_tensors
        counts = ctx.counts
        grad_x = grad_y = None
        if ctx.needs_input_grad[0]:
            gs = grad.index_select(1, perm)
            if outs is not None:
                gxs = _grad_from_output(gs, outs, counts, ctx.grads)
            else:
                with torch.enable_grad():
                    xp = x.index_select(1, perm).requires_grad_(True)
                    (gxs,) = torch.autograd.grad(grouped_apply(xp, counts, ctx.fns), xp, gs)
            grad_x = gxs.index_select(1, inv)
        if ctx.needs_input_grad[1]:
            grad_y = _candidate_sums(x, grad, ctx.evals, ctx.matrix)
        return grad_x, grad_y, None, None, None, None, None, None
