import copy
import threading

import pytest
import torch

from smartmixed_core.activations import POOLS
from smartmixed_core.errors import ConfigError
from smartmixed_core.layers import MixedActivation
from smartmixed_core.models import (
    _PAPER_LAYERS,
    MLP,
    PAPER_ARCHITECTURES,
    REPRESENTATIVE,
    ConvNet,
    parse_arch,
)


def relu_slot(layer, units):
    return torch.nn.ReLU()


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
    out = net(torch.randn(5, 20))
    assert out.shape == (5, 3)
    assert not torch.allclose(out.exp().sum(1), torch.ones(5))  # not probabilities
    assert isinstance(list(net.modules())[-1], torch.nn.Linear)


@pytest.mark.parametrize("size", [(8, 8), (28, 28), (32, 32)])
def test_convnet_shapes(size):
    net = ConvNet(3 if size == (32, 32) else 1, size, 10, relu_slot)
    assert len(net.convs) == 4 and len(net.norms) == 4
    assert net(torch.randn(2, net.convs[0].in_channels, *size)).shape == (2, 10)


@pytest.mark.parametrize("kind", ["mlp", "convnet"])
def test_permute_units_keeps_function(kind):
    torch.manual_seed(0)
    if kind == "mlp":
        net, x = MLP(12, (10, 7), 4, relu_slot), torch.randn(6, 12)
    else:
        net, x = ConvNet(1, (8, 8), 4, relu_slot, (4, 6, 5, 3)), torch.randn(6, 1, 8, 8)
    net.train()
    net(x)  # populate BatchNorm running statistics
    net.eval()
    before = net(x)
    for layer, width in enumerate(net.hidden):
        net.permute_units(layer, torch.randperm(width))
    torch.testing.assert_close(net(x), before, rtol=1e-5, atol=1e-5)


def mixed_mlp(seed=0, pool=POOLS["paper"]):
    torch.manual_seed(seed)
    hidden = (11, 7)
    counts = {6: [[2, 1, 3, 0, 4, 1], [0, 2, 1, 2, 1, 1]], 7: [[2, 1, 3, 0, 4, 0, 1], [1] * 7]}
    net = MLP(9, hidden, 3, lambda i, n: MixedActivation(pool, counts[len(pool)][i]))
    return net, torch.randn(13, 9)


def plain(net, x):
    """The autograd path (fresh tensors, no buffers)."""
    with torch.enable_grad():
        return net(x).detach()


def test_mixed_mlp_inference_reuses_buffers_and_equals_the_autograd_path():
    net, x = mixed_mlp()
    expected = net(x)  # grad enabled: the plain path, fresh tensors
    with torch.no_grad():
        first = net(x)
        (plan,) = net._plans.values()
        buffers = [slot.out.data_ptr() for _, _, slot in plan.layers]
        first_copy = first.clone()
        second = net(x * 2)  # same buffers, new result
        assert [slot.out.data_ptr() for _, _, slot in plan.layers] == buffers
        torch.testing.assert_close(first, expected, rtol=0, atol=0)
        assert torch.equal(first, first_copy)  # a returned result is never overwritten
        torch.testing.assert_close(second, plain(net, x * 2), rtol=0, atol=0)
        for batch in (1, 5, 13, 5):  # several batch sizes, cached and evicted
            torch.testing.assert_close(net(x[:batch]), plain(net, x[:batch]), rtol=0, atol=0)
        assert len(net._plans) <= 4


def test_mixed_mlp_inference_follows_weight_updates_and_replacements():
    net, x = mixed_mlp()
    with torch.no_grad():
        net(x)
    opt = torch.optim.SGD(net.parameters(), lr=0.5)
    net(x).square().sum().backward()
    opt.step()  # in place: the cached views see it
    with torch.no_grad():
        torch.testing.assert_close(net(x), plain(net, x), rtol=0, atol=0)
        net.linears[0].bias = torch.nn.Parameter(torch.randn(11))  # a new parameter object
        net.head.weight.data = torch.randn(3, 7)  # new storage behind the same parameter
        got = net(x)
    torch.testing.assert_close(got, plain(net, x), rtol=0, atol=0)
    net.double()  # new dtype: buffers rebuilt
    with torch.no_grad():
        assert net(x.double()).dtype == torch.float64
    assert not net._plans or all(k[2] == torch.float64 for k in net._plans)


def test_mixed_mlp_copies_carry_no_buffers_and_threads_get_their_own():
    net, x = mixed_mlp()
    with torch.no_grad():
        net(x)
        clone = copy.deepcopy(net)
        assert clone._plans == {}
        torch.testing.assert_close(clone(x), net(x), rtol=0, atol=0)
        results = {}

        def infer(i):
            with torch.no_grad():  # grad mode is per thread
                results[i] = net(x * i)

        threads = [threading.Thread(target=infer, args=(i,)) for i in (1, 2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert len({k[3] for k in net._plans}) >= 2  # one buffer set per thread
        for i in (1, 2):
            torch.testing.assert_close(results[i], net(x * i), rtol=0, atol=0)


def test_mixed_mlp_with_an_impure_pool_infers_without_buffers():
    net, x = mixed_mlp(pool=POOLS["adact"])
    net.eval()  # RReLU samples its slopes in training
    expected = net(x)
    with torch.no_grad():
        torch.testing.assert_close(net(x), expected, rtol=0, atol=0)
    assert net._plans == {}


@pytest.mark.parametrize("training", [True, False])
def test_selective_mlp_units_first_equals_the_stacked_reference(training):
    """A fused selective MLP runs ``[units, batch]`` (sorting units gathers rows): the same
    outputs, input/weight/logit gradients and Gumbel draws as the stack-all-K reference in the
    plain ``[batch, units]`` layout; an unfused (impure) pool keeps the batch-first path."""
    import smartmixed_core.models as models
    from smartmixed_core.layers import SelectiveActivation

    torch.manual_seed(0)
    net = MLP(12, [9, 7], 4, lambda i, n: SelectiveActivation(n, POOLS["paper"], tau=0.5))
    for slot in net.acts:
        slot.logits.data.normal_()
    net.train(training)
    x = torch.randn(16, 12)
    results = []
    for fused in (True, False):
        for slot in net.acts:
            slot.fused = fused
        assert models._units_first(net.acts[0]) == fused
        net.zero_grad()
        xi = x.clone().requires_grad_(True)
        torch.manual_seed(7)
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
    assert not models._units_first(impure.acts[0]) and impure(x).shape == (16, 4)
    with pytest.raises(ValueError, match="dimension 1"):
        impure.acts[0].train().forward_units_first(torch.randn(9, 3))
