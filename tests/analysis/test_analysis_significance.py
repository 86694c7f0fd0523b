"""Friedman / Iman–Davenport, Wilcoxon on rounded differences and Holm against a control,
each checked against an independent reference (statsmodels, scikit-posthocs, a hand
enumeration or formula) on designs with ties, missing blocks, equal methods and 2 blocks."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pandas as pd
import pytest
import scikit_posthocs as sp
from scipy import stats
from statsmodels.stats.anova import AnovaRM

from analysis import (
    average_ranks,
    control_holm,
    critical_difference,
    friedman_test,
    nemenyi_test,
    plot_cd_diagram,
    wilcoxon_holm,
)


def rankings_from(wide: dict[str, dict[str, float]]) -> pd.DataFrame:
    """``{architecture: {method: mean}}`` -> the rows rank_methods would give."""
    return pd.DataFrame([{"architecture": a, "method": m, "mean": v}
                         for a, by in wide.items() for m, v in by.items()])


def exact_signed_rank_p(d) -> float:
    """Two-sided p by enumerating all 2^n sign flips of the midranks of |d| (by hand)."""
    d = np.asarray(d, float)
    r = stats.rankdata(np.abs(d))
    observed = r[d > 0].sum()
    centre = r.sum() / 2
    flips = [sum(ri for ri, s in zip(r, signs, strict=True) if s)
             for signs in itertools.product((0, 1), repeat=len(d))]
    return min(1.0, np.mean([abs(w - centre) >= abs(observed - centre) - 1e-9 for w in flips]))


def normal_signed_rank_p(d) -> float:
    """R's wilcox.test with ties: normal approximation, tie and continuity corrections."""
    d = np.asarray(d, float)
    n, r = len(d), stats.rankdata(np.abs(d))
    w = r[d > 0].sum()
    _, t = np.unique(np.abs(d), return_counts=True)
    var = n * (n + 1) * (2 * n + 1) / 24 - np.sum(t**3 - t) / 48
    z = (abs(w - n * (n + 1) / 4) - 0.5) / math.sqrt(var)
    return 2 * (1 - 0.5 * (1 + math.erf(z / math.sqrt(2))))


# Eight blocks; b is a minus differences in whole accuracy points.  Written as a - d the
# means carry float noise: 0.92 - 0.91 != 0.95 - 0.94 in binary.
A = [0.92, 0.95, 0.93, 0.91, 0.97, 0.96, 0.94, 0.90]


def pair_design(diff_points):
    b = [round(a - d / 100, 2) for a, d in zip(A, diff_points, strict=True)]
    return rankings_from({f"arch{i}": {"a": a, "b": bb}
                          for i, (a, bb) in enumerate(zip(A, b, strict=True))}), b


def test_wilcoxon_issue_example_all_positive_with_ties():
    """The issue's pattern: 8 positive differences, tied magnitudes (1,1,1,2,2,3,4,5)."""
    r, _ = pair_design([1, 1, 1, 2, 2, 3, 4, 5])
    w = wilcoxon_holm(r).iloc[0]
    # all signs positive: only 2 of the 2^8 sign patterns are as extreme, ties or not
    assert w["p_value"] == pytest.approx(2 / 256) == pytest.approx(exact_signed_rank_p(
        [1, 1, 1, 2, 2, 3, 4, 5]))
    assert w["test_method"] == "exact, conditional on ties" and w["statistic"] == 0
    # the normal approximation (R's wilcox.test) on the same differences is 0.0137
    assert w["p_normal"] == pytest.approx(normal_signed_rank_p([1, 1, 1, 2, 2, 3, 4, 5]))
    assert w["p_normal"] == pytest.approx(0.01368, abs=1e-5)


