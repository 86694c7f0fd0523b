"""The activation registry: one name -> activation mapping for the whole project.

The names, aliases and pools are :mod:`smartmixed_core.names` (importable without torch);
:data:`ACTIVATIONS` gives each name its implementation, and the import checks that the two
list the same names in the same order.  Strings are resolved at the config edge
(:func:`~smartmixed_core.names.canonical`); layers receive resolved, canonical names.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from smartmixed_core.names import ACTIVATION_NAMES, canonical


@dataclass(frozen=True)
class ActivationSpec:
    """One registry entry.

    ``fn`` is a pure elementwise function when the activation has no parameters and no
    randomness (``pure``); the fused selective layer and the mixed layer use it directly.
    ``module`` builds a fresh ``nn.Module`` (PReLU carries a learnable slope, RReLU samples
    slopes in training), so every slot owns its own instance.  ``inplace`` is ``fn``
    overwriting its argument; it is a builtin (no Python frame) because the mixed layer calls
    it once per activation group and layer.  ``grad(grad_out, result, out)`` writes the input
    gradient into ``out`` from the activation's *output* (ATen's own backward kernels, as
    autograd uses them for the in-place forms), so the mixed layer can overwrite its input.
    ``basis`` writes the activation as a linear combination of other registry activations
    and :data:`IDENTITY` (``(name, coefficient)`` pairs), exact up to rounding; see
    :func:`candidate_basis`.
    """

    name: str
    module: Callable[[], nn.Module]
    fn: Callable[[Tensor], Tensor] | None = None
    inplace: Callable[[Tensor], Tensor] | None = None
    grad: Callable[[Tensor, Tensor, Tensor], Tensor] | None = None
    basis: tuple[tuple[str, float], ...] = ()

    @property
    def pure(self) -> bool:
        return self.fn is not None


IDENTITY = "identity"
"""The basis function ``x -> x`` of :attr:`ActivationSpec.basis` (not an activation)."""

_ATEN = torch.ops.aten
# torch.selu is ELU with these constants (ATen's SELU_ALPHA and SELU_SCALE).
_SELU_ALPHA = 1.6732632423543772848170429916717
_SELU_SCALE = 1.0507009873554804934193349852946


def _relu_grad(grad: Tensor, result: Tensor, out: Tensor) -> Tensor:
    return _ATEN.threshold_backward.grad_input(grad, result, 0, grad_input=out)


def _sigmoid_grad(grad: Tensor, result: Tensor, out: Tensor) -> Tensor:
    return _ATEN.sigmoid_backward.grad_input(grad, result, grad_input=out)


def _tanh_grad(grad: Tensor, result: Tensor, out: Tensor) -> Tensor:
    return _ATEN.tanh_backward.grad_input(grad, result, grad_input=out)


def _leaky_relu_grad(grad: Tensor, result: Tensor, out: Tensor) -> Tensor:
    return _ATEN.leaky_relu_backward.grad_input(grad, result, 0.01, True, grad_input=out)


def _elu_grad(grad: Tensor, result: Tensor, out: Tensor) -> Tensor:
    return _ATEN.elu_backward.grad_input(grad, 1.0, 1.0, 1.0, True, result, grad_input=out)


def _selu_grad(grad: Tensor, result: Tensor, out: Tensor) -> Tensor:
    return _ATEN.elu_backward.grad_input(
        grad, _SELU_ALPHA, _SELU_SCALE, 1.0, True, result, grad_input=out
    )


ACTIVATIONS: dict[str, ActivationSpec] = {
    spec.name: spec
    for spec in (
        ActivationSpec("relu", nn.ReLU, torch.relu, torch.relu_, _relu_grad),
        ActivationSpec("sigmoid", nn.Sigmoid, torch.sigmoid, torch.sigmoid_, _sigmoid_grad),
        ActivationSpec("tanh", nn.Tanh, torch.tanh, torch.tanh_, _tanh_grad),
        ActivationSpec(
            "leaky_relu",
            nn.LeakyReLU,
            partial(F.leaky_relu, negative_slope=0.01),
            partial(F.leaky_relu_, negative_slope=0.01),
            _leaky_relu_grad,
            basis=(("relu", 0.99), (IDENTITY, 0.01)),
        ),
        ActivationSpec("elu", nn.ELU, F.elu, F.elu_, _elu_grad),
        ActivationSpec(
            "selu",
            nn.SELU,
            F.selu,
            torch.selu_,
            _selu_grad,
            # scale * (relu(x) + alpha * (elu(x) - relu(x)))
            basis=(("relu", _SELU_SCALE * (1 - _SELU_ALPHA)), ("elu", _SELU_SCALE * _SELU_ALPHA)),
        ),
        ActivationSpec("prelu", nn.PReLU),
        ActivationSpec("rrelu", nn.RReLU),
        ActivationSpec("silu", nn.SiLU, F.silu, torch._C._nn.silu_),
        ActivationSpec("mish", nn.Mish, F.mish, torch._C._nn.mish_),
        ActivationSpec("gelu", nn.GELU, F.gelu),
    )
}
"""Canonical name -> spec."""
if tuple(ACTIVATIONS) != ACTIVATION_NAMES:
    raise ImportError("smartmixed_core.names.ACTIVATION_NAMES must list the registry's names")


def get_activation(name: str) -> nn.Module:
    """A fresh module for ``name``."""
    return ACTIVATIONS[canonical(name)].module()


def fused_forms(names: Sequence[str]) -> tuple[tuple | None, tuple | None]:
    """The ``inplace`` forms and the output ``grad`` forms of ``names``, each tuple None
    unless every one of them has that form (what the fused layers need)."""
    specs = [ACTIVATIONS[n] for n in names]
    inplace, grads = tuple(s.inplace for s in specs), tuple(s.grad for s in specs)
    return (inplace if all(inplace) else None), (grads if all(grads) else None)


def is_pure(names: Sequence[str]) -> bool:
    """True when every activation in ``names`` is a parameter-free deterministic function."""
    return all(ACTIVATIONS[n].pure for n in names)


def candidate_basis(names: Sequence[str]) -> tuple[tuple[str, ...], list[list[float]] | None]:
    """Fewer functions whose values give those of every member of the pool ``names``.

    Returns ``(basis, matrix)``: ``act_j(x) = sum_i matrix[i][j] * basis_i(x)`` for every
    member ``j``, or ``(names, None)`` when no member is worth rewriting.  A member is
    rewritten through its :attr:`ActivationSpec.basis` when every function of that basis
    other than :data:`IDENTITY` is itself a member (so it is evaluated anyway); e.g. in the
    paper pool, leaky_relu becomes relu and x, and selu becomes relu and elu.  The selective
    layer's backward needs ``sum_batch(grad * act_j(x))`` for every member: with the basis,
    five evaluations instead of six, and ELU's costly ``expm1`` once instead of twice.
    """
    members = set(names)
    rewrite = {n for n in names if ACTIVATIONS[n].basis and all(
        b == IDENTITY or (b in members and not ACTIVATIONS[b].basis)
        for b, _ in ACTIVATIONS[n].basis)}
    if not rewrite:
        return tuple(names), None
    basis = [n for n in names if n not in rewrite]
    basis += sorted({b for n in rewrite for b, _ in ACTIVATIONS[n].basis} - set(basis))
    matrix = [[0.0] * len(names) for _ in basis]
    for j, n in enumerate(names):
        for b, coef in ACTIVATIONS[n].basis if n in rewrite else ((n, 1.0),):
            matrix[basis.index(b)][j] += coef
    return tuple(basis), matrix
