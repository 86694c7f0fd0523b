"""IQM, probability of improvement and performance profiles (Agarwal et al. 2021) against
hand computations, scipy's bootstrap and Mann–Whitney U, on ties, missing seeds, equal
methods and a 2-block design."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from analysis import (
    interval_estimates,
    performance_profile,
    probability_of_improvement,
    rank_methods,
    seed_scores,
)
from analysis.aggregate import aggregate_seeds
from analysis.robust import iqm


def scores_from(table: dict[tuple[str, str], list[float]]) -> pd.DataFrame:
    return pd.DataFrame([{"architecture": a, "method": m, "config_id": 0, "seed": i,
                          "score": v}
                         for (a, m), vals in table.items() for i, v in enumerate(vals)])


# two blocks; b misses a seed on y; ties within and across methods
TABLE = {("x", "a"): [0.90, 0.92, 0.92, 0.95], ("x", "b"): [0.91, 0.92, 0.93, 0.93],
         ("y", "a"): [0.80, 0.81, 0.85, 0.85], ("y", "b"): [0.85, 0.86, 0.79]}


def test_seed_scores_follow_the_chosen_configuration(runs):
    rankings = rank_methods(aggregate_seeds(runs))
    s = seed_scores(runs, rankings)
    assert len(s) == 23  # every configuration is the only one of its pair here
    elu = s[(s["architecture"] == "64-32") & (s["method"] == "fixed:elu")]
    assert elu["seed"].tolist() == [0, 1] and elu["score"].tolist() == [0.90, 0.92]


def test_iqm_by_hand():
    x = [0.1, 0.9, 0.5, 0.3, 0.7, 0.2, 0.8, 0.4]  # sorted: drop 0.1, 0.2 and 0.8, 0.9
    assert iqm(x) == pytest.approx((0.3 + 0.4 + 0.5 + 0.7) / 4)


def test_interval_estimates_two_blocks_missing_seed():
    est = interval_estimates(scores_from(TABLE), n_resamples=4000).set_index("method")
    a = TABLE[("x", "a")] + TABLE[("y", "a")]  # 8 runs: IQM drops 2 at each end
    assert est.loc["a", "iqm"] == pytest.approx(np.mean(sorted(a)[2:6]))
    b = TABLE[("x", "b")] + TABLE[("y", "b")]  # 7 runs: int(0.25 * 7) = 1 at each end
    assert est.loc["b", "iqm"] == pytest.approx(np.mean(sorted(b)[1:6]))
    assert est.loc["b", "n_runs"] == 7 and (est["n_blocks"] == 2).all()
    assert est.loc["a", "mean"] == pytest.approx(np.mean(a))
    for m in ("a", "b"):
        assert est.loc[m, "iqm_ci_low"] <= est.loc[m, "iqm"] <= est.loc[m, "iqm_ci_high"]
    # the mean's stratified CI: x and y resampled separately.  The mean of all runs equals
    # (4 mean_x + 3 mean_y) / 7 for b, so its CI width comes from two independent
    # bootstraps; compare with the normal-theory width of that weighted mean (loose check)
    se = np.sqrt((4 / 7) ** 2 * np.var(TABLE[("x", "b")]) / 4
                 + (3 / 7) ** 2 * np.var(TABLE[("y", "b")]) / 3)
    width = est.loc["b", "mean_ci_high"] - est.loc["b", "mean_ci_low"]
    assert width == pytest.approx(2 * 1.96 * se, rel=0.25)


def test_stratification_keeps_blocks_apart():
    """Blocks constant inside but far apart: an unstratified bootstrap would mix them and
    give a wide interval; the stratified one has zero width."""
    s = scores_from({("x", "a"): [0.5] * 3, ("y", "a"): [0.9] * 3})
    est = interval_estimates(s).iloc[0]
    assert est["mean"] == est["mean_ci_low"] == est["mean_ci_high"] == pytest.approx(0.7)
    assert est["iqm_ci_low"] == est["iqm_ci_high"] == pytest.approx(est["iqm"])


def test_one_block_bootstrap_matches_scipy():
    x = [0.80, 0.84, 0.83, 0.90, 0.86, 0.85, 0.91, 0.79]
    est = interval_estimates(scores_from({("x", "a"): x}), n_resamples=20000).iloc[0]
    ref = stats.bootstrap((np.array(x),), np.mean, method="percentile", n_resamples=20000,
                          random_state=np.random.default_rng(5)).confidence_interval
    assert (est["mean_ci_low"], est["mean_ci_high"]) == pytest.approx((ref.low, ref.high),
                                                                      abs=0.003)


def test_probability_of_improvement_against_mann_whitney():
    p = probability_of_improvement(scores_from(TABLE)).iloc[0]
    ref = np.mean([stats.mannwhitneyu(TABLE[(k, "a")], TABLE[(k, "b")]).statistic
                   / (len(TABLE[(k, "a")]) * len(TABLE[(k, "b")])) for k in ("x", "y")])
    assert (p["method_a"], p["method_b"], p["n_blocks"]) == ("a", "b", 2)
    assert p["p_a_better"] == pytest.approx(ref)
    assert p["ci_low"] <= p["p_a_better"] <= p["ci_high"]


def test_probability_of_improvement_equal_methods_and_missing_block():
    s = scores_from({("x", "a"): [0.9, 0.9], ("x", "b"): [0.9, 0.9], ("y", "a"): [0.1]})
    p = probability_of_improvement(s).iloc[0]
    assert p["n_blocks"] == 1 and p["p_a_better"] == p["ci_low"] == p["ci_high"] == 0.5


def test_performance_profile_by_hand():
    prof = performance_profile(scores_from(TABLE), taus=[0.0, 0.85, 0.92, 1.0])
    b = prof[prof["method"] == "b"].set_index("tau")["fraction"]
    # tau 0.85: x 4/4 above, y 1/3 above (0.86) -> (1 + 1/3) / 2; tau 0.92: x 2/4, y 0
    assert b.tolist() == pytest.approx([1.0, (1 + 1 / 3) / 2, 0.25, 0.0])
    assert (prof["ci_low"] <= prof["fraction"] + 1e-12).all()
    assert (prof["fraction"] <= prof["ci_high"] + 1e-12).all()
    default = performance_profile(scores_from(TABLE))
    assert default["tau"].nunique() == 101 and default["tau"].min() == 0.79
