"""Seeds trained as one batched model equal seeds trained one by one (float64, so that
rounding cannot flip a discrete choice), and a seed's result does not depend on which
other seeds share the batch."""

import dataclasses
import io
import math

import pytest
import torch

from smartmixed_core.batched import BatchedMLP, BatchedState, batchable, train_seeds_batched
from smartmixed_core.config import RunConfig
from smartmixed_core.layers import MixedActivation
from smartmixed_core.runner import load_data, train_seeds

COMPARED = ("val_accuracy", "test_accuracy", "test_f1_macro", "best_epoch")


@pytest.fixture(scope="module")
def data64():
    cfg = RunConfig(dataset="digits", device="cpu")
    d = load_data(cfg)
    wide = {f: getattr(d, f).double() for f in ("x_train", "x_val", "x_test")}
    return dataclasses.replace(d, **wide)


def config(**kw):
    base = dict(dataset="digits", arch="16-8", epochs=5, transition_epoch=3, batch_size=128,
                temperature=0.5, temperature_end=0.2, lr=3e-3, device="cpu")
    return RunConfig(**{**base, **kw})


def run(cfg, seeds, data, batched):
    torch.set_default_dtype(torch.float64)
    try:
        _, outcomes = train_seeds(cfg, seeds, data=data, batched=batched)
    finally:
        torch.set_default_dtype(torch.float32)
    return outcomes


def assert_same(a, b):
    for key in COMPARED:
        assert a.summary[key] == pytest.approx(b.summary[key], abs=1e-9), key
    assert a.choices == b.choices
    ha, hb = a.summary["history"], b.summary["history"]
    assert [r["epoch"] for r in ha] == [r["epoch"] for r in hb]
    for ra, rb in zip(ha, hb):
        assert ra["train_loss"] == pytest.approx(rb["train_loss"], rel=1e-9)
        assert ra["val_loss"] == pytest.approx(rb["val_loss"], rel=1e-9)
        for key in ("phase", "selection", "changed", "tau"):
            assert ra.get(key) == rb.get(key), key
    for pa, pb in zip(a.model.state_dict().values(), b.model.state_dict().values()):
        torch.testing.assert_close(pa, pb, rtol=1e-9, atol=1e-10)


@pytest.mark.parametrize(
    "kw",
    [
        {"method": "smartmixed", "phase2_init": "reinit", "grad_clip": 0.5},
        {"method": "fixed:elu", "patience": 1, "epochs": 6, "lr": 0.05},
        {"method": "smartmixed", "patience": 1, "epochs": 7, "transition_epoch": 3, "lr": 0.1},
    ],
    ids=["reinit-clip", "fixed-patience", "smartmixed-patience"],
)
def test_batched_equals_one_by_one(kw, data64):
    cfg = config(**kw)
    seeds = [0, 1]
    alone = run(cfg, seeds, data64, batched=False)
    together = run(cfg, seeds, data64, batched=True)
    for a, b in zip(alone, together):
        assert_same(a, b)
    if cfg.parsed_method.kind == "smartmixed":
        assert all(isinstance(s, MixedActivation) for s in together[0].model.acts)
        assert together[0].choices != together[1].choices  # seeds really differ
    if cfg.patience:  # early stopping really happened, at different epochs per seed
        lengths = [len(o.summary["history"]) for o in together]
        assert min(lengths) < cfg.epochs and len(set(lengths)) == 2


def test_seed_result_does_not_depend_on_its_batch(data64):
    cfg = config(method="smartmixed")
    (single,) = run(cfg, [1], data64, batched=True)
    pair = run(cfg, [4, 1], data64, batched=True)
    assert_same(single, pair[1])


def test_batched_k1_float32_close_to_unbatched():
    cfg = config(method="smartmixed", epochs=4, transition_epoch=2)
    data = load_data(cfg)
    (a,), (b,) = (train_seeds(cfg, [3], data=data, batched=f)[1] for f in (False, True))
    assert abs(a.summary["test_accuracy"] - b.summary["test_accuracy"]) <= 0.02
    assert math.isclose(a.summary["history"][0]["train_loss"],
                        b.summary["history"][0]["train_loss"], rel_tol=1e-4)


def test_batchable_names_what_it_cannot_batch():
    assert batchable(config(method="smartmixed")) is None
    assert "prelu" in batchable(config(method="smartmixed", pool="adact"))
    assert "adact" in batchable(config(method="adact"))
    assert "MLP" in batchable(config(model="convnet", method="fixed:relu", arch="8,8,8,8"))
    with pytest.raises(ValueError):
        BatchedMLP([])


class _Stop(Exception):
    pass


def _strip_seconds(history):
    return [{k: v for k, v in r.items() if k != "seconds"} for r in history]


