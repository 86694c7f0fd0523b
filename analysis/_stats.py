"""Small statistics helpers shared by the stage modules."""

from __future__ import annotations

import warnings

import numpy as np
from scipy import stats

CONFIDENCE = 0.95
N_RESAMPLES = 9999
RANDOM_STATE = 0
ROUND = 10  # means equal to 10 decimals are ties (float noise must not break a tie)
T_MAX_N = 10  # up to this many values the CI is Student-t, above it a percentile bootstrap
CI_T, CI_BOOTSTRAP = "student-t", "percentile bootstrap"


UNIT_INTERVAL = (0.0, 1.0)
"""What an accuracy, F1, ROC-AUC or a fraction of units can take."""


def mean_ci(values, confidence: float = CONFIDENCE,
            bounds: tuple[float, float] | None = None) -> tuple[float, float, str, str]:
    """CI of the mean: ``(low, high, note, method)``.

    Up to :data:`T_MAX_N` values a Student-t interval (``mean ± t_{n-1} · s/√n``): the
    percentile bootstrap covers only about 87% instead of 95% with 5 values.  Above that a
    percentile bootstrap (``scipy.stats.bootstrap``), which does not assume normality.
    Fewer than two values -> NaN with a note; constant values -> the value itself
    (zero-width interval) with a note.  ``bounds``: the values the data can take; the CI is
    cut to them (near a bound, a symmetric t interval of few values reaches past it).
    """
    x = np.asarray(values, dtype=float)
    x = x[np.isfinite(x)]
    method = CI_T if len(x) <= T_MAX_N else CI_BOOTSTRAP
    if len(x) < 2:
        return float("nan"), float("nan"), f"CI needs >= 2 values (have {len(x)})", ""
    if np.ptp(x) == 0:
        return float(x[0]), float(x[0]), "constant values: zero-width CI", method
    if method == CI_T:
        low, high = stats.t.interval(confidence, len(x) - 1, loc=np.mean(x),
                                     scale=stats.sem(x))
    else:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            low, high = stats.bootstrap((x,), np.mean, confidence_level=confidence,
                                        n_resamples=N_RESAMPLES, method="percentile",
                                        random_state=np.random.default_rng(RANDOM_STATE)
                                        ).confidence_interval
    if bounds is not None:  # NaN stays NaN
        low, high = (float(v) for v in np.clip([low, high], *bounds))
    return low, high, "", method


def holm(out, alpha: float) -> None:
    """Holm-correct the ``p_value`` column of the DataFrame ``out`` in place: ``p_holm`` and
    ``reject`` (at ``alpha``) on the rows that have a p-value."""
    from statsmodels.stats.multitest import multipletests

    ok = out["p_value"].notna()
    if ok.any():
        reject, p_holm, _, _ = multipletests(out.loc[ok, "p_value"], alpha=alpha,
                                             method="holm")
        out.loc[ok, "p_holm"], out.loc[ok, "reject"] = p_holm, reject


def mean_ci_groups(df, keys: list[str], value: str, confidence: float = CONFIDENCE,
                   bounds: tuple[float, float] | None = None):
    """:func:`mean_ci`, ``n``, mean and sample std (ddof=1) of ``value`` for every group of
    ``keys`` at once (the same numbers as calling :func:`mean_ci` per group, vectorised for
    the Student-t groups; a group above :data:`T_MAX_N` values takes the bootstrap one by
    one).  Returns a DataFrame indexed by ``keys``: n, mean, std, ci_low, ci_high, note,
    ci_method.  ``bounds``: as for :func:`mean_ci`."""
    import pandas as pd

    finite = df[np.isfinite(df[value].to_numpy(dtype=float))]
    g = finite.groupby(keys, sort=True)[value]
    out = pd.DataFrame({"n": g.size(), "mean": g.mean(), "std": g.std(ddof=1),
                        "lo": g.min(), "hi": g.max()})
    full = df[keys].drop_duplicates().set_index(keys).index
    out = out.reindex(full.sort_values()) if len(full) else out
    out["n"] = out["n"].fillna(0).astype(int)
    n = out["n"].to_numpy()
    half = stats.t.ppf(0.5 + confidence / 2, np.maximum(n - 1, 1)) * out["std"] / np.sqrt(
        np.maximum(n, 1))
    out["ci_low"], out["ci_high"] = out["mean"] - half, out["mean"] + half
    out["ci_method"] = np.where(n <= T_MAX_N, CI_T, CI_BOOTSTRAP)
    out["note"] = ""
    few, const = n < 2, (n >= 2) & (out["lo"] == out["hi"]).to_numpy()
    out.loc[few, ["ci_low", "ci_high", "std"]] = np.nan
    out.loc[few, "ci_method"] = ""
    out.loc[few, "note"] = [f"CI needs >= 2 values (have {k})" for k in n[few]]
    out.loc[const, "ci_low"] = out.loc[const, "ci_high"] = out.loc[const, "lo"]
    out.loc[const, "note"] = "constant values: zero-width CI"
    for key in out.index[(n > T_MAX_N) & ~const]:  # rare: more than 10 seeds
        low, high, _, _ = mean_ci(finite.set_index(keys).loc[[key], value].to_numpy(),
                                  confidence)
        out.loc[key, ["ci_low", "ci_high"]] = low, high
    if bounds is not None:  # NaN stays NaN
        out[["ci_low", "ci_high"]] = out[["ci_low", "ci_high"]].clip(*bounds)
    return out.drop(columns=["lo", "hi"])
