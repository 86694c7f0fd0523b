"""Significance of method differences across architectures (Demšar 2006's protocol).

Blocks are architectures, groups are methods, the observation is a method's seed-mean test
accuracy on that architecture (one row of :func:`analysis.rank.rank_methods`).

>>> friedman_test(rankings); nemenyi_test(rankings); wilcoxon_holm(rankings)
"""

from __future__ import annotations

import itertools
import warnings

import numpy as np
import pandas as pd
from scipy import stats

from analysis._stats import ROUND

ASSUMPTIONS = pd.DataFrame([
    {"test": "friedman",
     "assumptions": "blocks (architectures) independent; within a block methods are ranked; "
                    "only complete blocks (every method present) are used",
     "minimum": ">= 3 methods and >= 2 complete blocks to compute; the chi-square "
                "p-value is reliable for > 10 blocks and > 6 methods (scipy docs)"},
    {"test": "nemenyi",
     "assumptions": "post-hoc for the Friedman design (same complete blocks); controls the "
                    "family-wise error over all pairs; conservative",
     "minimum": ">= 2 methods and >= 2 complete blocks; meaningful after a significant "
                "Friedman test"},
    {"test": "wilcoxon-holm",
     "assumptions": "paired differences over the architectures where both methods ran are "
                    "independent and symmetric about their median; zero differences dropped "
                    "(Wilcoxon's method); Holm corrects over all pairs",
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
    """One row: statistic, p_value, n_blocks, n_methods, dropped_blocks, note."""
    m, dropped = block_matrix(rankings)
    row = {"test": "friedman", "statistic": np.nan, "p_value": np.nan,
           "n_blocks": len(m), "n_methods": m.shape[1],
           "dropped_blocks": " ".join(dropped), "note": ""}
    if m.shape[1] < 3 or len(m) < 2:
        row["note"] = (f"needs >= 3 methods and >= 2 complete blocks (have {m.shape[1]} "
                       f"methods, {len(m)} blocks)")
    elif (m.nunique(axis=1) == 1).all():
        row["note"] = "every method scores the same on every architecture"
    else:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            res = stats.friedmanchisquare(*(m[c].to_numpy() for c in m.columns))
        row.update(statistic=float(res.statistic), p_value=float(res.pvalue))
        if len(m) <= 10 or m.shape[1] <= 6:
            row["note"] = "small design: chi-square p-value is approximate"
    return pd.DataFrame([row])


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


def average_ranks(rankings: pd.DataFrame) -> pd.Series:
    """Mean rank (1 = best) of each method over the complete blocks."""
    m, _ = block_matrix(rankings)
    ranks = m.apply(lambda r: pd.Series(stats.rankdata(-r.to_numpy()), index=r.index), axis=1)
    return ranks.mean().sort_values()


def wilcoxon_holm(rankings: pd.DataFrame, alpha: float = 0.05) -> pd.DataFrame:
    """Pairwise two-sided Wilcoxon signed-rank tests with Holm correction.

    Columns: method_a, method_b, n_pairs (architectures with both), n_nonzero, mean_diff
    (a - b), statistic, p_value, p_holm, reject (at ``alpha`` after Holm), note.
    """
    from statsmodels.stats.multitest import multipletests

    wide = rankings.pivot(index="architecture", columns="method", values="mean").round(ROUND)
    rows = []
    for a, b in itertools.combinations(sorted(wide.columns), 2):
        pair = wide[[a, b]].dropna()
        d = (pair[a] - pair[b]).to_numpy()
        row = {"method_a": a, "method_b": b, "n_pairs": len(d),
               "n_nonzero": int(np.count_nonzero(d)),
               "mean_diff": round(float(d.mean()), ROUND) if len(d) else np.nan,
               "statistic": np.nan, "p_value": np.nan, "note": ""}
        if row["n_nonzero"] == 0:
            row["note"] = "no non-zero paired differences"
        else:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                res = stats.wilcoxon(pair[a], pair[b], zero_method="wilcox")
            row.update(statistic=float(res.statistic), p_value=float(res.pvalue))
            if row["n_nonzero"] < 6:
                row["note"] = "n < 6: cannot reach p < 0.05"
        rows.append(row)
    out = pd.DataFrame(rows, columns=["method_a", "method_b", "n_pairs", "n_nonzero",
                                      "mean_diff", "statistic", "p_value", "note"])
    out["p_holm"], out["reject"] = np.nan, False
    ok = out["p_value"].notna()
    if ok.any():
        reject, p_holm, _, _ = multipletests(out.loc[ok, "p_value"], alpha=alpha,
                                             method="holm")
        out.loc[ok, "p_holm"], out.loc[ok, "reject"] = p_holm, reject
    cols = ["method_a", "method_b", "n_pairs", "n_nonzero", "mean_diff", "statistic",
            "p_value", "p_holm", "reject", "note"]
    return out[cols]
