"""Both sides of SmartMixed's phase transition, for the configurations the comparison chose.

During phase 1 the network trains through Gumbel samples, but it is evaluated -- and frozen
into phase 2 -- at its argmax choices.  The table follows validation accuracy across the
hand-off: the sampled network and the argmax network at the last phase-1 epoch, the argmax
network with the weights phase 2 starts from (restored by ``restore``), the first phase-2
epoch, and the final result.  Each stage is the seed mean per block (architecture), then the
mean over blocks with a Student-t 95% CI, cut to the values an accuracy can take ([0, 1];
near 1 with few blocks the symmetric interval reaches past it); ``jump`` is the paired change
from the argmax network at the last phase-1 epoch to the first phase-2 epoch ([-1, 1]).

>>> transition_table(runs, rankings)
"""

from __future__ import annotations

import pandas as pd

from analysis._stats import UNIT_INTERVAL, mean_ci

STAGES = (
    ("phase 1 end, sampled network", "phase1_sampled_val_accuracy"),
    ("phase 1 end, argmax network", "phase1_last_val_accuracy"),
    ("phase 2 start weights (restored)", "phase1_val_accuracy"),
    ("phase 2, first epoch", "phase2_first_val_accuracy"),
    ("final (reported weights)", "val_accuracy"),
)
"""(stage, seed-run metric): validation accuracy at each point of the hand-off."""

COLUMNS = ("method", "stage", "mean", "ci_low", "ci_high", "n_blocks")


def transition_table(runs: pd.DataFrame, rankings: pd.DataFrame) -> pd.DataFrame:
    """One row per (SmartMixed arm, stage) and a ``jump`` row per arm; empty when no run
    went through a phase transition."""
    if "phase2_first_val_accuracy" not in runs.columns or "config_id" not in rankings.columns:
        return pd.DataFrame(columns=list(COLUMNS))
    chosen = runs[runs["config_id"].isin(set(rankings["config_id"]))]
    chosen = chosen[chosen["phase2_first_val_accuracy"].notna()]
    rows = []
    for method, g in chosen.groupby("method", sort=True):
        blocks = g.groupby("architecture")[[m for _, m in STAGES if m in g.columns]].mean()
        if "phase1_last_val_accuracy" in blocks.columns:
            blocks["jump"] = (blocks["phase2_first_val_accuracy"]
                              - blocks["phase1_last_val_accuracy"])
        for stage, metric in (*STAGES, ("jump: first phase-2 epoch - argmax at phase-1 end",
                                        "jump")):
            if metric not in blocks.columns:
                continue
            values = blocks[metric].dropna()
            low, high, _, _ = mean_ci(values, bounds=(-1.0, 1.0) if metric == "jump"
                                      else UNIT_INTERVAL)
            rows.append((method, stage, float(values.mean()), low, high, len(values)))
    return pd.DataFrame(rows, columns=list(COLUMNS))
