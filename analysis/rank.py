"""Rank methods per architecture (the paper's protocol, with ties handled).

>>> rankings = rank_methods(aggregate_seeds(runs))
>>> mean_reciprocal_rank(rankings)

Ties.  Methods whose mean test accuracy is equal (to 10 decimals) share the *average* rank
(``scipy.stats.rankdata(method="average")``): two methods tied for 1st both get 1.5.  For the
reciprocal rank and the rank distribution a tie is resolved by its expectation under a random
tie-break: a tie group spanning positions a..b gives each member reciprocal rank
``mean(1/a, ..., 1/b)`` and credit ``1/(b-a+1)`` at each position a..b.  Reciprocal ranks of an
architecture therefore still sum to ``1 + 1/2 + ... + 1/k``, as without ties.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy import stats

from analysis._stats import ROUND
from analysis.load import hidden_widths
from smartmixed_core.errors import ConfigError


def architecture_order(architectures) -> list[str]:
    """Architectures sorted by depth, then numerically by widths (``"32"``, ``"64-32"``,
    ``"128-64"``; never as strings); blocks ``dataset/architecture`` by dataset first."""
    def key(a: str):
        dataset, _, arch = a.rpartition("/")
        w = hidden_widths(arch)
        return (dataset, len(w), w, a)
    return sorted(set(architectures), key=key)


def label_blocks(df: pd.DataFrame, several_datasets: bool | None = None) -> pd.DataFrame:
    """``df`` with its ``architecture`` column turned into the comparison's *block*: the
    architecture itself, or ``dataset/architecture`` when the runs span several datasets
    (``several_datasets``; by default: when ``df`` holds more than one dataset)."""
    if "dataset" not in df.columns:
        return df
    if several_datasets is None:
        several_datasets = df["dataset"].nunique() > 1
    if not several_datasets:
        return df
    return df.assign(architecture=df["dataset"].astype(str) + "/" + df["architecture"])


SELECTION_RULE = ("highest seed-mean validation accuracy; ties (equal to 10 decimals) broken by "
                  "the lowest seed-mean validation loss of the restored weights, then by the "
                  "lowest config_id (configurations numbered in sorted order of their params)")
"""How one configuration is chosen per (architecture, method); never on the test set."""


def _selection_order(g: pd.DataFrame, select_by: str) -> tuple[pd.DataFrame, int, str]:
    """``g`` (two or more configurations) sorted best first by the tie rule, the number of
    configurations tied on the first key, and the key that decided."""
    acc = g[f"{select_by}_mean"].round(ROUND)
    loss = (g["val_loss_mean"].round(ROUND) if "val_loss_mean" in g.columns
            else pd.Series(np.nan, index=g.index))
    order = g.assign(_acc=-acc, _loss=loss.fillna(np.inf)).sort_values(
        ["_acc", "_loss", "config_id"], kind="stable")
    tied = order[order["_acc"] == order["_acc"].iloc[0]]
    if len(tied) == 1:
        return order, 1, select_by
    same_loss = tied[tied["_loss"] == tied["_loss"].iloc[0]]
    decided = "val_loss" if len(same_loss) == 1 and np.isfinite(same_loss["_loss"].iloc[0]) \
        else "config_id"
    return order, len(tied), decided


def method_scores(configs: pd.DataFrame, metric: str = "test_accuracy",
                  select_by: str = "val_accuracy") -> pd.DataFrame:
    """One row per (architecture, method): the score of its chosen configuration.

    With several datasets the blocks are (dataset, architecture) pairs, labelled
    ``dataset/architecture`` in the ``architecture`` column (:func:`label_blocks`).
    When other params were swept (several configurations per architecture and method), one
    configuration represents the pair by :data:`SELECTION_RULE` (validation accuracy, then
    validation loss ``val_loss_mean`` when the configs carry it, then config_id).  Columns
    besides the score: ``val_accuracy`` (the chosen configuration's seed mean), ``n_configs``
    (how many competed), ``n_tied`` (how many shared the best validation accuracy) and
    ``decided_by`` (the key that decided; ``""`` for a single configuration).

    Raises :class:`ConfigError` (field ``select_by``) when several configurations compete and
    one lacks ``select_by``, or when ``select_by`` is a test metric: the test set never chooses.
    """
    if select_by.startswith("test"):
        raise ConfigError("select_by", f"{select_by!r} is a test metric; configurations are "
                          "chosen on validation metrics only (allowed: val_accuracy)")
    sel = f"{select_by}_mean"
    configs = label_blocks(configs)
    rows = []
    for (arch, method), g in configs.groupby(["architecture", "method"], sort=True):
        if len(g) > 1 and (sel not in g.columns or g[sel].isna().any()):
            missing = len(g) if sel not in g.columns else int(g[sel].isna().sum())
            raise ConfigError("select_by", f"{len(g)} configurations of {method} on {arch} "
                              f"compete but {missing} have no {select_by}; a configuration "
                              f"is chosen on {select_by} only, never on the test set: log "
                              f"{select_by} (a validation split) for every seed run")
        order, n_tied, decided = _selection_order(g, select_by) if len(g) > 1 else (g, 1, "")
        best = order.iloc[0]
        rows.append({"architecture": arch, "method": method, "config_id": best["config_id"],
                     "mean": best[f"{metric}_mean"], "std": best[f"{metric}_std"],
                     "ci_low": best[f"{metric}_ci_low"], "ci_high": best[f"{metric}_ci_high"],
                     "ci_method": best.get(f"{metric}_ci_method", ""),
                     "n_seeds": int(best["n_seeds"]), "n_configs": len(g),
                     "val_accuracy": best.get(sel, np.nan), "n_tied": n_tied,
                     "decided_by": decided})
    return pd.DataFrame(rows)


def rank_methods(configs: pd.DataFrame, metric: str = "test_accuracy",
                 select_by: str = "val_accuracy") -> pd.DataFrame:
    """Per architecture, methods ranked by mean ``metric`` (1 = best, ties averaged).

    Columns: architecture, method, mean, std, n_seeds, rank, ci_low, ci_high, ci_method,
    config_id, n_configs, n_tied, decided_by, val_accuracy (see :func:`method_scores`),
    n_methods (methods run on that architecture), reciprocal_rank (tie-aware).
    """
    scores = method_scores(configs, metric, select_by)
    parts = []
    for arch in architecture_order(scores["architecture"]):
        g = scores[scores["architecture"] == arch].copy()
        g = g[g["mean"].notna()]
        if g.empty:
            continue
        g["rank"] = stats.rankdata(-g["mean"].round(ROUND).to_numpy(), method="average")
        g["n_methods"] = len(g)
        g["reciprocal_rank"] = [float(np.mean([1.0 / k for k in _positions(r, t)]))
                                for r, t in zip(g["rank"], _tie_sizes(g["rank"]), strict=True)]
        parts.append(g.sort_values(["rank", "method"]))
    cols = ["architecture", "method", "mean", "std", "n_seeds", "rank", "ci_low", "ci_high",
            "ci_method", "config_id", "n_configs", "n_tied", "decided_by", "val_accuracy",
            "n_methods", "reciprocal_rank"]
    return pd.concat(parts, ignore_index=True)[cols] if parts else pd.DataFrame(columns=cols)


def _tie_sizes(ranks: pd.Series) -> list[int]:
    return ranks.map(ranks.value_counts()).astype(int).tolist()


def _positions(rank: float, ties: int) -> range:
    first = round(rank - (ties - 1) / 2)
    return range(first, first + ties)


def mean_reciprocal_rank(rankings: pd.DataFrame) -> pd.DataFrame:
    """Per method: ``mrr`` (mean tie-aware reciprocal rank over the architectures it ran on),
    ``mean_rank``, ``n_architectures``; sorted best first.  A method missing on an
    architecture is averaged over fewer architectures (see ``n_architectures``)."""
    g = rankings.groupby("method")
    out = pd.DataFrame({"mrr": g["reciprocal_rank"].mean(), "mean_rank": g["rank"].mean(),
                        "n_architectures": g.size()}).reset_index()
    return out.sort_values(["mrr", "method"], ascending=[False, True]).reset_index(drop=True)


def rank_distribution(rankings: pd.DataFrame) -> pd.DataFrame:
    """Rows = methods, columns = positions 1..k: how often each method finished there
    (ties split evenly over the positions they span, so counts can be fractional)."""
    k = int(rankings["n_methods"].max()) if len(rankings) else 0
    methods = sorted(rankings["method"].unique())
    dist = pd.DataFrame(0.0, index=pd.Index(methods, name="method"), columns=range(1, k + 1))
    for _, g in rankings.groupby("architecture"):
        ties_of = _tie_sizes(g["rank"])
        for method, rank, ties in zip(g["method"], g["rank"], ties_of, strict=True):
            for pos in _positions(rank, ties):
                dist.loc[method, pos] += 1.0 / ties
    return dist


def first_rank_counts(rankings: pd.DataFrame) -> pd.DataFrame:
    """Per method: ``first`` (expected first places, ties split), ``first_outright`` (sole
    best), ``first_shared`` (tied for best)."""
    dist = rank_distribution(rankings)
    ties = rankings.groupby(["architecture", "rank"])["method"].transform("size")
    best = rankings[rankings["rank"] - (ties - 1) / 2 == 1]
    tied = ties[best.index]
    out = pd.DataFrame({"method": dist.index,
                        "first": dist[1].to_numpy() if 1 in dist.columns else 0.0})
    out["first_outright"] = out["method"].map(best[tied == 1]["method"].value_counts()).fillna(0)
    out["first_shared"] = out["method"].map(best[tied > 1]["method"].value_counts()).fillna(0)
    out[["first_outright", "first_shared"]] = out[["first_outright", "first_shared"]].astype(int)
    return out.sort_values(["first", "method"], ascending=[False, True]).reset_index(drop=True)


def top_k_table(rankings: pd.DataFrame, k: int = 3) -> pd.DataFrame:
    """The paper's Table II: per architecture the 1st..kth methods with mean accuracy.

    A cell reads ``"method (0.9733)"``; tied methods share a cell, joined by ``" = "``, and
    the next cell holds the next tie group (dense order); ``""`` where ties left no group.
    """
    rows = []
    for arch, g in rankings.groupby("architecture", sort=False):
        row = {"architecture": arch}
        for pos, (_, tie) in enumerate(g.groupby("rank", sort=True), start=1):
            if pos > k:
                break
            cells = (f"{m} ({v:.4f})" for m, v in zip(tie["method"], tie["mean"], strict=True))
            row[f"rank_{pos}"] = " = ".join(cells)
        rows.append(row)
    cols = ["architecture", *(f"rank_{i}" for i in range(1, k + 1))]
    return pd.DataFrame(rows, columns=cols).fillna("")
