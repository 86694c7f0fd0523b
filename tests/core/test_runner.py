import math

import pytest
import torch

from smartmixed_core.config import RunConfig
from smartmixed_core.errors import ConfigError
from smartmixed_core.layers import MixedActivation
from smartmixed_core.runner import (
    load_checkpoint,
    save_checkpoint,
    temperature_at,
    train_seed,
    train_seeds,
)


def test_temperature_schedules():
    exp = RunConfig(temperature=1.0, temperature_end=0.01, transition_epoch=3, epochs=10)
    assert [round(temperature_at(exp, e), 6) for e in range(4)] == [1.0, 0.1, 0.01, 0.01]
    lin = RunConfig(
        temperature=1.0,
        temperature_end=0.2,
        transition_epoch=5,
        epochs=10,
        temperature_schedule="linear",
    )
    assert [round(temperature_at(lin, e), 6) for e in range(5)] == [1.0, 0.8, 0.6, 0.4, 0.2]
    const = RunConfig(temperature=0.3)
    assert temperature_at(const, 7) == 0.3


METHODS = ["smartmixed", "selective", "fixed:relu", "fixed:tanh,elu", "adact", "gated"]


@pytest.mark.parametrize("method", METHODS)
def test_every_method_learns_digits(digits, method):
    cfg = RunConfig(method=method, epochs=8, transition_epoch=4, arch="32-16")
    out = train_seed(cfg, 0, digits).summary
    assert out["test_accuracy"] > 0.6  # chance is 0.1
    assert len(out["history"]) == 8
    assert ("phase1" in out) == (method == "smartmixed")
    assert ("selection" in out) == (method in ("smartmixed", "selective"))


def test_gated_input_gate_and_entropy(digits):
    cfg = RunConfig(
        method="gated", gate="input", gate_temperature=0.5, entropy_weight=0.01, epochs=3, arch="16"
    )
    out = train_seed(cfg, 0, digits).summary
    assert out["test_accuracy"] > 0.3
    assert len(out["optimized_activations"]) == 1 and 0 <= out["gate_entropy"][0] <= 1


def test_convnet_smartmixed_on_digits(digits):
    cfg = RunConfig(
        model="convnet", arch="8-8-8-8", method="smartmixed", epochs=3, transition_epoch=1
    )
    out = train_seed(cfg, 0, digits)
    assert all(isinstance(s, MixedActivation) for s in out.model.acts)
    assert out.summary["test_accuracy"] > 0.2


def test_smartmixed_phase_bookkeeping(digits):
    cfg = RunConfig(epochs=6, transition_epoch=3, arch="24-12")
    out = train_seed(cfg, 1, digits).summary
    # With transfer, the frozen net is the phase-1 net in eval mode.
    assert out["phase2_start_test_accuracy"] == out["phase1"]["test_accuracy"]
    phases = [h["phase"] for h in out["history"]]
    assert phases == [1, 1, 1, 2, 2, 2]
    assert [h["epoch"] for h in out["history"]] == list(range(6))
    assert sum(out["selection"]["layer_1"].values()) == 24
    for h in out["history"][:3]:
        assert set(h["changed"]) == {"layer_1", "layer_2"} and h["tau"] == 0.3
    reinit = train_seed(
        RunConfig(epochs=6, transition_epoch=3, arch="24-12", phase2_init="reinit"), 1, digits
    ).summary
    assert reinit["phase2_start_test_accuracy"] < out["phase2_start_test_accuracy"]


def test_same_seed_identical_different_seed_differs(digits):
    cfg = RunConfig(epochs=3, transition_epoch=2, arch="16")
    a, b, c = (train_seed(cfg, s, digits).summary for s in (5, 5, 6))

    def strip(out):
        return [{k: v for k, v in h.items() if k != "seconds"} for h in out["history"]]

    assert strip(a) == strip(b) and a["test_accuracy"] == b["test_accuracy"]
    assert strip(a) != strip(c)


def test_train_seeds_summary(digits):
    doc, _ = train_seeds(
        RunConfig(method="fixed:relu", epochs=2, arch="16"), [0, 1, 2], data=digits
    )
    accs = [s["test_accuracy"] for s in doc["seeds"]]
    s = doc["summary"]
    assert s["n_seeds"] == 3
    assert math.isclose(s["test_accuracy_mean"], sum(accs) / 3)
    assert math.isclose(s["test_accuracy_std"], float(torch.tensor(accs).std()), rel_tol=1e-6)
    assert doc["config"]["method"] == "fixed:relu"


