import math

import pytest
import torch

from smartmixed_core.data import load_dataset
from smartmixed_core.layers import Activation
from smartmixed_core.models import MLP
from smartmixed_core.training import FitConfig, NonFiniteLossError, fit, make_optimizer, predict


@pytest.fixture(scope="module")
def data():
    return load_dataset("breast_cancer")


def relu_net(data, seeds=1):
    return MLP(30, (16,), 2, lambda layer, units: Activation("relu", seeds), seeds)


def gens(n=1):
    return [torch.Generator().manual_seed(s) for s in range(n)]


def test_fit_records_history_and_restores_best(data):
    net = relu_net(data)
    seen = []

    class Recorder:
        def on_epoch_start(self, epoch, model):
            seen.append(("start", epoch))

        def on_epoch_end(self, epoch, record, model):
            seen.append(("end", epoch))
            record["extra"] = epoch * 2

    (r,) = fit(
        net,
        data,
        FitConfig(epochs=5, lr=1e-2),
        generators=gens(),
        callbacks=[[Recorder()]],
        start_epochs=[10],
    )
    assert [h["epoch"] for h in r.history] == [10, 11, 12, 13, 14]
    assert seen[:2] == [("start", 10), ("end", 10)]
    assert r.history[-1]["extra"] == 28
    best = min(r.history, key=lambda h: h["val_loss"])
    assert r.best_epoch == best["epoch"]
    restored = torch.nn.functional.cross_entropy(predict(net, data.x_val)[0], data.y_val)
    assert math.isclose(float(restored), best["val_loss"], rel_tol=1e-5)


def test_callback_can_stop_and_patience_stops(data):
    class StopAt:
        def on_epoch_end(self, epoch, record, model):
            return epoch == 2

    r1, r2 = fit(
        relu_net(data, 2),
        data,
        FitConfig(epochs=10),
        generators=gens(2),
        callbacks=[[StopAt()], []],
    )
    assert len(r1.history) == 3 and len(r2.history) == 10  # a stop request is per seed
    # lr=0: the validation loss never improves after the first epoch.
    (r,) = fit(relu_net(data), data, FitConfig(epochs=50, lr=0.0, patience=3),
               generators=gens())
    assert r.stopped_early and len(r.history) == 4


def test_non_finite_loss_raises(data):
    net = relu_net(data)
    with torch.no_grad():
        net.head.bias.fill_(float("nan"))
    with pytest.raises(NonFiniteLossError, match="epoch 0"):
        fit(net, data, FitConfig(epochs=3), generators=gens())


def test_grad_clip_bounds_gradient_norm(data, monkeypatch):
    """After clipping, the gradient the optimizer sees has norm <= grad_clip."""
    from smartmixed_core.training import SeedAdam

    norms = []
    real_step = SeedAdam.step

    def step(self, *args, **kwargs):
        grads = [p.grad for g in self.param_groups for p in g["params"] if p.grad is not None]
        norms.append(
            float(
                torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads]))
            )
        )
        return real_step(self, *args, **kwargs)

    monkeypatch.setattr(SeedAdam, "step", step)
    fit(relu_net(data), data, FitConfig(epochs=1, grad_clip=1e-3), generators=gens())
    assert norms and max(norms) <= 1e-3 * 1.0001
    norms.clear()
    fit(relu_net(data), data, FitConfig(epochs=1), generators=gens())
    assert max(norms) > 1e-2  # unclipped gradients are far larger


def test_grad_clip_is_per_seed(data):
    """Each seed's gradient is clipped by its own norm: a seed with a small gradient keeps
    it while the other's is scaled down."""
    from smartmixed_core.training import clip_per_seed

    p = torch.nn.Parameter(torch.zeros(2, 3))
    p.grad = torch.tensor([[3.0, 4.0, 0.0], [0.03, 0.04, 0.0]])
    clip_per_seed([p], 1.0)
    torch.testing.assert_close(p.grad[0], torch.tensor([0.6, 0.8, 0.0]))
    torch.testing.assert_close(p.grad[1], torch.tensor([0.03, 0.04, 0.0]))


@pytest.mark.parametrize("name", ["adam", "adamw"])
def test_optimizer_is_fused_where_torch_has_it_and_plain_elsewhere(name, monkeypatch):
    from smartmixed_core import training

    model = relu_net(None, seeds=2)
    cfg = FitConfig(epochs=1, lr=0.01, weight_decay=0.1, optimizer=name)
    opt = make_optimizer(model, cfg)
    assert opt.defaults["fused"] is True  # CPU has fused Adam kernels since torch 2.4
    assert isinstance(opt, training.SeedAdam if name == "adam" else training.SeedAdamW)
    assert (opt.defaults["lr"], opt.defaults["weight_decay"]) == (0.01, 0.1)

    def no_fused_kernel(self, params, **kw):
        raise RuntimeError("fused=True needs params on a supported device")

    for cls in (training.SeedAdam, training.SeedAdamW):
        monkeypatch.setattr(cls, "__init__", no_fused_kernel)
    plain = make_optimizer(model, cfg)
    assert type(plain) is {"adam": torch.optim.Adam, "adamw": torch.optim.AdamW}[name]
    assert not plain.defaults["fused"] and plain.defaults["weight_decay"] == 0.1


@pytest.mark.parametrize("name", ["adam", "adamw"])
def test_seedwise_fused_step_equals_torchs_step_per_seed(name):
    """Seed by seed, the fused step is torch's own fused step on that seed alone."""
    torch.manual_seed(0)
    p = torch.nn.Parameter(torch.randn(3, 10, dtype=torch.float64))
    alone = [torch.nn.Parameter(p.detach()[s].clone()) for s in range(3)]
    cfg = FitConfig(epochs=1, lr=0.05, weight_decay=0.1, optimizer=name)
    ours = make_optimizer(torch.nn.ParameterList([p]), cfg)
    cls = {"adam": torch.optim.Adam, "adamw": torch.optim.AdamW}[name]
    theirs = [cls([a], lr=0.05, weight_decay=0.1, fused=True) for a in alone]
    for _ in range(20):
        g = torch.randn(3, 10, dtype=torch.float64)
        p.grad = g.clone()
        ours.step()
        for s, (a, opt) in enumerate(zip(alone, theirs)):
            a.grad = g[s].clone()
            opt.step()
    for s in range(3):
        assert torch.equal(p[s], alone[s])
    assert float(ours.state[p]["step"]) == 20


@pytest.mark.parametrize("restore", ["val_accuracy", "last"])
def test_restore_chooses_the_reported_weights(data, restore):
    net = relu_net(data)
    (r,) = fit(net, data, FitConfig(epochs=6, lr=5e-2, restore=restore), generators=gens())
    logits = predict(net, data.x_val)[0]
    accuracy = float((logits.argmax(1) == data.y_val).float().mean())
    loss = float(torch.nn.functional.cross_entropy(logits, data.y_val))
    if restore == "last":
        expected = r.history[-1]
    else:  # the first epoch with the highest validation accuracy
        expected = max(r.history, key=lambda h: (h["val_accuracy"], -h["epoch"]))
    assert r.best_epoch == expected["epoch"]
    assert accuracy == pytest.approx(expected["val_accuracy"], abs=1e-9)
    assert loss == pytest.approx(expected["val_loss"], rel=1e-5)
