"""Seed aggregation, ranking, MRR and significance against hand-computed answers.

Per-architecture means (see conftest): 64-32 smartmixed .92 > relu .91 = elu .91;
128-64 smartmixed .95 > elu .935 > relu .93; 32 relu .85 > smartmixed .82 (no elu).
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from scipy.stats import chi2 as chi2_dist
from scipy.stats import studentized_range

from analysis import (
    aggregate_seeds,
    average_ranks,
    first_rank_counts,
    friedman_test,
    headline,
    mean_reciprocal_rank,
    nemenyi_test,
    rank_distribution,
    rank_methods,
    top_k_table,
    wilcoxon_holm,
)

# two-sided 95% Student-t quantiles t(0.975, df) from printed tables (independent of SciPy)
T975 = {1: 12.706204736, 2: 4.302652730, 4: 2.776445105, 9: 2.262157163}


@pytest.fixture(scope="module")
def configs(runs):
    return aggregate_seeds(runs)


@pytest.fixture(scope="module")
def rankings(configs):
    return rank_methods(configs)


def row(df, arch, method):
    return df[(df["architecture"] == arch) & (df["method"] == method)].iloc[0]


def test_seed_aggregates(configs):
    assert len(configs) == 8
    r = row(configs, "64-32", "smartmixed")
    assert r["n_seeds"] == 3 and r["seeds"] == "0 1 2"
    assert r["test_accuracy_mean"] == pytest.approx(0.92)
    assert r["test_accuracy_std"] == pytest.approx(0.02)
    # 3 seeds: Student-t, 0.92 ± t(0.975, 2) · 0.02 / √3, t quantile 4.302653 (tables)
    half = T975[2] * 0.02 / math.sqrt(3)
    assert (r["test_accuracy_ci_low"], r["test_accuracy_ci_high"]) == pytest.approx(
        (0.92 - half, 0.92 + half))
    assert r["test_accuracy_ci_method"] == "student-t"
    assert r["test_f1_macro_mean"] == pytest.approx(0.90)
    assert r["train_seconds_mean"] == pytest.approx(2.0) and r["n_params_mean"] == 1000
    elu = row(configs, "64-32", "fixed:elu")  # seed 2 missing
    assert elu["n_seeds"] == 2 and elu["seeds"] == "0 1"
    assert elu["test_accuracy_std"] == pytest.approx(math.sqrt(2) * 0.01)
    # 2 seeds: 0.91 ± t(0.975, 1) · 0.01 (s/√2 = 0.01), the upper end cut to 1
    assert (elu["test_accuracy_ci_low"], elu["test_accuracy_ci_high"]) == pytest.approx(
        (0.91 - T975[1] * 0.01, 1.0))
    assert elu["train_seconds_mean"] == pytest.approx(1.5)
    relu = row(configs, "64-32", "fixed:relu")  # constant column
    assert relu["test_accuracy_std"] == 0
    assert relu["test_accuracy_ci_low"] == relu["test_accuracy_ci_high"] == pytest.approx(0.91)
    assert "constant" in relu["note"]
    assert "test_roc_auc_mean" not in configs.columns  # never logged


def test_one_seed_gives_nan_with_note(runs):
    one = aggregate_seeds(runs[runs["seed"] == 0])
    assert one["test_accuracy_std"].isna().all() and one["test_accuracy_ci_low"].isna().all()
    assert one["note"].str.contains("CI needs >= 2 values").all()


def test_tie_aware_ranks(rankings):
    got = {(a, m): r for a, m, r in rankings[["architecture", "method", "rank"]].itertuples(
        index=False)}
    assert got == {("64-32", "smartmixed"): 1, ("64-32", "fixed:relu"): 2.5,
                   ("64-32", "fixed:elu"): 2.5, ("128-64", "smartmixed"): 1,
                   ("128-64", "fixed:elu"): 2, ("128-64", "fixed:relu"): 3,
                   ("32", "fixed:relu"): 1, ("32", "smartmixed"): 2}
    assert row(rankings, "64-32", "fixed:elu")["n_seeds"] == 2
    assert row(rankings, "32", "smartmixed")["n_methods"] == 2
    assert list(rankings.columns[:6]) == ["architecture", "method", "mean", "std", "n_seeds",
                                          "rank"]


def test_mrr_with_ties(rankings):
    mrr = mean_reciprocal_rank(rankings).set_index("method")
    # tie for 2nd/3rd on 64-32 -> (1/2 + 1/3) / 2 = 5/12 each
    assert mrr.loc["smartmixed", "mrr"] == pytest.approx((1 + 1 + 1 / 2) / 3)
    assert mrr.loc["fixed:relu", "mrr"] == pytest.approx((5 / 12 + 1 / 3 + 1) / 3)
    assert mrr.loc["fixed:elu", "mrr"] == pytest.approx((5 / 12 + 1 / 2) / 2)
    assert mrr.loc["fixed:elu", "n_architectures"] == 2
    assert mrr.loc["fixed:relu", "mean_rank"] == pytest.approx((2.5 + 3 + 1) / 3)
    assert list(mrr.index) == ["smartmixed", "fixed:relu", "fixed:elu"]


def test_rank_distribution_and_first_counts(rankings):
    dist = rank_distribution(rankings)
    assert dist.loc["smartmixed"].tolist() == [2, 1, 0]
    assert dist.loc["fixed:relu"].tolist() == [1, 0.5, 1.5]
    assert dist.loc["fixed:elu"].tolist() == [0, 1.5, 0.5]
    first = first_rank_counts(rankings).set_index("method")
    assert first["first"].to_dict() == {"smartmixed": 2, "fixed:relu": 1, "fixed:elu": 0}
    assert first["first_outright"].to_dict() == {"smartmixed": 2, "fixed:relu": 1,
                                                 "fixed:elu": 0}
    assert first["first_shared"].sum() == 0


def test_tie_for_first():
    configs = pd.DataFrame({
        "config_id": [0, 1, 2], "architecture": ["8"] * 3, "method": ["a", "b", "c"],
        "test_accuracy_mean": [0.9, 0.9, 0.8], "test_accuracy_std": np.nan,
        "test_accuracy_ci_low": np.nan, "test_accuracy_ci_high": np.nan, "n_seeds": 1})
    r = rank_methods(configs)
    assert r["rank"].tolist() == [1.5, 1.5, 3]
    assert r["reciprocal_rank"].tolist() == pytest.approx([0.75, 0.75, 1 / 3])
    first = first_rank_counts(r).set_index("method")
    assert first.loc["a"].tolist() == [0.5, 0, 1] and first.loc["c"].tolist() == [0, 0, 0]
    assert top_k_table(r)["rank_1"].item() == "a (0.9000) = b (0.9000)"


def test_best_configuration_chosen_by_validation():
    configs = pd.DataFrame({
        "config_id": [0, 1], "architecture": ["8", "8"], "method": ["a", "a"],
        "val_accuracy_mean": [0.7, 0.8], "test_accuracy_mean": [0.95, 0.85],
        "test_accuracy_std": 0.0, "test_accuracy_ci_low": 0.0, "test_accuracy_ci_high": 0.0,
        "n_seeds": 2})
    r = rank_methods(configs)
    assert r["config_id"].item() == 1 and r["mean"].item() == 0.85 and r["n_configs"].item() == 2


def test_top3_table(rankings):
    top = top_k_table(rankings).set_index("architecture")
    assert top.loc["128-64"].tolist() == ["smartmixed (0.9500)", "fixed:elu (0.9350)",
                                          "fixed:relu (0.9300)"]
    assert top.loc["64-32", "rank_2"] == "fixed:elu (0.9100) = fixed:relu (0.9100)"
    assert top.loc["64-32", "rank_3"] == "" and top.loc["32", "rank_3"] == ""  # no 3rd group
    assert list(top.index) == ["32", "64-32", "128-64"]  # by depth, then widths as numbers


def test_friedman(rankings):
    f = friedman_test(rankings).iloc[0]
    # complete blocks 64-32, 128-64; rank sums 2, 5.5, 4.5 -> 3.25, tie correction 0.875
    assert f["n_blocks"] == 2 and f["n_methods"] == 3 and f["dropped_blocks"] == "32"
    assert f["statistic"] == pytest.approx(3.25 / 0.875)
    assert f["p_value"] == pytest.approx(math.exp(-3.25 / 0.875 / 2))
    assert "approximate" in f["note"]


def test_friedman_degenerate(rankings):
    two = rankings[rankings["method"] != "fixed:elu"]
    f = friedman_test(two)
    assert list(f["test"]) == ["friedman", "iman-davenport"]
    assert f["statistic"].isna().all() and f["note"].str.contains(">= 3 methods").all()


def test_nemenyi_and_average_ranks(rankings):
    avg = average_ranks(rankings)
    assert avg.to_dict() == pytest.approx({"smartmixed": 1.0, "fixed:elu": 2.25,
                                           "fixed:relu": 2.75})
    p = nemenyi_test(rankings)
    se = math.sqrt(3 * 4 / (6 * 2))  # sqrt(k(k+1)/(6n)) = 1
    expected = studentized_range.sf(1.75 / se * math.sqrt(2), 3, np.inf)
    assert p.loc["smartmixed", "fixed:relu"] == pytest.approx(expected, rel=1e-3)
    assert p.loc["fixed:relu", "smartmixed"] == p.loc["smartmixed", "fixed:relu"]


def test_wilcoxon_holm(rankings):
    w = wilcoxon_holm(rankings).set_index(["method_a", "method_b"])
    er = w.loc[("fixed:elu", "fixed:relu")]  # diffs 0, +.005: one non-zero
    assert (er["n_pairs"], er["n_nonzero"], er["p_value"]) == (2, 1, 1.0)
    es = w.loc[("fixed:elu", "smartmixed")]  # diffs -.01, -.015: exact p = 2/4
    assert (es["n_pairs"], es["statistic"], es["p_value"]) == (2, 0, 0.5)
    assert es["mean_diff"] == pytest.approx(-0.0125)
    rs = w.loc[("fixed:relu", "smartmixed")]  # diffs -.01, -.02, +.03: W+ = W- = 3
    assert (rs["n_pairs"], rs["statistic"], rs["p_value"]) == (3, 3, 1.0)
    assert rs["mean_diff"] == pytest.approx(0)
    # Holm: sorted p (0.5, 1, 1) -> (1.5 -> 1, 1, 1)
    assert w["p_holm"].tolist() == [1.0, 1.0, 1.0] and not w["reject"].any()
    assert w["note"].str.contains("n < 6").all()


def test_headline(rankings):
    h = headline(rankings).set_index("method")
    assert h.loc["fixed:elu", "mean_test_accuracy"] == pytest.approx((0.91 + 0.935) / 2)
    assert h.loc["smartmixed", "first"] == 2


def test_chi2_helper_is_what_we_think():
    # a guard for the hand formula used in the selection tests
    assert chi2_dist.sf(3.25 / 0.875, 2) == pytest.approx(math.exp(-3.25 / 0.875 / 2))
