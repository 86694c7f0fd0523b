"""Spec validation, overrides, smoke shrinking and search spaces (no Ray)."""

from __future__ import annotations

import optuna
import pytest

from smartmixed_core.errors import ConfigError
from smartmixed_core.names import PAPER_ARCHITECTURES, POOLS
from sweeps.space import DefineByRun, decode, grid
from sweeps.spec import spec_doc
from sweeps.specfile import load_spec, parse_spec, preset_names


def _spec(**changes):
    doc = {"name": "s", "fixed": {"epochs": 10, "transition_epoch": 3},
           "search": {"space": {"method": {"choice": ["smartmixed", "fixed:relu"]}}}}
    doc.update(changes)
    return parse_spec(doc)


def test_every_preset_validates_and_shrinks():
    assert preset_names() == ["adact", "gated", "mnist", "paper", "quick", "search"]
    for name in preset_names():
        spec = load_spec(name)
        small = load_spec(name, smoke_test=True)
        assert small.seeds == spec.seeds[:1] and small.fixed["epochs"] == 2
        assert small.resources.gpu == 0 and small.fixed["device"] == "cpu"
        n = len(grid(small)) if small.search.algorithm == "grid" else small.search.num_samples
        assert 1 <= n <= 2
        assert parse_spec(spec_doc(spec)) == spec  # what is saved for resume reads back


def test_paper_preset_is_the_full_factorial():
    spec = load_spec("paper")
    configs = grid(spec)
    assert len(configs) == len(PAPER_ARCHITECTURES) * (len(POOLS["paper"]) + 1) == 126
    assert {c["method"] for c in configs} == {"smartmixed", *(f"fixed:{a}" for a in POOLS["paper"])}


def test_grid_drops_conditional_duplicates():
    spec = load_spec("gated")  # 2 gates x 3 T x 3 lambda for gated + 3 fixed baselines
    configs = grid(spec)
    assert len(configs) == 2 * 3 * 3 + 3
    assert {"method": "fixed:tanh"} in configs


@pytest.mark.parametrize(("change", "field", "words"), [
    ({"dataset": "mnistt"}, "dataset", "allowed: digits, breast_cancer"),
    ({"search": {"algorithm": "bayes"}}, "search.algorithm", "'optuna', 'grid' or 'random'"),
    ({"search": {"metric": "test_accuracy"}}, "search.metric", "val_accuracy"),
    ({"search": {"space": {"method": {"choice": ["smartmixed", "fixed:foo"]}}}},
     "search.space.method.choice[1]", "allowed: relu"),
    ({"search": {"space": {"lr": {"loguniform": [0, 1]}}}}, "search.space.lr", "lo > 0"),
    ({"search": {"space": {"transition_epoch": {"int": [2, 50]}}}},
     "search.space.transition_epoch.int", "[1, 9]"),
    ({"search": {"space": {"colour": {"choice": [1]}}}}, "search.space", "allowed: dataset"),
    ({"fixed": {"lr": -1}}, "fixed.lr", "(0, 10]"),
    ({"fixed": {"epochs": 10, "learning_rate": 1}}, "fixed.learning_rate", "unknown setting"),
    ({"seeds": [1, 1]}, "seeds", "distinct"),
    ({"resources": {"cpu": 0}}, "resources.cpu", "greater than 0"),
    ({"name": "a b"}, "name", "letters"),
])
def test_errors_name_the_field_and_what_is_allowed(change, field, words):
    with pytest.raises(ConfigError) as info:
        _spec(**change)
    assert info.value.field == field
    assert words in info.value.message


def test_overrides_are_dotted_yaml_values(tmp_path):
    spec = load_spec("quick", ["search.num_samples=3", "fixed.lr=0.01", "seeds=[4, 5]",
                               "name=other"])
    assert (spec.search.num_samples, spec.fixed["lr"], spec.seeds, spec.name) == (
        3, 0.01, [4, 5], "other")
    with pytest.raises(ConfigError, match="--set"):
        load_spec("quick", ["novalue"])
    with pytest.raises(ConfigError, match=r"search\.num_samples"):
        load_spec("quick", ["search.num_samples=0"])


