import pytest
import torch

from smartmixed_core.activations import ACTIVATIONS
from smartmixed_core.grouping import apply_choices
from smartmixed_core.layers import (
    MixedActivation,
    MixtureActivation,
    SelectiveActivation,
    gumbel_noise,
    hard_gumbel_softmax,
    noise_shape,
)
from smartmixed_core.names import POOLS
from smartmixed_core.seeded import SeedNoise

PAPER = POOLS["paper"]


def noise_of(logits, seed=0):
    """The Gumbel noise a fresh ``SeedNoise.of([seed])`` gives a one-seed layer first."""
    gen = SeedNoise.of([seed]).generators[0]
    return gumbel_noise(noise_shape(logits[0]), "cpu", torch.float32, gen).to(logits)[None]


def test_gumbel_noise_is_finite_at_the_extremes(monkeypatch):
    for _ in range(200):
        g = gumbel_noise((1000, 6), "cpu", torch.float32)
        assert torch.isfinite(g).all()
    # Force the uniform draws to exactly 0 and 1: the clamp keeps the noise finite.
    monkeypatch.setattr(torch, "rand", lambda shape, **kw: torch.tensor([0.0, 1.0]).repeat(3))
    assert torch.isfinite(gumbel_noise((6,), "cpu", torch.float32)).all()


def test_hard_sample_is_one_hot_forward_with_soft_gradient():
    logits = torch.randn(5, 6, requires_grad=True)
    y, idx = hard_gumbel_softmax(logits, 0.5, gumbel_noise((6, 5), "cpu", torch.float32))
    h = torch.nn.functional.one_hot(idx, 6).float() + (y - y.detach())
    assert torch.equal(h, torch.nn.functional.one_hot(idx, 6).float())
    (h * torch.arange(6.0)).sum().backward()
    assert logits.grad is not None and logits.grad.abs().sum() > 0


def test_selective_layer_straight_through():
    layer = SelectiveActivation(8, PAPER, tau=0.3)
    layer.logits.data.normal_()
    layer.noise = SeedNoise.of([1])
    x = torch.randn(1, 4, 8, requires_grad=True)
    out = layer(x)
    _, choice = hard_gumbel_softmax(layer.logits, 0.3, noise_of(layer.logits, 1))
    fns = [ACTIVATIONS[n].fn for n in PAPER]
    expected = torch.stack([fns[c](x[0, :, i]) for i, c in enumerate(choice[0].tolist())], 1)
    expected = expected[None]
    torch.testing.assert_close(out, expected)  # forward is exactly one activation per unit
    out.sum().backward()
    assert layer.logits.grad.abs().sum() > 0 and x.grad.abs().sum() > 0


@pytest.mark.parametrize("shape", [(1, 16, 10), (3, 16, 10), (2, 4, 10, 3, 3)])
@pytest.mark.parametrize("variant", ["output_grads", "recompute"])
def test_fused_matches_stacked_reference(shape, variant):
    """The fused layer equals the stack-all-K form in value and grads: input gradients from
    the saved output, or by autograd through a recomputed forward (a pure pool member without
    an output gradient: GELU)."""
    pool = (*PAPER[:5], "gelu") if variant == "recompute" else PAPER
    torch.manual_seed(0)
    seeds = shape[0]
    fused = SelectiveActivation(10, pool, tau=0.7, fused=True, seeds=seeds)
    assert fused.fused and (fused._forms.grads is None) == (variant == "recompute")
    fused.logits.data.normal_()
    plain = SelectiveActivation(10, pool, tau=0.7, fused=False, seeds=seeds)
    plain.load_state_dict(fused.state_dict())
    x = torch.randn(*shape)
    w = torch.randn(*shape)
    results = []
    for layer in (fused, plain):
        xi = x.clone().requires_grad_(True)
        layer.zero_grad()
        layer.noise = SeedNoise.of(range(40, 40 + seeds))
        out = layer(xi)
        (out * w).sum().backward()
        results.append((out.detach(), xi.grad, layer.logits.grad.clone()))
    for a, b in zip(*results):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_impure_pool_falls_back_to_stacked():
    layer = SelectiveActivation(6, POOLS["adact"], seeds=2)
    assert not layer.fused
    x = torch.randn(2, 3, 6, requires_grad=True)
    layer(x).sum().backward()
    assert layer.logits.grad.abs().sum() > 0


