"""The core's equivalences on every device this machine has: each test runs on the CPU and,
marked ``gpu``, on CUDA (skipped without one), with the same assertions."""

from __future__ import annotations

import pytest
import torch

from smartmixed_core.activations import POOLS
from smartmixed_core.config import RunConfig
from smartmixed_core.freeze import freeze
from smartmixed_core.layers import MixedActivation, SelectiveActivation
from smartmixed_core.models import MLP, ConvNet
from smartmixed_core.runner import load_data, train_seeds
from smartmixed_core.training import FitConfig, make_optimizer

DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.gpu)]


def _selective_mlp(device: str) -> MLP:
    torch.manual_seed(0)
    net = MLP(12, [9, 7], 4, lambda i, n: SelectiveActivation(n, POOLS["paper"], tau=0.5))
    for slot in net.acts:
        slot.logits.data.normal_()
    return net.to(device)


@pytest.mark.parametrize("device", DEVICES)
def test_fused_selective_mlp_equals_the_stacked_reference(device):
    net = _selective_mlp(device).train()
    x = torch.randn(16, 12, device=device)
    results = []
    for fused in (True, False):
        for slot in net.acts:
            slot.fused = fused
        net.zero_grad()
        xi = x.clone().requires_grad_(True)
        torch.manual_seed(7)  # the same Gumbel draws from the device's generator
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
    net.train()(x).sum().backward()  # BatchNorm statistics, as after a step
    expected = net.eval()(x)
    mixed = freeze(net, "transfer").eval()
    assert all(isinstance(s, MixedActivation) for s in mixed.acts)
    with torch.no_grad():  # the MLP's buffered inference path
        torch.testing.assert_close(mixed(x), expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(mixed(x), expected, rtol=1e-5, atol=1e-5)  # the autograd path


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
