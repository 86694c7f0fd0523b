"""Arms (method-specific settings named in search.per) and the phase-transition table."""

import numpy as np
import pandas as pd
import pytest

from analysis.load import label_arms
from analysis.significance import default_control
from analysis.transition import transition_table


def test_label_arms_names_the_setting_only_where_the_method_uses_it():
    df = pd.DataFrame({"method": ["smartmixed", "smartmixed", "fixed:relu"],
                       "phase2_init": ["transfer", "reinit", ""]})
    out = label_arms(df, ["phase2_init"])
    assert list(out["method"]) == ["smartmixed (transfer)", "smartmixed (reinit)", "fixed:relu"]
    assert list(label_arms(df, [])["method"]) == list(df["method"])
    assert default_control(out["method"]) == "smartmixed (transfer)"
    assert default_control(["smartmixed", "smartmixed (x)"]) == "smartmixed"


def test_transition_table_means_blocks_of_the_chosen_configurations():
    rows = []
    for b, arch in enumerate(["16", "32", "64"]):
        for seed in range(2):
            base = 0.8 + 0.01 * b + 0.001 * seed
            rows.append(dict(method="smartmixed", architecture=arch, config_id=b, seed=seed,
                             phase1_sampled_val_accuracy=base - 0.05,
                             phase1_last_val_accuracy=base, phase1_val_accuracy=base,
                             phase2_first_val_accuracy=base + 0.02, val_accuracy=base + 0.03))
        # a configuration the comparison did not choose: ignored
        rows.append(dict(method="smartmixed", architecture=arch, config_id=10 + b, seed=0,
                         phase1_sampled_val_accuracy=0.0, phase1_last_val_accuracy=0.0,
                         phase1_val_accuracy=0.0, phase2_first_val_accuracy=0.0,
                         val_accuracy=0.0))
        rows.append(dict(method="fixed:relu", architecture=arch, config_id=20 + b, seed=0,
                         val_accuracy=0.9, phase2_first_val_accuracy=np.nan))
    runs = pd.DataFrame(rows)
    rankings = pd.DataFrame({"config_id": [0, 1, 2, 20, 21, 22]})
    t = transition_table(runs, rankings)
    assert set(t["method"]) == {"smartmixed"}
    by = t.set_index("stage")
    assert by.loc["phase 1 end, argmax network", "mean"] == pytest.approx(0.8105)
    assert by.loc["phase 1 end, sampled network", "mean"] == pytest.approx(0.7605)
    jump = by.loc["jump: first phase-2 epoch - argmax at phase-1 end"]
    assert jump["mean"] == pytest.approx(0.02) and jump["n_blocks"] == 3
    low, high = by.loc["final (reported weights)", ["ci_low", "ci_high"]]
    assert low < 0.8405 < high
    assert transition_table(runs.drop(columns="phase2_first_val_accuracy"), rankings).empty


def test_baseline_tables_show_what_the_chosen_configurations_picked_and_learned():
    from analysis.baselines import perlayer_choices, shape_table

    runs = pd.DataFrame([
        dict(method="perlayer", architecture="64-32-16", config_id=1, seed=s,
             layer_activations="relu,elu,selu") for s in range(2)] + [
        dict(method="perlayer", architecture="64-32-16", config_id=2, seed=0,
             layer_activations="tanh,tanh,tanh")] + [
        dict(method="swish_beta", architecture="64", config_id=3, seed=s,
             **{"shape/layer_1/beta": 1.0 + 0.1 * s}) for s in range(3)])
    rankings = pd.DataFrame({"config_id": [1, 3]})
    p = perlayer_choices(runs, rankings)
    assert list(p["activation"]) == ["relu", "elu", "selu"]  # config 2 was not chosen
    assert list(p["relative_depth"]) == pytest.approx([1 / 3, 2 / 3, 1.0])
    (row,) = shape_table(runs, rankings).itertuples(index=False)
    assert (row.method, row.layer, row.coefficient, row.n_seeds) == ("swish_beta", 1, "beta", 3)
    assert row.mean == pytest.approx(1.1) and row.ci_low < 1.1 < row.ci_high


def test_transition_intervals_stay_within_what_an_accuracy_can_be():
    """Near 1 with three blocks the Student-t interval reaches past 1: cut to [0, 1]."""
    rows = [dict(method="smartmixed", architecture=arch, config_id=b, seed=0,
                 phase1_last_val_accuracy=acc - 0.5, phase2_first_val_accuracy=acc,
                 val_accuracy=acc)
            for b, (arch, acc) in enumerate([("16", 1.0), ("32", 0.99), ("64", 0.94)])]
    t = transition_table(pd.DataFrame(rows), pd.DataFrame({"config_id": [0, 1, 2]}))
    final = t.set_index("stage").loc["final (reported weights)"]
    from analysis._stats import mean_ci

    assert mean_ci([1.0, 0.99, 0.94])[1] > 1  # the raw interval does reach past 1
    assert final["ci_high"] == 1.0 and 0 <= final["ci_low"] < final["mean"]
    assert (t["ci_high"] <= 1).all() and (t["ci_low"] >= -1).all()