def test_no_nan_over_many_training_steps():
    layer = SelectiveActivation(64, PAPER, tau=0.05)
    layer.logits.data.normal_(std=20)  # extreme logits
    x = torch.randn(1, 32, 64) * 50
    for _ in range(300):
        layer.zero_grad()
        out = layer(x.requires_grad_(True))
        out.square().mean().backward()
        assert torch.isfinite(out).all() and torch.isfinite(layer.logits.grad).all()


def test_eval_is_deterministic_argmax():
    layer = SelectiveActivation(12, PAPER, seeds=2).eval()
    layer.logits.data.normal_()
    x = torch.randn(2, 5, 12)
    torch.testing.assert_close(layer(x), layer(x))
    fns = [ACTIVATIONS[n].fn for n in PAPER]
    for s in range(2):
        expected = apply_choices(x[s], layer.logits[s].argmax(-1), fns)
        torch.testing.assert_close(layer(x)[s], expected)


def test_mixed_layer_uses_contiguous_groups():
    layer = MixedActivation(PAPER, [[2, 0, 3, 0, 0, 1], [0, 6, 0, 0, 0, 0]])
    x = torch.randn(2, 4, 6)
    x0 = x[0]
    expected = torch.cat([torch.relu(x0[:, :2]), torch.tanh(x0[:, 2:5]), torch.selu(x0[:, 5:])], 1)
    torch.testing.assert_close(layer(x)[0], expected)
    torch.testing.assert_close(layer(x)[1], torch.sigmoid(x[1]))
    assert layer.choices().tolist() == [[0, 0, 2, 2, 2, 5], [1] * 6]
    assert layer.counts == [2, 0, 3, 0, 0, 1]
    layer.select_seeds([1])
    assert layer.counts == [0, 6, 0, 0, 0, 0] and layer.choices().tolist() == [[1] * 6]


def test_mixture_layer_weights_and_entropy():
    layer = MixtureActivation(
        4, ("relu", "tanh"), gate="layer", temperature=2.0, entropy_weight=0.5
    )
    layer.weights.data = torch.tensor([[1.0, -1.0]])
    x = torch.randn(1, 3, 4)
    g = torch.softmax(torch.tensor([0.5, -0.5]), 0)
    torch.testing.assert_close(layer(x), g[0] * torch.relu(x) + g[1] * torch.tanh(x))
    entropy = -(g * g.log()).sum()
    torch.testing.assert_close(layer.aux_loss(), -0.5 * entropy)
    assert layer.dominant() == "relu"


@pytest.mark.parametrize("gate", ["neuron", "input"])
def test_mixture_gate_variants(gate):
    layer = MixtureActivation(5, PAPER, gate=gate, seeds=2)
    x = torch.randn(2, 7, 5, requires_grad=True)
    layer(x).sum().backward()
    g = layer.gates(x)
    assert g.shape == ((2, 5, 6) if gate == "neuron" else (2, 7, 6))
    torch.testing.assert_close(g.sum(-1), torch.ones(g.shape[:-1]))


def naive_choices(x, choice, pool):
    """Unit by unit: the definition ``apply_choices`` must equal (``x`` ``[batch, units,
    ...]``, ``choice`` ``[units]``; or ``[S, batch, units, ...]`` and ``[S, units]``)."""
    if choice.dim() == 2:
        return torch.stack([naive_choices(xs, c, pool) for xs, c in zip(x, choice)])
    fns = [ACTIVATIONS[n].fn or ACTIVATIONS[n].module().eval() for n in pool]
    return torch.stack([fns[c](x[:, i]) for i, c in enumerate(choice.tolist())], 1)


@pytest.mark.parametrize("shape", [(7, 13), (3, 13, 2, 2)])
def test_apply_choices_matches_unit_by_unit_with_empty_groups(shape):
    torch.manual_seed(0)
    x = torch.randn(*shape)
    choice = torch.tensor([4, 0, 4, 2, 0, 0, 5, 4, 2, 2, 0, 4, 5])  # no sigmoid, no leaky
    fns = [ACTIVATIONS[n].fn for n in PAPER]
    torch.testing.assert_close(apply_choices(x, choice, fns), naive_choices(x, choice, PAPER))


