import pytest
import torch
import torch.nn.functional as F

from smartmixed_core.activations import ACTIVATIONS, IDENTITY, candidate_basis, get_activation
from smartmixed_core.errors import ConfigError
from smartmixed_core.names import POOLS, canonical, resolve_pool

REFERENCES = {
    "relu": torch.relu,
    "sigmoid": torch.sigmoid,
    "tanh": torch.tanh,
    "leaky_relu": lambda x: F.leaky_relu(x, 0.01),
    "elu": lambda x: F.elu(x, 1.0),
    "selu": torch.selu,
    "prelu": lambda x: F.prelu(x, torch.tensor([0.25])),
    "silu": lambda x: x * torch.sigmoid(x),
    "mish": lambda x: x * torch.tanh(F.softplus(x)),
    "gelu": F.gelu,
}


@pytest.mark.parametrize("name", sorted(REFERENCES))
def test_registry_matches_torch_reference(name):
    x = torch.linspace(-6, 6, 1001)
    expected = REFERENCES[name](x)
    torch.testing.assert_close(get_activation(name)(x), expected)
    if ACTIVATIONS[name].pure:
        torch.testing.assert_close(ACTIVATIONS[name].fn(x), expected)


def test_rrelu_is_leaky_in_eval_and_random_slope_in_training():
    act = get_activation("rrelu")
    x = -torch.ones(1000)
    act.eval()
    torch.testing.assert_close(act(x), x * (1 / 8 + 1 / 3) / 2)
    act.train()
    slopes = -act(x)
    assert slopes.min() >= 1 / 8 - 1e-6 and slopes.max() <= 1 / 3 + 1e-6
    assert slopes.std() > 0.01


def test_pools():
    assert resolve_pool("paper") == ("relu", "sigmoid", "tanh", "leaky_relu", "elu", "selu")
    assert resolve_pool("adact") == ("relu", "elu", "leaky_relu", "prelu", "rrelu", "silu", "mish")
    assert resolve_pool(["ReLU", "swish"]) == ("relu", "silu")
    assert resolve_pool("tanh, lrelu") == ("tanh", "leaky_relu")
    assert all(n in ACTIVATIONS for pool in POOLS.values() for n in pool)
    required = {
        "relu",
        "sigmoid",
        "tanh",
        "leaky_relu",
        "elu",
        "selu",
        "prelu",
        "rrelu",
        "silu",
        "mish",
    }
    assert required <= set(ACTIVATIONS)


@pytest.mark.parametrize("bad", ["softmax2", "relu,nope"])
def test_unknown_names_list_allowed(bad):
    with pytest.raises(ConfigError) as err:
        resolve_pool(bad) if "," in bad else canonical(bad)
    assert "allowed" in str(err.value) and "leaky_relu" in str(err.value)


def test_pool_validation():
    with pytest.raises(ConfigError, match="at least two"):
        resolve_pool(["relu"])
    with pytest.raises(ConfigError, match="duplicate"):
        resolve_pool("relu,ReLU")


@pytest.mark.parametrize("name", sorted(n for n, a in ACTIVATIONS.items() if a.inplace))
def test_inplace_forms_equal_the_functions(name):
    x = torch.cat([torch.linspace(-6, 6, 1001), torch.zeros(3)])
    y = x.clone()
    assert ACTIVATIONS[name].inplace(y) is y
    torch.testing.assert_close(y, ACTIVATIONS[name].fn(x), rtol=0, atol=0)


@pytest.mark.parametrize("name", sorted(n for n, a in ACTIVATIONS.items() if a.grad))
def test_gradients_from_outputs_equal_autograd(name):
    x = torch.cat([torch.linspace(-6, 6, 1001), torch.zeros(3)]).double().requires_grad_(True)
    grad = torch.randn(x.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    result = ACTIVATIONS[name].fn(x)
    (expected,) = torch.autograd.grad(result, x, grad)
    out = torch.empty_like(expected)
    assert ACTIVATIONS[name].grad(grad, result.detach(), out) is out
    torch.testing.assert_close(out, expected)


def _value(name: str, x: torch.Tensor) -> torch.Tensor:
    return x if name == IDENTITY else ACTIVATIONS[name].fn(x)


@pytest.mark.parametrize("name", sorted(n for n, a in ACTIVATIONS.items() if a.basis))
def test_basis_combinations_equal_the_activation(name):
    x = torch.cat([torch.linspace(-8, 8, 2001), torch.zeros(3)]).double()
    combined = sum(coef * _value(b, x) for b, coef in ACTIVATIONS[name].basis)
    torch.testing.assert_close(combined, ACTIVATIONS[name].fn(x), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("pool", [POOLS["paper"], ("relu", "sigmoid", "leaky_relu", "gelu"),
                                  ("selu", "tanh", "elu", "relu")])
def test_candidate_basis_reproduces_every_member(pool):
    basis, matrix = candidate_basis(pool)
    assert matrix is not None
    x = torch.linspace(-8, 8, 2001).double()
    coefficients = torch.tensor(matrix, dtype=torch.float64)
    values = torch.stack([_value(b, x) for b in basis], -1) @ coefficients
    expected = torch.stack([ACTIVATIONS[n].fn(x) for n in pool], -1)
    torch.testing.assert_close(values, expected, rtol=1e-12, atol=1e-12)


def test_candidate_basis_rewrites_only_through_members():
    assert candidate_basis(POOLS["paper"])[0] == ("relu", "sigmoid", "tanh", "elu", IDENTITY)
    assert candidate_basis(("leaky_relu", "sigmoid")) == (("leaky_relu", "sigmoid"), None)
    assert candidate_basis(("selu", "relu", "tanh")) == (("selu", "relu", "tanh"), None)
