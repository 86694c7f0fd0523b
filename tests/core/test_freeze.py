import pytest
import torch

from smartmixed_core.activations import POOLS
from smartmixed_core.freeze import freeze, selection_counts, unit_choices
from smartmixed_core.layers import MixedActivation, SelectiveActivation
from smartmixed_core.models import MLP, ConvNet


def selective(pool):
    return lambda layer, units: SelectiveActivation(units, pool)


def build(kind, pool=POOLS["paper"]):
    torch.manual_seed(0)
    if kind == "mlp":
        net, x = MLP(16, (24, 12, 9), 5, selective(pool)), torch.randn(32, 16)
    else:
        net, x = ConvNet(1, (8, 8), 5, selective(pool), (6, 8, 7, 5)), torch.randn(32, 1, 8, 8)
    for slot in net.acts:
        slot.logits.data.normal_(std=2.0)
    net.train()
    out = net(x)  # one training step's worth of state (BatchNorm statistics)
    out.sum().backward()
    return net.eval(), x


@pytest.mark.parametrize("kind", ["mlp", "convnet"])
@pytest.mark.parametrize("pool", ["paper", "adact"])
def test_freeze_transfer_equals_selective_eval(kind, pool):
    net, x = build(kind, POOLS[pool])
    expected = net(x)
    mixed = freeze(net, "transfer").eval()
    assert all(isinstance(s, MixedActivation) for s in mixed.acts)
    assert (mixed(x) - expected).abs().max() < 1e-5
    # The selective net is untouched and the counts survive the permutation.
    assert all(isinstance(s, SelectiveActivation) for s in net.acts)
    assert selection_counts(mixed) == selection_counts(net)


def test_freeze_groups_are_sorted_slices():
    net, _ = build("mlp")
    mixed = freeze(net)
    for slot in mixed.acts:
        choices = slot.choices().tolist()
        assert choices == sorted(choices)
    assert {k: sorted(v) for k, v in unit_choices(mixed).items()} == {
        k: sorted(v) for k, v in unit_choices(net).items()
    }


def test_freeze_reinit_changes_weights_but_keeps_choices():
    net, x = build("mlp")
    mixed = freeze(net, "reinit")
    assert selection_counts(mixed) == selection_counts(net)
    assert not torch.allclose(mixed.head.weight, net.head.weight)
    assert not torch.allclose(mixed.eval()(x), net(x))


def test_freeze_rejects_non_selective():
    net = MLP(4, (3,), 2, lambda layer, units: torch.nn.ReLU())
    with pytest.raises(TypeError):
        freeze(net)


@pytest.mark.parametrize("pool", ["paper", "adact"])
def test_mixed_mlp_equals_selective_in_every_mode(pool):
    """The phase-2 MLP gives the same function with and without grad, in train and eval mode,
    as the selective net's eval output."""
    net, x = build("mlp", POOLS[pool])
    with torch.no_grad():
        expected = net(x)
    mixed = freeze(net)
    with torch.no_grad():
        inference = mixed.eval()(x)
    training = mixed.train(pool == "paper")(x)  # RReLU (adact) samples slopes in training
    assert (inference - expected).abs().max() < 1e-5
    assert (training.detach() - expected).abs().max() < 1e-5
    training.sum().backward()
    weights = [p for m in (*mixed.linears, mixed.head) for p in m.parameters()]
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in weights)