@pytest.mark.parametrize("pool", ["paper", "adact"])
@pytest.mark.parametrize("layout", ["dim1", "conv"])
def test_mixed_gradient_equals_unit_by_unit_autograd(pool, layout):
    """Pure pools run as one node (in place, gradients from outputs); impure ones split and
    concatenate; both must give autograd's unit-by-unit answer."""
    torch.manual_seed(0)
    names = POOLS[pool]
    counts = [3, 0, 2, 4, 1, 5, 2][: len(names)]
    other = counts[::-1]
    layer = MixedActivation(names, [counts, other]).eval()  # RReLU: deterministic in eval
    units = sum(counts)
    shape = {"dim1": (2, 8, units), "conv": (2, 2, units, 3, 3)}[layout]
    dtype = torch.float64 if pool == "paper" else torch.float32  # PReLU's slope is float32
    x = torch.randn(*shape, dtype=dtype, requires_grad=True)
    grad = torch.randn(*shape, dtype=dtype)
    out = layer(x)
    reference = naive_choices(x, layer.choices(), names)
    torch.testing.assert_close(out, reference)
    (got,) = torch.autograd.grad(out, x, grad)
    (expected,) = torch.autograd.grad(reference, x, grad)
    torch.testing.assert_close(got, expected)
    if pool == "paper":
        assert torch.autograd.gradcheck(layer, (x,))


def test_basis_matrix_follows_the_module_but_stays_out_of_checkpoints():
    layer = SelectiveActivation(8, PAPER).double()
    assert list(layer.state_dict()) == ["logits"]
    assert layer._basis_matrix.dtype == torch.float64 and layer._basis_matrix.shape == (5, 6)
    x = torch.randn(1, 3, 8, dtype=torch.float64, requires_grad=True)
    layer(x).sum().backward()
    assert layer.logits.grad.dtype == torch.float64 and torch.isfinite(layer.logits.grad).all()


@pytest.mark.parametrize("kind", ["selective", "mixed", "fixed"])
def test_seeds_of_a_slot_equal_each_seed_alone_bit_for_bit(kind, one_thread):
    """A slot of three seeds gives every seed exactly the output and gradients of a one-seed
    slot holding that seed's logits (or choices) and noise."""
    from smartmixed_core.layers import Activation

    torch.manual_seed(0)
    x = torch.randn(3, 7, 9, dtype=torch.float64)
    w = torch.randn(3, 7, 9, dtype=torch.float64)
    counts = [[1, 2, 0, 3, 2, 1], [0, 0, 4, 1, 0, 4], [9, 0, 0, 0, 0, 0]]

    def make(idx):
        if kind == "selective":
            layer = SelectiveActivation(9, PAPER, tau=0.4, seeds=len(idx)).double()
            layer.logits.data = logits[idx].clone()
            layer.noise = SeedNoise.of(idx)
            return layer
        if kind == "mixed":
            return MixedActivation(PAPER, [counts[i] for i in idx])
        return Activation("elu", len(idx))

    logits = torch.randn(3, 9, 6, dtype=torch.float64)
    together = make([0, 1, 2])
    xt = x.clone().requires_grad_(True)
    (together(xt) * w).sum().backward()
    for s in range(3):
        alone = make([s])
        xs = x[s : s + 1].clone().requires_grad_(True)
        out = alone(xs)
        (out * w[s : s + 1]).sum().backward()
        assert torch.equal(out[0], together(x)[s]) or kind == "selective"
        assert torch.equal(xs.grad[0], xt.grad[s])
        if kind == "selective":
            assert torch.equal(alone.logits.grad[0], together.logits.grad[s])


def test_a_compiled_mixed_slot_is_one_graph_of_static_slices(monkeypatch):
    """Under torch.compile a mixed slot of pure activations activates each seed's groups as
    slices (no select-by-mask over every activation) and traces to one graph (fullgraph
    refuses a break); it computes what the eager slot computes."""
    from smartmixed_core import layers

    slot = MixedActivation(PAPER, [[1, 2, 0, 3, 2, 1], [0, 0, 4, 1, 0, 4]])
    x = torch.randn(2, 5, 9, generator=torch.Generator().manual_seed(0))
    eager = slot(x.clone())
    monkeypatch.setattr(layers, "select", lambda *a: pytest.fail("selected by mask"))
    slot.compiled = True
    torch._dynamo.reset()
    compiled = torch.compile(slot, fullgraph=True, backend="eager")(x.clone())
    torch.testing.assert_close(compiled, eager, rtol=0, atol=0)
