"""Aggregate seeds: one row per configuration with mean, std and bootstrap CI.

>>> configs = aggregate_seeds(load_runs("smartmixed-quick"))
"""

from __future__ import annotations

from collections.abc import Sequence

import pandas as pd

from analysis._stats import CONFIDENCE, UNIT_INTERVAL, mean_ci_groups
from analysis.load import config_columns

SCORE_METRICS = ("test_accuracy", "test_f1_macro", "test_roc_auc", "val_accuracy")
"""Metrics summarised with mean, std and CI (those present in the runs; all in [0, 1], so
their CIs are cut to it)."""
MEAN_METRICS = ("train_seconds", "n_params", "phase1_test_accuracy",
                "phase2_start_test_accuracy")
"""Metrics summarised with their mean only."""


def aggregate_seeds(runs: pd.DataFrame, metrics: Sequence[str] = SCORE_METRICS,
                    confidence: float = CONFIDENCE) -> pd.DataFrame:
    """Per configuration: ``n_seeds``, ``seeds``, and for each metric present
    ``{m}_mean, {m}_std, {m}_ci_low, {m}_ci_high, {m}_ci_method``; means of
    :data:`MEAN_METRICS`; ``note`` explains NaNs (one seed, constant values, metric missing for
    some seeds).

    ``std`` is the sample standard deviation (ddof=1); the 95% CI of the seed mean is a
    Student-t interval up to 10 seeds and a percentile bootstrap above
    (:func:`analysis._stats.mean_ci`; ``{m}_ci_method`` names it), cut to [0, 1] for
    :data:`SCORE_METRICS`.
    """
    cols = config_columns(runs)
    present = [m for m in metrics if m in runs.columns and runs[m].notna().any()]
    by = runs.groupby("config_id", sort=True)
    out = by[cols].first()
    out["n_seeds"] = by.size()
    out["seeds"] = by["seed"].agg(lambda s: " ".join(str(x) for x in sorted(s)))
    notes = []  # per metric its missing values, then (first metric only) its CI note
    for m in present:
        ci = mean_ci_groups(runs, ["config_id"], m, confidence,
                            UNIT_INTERVAL if m in SCORE_METRICS else None)
        for stat in ("mean", "std", "ci_low", "ci_high", "ci_method"):
            out[f"{m}_{stat}"] = ci[stat]
        missing = out["n_seeds"] - ci["n"]
        notes.append([f"{m}: {k} seed(s) without a value" if k else "" for k in missing])
        if m == present[0]:
            notes.append([f"{m}: {t}" if t else "" for t in ci["note"]])
    for m in MEAN_METRICS:
        if m in runs.columns and runs[m].notna().any():
            out[f"{m}_mean"] = by[m].mean()
    out["note"] = ["; ".join(filter(None, row)) for row in zip(*notes)] if notes else ""
    return out.reset_index().assign(config_id=lambda d: d["config_id"].astype(int))