def test_checkpoint_roundtrip(tmp_path, digits):
    cfg = RunConfig(epochs=2, transition_epoch=1, arch="16-8")
    out = train_seed(cfg, 0, digits)
    save_checkpoint(tmp_path / "c.pt", cfg, out)
    cfg2, model = load_checkpoint(tmp_path / "c.pt", digits.input_shape, digits.num_classes)
    assert cfg2 == cfg
    x = digits.x_test[:50]
    torch.testing.assert_close(model.eval().shared(x), out.model.eval().shared(x))
    ckpt = torch.load(tmp_path / "c.pt", weights_only=False)
    assert ckpt["choices"]["layer_1"] == out.choices["layer_1"] and len(ckpt["choices"]) == 2
    assert ckpt["slots"][0]["type"] == "mixed" and sum(ckpt["slots"][0]["counts"]) == 16
    # A checkpoint of the previous version (no format) is refused in one line.
    del ckpt["format"]
    torch.save(ckpt, tmp_path / "old.pt")
    with pytest.raises(ConfigError, match="older smartmixed") as err:
        load_checkpoint(tmp_path / "old.pt", digits.input_shape, digits.num_classes)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize(
    "kwargs,field",
    [
        ({"epochs": 0}, "epochs"),
        ({"epochs": 10**9}, "epochs"),
        ({"temperature": 0}, "temperature"),
        ({"temperature": float("nan")}, "temperature"),
        ({"transition_epoch": 40}, "transition_epoch"),
        ({"method": "fixed"}, "method"),
        ({"method": "fixed:relu,elu,tanh"}, "method"),
        ({"pool": "relu"}, "pool"),
        ({"lr": -1}, "lr"),
        ({"device": "tpu"}, "device"),
        ({"phase2_init": "copy"}, "phase2_init"),
        ({"gate": "static"}, "gate"),
        ({"batch_size": 1.5}, "batch_size"),
        ({"model": "resnet"}, "model"),
    ],
)
def test_config_errors_name_the_field(kwargs, field):
    with pytest.raises(ConfigError) as err:
        RunConfig(**kwargs)
    assert err.value.field == field


def test_config_defaults_and_unknown_keys():
    assert RunConfig(method="adact").pool == "adact"
    assert RunConfig(model="convnet").arch == "32-64-128-256"
    assert RunConfig(arch="paper:784-256-128-10").arch == "256-128"
    assert RunConfig(method="fixed:relu", transition_epoch=99).epochs == 40  # not checked
    with pytest.raises(ConfigError, match="unknown setting"):
        RunConfig.from_dict({"epochs": 3, "epoch": 3})


def test_compile_decision_by_device():
    from smartmixed_core.runner import use_compile

    assert not use_compile(RunConfig(device="cpu"))  # auto: compiling does not pay on a CPU
    assert use_compile(RunConfig(device="cpu", compile="on"))
    assert not use_compile(RunConfig(device="cuda", compile="off"))
    assert use_compile(RunConfig(device="cuda"))
    with pytest.raises(ConfigError, match="compile"):
        RunConfig(compile="yes")


@pytest.mark.parametrize("kind", ["selective", "mixed", "fixed"])
def test_compile_forms_equal_the_eager_forms(kind):
    """What torch.compile traces (masks, no data-dependent shapes) computes what the eager
    slots compute: outputs, input and logit gradients."""
    from smartmixed_core.layers import Activation, MixedActivation, SelectiveActivation
    from smartmixed_core.names import POOLS
    from smartmixed_core.seeded import SeedNoise

    torch.manual_seed(0)
    pool = POOLS["paper"]
    if kind == "selective":
        slot = SelectiveActivation(9, pool, seeds=2).double()
        slot.logits.data.normal_()
    elif kind == "mixed":
        slot = MixedActivation(pool, [[1, 2, 0, 3, 2, 1], [0, 0, 4, 1, 0, 4]])
    else:
        slot = Activation("selu", 2)
    x = torch.randn(2, 7, 9, dtype=torch.float64)
    results = []
    for compiled in (False, True):
        slot.compiled = compiled
        slot.noise = SeedNoise.of([3, 4])
        slot.zero_grad()
        xi = x.clone().requires_grad_(True)
        out = slot(xi)
        (out * torch.arange(9.0, dtype=torch.float64)).sum().backward()
        results.append([out.detach(), xi.grad, *(p.grad for p in slot.parameters())])
    for a, b in zip(*results):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


def test_sampled_network_scores_leave_training_untouched(monkeypatch):
    """The phase-1 sampled evaluation draws from generators of its own: training with it
    gives the same numbers as training without it (here: replaced by a stub)."""
    from smartmixed_core import phase1

    cfg = RunConfig(epochs=4, transition_epoch=2, arch="16-8", device="cpu")
    doc, _ = train_seeds(cfg, [0, 1])
    s = doc["seeds"][0]
    hist1 = [r for r in s["history"] if r.get("phase") == 1]
    assert all(0 <= r["sampled_val_accuracy"] <= 1 and r["sampled_val_loss"] > 0 for r in hist1)
    assert s["phase1"]["sampled_val_accuracy"] == hist1[-1]["sampled_val_accuracy"]
    assert s["phase1"]["last_val_accuracy"] == hist1[-1]["val_accuracy"]
    assert s["phase2_first_val_accuracy"] == s["history"][2]["val_accuracy"]
    monkeypatch.setattr(phase1.SampledEval, "scores",
                        lambda self, epoch, model: [(0.0, 0.0)] * len(self.seeds))
    stub, _ = train_seeds(cfg, [0, 1])
    drop = ("seconds", "sampled_val_loss", "sampled_val_accuracy")
    for a, b in zip(doc["seeds"], stub["seeds"]):
        assert [{k: v for k, v in r.items() if k not in drop} for r in a["history"]] == \
            [{k: v for k, v in r.items() if k not in drop} for r in b["history"]]
        assert a["test_accuracy"] == b["test_accuracy"]