def test_wilcoxon_float_noise_does_not_order_ties():
    """d = (-1, 1, 1, 2, ...) points: in binary 0.81 - 0.82 is smaller in magnitude than
    0.92 - 0.91, so the untied exact test on float differences ranks the negative one 1st
    (W- = 1); on rounded differences the three share rank 2 (W- = 2)."""
    pairs = [(0.81, 0.82), (0.92, 0.91), (0.95, 0.94), (0.93, 0.91), (0.97, 0.94),
             (0.96, 0.92), (0.94, 0.89), (0.98, 0.92)]
    r = rankings_from({f"k{i}": {"a": a, "b": b} for i, (a, b) in enumerate(pairs)})
    w = wilcoxon_holm(r).iloc[0]
    diffs = [-1, 1, 1, 2, 3, 4, 5, 6]
    assert w["p_value"] == pytest.approx(exact_signed_rank_p(diffs))
    assert w["p_value"] == pytest.approx(8 / 256)  # sign patterns with W- <= 2: 4 of 256
    assert w["statistic"] == 2 and w["n_nonzero"] == 8
    old = stats.wilcoxon(*np.array(pairs).T)  # what the analysis used to run
    assert (old.statistic, old.pvalue) == (1, pytest.approx(4 / 256))


def test_wilcoxon_zero_and_large_n():
    # a float-noise zero (0.3 vs 0.1 + 0.2) is a zero difference, dropped
    r = rankings_from({"x": {"a": 0.1 + 0.2, "b": 0.3}, "y": {"a": 0.9, "b": 0.8}})
    w = wilcoxon_holm(r).iloc[0]
    assert (w["n_pairs"], w["n_nonzero"], w["p_value"]) == (2, 1, 1.0)
    # 15 differences with ties: normal approximation, checked by hand
    diffs = [1, 1, 2, 2, 2, 3, -3, 4, 5, 5, 6, 7, -8, 9, 10]
    acc = [0.5 + i / 100 for i in range(15)]
    r = rankings_from({f"k{i}": {"a": a + d / 1000, "b": a}
                       for i, (a, d) in enumerate(zip(acc, diffs, strict=True))})
    w = wilcoxon_holm(r).iloc[0]
    assert w["test_method"].startswith("normal approximation")
    assert w["p_value"] == pytest.approx(normal_signed_rank_p(diffs))


def test_wilcoxon_all_equal_methods():
    r = rankings_from({a: {"a": 0.9, "b": 0.9, "c": 0.9} for a in ("x", "y", "z")})
    w = wilcoxon_holm(r)
    assert w["p_value"].isna().all() and not w["reject"].any()
    assert (w["note"] == "no non-zero paired differences").all()


# Six blocks, four methods, a tie inside block 1, block "g" missing method d.
GRID = {"a": [0.90, 0.91, 0.88, 0.93, 0.95, 0.90], "b": [0.90, 0.89, 0.87, 0.90, 0.94, 0.88],
        "c": [0.90, 0.86, 0.85, 0.91, 0.92, 0.89], "d": [0.85, 0.88, 0.86, 0.89, 0.91, 0.87]}


def grid_rankings():
    wide = {f"k{i}": {m: v[i] for m, v in GRID.items()} for i in range(6)}
    wide["g"] = {"a": 0.5, "b": 0.6, "c": 0.7}
    return rankings_from(wide)


def test_friedman_and_iman_davenport_against_repeated_measures_anova():
    f = friedman_test(grid_rankings()).set_index("test")
    m = pd.DataFrame(GRID)
    ref_chi2 = stats.friedmanchisquare(*(m[c] for c in m.columns))
    assert f.loc["friedman", "statistic"] == pytest.approx(ref_chi2.statistic)
    assert (f["n_blocks"] == 6).all() and (f["dropped_blocks"] == "g").all()
    # Iman–Davenport F = repeated-measures ANOVA F on the within-block ranks (Conover)
    ranks = (-m).rank(axis=1).reset_index().melt(id_vars="index")
    anova = AnovaRM(ranks, depvar="value", subject="index", within=["variable"]).fit()
    ref = anova.anova_table.iloc[0]
    idav = f.loc["iman-davenport"]
    assert idav["statistic"] == pytest.approx(ref["F Value"])
    assert (idav["df1"], idav["df2"]) == (ref["Num DF"], ref["Den DF"]) == (3, 15)
    assert idav["p_value"] == pytest.approx(ref["Pr > F"])
    assert idav["p_value"] < f.loc["friedman", "p_value"]  # less conservative here


