"""Aggregate seeds: one row per configuration with mean, std and bootstrap CI.

>>> configs = aggregate_seeds(load_runs("smartmixed-quick"))
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from analysis._stats import CONFIDENCE, join_notes, mean_ci, std
from analysis.load import config_columns

SCORE_METRICS = ("test_accuracy", "test_f1_macro", "test_roc_auc", "val_accuracy")
"""Metrics summarised with mean, std and CI (those present in the runs)."""
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
    (:func:`analysis._stats.mean_ci`; ``{m}_ci_method`` names it).
    """
    cols = config_columns(runs)
    present = [m for m in metrics if m in runs.columns and runs[m].notna().any()]
    rows = []
    for config_id, g in runs.groupby("config_id", sort=True):
        row: dict = {"config_id": int(config_id)}
        row.update({c: g[c].iloc[0] for c in cols})
        row["n_seeds"] = len(g)
        row["seeds"] = " ".join(str(s) for s in sorted(g["seed"]))
        notes = []
        for m in present:
            x = g[m].to_numpy(dtype=float)
            finite = x[np.isfinite(x)]
            low, high, note, how = mean_ci(finite, confidence)
            row.update({f"{m}_mean": float(np.mean(finite)) if len(finite) else np.nan,
                        f"{m}_std": std(finite), f"{m}_ci_low": low, f"{m}_ci_high": high,
                        f"{m}_ci_method": how})
            if len(finite) < len(x):
                notes.append(f"{m}: {len(x) - len(finite)} seed(s) without a value")
            if note and m == present[0]:
                notes.append(f"{m}: {note}")
        for m in MEAN_METRICS:
            if m in runs.columns and runs[m].notna().any():
                row[f"{m}_mean"] = float(g[m].mean())
        row["note"] = join_notes(*notes)
        rows.append(row)
    return pd.DataFrame(rows)
