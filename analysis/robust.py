"""Aggregate performance with its uncertainty, as Agarwal et al. (2021, "Deep RL at the edge
of the statistical precipice", the ``rliable`` library) ask for few runs per task.

The unit is the *run*: each seed of the configuration chosen for a (block, method) pair
(:func:`seed_scores`).  Uncertainty comes from a **stratified bootstrap**: in every resample
each (block, method) cell resamples its own seeds with replacement, so blocks never mix and
every block keeps its weight.  Intervals are 95% percentile intervals of the resampled
statistic.

>>> scores = seed_scores(runs, rankings)
>>> interval_estimates(scores); probability_of_improvement(scores); performance_profile(scores)
"""

from __future__ import annotations

import itertools

import numpy as np
import pandas as pd
from scipy import stats

from analysis._stats import CONFIDENCE, RANDOM_STATE, ROUND

N_BOOT = 2000  # rliable's default number of bootstrap resamples
BLOCK = "architecture"


def seed_scores(runs: pd.DataFrame, rankings: pd.DataFrame,
                metric: str = "test_accuracy") -> pd.DataFrame:
    """One row per seed of each chosen configuration: architecture, method, config_id, seed,
    score (``metric``, rounded to 10 decimals; seeds without a value are dropped)."""
    keep = rankings[[BLOCK, "method", "config_id"]]
    s = runs[["config_id", "seed", metric]].merge(keep, on="config_id")
    s = s.rename(columns={metric: "score"}).dropna(subset=["score"])
    s["score"] = s["score"].astype(float).round(ROUND)
    return s[[BLOCK, "method", "config_id", "seed", "score"]].sort_values(
        [BLOCK, "method", "seed"]).reset_index(drop=True)


def _complete(scores: pd.DataFrame) -> tuple[pd.DataFrame, list[str]]:
    """Scores on the blocks where every method has a run, and the blocks dropped."""
    methods = scores["method"].nunique()
    per_block = scores.groupby(BLOCK)["method"].nunique()
    keep = per_block[per_block == methods].index
    return scores[scores[BLOCK].isin(keep)], sorted(set(per_block.index) - set(keep))


def _cells(scores: pd.DataFrame, method: str) -> list[np.ndarray]:
    g = scores[scores["method"] == method]
    return [c["score"].to_numpy(float) for _, c in g.groupby(BLOCK, sort=True)]


def _resample(cells: list[np.ndarray], n: int, rng) -> list[np.ndarray]:
    """Stratified bootstrap: each cell (block) resamples its own runs, ``(n, runs)`` each."""
    return [c[rng.integers(len(c), size=(n, len(c)))] for c in cells]


def _interval(boot: np.ndarray, confidence: float) -> np.ndarray:
    """Percentile interval over the resamples (the first axis of ``boot``): [low, high]."""
    tail = (1 - confidence) / 2 * 100
    return np.percentile(boot, [tail, 100 - tail], axis=0)


def iqm(values) -> float:
    """Interquartile mean: the mean of the middle 50% of the values (25% trimmed from each
    end; ``scipy.stats.trim_mean``)."""
    return float(stats.trim_mean(np.asarray(values, float), 0.25, axis=None))


def interval_estimates(scores: pd.DataFrame, n_resamples: int = N_BOOT,
                       confidence: float = CONFIDENCE,
                       random_state: int = RANDOM_STATE) -> pd.DataFrame:
    """Per method over the complete blocks: ``iqm`` and ``mean`` of all its runs with
    stratified-bootstrap CIs.  Columns: method, n_blocks, n_runs, iqm, iqm_ci_low,
    iqm_ci_high, mean, mean_ci_low, mean_ci_high, dropped_blocks; sorted by IQM."""
    cols = ["method", "n_blocks", "n_runs", "iqm", "iqm_ci_low", "iqm_ci_high", "mean",
            "mean_ci_low", "mean_ci_high", "dropped_blocks"]
    data, dropped = _complete(scores)
    rng = np.random.default_rng(random_state)
    rows = []
    for method in sorted(data["method"].unique()):
        cells = _cells(data, method)
        runs = np.concatenate(cells)
        boot = np.concatenate(_resample(cells, n_resamples, rng), axis=1)
        iqm_low, iqm_high = _interval(stats.trim_mean(boot, 0.25, axis=1), confidence)
        mean_low, mean_high = _interval(boot.mean(axis=1), confidence)
        rows.append({"method": method, "n_blocks": len(cells), "n_runs": len(runs),
                     "iqm": iqm(runs), "iqm_ci_low": iqm_low, "iqm_ci_high": iqm_high,
                     "mean": float(runs.mean()), "mean_ci_low": mean_low,
                     "mean_ci_high": mean_high, "dropped_blocks": " ".join(dropped)})
    out = pd.DataFrame(rows, columns=cols)
    return out.sort_values(["iqm", "method"], ascending=[False, True]).reset_index(drop=True)


