"""Seeds trained together (one model, seeds dimension) equal seeds trained alone: float64,
exact histories, choices and weights on one thread; a seed's result does not depend on
which other seeds train beside it; a run resumed from a snapshot continues bit for bit."""

import dataclasses
import io

import pytest
import torch

from smartmixed_core.config import RunConfig
from smartmixed_core.layers import MixedActivation
from smartmixed_core.runner import RunState, load_data, train_seeds, train_together

COMPARED = ("val_accuracy", "test_accuracy", "test_f1_macro", "best_epoch", "selection",
            "phase1", "phase2_start_test_accuracy", "optimized_activations", "gate_entropy")


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


def untimed(history):
    return [{k: v for k, v in r.items() if k != "seconds"} for r in history]


def assert_same(a, b, exact=True):
    for key in COMPARED:
        assert a.summary.get(key) == b.summary.get(key), key
    assert a.choices == b.choices
    ha, hb = a.summary["history"], b.summary["history"]
    if exact:
        assert untimed(ha) == untimed(hb)
    else:
        assert [r["epoch"] for r in ha] == [r["epoch"] for r in hb]
        for ra, rb in zip(ha, hb):
            assert ra["train_loss"] == pytest.approx(rb["train_loss"], rel=1e-9)
            assert ra["val_loss"] == pytest.approx(rb["val_loss"], rel=1e-9)
    for (ka, pa), (kb, pb) in zip(a.model.state_dict().items(), b.model.state_dict().items()):
        assert ka == kb
        if exact:
            assert torch.equal(pa, pb), ka
        else:
            torch.testing.assert_close(pa, pb, rtol=1e-9, atol=1e-10)


CASES = [
    {"method": "smartmixed", "phase2_init": "reinit", "grad_clip": 0.5},
    {"method": "fixed:elu", "patience": 1, "epochs": 6, "lr": 0.05},
    {"method": "smartmixed", "patience": 1, "epochs": 7, "transition_epoch": 3, "lr": 0.1},
    {"method": "gated", "gate": "input", "entropy_weight": 0.01, "epochs": 3},
    {"method": "smartmixed", "pool": "adact", "epochs": 3, "transition_epoch": 2},
    {"method": "pau", "epochs": 3, "restore": "val_accuracy"},
    {"method": "swish_beta", "epochs": 3, "restore": "last"},
    {"method": "perlayer", "layer_activations": "selu,tanh", "epochs": 3},
]
IDS = ["reinit-clip", "fixed-patience", "smartmixed-patience", "gated-input", "adact-pool",
       "pau-best-accuracy", "swish-beta-last", "perlayer"]


@pytest.mark.parametrize("kw", CASES, ids=IDS)
def test_seeds_together_equal_one_by_one(kw, data64, one_thread):
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


def test_seed_result_does_not_depend_on_the_seeds_beside_it(data64, one_thread):
    cfg = config(method="smartmixed", grad_clip=0.5)
    (single,) = run(cfg, [1], data64, batched=True)
    trio = run(cfg, [4, 1, 7], data64, batched=True)
    assert_same(single, trio[1])


def test_seeds_together_on_two_threads_agree_to_rounding(data64):
    """With several threads the batched matmuls may sum in another order: equal to 1e-9."""
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        cfg = config(method="smartmixed")
        alone = run(cfg, [0, 1], data64, batched=False)
        together = run(cfg, [0, 1], data64, batched=True)
    finally:
        torch.set_num_threads(threads)
    for a, b in zip(alone, together):
        assert_same(a, b, exact=False)


def test_two_identical_runs_are_identical(data64):
    cfg = config(method="smartmixed", grad_clip=0.5)
    first, second = (run(cfg, [3, 5], data64, batched=True) for _ in range(2))
    for a, b in zip(first, second):
        assert_same(a, b)


class _Stop(Exception):
    pass


