"""Budgets, validation resolution, the validation-loss key and the summary in words."""

from __future__ import annotations

import itertools

import numpy as np
import pandas as pd
import pytest

from analysis import control_holm, friedman_test, rank_methods, wilcoxon_holm
from analysis.protocol import (
    attach_val_loss,
    summary,
    trial_budgets,
    validation_resolution,
)


def test_validation_resolution_inferred_and_logged():
    rng = np.random.default_rng(0)
    k = rng.integers(100, 144, size=40)
    runs = pd.DataFrame({"dataset": "digits", "val_accuracy": (k / 144).astype(np.float32)})
    r = validation_resolution(runs).iloc[0]
    assert (r["n_val"], r["resolution"]) == (144, pytest.approx(1 / 144))
    assert r["source"].startswith("inferred from") and r["n_values"] == len(set(k))
    logged = runs.assign(n_val=144.0)
    assert validation_resolution(logged).iloc[0]["source"] == "logged"
    assert validation_resolution(runs.drop(columns="val_accuracy")).empty


def test_trial_budgets_count_every_trial():
    trials = pd.DataFrame({"method": ["a"] * 5 + ["b"] * 2,
                           "architecture": ["x", "x", "x", "y", "y", "x", "y"],
                           "status": ["FINISHED", "KILLED", "FINISHED", "FINISHED", "FAILED",
                                      "FINISHED", "FINISHED"]})
    b = trial_budgets(trials).set_index("method")
    assert b.loc["a"].tolist() == [5, 2, 3] and b.loc["b"].tolist() == [2, 1, 1]


def test_val_loss_from_trial_runs():
    configs = pd.DataFrame({"config_id": [0, 1, 2]})
    runs = pd.DataFrame({"config_id": [0, 0, 1, 1, 2], "trial": ["t0", "t0", "t1", "t2", "t3"]})
    trials = pd.DataFrame({"trial": ["t0", "t1", "t2", "t3"],
                           "val_loss_mean": [0.5, 0.2, 0.4, np.nan]})
    got = attach_val_loss(configs, runs, trials)["val_loss_mean"].tolist()
    assert got[:2] == pytest.approx([0.5, 0.3]) and np.isnan(got[2])


def tables_for(wide, budgets):
    r = pd.DataFrame([{"architecture": a, "method": m, "mean": v, "n_seeds": 5, "n_tied": 1}
                      for a, by in wide.items() for m, v in by.items()])
    return {"rankings": r, "friedman": friedman_test(r), "control": control_holm(r),
            "wilcoxon": wilcoxon_holm(r), "budgets": budgets,
            "validation": pd.DataFrame(columns=["dataset", "n_val", "resolution"])}


def test_summary_names_significant_differences():
    # 12 blocks: smartmixed always best, b always worst
    wide = {f"k{i}": {"smartmixed": 0.95 + i / 1000, "a": 0.93 + (i % 3) / 1000,
                      "b": 0.90 + i / 2000} for i in range(12)}
    budgets = pd.DataFrame({"method": ["a", "b", "smartmixed"], "n_trials": [20, 20, 20],
                            "min_per_block": 2, "max_per_block": 2})
    text = "\n".join(summary(tables_for(wide, budgets)))
    assert "Budgets: equal, 20 trials per method." in text
    assert "Per architecture" not in text
    budgets["max_per_block"] = [2, 3, 2]
    assert "Per block the trials range from 2 to 3" in "".join(
        summary(tables_for(wide, budgets)))
    assert "the methods differ." in text
    assert "significantly worse: a, b" in text and "significantly better than smartmixed: none" \
        in text
    assert "Pairwise Wilcoxon (Holm): significant: a > b, a < smartmixed, b < smartmixed." \
        in text
    assert "Caveat" not in text and "12 complete blocks" in text and "with 5 seeds" in text


def test_summary_says_no_significant_difference():
    wide = {f"k{i}": {"smartmixed": 0.9, "a": 0.9, "b": 0.9} for i in range(3)}
    text = "\n".join(summary(tables_for(wide, pd.DataFrame(columns=["method", "n_trials"]))))
    assert "Budgets: unknown (no trial runs found)." in text
    assert "Omnibus: not computable (every method scores the same" in text
    assert "Against smartmixed (Holm): no significant difference." in text
    assert "Pairwise Wilcoxon (Holm): no significant difference." in text
    assert "3 blocks are few" in text


def test_blocks_are_dataset_architecture_pairs():
    """With two datasets a block is a (dataset, architecture) pair: a configuration of one
    dataset never represents the other, however good its validation accuracy."""
    rows = []
    for i, (ds, arch, method) in enumerate(itertools.product(("digits", "wine"), ("8", "16-8"),
                                                             ("a", "b", "smartmixed"))):
        val = 0.99 if ds == "wine" else 0.5 + i / 100
        rows.append({"config_id": i, "dataset": ds, "architecture": arch, "method": method,
                     "val_accuracy_mean": val, "test_accuracy_mean": val - 0.01,
                     "test_accuracy_std": 0.0, "test_accuracy_ci_low": 0.0,
                     "test_accuracy_ci_high": 0.0, "n_seeds": 3})
    r = rank_methods(pd.DataFrame(rows))
    assert list(r["architecture"].unique()) == ["digits/8", "digits/16-8", "wine/8",
                                                "wine/16-8"]
    assert (r.groupby("architecture")["n_configs"].max() == 1).all()
    assert r.loc[r["architecture"] == "digits/8", "mean"].max() < 0.9
    assert friedman_test(r)["n_blocks"].iloc[0] == 4
    tables = {"rankings": r.assign(n_tied=1), "friedman": friedman_test(r),
              "control": control_holm(r), "wilcoxon": wilcoxon_holm(r)}
    assert "4 complete blocks (dataset × architecture pairs)" in summary(tables)[0]
    one = rank_methods(pd.DataFrame(rows[:6]))
    assert set(one["architecture"]) == {"8", "16-8"}  # one dataset: plain architectures
