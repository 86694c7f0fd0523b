"""Significance of method differences across architectures (Demšar 2006's protocol).

Blocks are architectures, groups are methods, the observation is a method's seed-mean test
accuracy on that architecture (one row of :func:`analysis.rank.rank_methods`).

>>> friedman_test(rankings); nemenyi_test(rankings); wilcoxon_holm(rankings)
>>> control_holm(rankings, control="smartmixed")
"""

from __future__ import annotations

import itertools
import warnings

import numpy as np
import pandas as pd
from scipy import stats

from analysis._stats import ROUND, holm

ASSUMPTIONS = pd.DataFrame([
    {"test": "friedman",
     "assumptions": "blocks (architectures) independent; within a block methods are ranked; "
                    "only complete blocks (every method present) are used",
     "minimum": ">= 3 methods and >= 2 complete blocks to compute; the chi-square "
                "p-value is reliable for > 10 blocks and > 6 methods (scipy docs)"},
    {"test": "iman-davenport",
     "assumptions": "as Friedman; F approximation of the same rank statistic (equals the "
                    "repeated-measures ANOVA F on within-block ranks)",
     "minimum": ">= 3 methods and >= 2 complete blocks; less conservative than the "
                "chi-square p-value for few blocks"},
    {"test": "holm-vs-control",
     "assumptions": "same complete blocks as Friedman; z from average-rank differences with "
                    "se sqrt(k(k+1)/(6N)); Holm over the k-1 comparisons with the control",
     "minimum": ">= 2 methods and >= 2 complete blocks; the normal approximation needs "
                "many blocks (> 10)"},
    {"test": "nemenyi",
     "assumptions": "post-hoc for the Friedman design (same complete blocks); controls the "
                    "family-wise error over all pairs; conservative",
     "minimum": ">= 2 methods and >= 2 complete blocks; meaningful after a significant "
                "Friedman test"},
    {"test": "wilcoxon-holm",
     "assumptions": "paired differences over the architectures where both methods ran are "
                    "independent and symmetric about their median; differences rounded to 10 "
                    "decimals, zero differences dropped (Wilcoxon's method), ties share "
                    "midranks (exact conditional p for n <= 13); Holm corrects over all pairs",
     "minimum": ">= 1 non-zero difference to compute; with n <= 5 pairs the smallest "
                "two-sided exact p is 2/2^n >= 0.0625, so nothing can be significant at 0.05 "
                "below n = 6"},
])
"""Assumptions and minimum sample sizes of each test, printed in the report."""


def block_matrix(rankings: pd.DataFrame) -> tuple[pd.DataFrame, list[str]]:
    """Architectures × methods matrix of mean scores over complete blocks, and the
    architectures dropped because some method is missing there."""
    wide = rankings.pivot(index="architecture", columns="method", values="mean")
    complete = wide.dropna()
    return complete.round(ROUND), sorted(set(wide.index) - set(complete.index))


def friedman_test(rankings: pd.DataFrame) -> pd.DataFrame:
    """Two rows, ``friedman`` (chi-square) and ``iman-davenport`` (F): test, statistic, df1,
    df2, p_value, n_blocks, n_methods, dropped_blocks, note.

    Iman–Davenport's ``F = (N-1)·χ² / (N(k-1) - χ²)`` on ``(k-1, (k-1)(N-1))`` degrees of
    freedom (Demšar 2006, eq. 2) is less conservative than the chi-square approximation for
    few blocks; it equals the repeated-measures ANOVA F on the within-block ranks.
    """
    m, dropped = block_matrix(rankings)
    n, k = m.shape
    base = {"statistic": np.nan, "df1": k - 1, "df2": np.nan, "p_value": np.nan,
            "n_blocks": n, "n_methods": k, "dropped_blocks": " ".join(dropped), "note": ""}
    fr = {"test": "friedman", **base}
    idav = {"test": "iman-davenport", **base, "df2": (k - 1) * (n - 1)}
    if k < 3 or n < 2:
        note = f"needs >= 3 methods and >= 2 complete blocks (have {k} methods, {n} blocks)"
        fr["note"] = idav["note"] = note
    elif (m.nunique(axis=1) == 1).all():
        fr["note"] = idav["note"] = "every method scores the same on every architecture"
    else:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            res = stats.friedmanchisquare(*(m[c].to_numpy() for c in m.columns))
        chi2 = float(res.statistic)
        fr.update(statistic=chi2, p_value=float(res.pvalue))
        if n <= 10 or k <= 6:
            fr["note"] = "small design: chi-square p-value is approximate"
        denom = n * (k - 1) - chi2
        f = (n - 1) * chi2 / denom if denom > 1e-12 else np.inf  # perfect agreement: F = inf
        idav.update(statistic=f, p_value=float(stats.f.sf(f, k - 1, (k - 1) * (n - 1))))
    return pd.DataFrame([fr, idav])