@pytest.mark.parametrize(
    "kw, stop",
    [
        ({"method": "smartmixed"}, 1),
        ({"method": "smartmixed"}, 2),  # the last phase-1 epoch: resumes into the freeze
        ({"method": "smartmixed", "phase2_init": "reinit"}, 3),
        ({"method": "fixed:elu", "patience": 1, "epochs": 8, "lr": 0.1}, 1),  # seed 2 stops
        ({"method": "adact", "epochs": 4}, 1),
        ({"model": "convnet", "arch": "4-4-4-4", "epochs": 3, "transition_epoch": 1}, 1),
    ],
    ids=["phase1", "phase-boundary", "phase2-reinit", "fixed-patience", "adact", "convnet"],
)
def test_resume_continues_bit_for_bit(kw, stop):
    cfg = config(**kw)
    data = load_data(cfg)
    seeds = [2, 0]
    whole = train_together(cfg, seeds, data)
    state, saved = RunState(), {}

    def on_round(r):
        assert r == state.round
        if r == stop:
            buf = io.BytesIO()
            torch.save(state.snapshot(), buf)  # what a checkpoint goes through
            saved["snap"] = buf.getvalue()
            raise _Stop

    with pytest.raises(_Stop):
        train_together(cfg, seeds, data, state=state, on_round=on_round)
    snap = torch.load(io.BytesIO(saved["snap"]), weights_only=True)
    rounds = []
    resumed = train_together(cfg, seeds, data, state=RunState.restore(snap),
                             on_round=rounds.append)
    assert rounds == list(range(stop + 1, stop + 1 + len(rounds)))
    assert rounds or cfg.patience  # without early stopping there is more to train
    for a, b in zip(whole, resumed):
        assert {k: v for k, v in a.summary.items() if k not in ("history", "train_seconds")} \
            == {k: v for k, v in b.summary.items() if k not in ("history", "train_seconds")}
        assert untimed(a.summary["history"]) == untimed(b.summary["history"])
        for (k1, v1), (k2, v2) in zip(a.model.state_dict().items(),
                                      b.model.state_dict().items()):
            assert k1 == k2 and torch.equal(v1, v2), k1
    if cfg.patience:  # a seed really stopped before the others
        assert len({len(o.summary["history"]) for o in whole}) == 2


def test_resume_refuses_other_seeds():
    cfg = config(method="fixed:relu", epochs=2)
    data = load_data(cfg)
    state = RunState()
    train_together(cfg, [0, 1], data, state=state)
    with pytest.raises(ValueError, match="other seeds"):
        train_together(cfg, [1, 0], data, state=RunState.restore(state.snapshot()))


def test_seeds_together_equal_one_by_one_in_float32(one_thread):
    cfg = config(method="smartmixed", grad_clip=0.5)
    data = load_data(cfg)
    _, alone = train_seeds(cfg, [0, 1], data=data, batched=False)
    _, together = train_seeds(cfg, [0, 1], data=data, batched=True)
    for a, b in zip(alone, together):
        assert_same(a, b)


def test_per_seed_splits_give_each_seed_its_own_data_and_stay_independent(one_thread):
    """split_per_seed: seed s trains and validates on the split drawn with split_seed + s;
    trained beside other seeds it equals the seed alone, bit for bit."""
    cfg = config(method="smartmixed", split_per_seed=True, epochs=3, transition_epoch=1)
    data = load_data(cfg, [0, 3])
    assert data.per_seed and data.x_train.shape[0] == 2
    assert not torch.equal(data.y_val[0], data.y_val[1])  # different validation examples
    assert torch.equal(data.y_test[0], data.y_test[1])  # the same test examples
    alone = load_data(cfg, [3])
    assert torch.equal(alone.x_train[0], data.x_train[1])
    _, together = train_seeds(cfg, [0, 3], data=data)
    _, (single,) = train_seeds(cfg, [3])
    assert_same(single, together[1])
    shared, _ = train_seeds(dataclasses.replace(cfg, split_per_seed=False), [3])
    assert shared["seeds"][0]["val_accuracy"] != single.summary["val_accuracy"]