def test_define_by_run_samples_conditional_params_only_for_smartmixed():
    spec = load_spec("quick")
    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.RandomSampler(0))
    space = DefineByRun(spec)
    for _ in range(30):
        trial = study.ask()
        space(trial)
        params = decode(trial.params)
        smart = params["method"] == "smartmixed"
        assert ("temperature" in params) == smart and ("transition_fraction" in params) == smart
        cfg = spec.run_config(params)
        assert cfg.method == params["method"] and cfg.arch == params["architecture"]
        study.tell(trial, 0.5)


def test_depth_and_width_build_a_funnel():
    spec = _spec(search={"space": {"depth": {"int": [1, 3]}, "width": {"choice": [64]}}})
    assert spec.run_config({"depth": 3, "width": 64}).arch == "64-32-16"


def test_batch_seeds_off_reads_from_bare_yaml_and_set(tmp_path):
    path = tmp_path / "s.yaml"
    path.write_text("name: b\nbatch_seeds: off\n"
                    "search: {algorithm: grid, space: {method: {choice: [smartmixed]}}}\n")
    assert load_spec(path).batch_seeds == "off"  # YAML reads a bare `off` as false
    path.write_text("name: b\nsearch: {algorithm: grid, space: {method: {choice: [smartmixed]}}}\n")
    assert load_spec(path).batch_seeds == "auto"
    assert load_spec(path, ["batch_seeds=off"]).batch_seeds == "off"
    with pytest.raises(ConfigError) as err:
        load_spec(path, ["batch_seeds=on"])  # `on` is YAML true, and not a choice
    assert err.value.field == "batch_seeds"


def test_relative_data_dir_is_made_absolute_for_the_trials(tmp_path, monkeypatch):
    from sweeps.spec import absolute_data_dir, check_datasets

    monkeypatch.chdir(tmp_path)
    spec = _spec(dataset="mnist", fixed={"epochs": 10, "transition_epoch": 3,
                                         "data_dir": "./data"})
    resolved = absolute_data_dir(spec)
    assert resolved.fixed["data_dir"] == str(tmp_path / "data")
    assert absolute_data_dir(resolved) == resolved and absolute_data_dir(_spec()) == _spec()
    with pytest.raises(ConfigError) as err:
        check_datasets(resolved)
    assert err.value.field == "fixed.data_dir" and "fixed.download: true" in err.value.message
    check_datasets(_spec(dataset="mnist", fixed={**resolved.fixed, "download": True}))


def test_search_preset_fits_any_length_via_transition_fraction():
    for epochs in (2, 10, 50, 400):
        spec = load_spec("search", ["search.num_samples=20", f"fixed.epochs={epochs}"])
        for fraction in (0.05, 0.6):
            cfg = spec.run_config({"transition_fraction": fraction, "depth": 1, "width": 8})
            assert 1 <= cfg.transition_epoch <= epochs - 1
            if epochs == 50:
                assert cfg.transition_epoch == round(fraction * 50)
    with pytest.raises(ConfigError, match="transition_fraction"):
        _spec(search={"space": {"transition_fraction": {"uniform": [0.5, 1.5]}}})
    with pytest.raises(ConfigError, match="not both"):
        _spec(search={"space": {"transition_fraction": {"uniform": [0.1, 0.5]},
                                "transition_epoch": {"int": [1, 5]}}})


