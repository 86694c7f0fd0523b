"""Learnable-shape activations (PAU, Swish-beta): the published formulas, their gradients,
the leaky-ReLU start of PAU, and per-seed independence."""

import pytest
import torch
import torch.nn.functional as F

from smartmixed_core.config import RunConfig
from smartmixed_core.runner import train_seeds
from smartmixed_core.shapes import PadeActivation, SwishBeta, pade


def reference_pade(x, a, b):
    """Molina et al. (2020), safe PAU: sum a_j x^j / (1 + sum |b_k| |x|^k)."""
    num = sum(a[j] * x**j for j in range(len(a)))
    den = 1 + sum(abs(b[k]) * x.abs() ** (k + 1) for k in range(len(b)))
    return num / den


def test_pade_is_the_safe_rational_formula():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(200, dtype=torch.float64, generator=g) * 3
    a = torch.randn(6, dtype=torch.float64, generator=g)
    b = torch.randn(4, dtype=torch.float64, generator=g)  # negative b: |b| keeps Q >= 1
    torch.testing.assert_close(pade(x[None], a[None], b[None])[0], reference_pade(x, a, b),
                               rtol=1e-12, atol=1e-12)
    batched = pade(x.expand(2, 3, -1), torch.stack([a, -a]), torch.stack([b, b]))
    torch.testing.assert_close(batched[1, 0], reference_pade(x, -a, b), rtol=1e-12,
                               atol=1e-12)


def test_pau_starts_as_leaky_relu():
    x = torch.linspace(-3, 3, 601).reshape(1, 1, -1)
    out = PadeActivation()(x)
    assert (out - F.leaky_relu(x, 0.01)).abs().max() < 0.035


def test_pau_and_swish_gradients_match_finite_differences():
    g = torch.Generator().manual_seed(1)
    x = (torch.rand(1, 4, 5, dtype=torch.float64, generator=g) + 0.1) * torch.tensor(
        [1.0, -1.0, 1.0, -1.0, 1.0], dtype=torch.float64)  # away from the kink of |x| at 0
    x.requires_grad_(True)
    a = torch.randn(6, dtype=torch.float64, generator=g, requires_grad=True)
    b = torch.randn(4, dtype=torch.float64, generator=g, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x, a, b: pade(x, a[None], b[None]), (x, a, b))
    beta = torch.tensor([0.7], dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x, beta: x * torch.sigmoid(beta * x), (x, beta))
    act = SwishBeta().double()
    act.beta.data.fill_(0.7)
    torch.testing.assert_close(act(x.detach()), x.detach() * torch.sigmoid(0.7 * x.detach()))


def test_swish_beta_starts_as_silu_and_learns_beta():
    x = torch.randn(1, 8, 3)
    act = SwishBeta()
    torch.testing.assert_close(act(x), F.silu(x))
    act(x).sum().backward()
    assert act.beta.grad is not None and act.beta.grad.abs().item() > 0


@pytest.mark.parametrize("cls", [PadeActivation, SwishBeta])
def test_each_seed_uses_only_its_own_coefficients(cls):
    torch.manual_seed(0)
    three, one = cls(3), cls(1)
    with torch.no_grad():
        for p in three.parameters():
            p.add_(torch.randn_like(p) * 0.1)
        for p3, p1 in zip(three.parameters(), one.parameters()):
            p1.copy_(p3[1:2])
    x = torch.randn(3, 16, 7)
    assert torch.equal(three(x)[1], one(x[1:2])[0])  # bit for bit
    three.compiled = True  # the all-seeds form: equal up to rounding
    torch.testing.assert_close(three(x)[1], one(x[1:2])[0])


@pytest.mark.parametrize("method", ["pau", "swish_beta"])
def test_shape_methods_train_and_change_their_shape(method):
    cfg = RunConfig(method=method, epochs=3, arch="16-8", device="cpu", lr=1e-2)
    doc, (outcome,) = train_seeds(cfg, [0])
    assert doc["summary"]["test_accuracy_mean"] > 0.5
    slot = outcome.model.acts[0]
    start = type(slot)(1)
    moved = [not torch.equal(p, q) for p, q in zip(slot.parameters(), start.parameters())]
    assert any(moved)  # the shape was learned, not left at its start