def test_iman_davenport_two_blocks_and_degenerate():
    # 2 blocks, 3 methods, a tie: chi2 = 3.25 / 0.875 (hand, see test_friedman)
    r = rankings_from({"x": {"a": 0.92, "b": 0.91, "c": 0.91},
                       "y": {"a": 0.95, "b": 0.93, "c": 0.935}})
    f = friedman_test(r).set_index("test")
    chi2 = 3.25 / 0.875
    f_hand = (2 - 1) * chi2 / (2 * 2 - chi2)
    assert f.loc["iman-davenport", "statistic"] == pytest.approx(f_hand)
    assert f.loc["iman-davenport", "p_value"] == pytest.approx(stats.f.sf(f_hand, 2, 2))
    # perfect agreement: chi2 = N(k-1), F infinite, p = 0
    r = rankings_from({"x": {"a": 3, "b": 2, "c": 1}, "y": {"a": 3, "b": 2, "c": 1}})
    assert friedman_test(r).set_index("test").loc["iman-davenport", "p_value"] == 0
    equal = rankings_from({a: {"a": 0.9, "b": 0.9, "c": 0.9} for a in ("x", "y")})
    f = friedman_test(equal)
    assert f["p_value"].isna().all() and f["note"].str.contains("scores the same").all()


def test_control_holm_against_scikit_posthocs():
    got = control_holm(grid_rankings(), control="c").set_index("method")
    m = pd.DataFrame(GRID)
    ref = sp.posthoc_siegel_friedman(-m, p_adjust=None).loc["c"].drop("c")
    assert got["p_value"].to_dict() == pytest.approx(ref.to_dict())
    # Holm by hand: sort p, multiply by (m - i), running max, cap at 1
    order = ref.sort_values()
    adj = np.minimum(np.maximum.accumulate(order.to_numpy() * np.arange(3, 0, -1)), 1)
    assert got.loc[order.index, "p_holm"].tolist() == pytest.approx(adj.tolist())
    assert (got["control"] == "c").all() and set(got.index) == {"a", "b", "d"}
    ranks = (-m).rank(axis=1).mean()
    assert got.loc["a", "z"] == pytest.approx((ranks["a"] - ranks["c"]) / math.sqrt(4 * 5 / 36))


def test_control_holm_missing_control_and_all_equal():
    assert control_holm(grid_rankings(), control="nope").empty
    equal = rankings_from({a: {"smartmixed": 0.9, "b": 0.9} for a in ("x", "y")})
    got = control_holm(equal)  # default control: smartmixed
    assert got["z"].tolist() == [0] and got["p_value"].tolist() == [1.0]
    assert not got["reject"].any()


def test_critical_difference_against_demsar_table():
    # Demšar (2006), Table 5(a): q_0.05 = 1.960, 2.343, 2.569, 2.728, 2.850, 2.949 for k = 2..7
    for k, q in zip(range(2, 8), (1.960, 2.343, 2.569, 2.728, 2.850, 2.949), strict=True):
        assert critical_difference(k, 18) == pytest.approx(q * math.sqrt(k * (k + 1) / 108),
                                                           abs=1e-3)
    assert math.isnan(critical_difference(3, 1))


def test_cd_diagram_draws_the_cd_bar():
    r = grid_rankings()
    fig = plot_cd_diagram(average_ranks(r), nemenyi_test(r), n_blocks=6)
    texts = [t.get_text() for t in fig.axes[0].texts]
    cd = critical_difference(4, 6)
    assert f"CD = {cd:.2g}" in texts
    without = plot_cd_diagram(average_ranks(r), nemenyi_test(r))
    assert not any(t.get_text().startswith("CD =") for t in without.axes[0].texts)