def test_search_per_names_choice_parameters_every_trial_uses():
    space = {"method": {"choice": ["smartmixed", "fixed:relu"]},
             "architecture": {"choice": ["16", "32-16"]}, "lr": {"loguniform": [1e-4, 1e-2]},
             "temperature": {"choice": [0.3, 1.0]}}
    spec = _spec(search={"per": ["method", "architecture"], "space": space})
    assert spec.search.cells() == [
        {"method": m, "architecture": a} for m in ("smartmixed", "fixed:relu")
        for a in ("16", "32-16")]
    assert _spec(search={"space": space}).search.cells() == [{}]
    for per, word in ((["lr"], "choice"), (["depth"], "choice"), (["temperature"], "some methods"),
                      (["method", "method"], "repeated")):
        with pytest.raises(ConfigError, match=word) as err:
            _spec(search={"per": per, "space": space})
        assert err.value.field == "search"
    with pytest.raises(ConfigError, match="grid"):
        _spec(search={"algorithm": "grid", "per": ["method"], "space": {
            "method": {"choice": ["smartmixed", "fixed:relu"]}}})
    small = load_spec("quick", ["search.per=[method, architecture]"], smoke_test=True)
    assert small.search.num_samples == 1 and len(small.search.cells()) == 2


def test_per_layer_search_samples_one_activation_per_hidden_layer():
    spec = load_spec("mnist")
    acts = spec.search.space["layer_activations"].choice
    for arch, depth in (("paper:784-512-10", 1), ("paper:784-512-256-128-64-10", 4)):
        study = optuna.create_study(sampler=optuna.samplers.RandomSampler(0))
        trial = study.ask()
        DefineByRun(spec, {"method": "perlayer", "architecture": arch})(trial)
        keys = sorted(k for k in trial.params if k.startswith("layer_activations"))
        assert keys == [f"layer_activations_{i}" for i in range(1, depth + 1)]
        assert "temperature" not in trial.params and "lr" in trial.params
        cfg = spec.run_config({"method": "perlayer", "architecture": arch, **trial.params})
        assert cfg.layer_acts == tuple(trial.params[k] for k in keys)
        assert set(cfg.layer_acts) <= set(acts)
    with pytest.raises(ConfigError, match="optuna or random") as err:
        grid(_spec(search={"algorithm": "grid", "space": {
            "method": {"choice": ["perlayer"]}, "layer_activations": {"choice": ["relu"]}}}))
    assert err.value.field == "search.space.layer_activations"
    with pytest.raises(ConfigError, match="choice"):
        _spec(search={"space": {"method": {"choice": ["perlayer"]},
                                "layer_activations": {"uniform": [0, 1]}}})
    with pytest.raises(ConfigError, match="allowed: relu") as err:
        _spec(search={"space": {"method": {"choice": ["perlayer"]},
                                "layer_activations": {"choice": ["relu", "bogus"]}}})
    assert err.value.field == "search.space.layer_activations.choice[1]"


def test_per_may_name_a_method_specific_setting_beside_method():
    spec = load_spec("mnist")
    cells = spec.search.cells()
    smart = [c for c in cells if c["method"] == "smartmixed"]
    assert len(smart) == 2 * 6 and {c["phase2_init"] for c in smart} == {"transfer", "reinit"}
    others = [c for c in cells if c["method"] != "smartmixed"]
    assert len(others) == 7 * 6 and all("phase2_init" not in c for c in others)
    assert len(cells) == 9 * 6  # 9 arms x 6 architectures, every cell once
    space = {"method": {"choice": ["smartmixed", "fixed:relu"]},
             "phase2_init": {"choice": ["transfer", "reinit"]}}
    with pytest.raises(ConfigError, match="needs method in per"):
        _spec(search={"per": ["phase2_init"], "space": space})


def test_the_sweep_table_names_the_arms_of_method_specific_cells():
    from sweeps.cli import arm

    spec = load_spec("mnist")
    assert arm(spec, {"method": "smartmixed", "params": {"phase2_init": "reinit", "lr": 1e-3}}) \
        == "smartmixed (reinit)"
    assert arm(spec, {"method": "fixed:relu", "params": {"lr": 1e-3}}) == "fixed:relu"
    assert arm(load_spec("quick"), {"method": "smartmixed",
                                    "params": {"phase2_init": "reinit"}}) == "smartmixed"
