"""Seed-mean confidence intervals and the rule that chooses one configuration per pair."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from analysis import aggregate_seeds, rank_methods
from analysis._stats import mean_ci, mean_ci_groups
from smartmixed_core.errors import ConfigError


def test_student_t_up_to_ten_values():
    x = [0.91, 0.93, 0.90, 0.94, 0.92]
    low, high, note, how = mean_ci(x)
    # hand formula: mean ± t(0.975, 4) · s / √n, t quantile 2.776445 (tables)
    half = 2.776445105 * np.std(x, ddof=1) / np.sqrt(5)
    assert (low, high) == pytest.approx((0.92 - half, 0.92 + half))
    assert how == "student-t" and note == ""
    assert mean_ci(np.arange(10.0))[3] == "student-t"


def test_percentile_bootstrap_above_ten_values():
    x = np.linspace(0.8, 0.95, 12) ** 2
    low, high, _, how = mean_ci(x)
    assert how == "percentile bootstrap"
    ref = stats.bootstrap((x,), np.mean, method="percentile", n_resamples=9999,
                          random_state=np.random.default_rng(0)).confidence_interval
    assert (low, high) == pytest.approx((ref.low, ref.high))


def test_degenerate_intervals():
    assert mean_ci([0.9, 0.9, 0.9])[:3] == (0.9, 0.9, "constant values: zero-width CI")
    low, high, note, how = mean_ci([0.9, np.nan])
    assert np.isnan(low) and np.isnan(high) and "have 1" in note and how == ""


def test_coverage_with_five_seeds():
    """Why Student-t: with 5 normal seeds it covers 95%, the percentile bootstrap ~87%."""
    rng = np.random.default_rng(1)
    reps, n = 1000, 5
    data = rng.normal(0.0, 1.0, size=(reps, n))
    t_cover = np.mean([lo <= 0 <= hi for lo, hi, *_ in map(mean_ci, data)])
    # percentile bootstrap by hand, vectorised: 2000 resample means per replicate
    idx = rng.integers(n, size=(reps, 2000, n))
    means = data[np.arange(reps)[:, None, None], idx].mean(2)
    lo, hi = np.percentile(means, [2.5, 97.5], axis=1)
    boot_cover = np.mean((lo <= 0) & (hi >= 0))
    assert 0.93 <= t_cover <= 0.97  # binomial sd 0.7 points
    assert 0.83 <= boot_cover <= 0.91


def configs(val, loss=None, test=None):
    n = len(val)
    df = pd.DataFrame({
        "config_id": range(n), "architecture": "8", "method": "a",
        "val_accuracy_mean": val, "test_accuracy_mean": test or [0.5 + i / 100 for i in range(n)],
        "test_accuracy_std": 0.0, "test_accuracy_ci_low": 0.0, "test_accuracy_ci_high": 0.0,
        "n_seeds": 3})
    if loss is not None:
        df["val_loss_mean"] = loss
    return df


def test_tie_rule_validation_accuracy_first():
    r = rank_methods(configs([0.7, 0.8, 0.75])).iloc[0]
    assert (r["config_id"], r["n_configs"], r["n_tied"], r["decided_by"]) == (1, 3, 1,
                                                                             "val_accuracy")
    assert r["val_accuracy"] == 0.8


def test_tie_rule_validation_loss_second():
    # 0.1 + 0.2 and 0.3 differ in float: equal to 10 decimals, so they tie
    r = rank_methods(configs([0.1 + 0.2, 0.3, 0.2], loss=[0.40, 0.35, 0.1])).iloc[0]
    assert (r["config_id"], r["n_tied"], r["decided_by"]) == (1, 2, "val_loss")


def test_tie_rule_config_id_last():
    r = rank_methods(configs([0.8, 0.8, 0.8], loss=[0.3, 0.2, 0.2])).iloc[0]
    assert (r["config_id"], r["n_tied"], r["decided_by"]) == (1, 3, "config_id")
    r = rank_methods(configs([0.8, 0.8])).iloc[0]  # no validation loss logged
    assert (r["config_id"], r["n_tied"], r["decided_by"]) == (0, 2, "config_id")


def test_single_configuration_needs_no_validation():
    df = configs([np.nan])
    r = rank_methods(df).iloc[0]
    assert (r["config_id"], r["n_configs"], r["decided_by"]) == (0, 1, "")


def test_never_selects_on_the_test_set():
    with pytest.raises(ConfigError, match="never on the test set") as err:
        rank_methods(configs([0.7, np.nan], test=[0.5, 0.99]))
    assert err.value.field == "select_by" and "1 have no val_accuracy" in err.value.message
    no_val = configs([0.7, 0.8]).drop(columns="val_accuracy_mean")
    with pytest.raises(ConfigError, match="2 have no val_accuracy"):
        rank_methods(no_val)
    with pytest.raises(ConfigError, match="is a test metric"):
        rank_methods(configs([0.7, 0.8]), select_by="test_accuracy")


def test_score_cis_are_cut_to_what_a_score_can_take(runs):
    """Near 1 with three seeds the t interval reaches past 1: the seed aggregate of a score
    cuts it at 1 (the mean and std are untouched); an unbounded value keeps it."""
    near_one = runs.assign(test_accuracy=lambda d: np.where(d["seed"] == 0, 0.99, 1.0))
    row = aggregate_seeds(near_one).query("n_seeds == 3").iloc[0]
    half = 4.302652730 * np.std([0.99, 1.0, 1.0], ddof=1) / np.sqrt(3)
    assert row["test_accuracy_mean"] == pytest.approx(0.99 + 0.02 / 3)
    assert row["test_accuracy_ci_low"] == pytest.approx(row["test_accuracy_mean"] - half)
    assert row["test_accuracy_ci_high"] == 1.0
    raw = mean_ci_groups(near_one, ["config_id"], "test_accuracy")
    assert raw["ci_high"].max() > 1  # what was cut
    low, high, _, _ = mean_ci([0.99, 1.0, 1.0], bounds=(0.0, 1.0))
    assert (low, high) == (pytest.approx(row["test_accuracy_ci_low"]), 1.0)
    assert mean_ci([0.99, 1.0, 1.0])[1] > 1