@pytest.mark.parametrize(
    "kw, stop",
    [
        ({"method": "smartmixed"}, 1),
        ({"method": "smartmixed"}, 2),  # the last phase-1 epoch: resumes into the freeze
        ({"method": "smartmixed", "phase2_init": "reinit"}, 3),
        ({"method": "fixed:elu", "patience": 1, "epochs": 8, "lr": 0.1}, 1),  # seed 2 stops
    ],
    ids=["phase1", "phase-boundary", "phase2-reinit", "fixed-patience"],
)
def test_batched_resume_continues_bit_for_bit(kw, stop):
    cfg = config(**kw)
    data = load_data(cfg)
    seeds = [2, 0]
    whole = train_seeds_batched(cfg, seeds, data)
    state, saved = BatchedState(), {}

    def on_round(r):
        assert r == state.round
        if r == stop:
            buf = io.BytesIO()
            torch.save(state.snapshot(), buf)  # what a checkpoint goes through
            saved["snap"] = buf.getvalue()
            raise _Stop

    with pytest.raises(_Stop):
        train_seeds_batched(cfg, seeds, data, state=state, on_round=on_round)
    snap = torch.load(io.BytesIO(saved["snap"]), weights_only=True)
    rounds = []
    resumed = train_seeds_batched(cfg, seeds, data, state=BatchedState.restore(snap),
                                  on_round=rounds.append)
    assert rounds == list(range(stop + 1, stop + 1 + len(rounds)))
    assert rounds or cfg.patience  # without early stopping there is more to train
    for (m1, o1, h1), (m2, o2, h2) in zip(whole, resumed):
        assert o1 == o2
        assert _strip_seconds(h1) == _strip_seconds(h2)
        for (k1, v1), (k2, v2) in zip(m1.state_dict().items(), m2.state_dict().items()):
            assert k1 == k2 and torch.equal(v1, v2), k1
    if cfg.patience:  # a seed really stopped before the others
        assert len({len(h) for _, _, h in whole}) == 2


def test_batched_resume_refuses_other_seeds():
    cfg = config(method="fixed:relu", epochs=2)
    data = load_data(cfg)
    state = BatchedState()
    train_seeds_batched(cfg, [0, 1], data, state=state)
    with pytest.raises(ValueError, match="other seeds"):
        train_seeds_batched(cfg, [1, 0], data, state=BatchedState.restore(state.snapshot()))


def test_batched_mixed_slot_on_cpu_activates_each_seeds_groups_once():
    """The CPU form (every seed's sorted groups, in place, end to end) equals the selection
    form the GPU keeps, in values and input gradients, with empty groups in some seeds."""
    from smartmixed_core.activations import POOLS
    from smartmixed_core.batched import _Mixed, _select

    pool = POOLS["paper"]
    slots = [MixedActivation(pool, c) for c in ([2, 0, 1, 3, 0, 1], [0, 4, 0, 0, 3, 0],
                                                 [1, 1, 1, 1, 1, 2])]
    mixed = _Mixed(slots)
    assert mixed._groups is not None
    x = torch.randn(3, 5, 7, dtype=torch.float64)
    w = torch.randn(3, 5, 7, dtype=torch.float64)
    results = []
    for form in (mixed, lambda v: _select(v, mixed.choice, mixed.fns)):
        xi = x.clone().requires_grad_(True)
        out = form(xi)
        assert torch.equal(xi.detach(), x)  # the input is never written to
        (out * w).sum().backward()
        results.append((out.detach(), xi.grad))
    for a, b in zip(*results):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


def test_batched_selective_slot_on_cpu_equals_each_seeds_stacked_reference():
    """The CPU form (seeds' units end to end through the fused straight-through selection)
    gives every seed the output, input gradient and logit gradient of the stack-all-K
    reference fed that seed's own Gumbel draws."""
    from smartmixed_core.activations import POOLS
    from smartmixed_core.batched import _Selective
    from smartmixed_core.layers import (
        SelectiveActivation,
        gumbel_noise,
        hard_gumbel_softmax,
        noise_shape,
    )

    torch.set_default_dtype(torch.float64)
    try:
        slots = [SelectiveActivation(7, POOLS["paper"], tau=0.6) for _ in range(3)]
        for slot in slots:
            slot.logits.data.normal_()
        batched = _Selective(slots, [torch.Generator().manual_seed(s) for s in range(3)])
        x = torch.randn(3, 5, 7)
        w = torch.randn(3, 5, 7)
        xb = x.clone().requires_grad_(True)
        out = batched(xb)
        (out * w).sum().backward()
        for k, slot in enumerate(slots):
            gen = torch.Generator().manual_seed(k)
            noise = gumbel_noise(noise_shape(slot.logits), "cpu", torch.float32, gen)
            y, choice = hard_gumbel_softmax(slot.logits, slot.tau, noise.double())
            xk = x[k].clone().requires_grad_(True)
            expected = slot.stacked(xk, y, choice)
            (expected * w[k]).sum().backward()
            torch.testing.assert_close(out[k].detach(), expected.detach(), rtol=0, atol=1e-12)
            torch.testing.assert_close(xb.grad[k], xk.grad, rtol=0, atol=1e-12)
            torch.testing.assert_close(batched.logits.grad[k], slot.logits.grad,
                                       rtol=1e-10, atol=1e-12)
    finally:
        torch.set_default_dtype(torch.float32)
