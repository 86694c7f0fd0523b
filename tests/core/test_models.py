
import pytest
import torch

from smartmixed_core.errors import ConfigError
from smartmixed_core.layers import Activation
from smartmixed_core.models import MLP, ConvNet
from smartmixed_core.names import (
    _PAPER_LAYERS,
    PAPER_ARCHITECTURES,
    POOLS,
    REPRESENTATIVE,
    parse_arch,
)
from smartmixed_core.seeded import SeedLinear


def relu_slot(layer, units):
    return Activation("relu")


def test_all_18_paper_architectures_distinct():
    assert len(_PAPER_LAYERS) == 18
    assert len(PAPER_ARCHITECTURES) == 18  # a duplicated key would drop one
    assert PAPER_ARCHITECTURES[REPRESENTATIVE] == (768, 512, 512, 256, 256, 128)
    assert PAPER_ARCHITECTURES["784-512-10"] == (512,)
    deepest = "784-768-512-512-256-256-128-128-64-64-32-32-16-16-10"
    assert len(PAPER_ARCHITECTURES[deepest]) == 13


@pytest.mark.parametrize(
    "spec,expected",
    [
        ("64,32", (64, 32)),
        ("64-32", (64, 32)),
        ([8], (8,)),
        ("paper:784-512-10", (512,)),
        ("784-256-128-10", (256, 128)),
    ],
)
def test_parse_arch(spec, expected):
    assert parse_arch(spec) == expected


@pytest.mark.parametrize("bad", ["", "64,-3", "a,b", "paper:1-2-3", "0", [64, 0]])
def test_parse_arch_rejects(bad):
    with pytest.raises(ConfigError, match="arch"):
        parse_arch(bad)


def test_mlp_outputs_logits_without_softmax():
    net = MLP(20, (16, 8), 3, relu_slot)
    out = net.shared(torch.randn(5, 20))
    assert out.shape == (1, 5, 3)
    assert not torch.allclose(out.exp().sum(-1), torch.ones(1, 5))  # not probabilities
    assert list(net.modules())[-1] is net.head


@pytest.mark.parametrize("size", [(8, 8), (28, 28), (32, 32)])
def test_convnet_shapes(size):
    net = ConvNet(3 if size == (32, 32) else 1, size, 10, relu_slot)
    assert len(net.convs) == 4 and len(net.norms) == 4
    assert net.shared(torch.randn(2, net.convs[0].weight.shape[2], *size)).shape == (1, 2, 10)


def slots2(layer, units):
    return Activation("elu", 2)