def nemenyi_test(rankings: pd.DataFrame) -> pd.DataFrame:
    """Methods × methods matrix of Nemenyi p-values (NaN matrix when not computable)."""
    import scikit_posthocs as sp

    m, _ = block_matrix(rankings)
    methods = list(m.columns)
    if len(methods) < 2 or len(m) < 2 or (m.nunique(axis=1) == 1).all():
        return pd.DataFrame(np.nan, index=methods, columns=methods)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        p = sp.posthoc_nemenyi_friedman(m.reset_index(drop=True))
    p.index, p.columns = methods, methods
    return p


def critical_difference(n_methods: int, n_blocks: int, alpha: float = 0.05) -> float:
    """Nemenyi's critical difference of average ranks (Demšar 2006, eq. 5):
    ``q_alpha / sqrt(2) * sqrt(k(k+1) / (6N))``, q from the studentized range (infinite df).
    NaN for fewer than 2 methods or blocks."""
    if n_methods < 2 or n_blocks < 2:
        return float("nan")
    q = stats.studentized_range.ppf(1 - alpha, n_methods, np.inf) / np.sqrt(2)
    return float(q * np.sqrt(n_methods * (n_methods + 1) / (6.0 * n_blocks)))


def average_ranks(rankings: pd.DataFrame) -> pd.Series:
    """Mean rank (1 = best) of each method over the complete blocks."""
    m, _ = block_matrix(rankings)
    return m.rank(axis=1, ascending=False).mean().sort_values()


def _wilcoxon(d: np.ndarray) -> tuple[float, float, str, float]:
    """Two-sided signed-rank test of rounded non-zero differences ``d``: (statistic, p, how,
    p of the normal approximation).

    Ties share midranks.  Without ties the exact null distribution (n <= 50); with ties the
    exact *conditional* distribution, enumerating all 2^n sign flips of the observed midranks
    (n <= 13); otherwise the normal approximation with tie and continuity corrections.
    """
    ties = len(np.unique(np.abs(d))) < len(d)
    if not ties and len(d) <= 50:
        how, method = "exact", "exact"
    elif ties and len(d) <= 13:
        how, method = "exact, conditional on ties", stats.PermutationMethod(n_resamples=9999)
    else:
        how, method = "normal approximation (tie- and continuity-corrected)", "approx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = stats.wilcoxon(d, method=method, correction=True)
        p_normal = stats.wilcoxon(d, method="approx", correction=True).pvalue
    return float(res.statistic), float(min(res.pvalue, 1.0)), how, float(min(p_normal, 1.0))


