import math

import pytest
import torch

from smartmixed_core.data import load_dataset
from smartmixed_core.models import MLP
from smartmixed_core.training import FitConfig, NonFiniteLossError, fit, make_optimizer, predict


@pytest.fixture(scope="module")
def data():
    return load_dataset("breast_cancer")


def relu_net(data):
    torch.manual_seed(0)
    return MLP(30, (16,), 2, lambda layer, units: torch.nn.ReLU())


def test_fit_records_history_and_restores_best(data):
    net = relu_net(data)
    seen = []

    class Recorder:
        def on_epoch_start(self, epoch, model):
            seen.append(("start", epoch))

        def on_epoch_end(self, epoch, record, model):
            seen.append(("end", epoch))
            record["extra"] = epoch * 2

    r = fit(
        net,
        data,
        FitConfig(epochs=5, lr=1e-2),
        generator=torch.Generator().manual_seed(0),
        callbacks=[Recorder()],
        start_epoch=10,
    )
    assert [h["epoch"] for h in r.history] == [10, 11, 12, 13, 14]
    assert seen[:2] == [("start", 10), ("end", 10)]
    assert r.history[-1]["extra"] == 28
    best = min(r.history, key=lambda h: h["val_loss"])
    assert r.best_epoch == best["epoch"]
    restored = torch.nn.functional.cross_entropy(predict(net, data.x_val), data.y_val)
    assert math.isclose(float(restored), best["val_loss"], rel_tol=1e-5)


def test_callback_can_stop_and_patience_stops(data):
    class StopAt:
        def on_epoch_end(self, epoch, record, model):
            return epoch == 2

    r = fit(
        relu_net(data),
        data,
        FitConfig(epochs=10),
        generator=torch.Generator(),
        callbacks=[StopAt()],
    )
    assert len(r.history) == 3
    # lr=0: the validation loss never improves after the first epoch.
    r = fit(
        relu_net(data), data, FitConfig(epochs=50, lr=0.0, patience=3), generator=torch.Generator()
    )
    assert r.stopped_early and len(r.history) == 4


def test_non_finite_loss_raises(data):
    net = relu_net(data)
    with torch.no_grad():
        net.head.bias.fill_(float("nan"))
    with pytest.raises(NonFiniteLossError, match="epoch 0"):
        fit(net, data, FitConfig(epochs=3), generator=torch.Generator())


def test_grad_clip_bounds_gradient_norm(data, monkeypatch):
    """After clipping, the gradient the optimizer sees has norm <= grad_clip."""
    norms = []
    real_step = torch.optim.Adam.step

    def step(self, *args, **kwargs):
        grads = [p.grad for g in self.param_groups for p in g["params"] if p.grad is not None]
        norms.append(
            float(
                torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads]))
            )
        )
        return real_step(self, *args, **kwargs)

    monkeypatch.setattr(torch.optim.Adam, "step", step)
    fit(relu_net(data), data, FitConfig(epochs=1, grad_clip=1e-3), generator=torch.Generator())
    assert norms and max(norms) <= 1e-3 * 1.0001
    norms.clear()
    fit(relu_net(data), data, FitConfig(epochs=1), generator=torch.Generator())
    assert max(norms) > 1e-2  # unclipped gradients are far larger


@pytest.mark.parametrize("name", ["adam", "adamw"])
def test_optimizer_is_fused_where_torch_has_it_and_plain_elsewhere(name, monkeypatch):
    model = torch.nn.Linear(4, 3)
    cfg = FitConfig(epochs=1, lr=0.01, weight_decay=0.1, optimizer=name)
    opt = make_optimizer(model, cfg)
    assert opt.defaults["fused"] is True  # CPU has fused Adam kernels since torch 2.4
    assert (opt.defaults["lr"], opt.defaults["weight_decay"]) == (0.01, 0.1)
    cls = type(opt)

    class NoFusedKernel(cls):
        def __init__(self, params, **kw):
            if kw.get("fused"):
                raise RuntimeError("fused=True needs params on a supported device")
            super().__init__(params, **kw)

    monkeypatch.setattr(torch.optim, cls.__name__, NoFusedKernel)
    plain = make_optimizer(model, cfg)
    assert isinstance(plain, NoFusedKernel) and not plain.defaults["fused"]
    assert plain.defaults["weight_decay"] == 0.1