@pytest.mark.parametrize("kind", ["mlp", "convnet"])
def test_permute_units_keeps_function(kind):
    """Each seed's own permutation (two seeds) leaves every seed's function unchanged."""
    torch.manual_seed(0)
    if kind == "mlp":
        net, x = MLP(12, (10, 7), 4, slots2, seeds=2), torch.randn(6, 12)
    else:
        net, x = ConvNet(1, (8, 8), 4, slots2, (4, 6, 5, 3), seeds=2), torch.randn(6, 1, 8, 8)
    net.train()
    net.shared(x)  # populate BatchNorm running statistics
    net.eval()
    before = net.shared(x)
    for layer, width in enumerate(net.hidden):
        net.permute_units(layer, torch.stack([torch.randperm(width), torch.randperm(width)]))
    torch.testing.assert_close(net.shared(x), before, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("kind", ["mlp", "convnet"])
def test_seeds_are_independent_models(kind):
    """Seed s of a three-seed model is the model select_seeds([s]) holds: same output, and
    reset_parameters draws each seed's weights from its own generator only."""
    torch.manual_seed(0)
    make = {"mlp": lambda s: MLP(12, (10, 7), 4, lambda i, n: Activation("tanh", s), seeds=s),
            "convnet": lambda s: ConvNet(1, (8, 8), 4, lambda i, n: Activation("tanh", s),
                                         (4, 6, 5, 3), seeds=s)}[kind]
    x = torch.randn(5, 12) if kind == "mlp" else torch.randn(5, 1, 8, 8)
    gens = lambda seeds: [torch.Generator().manual_seed(10 + s) for s in seeds]  # noqa: E731
    three, one = make(3), make(1)
    three.reset_parameters(gens([0, 1, 2]))
    one.reset_parameters(gens([1]))
    for a, b in zip(three.select_seeds([1]).state_dict().values(), one.state_dict().values()):
        assert torch.equal(a, b)
    three.eval(), one.eval()
    torch.testing.assert_close(three.shared(x)[1], one.shared(x)[0], rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("batch", [1, 5, 64, 127])
def test_seed_linear_gradients_in_the_weights_layout_and_per_seed_exact(batch, one_thread):
    """SeedLinear's gradients equal nn.Linear's (float64); the weight's is computed in the
    parameter's own layout, so backward copies nothing; a seed's slice of a three-seed
    layer's output and gradients equals the seed's one-seed layer bit for bit (float32, odd
    batches too)."""
    torch.manual_seed(0)
    three = SeedLinear(8, 10, seeds=3)
    x = torch.randn(3, batch, 8, requires_grad=True)
    loss = (three(x) ** 2).sum()
    with torch.profiler.profile(record_shapes=True) as prof:
        loss.backward()
    weight_copies = [e for e in prof.events()
                     if e.name == "aten::copy_" and e.input_shapes[0] == [3, 10, 8]]
    assert not weight_copies
    w = three.weight.grad
    one = SeedLinear(8, 10, seeds=1)
    with torch.no_grad():
        one.weight.copy_(three.weight[2:]), one.bias.copy_(three.bias[2:])
    x1 = x.detach()[2:].clone().requires_grad_(True)
    out = one(x1)
    assert torch.equal(out, three(x.detach())[2:])
    (out ** 2).sum().backward()
    for a, b in ((x.grad[2:], x1.grad), (w[2:], one.weight.grad),
                 (three.bias.grad[2:], one.bias.grad)):
        assert torch.equal(a, b)
    ref = torch.nn.Linear(8, 10).double()
    with torch.no_grad():
        ref.weight.copy_(three.weight[0]), ref.bias.copy_(three.bias[0])
    xr = x.detach()[0].double().requires_grad_(True)
    (ref(xr) ** 2).sum().backward()
    three64 = three.double()
    three64.zero_grad()
    x64 = x.detach().double().requires_grad_(True)
    (three64(x64) ** 2).sum().backward()
    for a, b in ((x64.grad[0], xr.grad), (three64.weight.grad[0], ref.weight.grad),
                 (three64.bias.grad[0], ref.bias.grad)):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


def test_seed_linear_compiles_as_one_graph():
    """``compile: on`` (CUDA's default) traces SeedLinear's autograd function without a graph
    break, forward and backward, with the eager numbers."""
    torch.manual_seed(0)
    lin = SeedLinear(8, 10, seeds=2)
    x = torch.randn(2, 5, 8)
    compiled = torch.compile(lin, fullgraph=True, backend="aot_eager")
    (compiled(x) ** 2).sum().backward()
    grads = [p.grad.clone() for p in lin.parameters()]
    lin.zero_grad()
    (lin(x) ** 2).sum().backward()
    for a, p in zip(grads, lin.parameters()):
        torch.testing.assert_close(a, p.grad)


@pytest.mark.parametrize("training", [True, False])
def test_fused_selective_mlp_equals_the_stacked_reference(training):
    """A fused selective MLP gives the same outputs, input/weight/logit gradients and Gumbel
    draws as the stack-all-K reference; an impure pool uses the stacked form."""
    from smartmixed_core.layers import SelectiveActivation
    from smartmixed_core.seeded import SeedNoise

    torch.manual_seed(0)
    net = MLP(12, [9, 7], 4, lambda i, n: SelectiveActivation(n, POOLS["paper"], tau=0.5,
                                                              seeds=2), seeds=2)
    for slot in net.acts:
        slot.logits.data.normal_()
    net.train(training)
    x = torch.randn(2, 16, 12)
    results = []
    for fused in (True, False):
        for slot in net.acts:
            slot.fused = fused
        net.zero_grad()
        xi = x.clone().requires_grad_(True)
        net.use_noise(SeedNoise.of([7, 8]))
        out = net(xi)
        (out * torch.arange(4.0)).sum().backward()
        results.append([out.detach(), xi.grad, *(p.grad for p in net.parameters())])
    for a, b in zip(*results):
        if a is None:  # eval: no logit gradients
            assert b is None
            continue
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    assert all((slot.logits.grad is not None) == training for slot in net.acts)
    impure = MLP(12, [9], 4, lambda i, n: SelectiveActivation(n, POOLS["adact"]))
    assert not impure.acts[0].fused and impure(x[:1]).shape == (1, 16, 4)
