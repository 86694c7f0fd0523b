import pytest
import torch

from smartmixed_core.layers import Activation, MixedActivation, SelectiveActivation
from smartmixed_core.models import MLP, ConvNet
from smartmixed_core.names import POOLS
from smartmixed_core.phase2 import freeze, selection_counts, unit_choices

SEEDS = 2


def selective(pool):
    return lambda layer, units: SelectiveActivation(units, pool, seeds=SEEDS)


class Shared(torch.nn.Module):
    """A network's ``shared`` as its forward (one batch for every seed)."""

    def __init__(self, net):
        super().__init__()
        self.net = net

    def forward(self, x):
        return self.net.shared(x)


def build(kind, pool=POOLS["paper"]):
    """A trained-looking selective network of two seeds and an input batch."""
    torch.manual_seed(0)
    if kind == "mlp":
        net, x = MLP(16, (24, 12, 9), 5, selective(pool), SEEDS), torch.randn(32, 16)
    else:
        net, x = (ConvNet(1, (8, 8), 5, selective(pool), (6, 8, 7, 5), SEEDS),
                  torch.randn(32, 1, 8, 8))
    for slot in net.acts:
        slot.logits.data.normal_(std=2.0)
    net.train()
    out = net.shared(x)  # one training step's worth of state (BatchNorm statistics)
    out.sum().backward()
    return net.eval(), x


@pytest.mark.parametrize("kind", ["mlp", "convnet"])
@pytest.mark.parametrize("pool", ["paper", "adact"])
def test_freeze_transfer_equals_selective_eval(kind, pool):
    net, x = build(kind, POOLS[pool])
    expected = net.shared(x)
    mixed = freeze(net, "transfer").eval()
    assert all(isinstance(s, MixedActivation) for s in mixed.acts)
    assert (mixed.shared(x) - expected).abs().max() < 1e-5
    # The selective net is untouched and the counts survive the permutation.
    assert all(isinstance(s, SelectiveActivation) for s in net.acts)
    for seed in range(SEEDS):
        assert selection_counts(mixed, seed) == selection_counts(net, seed)
    assert selection_counts(net, 0) != selection_counts(net, 1)  # the seeds differ


@pytest.mark.parametrize("kind", ["mlp", "convnet"])
def test_freeze_transfer_equals_selective_eval_float64(kind):
    """The paper's equivalence in float64: 1e-12."""
    torch.set_default_dtype(torch.float64)
    try:
        net, x = build(kind)
        mixed = freeze(net, "transfer").eval()
        assert (mixed.shared(x) - net.shared(x)).abs().max() < 1e-12
    finally:
        torch.set_default_dtype(torch.float32)


def test_freeze_groups_are_sorted_slices():
    net, _ = build("mlp")
    mixed = freeze(net)
    for slot in mixed.acts:
        for choices in slot.choices().tolist():
            assert choices == sorted(choices)
    for seed in range(SEEDS):
        assert {k: sorted(v) for k, v in unit_choices(mixed, seed).items()} == {
            k: sorted(v) for k, v in unit_choices(net, seed).items()
        }


def test_freeze_reinit_changes_weights_but_keeps_choices():
    net, x = build("mlp")
    mixed = freeze(net, "reinit")
    assert selection_counts(mixed) == selection_counts(net)
    assert not torch.allclose(mixed.head.weight, net.head.weight)
    assert not torch.allclose(mixed.eval().shared(x), net.shared(x))


def test_freeze_rejects_non_selective():
    net = MLP(4, (3,), 2, lambda layer, units: Activation("relu"))
    with pytest.raises(TypeError):
        freeze(net)


@pytest.mark.parametrize("pool", ["paper", "adact"])
def test_mixed_mlp_equals_selective_in_every_mode(pool):
    """The phase-2 MLP gives the same function with and without grad, in train and eval mode,
    as the selective net's eval output."""
    net, x = build("mlp", POOLS[pool])
    with torch.no_grad():
        expected = net.shared(x)
    mixed = freeze(net)
    with torch.no_grad():
        inference = mixed.eval().shared(x)
    training = mixed.train(pool == "paper").shared(x)  # RReLU (adact): slopes in training
    assert (inference - expected).abs().max() < 1e-5
    assert (training.detach() - expected).abs().max() < 1e-5
    training.sum().backward()
    weights = [p for m in (*mixed.linears, mixed.head) for p in m.parameters()]
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in weights)