def _p_greater(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """P(X > Y) + P(X = Y) / 2 over the last axis pairs of ``a`` (…, n) and ``b`` (…, m)."""
    gt = (a[..., :, None] > b[..., None, :]).mean(axis=(-2, -1))
    eq = (a[..., :, None] == b[..., None, :]).mean(axis=(-2, -1))
    return gt + 0.5 * eq


def probability_of_improvement(scores: pd.DataFrame, n_resamples: int = N_BOOT,
                               confidence: float = CONFIDENCE,
                               random_state: int = RANDOM_STATE) -> pd.DataFrame:
    """For every pair of methods, ``p_a_better`` = P(A > B): the probability that a run of A
    scores higher than a run of B on the same block (ties count one half: the Mann–Whitney
    U / (n_A n_B) of that block), averaged over the blocks where both ran, with a
    stratified-bootstrap CI.  0.5 = no tendency.  Columns: method_a, method_b, n_blocks,
    p_a_better, ci_low, ci_high."""
    rng = np.random.default_rng(random_state)
    rows = []
    for a, b in itertools.combinations(sorted(scores["method"].unique()), 2):
        blocks = sorted(set(scores.loc[scores["method"] == a, BLOCK])
                        & set(scores.loc[scores["method"] == b, BLOCK]))
        if not blocks:
            continue
        sub = scores[scores[BLOCK].isin(blocks)]
        ca, cb = _cells(sub, a), _cells(sub, b)
        point = np.mean([_p_greater(x, y) for x, y in zip(ca, cb, strict=True)])
        ra, rb = _resample(ca, n_resamples, rng), _resample(cb, n_resamples, rng)
        boot = np.mean([_p_greater(x, y) for x, y in zip(ra, rb, strict=True)], axis=0)
        low, high = _interval(boot, confidence)
        rows.append({"method_a": a, "method_b": b, "n_blocks": len(blocks),
                     "p_a_better": float(point), "ci_low": float(low), "ci_high": float(high)})
    return pd.DataFrame(rows, columns=["method_a", "method_b", "n_blocks", "p_a_better",
                                       "ci_low", "ci_high"])


def performance_profile(scores: pd.DataFrame, taus=None, n_resamples: int = N_BOOT,
                        confidence: float = CONFIDENCE,
                        random_state: int = RANDOM_STATE) -> pd.DataFrame:
    """Run-score distributions: for each threshold ``tau`` the fraction of a method's runs
    scoring above it (per block, then averaged over the complete blocks), with a
    stratified-bootstrap CI band.  ``taus`` defaults to 101 points spanning the scores.
    Columns: tau, method, fraction, ci_low, ci_high."""
    cols = ["tau", "method", "fraction", "ci_low", "ci_high"]
    data, _ = _complete(scores)
    if data.empty:
        return pd.DataFrame(columns=cols)
    if taus is None:
        taus = np.linspace(data["score"].min(), data["score"].max(), 101)
    taus = np.asarray(taus, float)
    rng = np.random.default_rng(random_state)
    parts = []
    for method in sorted(data["method"].unique()):
        cells = _cells(data, method)
        point = np.mean([(c[:, None] > taus).mean(axis=0) for c in cells], axis=0)
        boot = np.mean([(r[:, :, None] > taus).mean(axis=1)
                        for r in _resample(cells, n_resamples, rng)], axis=0)
        low, high = _interval(boot, confidence)
        parts.append(pd.DataFrame({"tau": taus, "method": method, "fraction": point,
                                   "ci_low": low, "ci_high": high}))
    return pd.concat(parts, ignore_index=True)[cols]