def wilcoxon_holm(rankings: pd.DataFrame, alpha: float = 0.05) -> pd.DataFrame:
    """Pairwise two-sided Wilcoxon signed-rank tests with Holm correction.

    The paired differences are rounded to 10 decimals first: accuracies are discrete, and
    float noise must neither break a genuine tie between equal differences nor turn a zero
    difference into a tiny signed one.  Zero differences are dropped (Wilcoxon's method).

    Columns: method_a, method_b, n_pairs (architectures with both), n_nonzero, mean_diff
    (a - b), statistic (the smaller of W+ and W-), p_value, test_method (see
    :func:`_wilcoxon`), p_normal (the normal approximation with tie and continuity
    corrections, R's ``wilcox.test`` with ties, for comparison), p_holm, reject (at
    ``alpha`` after Holm, on ``p_value``), note.
    """
    wide = rankings.pivot(index="architecture", columns="method", values="mean").round(ROUND)
    rows = []
    for a, b in itertools.combinations(sorted(wide.columns), 2):
        pair = wide[[a, b]].dropna()
        d = (pair[a] - pair[b]).round(ROUND).to_numpy()
        nonzero = d[d != 0]
        row = {"method_a": a, "method_b": b, "n_pairs": len(d), "n_nonzero": len(nonzero),
               "mean_diff": round(float(d.mean()), ROUND) if len(d) else np.nan,
               "statistic": np.nan, "p_value": np.nan, "test_method": "", "p_normal": np.nan,
               "note": ""}
        if len(nonzero) == 0:
            row["note"] = "no non-zero paired differences"
        else:
            stat, p, how, p_normal = _wilcoxon(nonzero)
            row.update(statistic=stat, p_value=p, test_method=how, p_normal=p_normal)
            if len(nonzero) < 6:
                row["note"] = "n < 6: cannot reach p < 0.05"
        rows.append(row)
    cols = ["method_a", "method_b", "n_pairs", "n_nonzero", "mean_diff", "statistic",
            "p_value", "test_method", "p_normal", "note"]
    out = pd.DataFrame(rows, columns=cols)
    out["p_holm"], out["reject"] = np.nan, False
    holm(out, alpha)
    return out[[*cols[:-1], "p_holm", "reject", "note"]]


DEFAULT_CONTROL = "smartmixed"


def default_control(methods) -> str:
    """``smartmixed``, or its first arm (``smartmixed (transfer)`` before others) when the
    sweep split it into arms (:func:`analysis.load.label_arms`)."""
    names = sorted(methods)
    if DEFAULT_CONTROL in names:
        return DEFAULT_CONTROL
    arms = [m for m in names if m.startswith(DEFAULT_CONTROL + " (")]
    return min(arms, key=lambda m: ("transfer" not in m, m), default=DEFAULT_CONTROL)


def control_holm(rankings: pd.DataFrame, control: str = DEFAULT_CONTROL,
                 alpha: float = 0.05) -> pd.DataFrame:
    """Every method against ``control`` on the Friedman design (Demšar 2006, sec. 3.2.2).

    ``z = (R_i - R_control) / sqrt(k(k+1)/(6N))`` from the average ranks over the N complete
    blocks (1 = best, so z > 0: worse than the control), two-sided normal p, Holm over the
    k - 1 comparisons (the step-down form of Bonferroni–Dunn).  Columns: method, control,
    mean_rank, control_mean_rank, z, p_value, p_holm, reject, note.  Empty when the control
    did not run on every complete block or there are fewer than 2 methods or blocks.
    """
    cols = ["method", "control", "mean_rank", "control_mean_rank", "z", "p_value", "p_holm",
            "reject", "note"]
    m, _ = block_matrix(rankings)
    n, k = m.shape
    if control not in m.columns or k < 2 or n < 2:
        return pd.DataFrame(columns=cols)
    ranks = average_ranks(rankings)
    se = np.sqrt(k * (k + 1) / (6.0 * n))
    others = [c for c in ranks.index if c != control]
    z = np.array([(ranks[c] - ranks[control]) / se for c in others])
    note = "small design: normal approximation of rank differences" if n <= 10 else ""
    out = pd.DataFrame({"method": others, "control": control,
                        "mean_rank": [ranks[c] for c in others],
                        "control_mean_rank": ranks[control], "z": z,
                        "p_value": np.minimum(2 * stats.norm.sf(np.abs(z)), 1.0),
                        "p_holm": np.nan, "reject": False, "note": note})
    holm(out, alpha)
    return out[cols]
