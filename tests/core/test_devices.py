"""The core's equivalences on every device this machine has: each test runs on the CPU and,
marked ``gpu``, on CUDA (skipped without one), with the same assertions."""

from __future__ import annotations

import pytest
import torch

from smartmixed_core.config import RunConfig
from smartmixed_core.layers import MixedActivation, SelectiveActivation
from smartmixed_core.models import MLP, ConvNet
from smartmixed_core.names import POOLS
from smartmixed_core.phase2 import freeze
from smartmixed_core.runner import load_data, train_seeds
from smartmixed_core.seeded import SeedNoise
from smartmixed_core.training import FitConfig, make_optimizer

DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.gpu)]


def _selective_mlp(device: str) -> MLP:
    torch.manual_seed(0)
    net = MLP(12, [9, 7], 4, lambda i, n: SelectiveActivation(n, POOLS["paper"], tau=0.5))
    net.reset_parameters()
    for slot in net.acts:
        slot.logits.data.normal_()
    return net.to(device)


@pytest.mark.parametrize("device", DEVICES)
def test_fused_selective_mlp_equals_the_stacked_reference(device):
    net = _selective_mlp(device).train()
    x = torch.randn(1, 16, 12, device=device)
    results = []
    for fused in (True, False):
        for slot in net.acts:
            slot.fused = fused
        net.zero_grad()
        xi = x.clone().requires_grad_(True)
        net.use_noise(SeedNoise.of([7]))  # the same Gumbel draws, made on the CPU
        out = net(xi)
        (out * torch.arange(4.0, device=device)).sum().backward()
        results.append([out.detach(), xi.grad, *(p.grad for p in net.parameters())])
    for a, b in zip(*results):
        assert a.device.type == device
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("kind", ["mlp", "convnet"])
def test_freeze_on_the_device_equals_selective_eval(device, kind):
    torch.manual_seed(0)
    slot = lambda layer, units: SelectiveActivation(units, POOLS["paper"])  # noqa: E731
    if kind == "mlp":
        net, x = MLP(16, (24, 12), 5, slot), torch.randn(32, 16)
    else:
        net, x = ConvNet(1, (8, 8), 5, slot, (6, 8, 7, 5)), torch.randn(32, 1, 8, 8)
    for s in net.acts:
        s.logits.data.normal_(std=2.0)
    net, x = net.to(device), x.to(device)
    net.train().shared(x).sum().backward()  # BatchNorm statistics, as after a step
    expected = net.eval().shared(x)
    mixed = freeze(net, "transfer").eval()
    assert all(isinstance(s, MixedActivation) for s in mixed.acts)
    with torch.no_grad():  # inference
        torch.testing.assert_close(mixed.shared(x), expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(mixed.shared(x), expected, rtol=1e-5, atol=1e-5)  # autograd


@pytest.mark.parametrize("device", DEVICES)
def test_optimizer_is_fused_on_the_device(device):
    opt = make_optimizer(torch.nn.Linear(3, 2).to(device), FitConfig(epochs=1))
    assert opt.defaults["fused"] is True


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("batched", [False, True])
def test_two_phase_training_on_the_device(device, batched):
    cfg = RunConfig(dataset="digits", arch="32", method="smartmixed", epochs=6,
                    transition_epoch=3, lr=3e-3, device=device)
    data = load_data(cfg)
    assert data.x_train.device.type == device  # whole splits live on the training device
    doc, outcomes = train_seeds(cfg, [0, 1], data=data, batched=batched)
    assert all(isinstance(s, MixedActivation) for s in outcomes[0].model.acts)
    assert all(p.device.type == device for p in outcomes[0].model.parameters())
    assert doc["summary"]["test_accuracy_mean"] > 0.5  # ten classes: chance is 0.1


@pytest.mark.parametrize("device", DEVICES)
def test_a_seed_gets_the_same_draws_on_every_device(device):
    """Noise is drawn on the CPU from the seed's generator and moved: the same choices."""
    net = _selective_mlp(device).train()
    net.use_noise(SeedNoise.of([3]))
    y, choice = net.acts[0].sample()
    cpu = _selective_mlp("cpu").train()
    cpu.use_noise(SeedNoise.of([3]))
    y_cpu, choice_cpu = cpu.acts[0].sample()
    assert torch.equal(choice.cpu(), choice_cpu)
    torch.testing.assert_close(y.cpu(), y_cpu)
