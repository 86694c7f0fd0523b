"""Selection consistency: which activations the selective runs chose, and how reliably.

Neurons are not aligned across independently initialised seeds, so everything here compares
*per-layer distributions* of choices across seeds, never neuron-by-neuron picks.

>>> selection_summary(runs); selection_consistency(runs); depth_trend(runs)
"""

from __future__ import annotations

import itertools
import re
import warnings

import numpy as np
import pandas as pd
from scipy import stats
from scipy.spatial.distance import jensenshannon

from analysis._stats import mean_ci, std
from analysis.load import hidden_widths
from smartmixed_core.activations import ACTIVATIONS
from sweeps import schema

_SELECTION = re.compile(re.escape(schema.SELECTION_PREFIX) + r"layer_(\d+)/(.+)$")
_SWITCH = re.compile("^" + re.escape(schema.SWITCH_METRIC).replace(r"\{layer\}", r"(\d+)")
                     + "$")
KEYS = ["config_id", "architecture", "method"]


def activation_order(names) -> list[str]:
    """Registry order (``ACTIVATIONS``); names the registry does not know go last."""
    names = set(names)
    known = [a for a in ACTIVATIONS if a in names]
    return known + sorted(names - set(known))


def selection_long(runs: pd.DataFrame) -> pd.DataFrame:
    """One row per (run, layer, activation): fraction and unit count of the final choices.

    Columns: config_id, architecture, method, seed, run_id, layer (1-based), n_layers,
    relative_depth (layer / n_layers, 1 = last hidden layer), width, activation, fraction,
    count (fraction × width, rounded).  An activation missing from a run's layer counts as 0.
    """
    cols = {c: _SELECTION.match(c) for c in runs.columns}
    cols = {c: (int(m.group(1)), m.group(2)) for c, m in cols.items() if m}
    out_cols = [*KEYS, "seed", "run_id", "layer", "n_layers", "relative_depth", "width",
                "activation", "fraction", "count"]
    if not cols:
        return pd.DataFrame(columns=out_cols)
    acts = activation_order(a for _, a in cols.values())
    rows = []
    for _, r in runs.iterrows():
        widths = hidden_widths(r.get("architecture", ""))
        layers = sorted({layer for layer, _ in cols.values()})
        for layer in layers:
            vals = {a: r.get(schema.selection_metric(layer, a), np.nan) for a in acts}
            if all(pd.isna(v) for v in vals.values()):
                continue
            n_layers = len(widths) or max(layers)
            width = widths[layer - 1] if layer <= len(widths) else np.nan
            for a in acts:
                frac = 0.0 if pd.isna(vals[a]) else float(vals[a])
                rows.append({**{k: r[k] for k in KEYS}, "seed": r["seed"],
                             "run_id": r["run_id"], "layer": layer, "n_layers": n_layers,
                             "relative_depth": layer / n_layers, "width": width,
                             "activation": a, "fraction": frac,
                             "count": round(frac * width) if width == width else np.nan})
    return pd.DataFrame(rows, columns=out_cols)


def selection_summary(runs: pd.DataFrame) -> pd.DataFrame:
    """Per (configuration, layer, activation): n_seeds, mean, std and 95% CI (Student-t up
    to 10 seeds, ``ci_method`` names it) of the fraction of units choosing the activation
    (across seeds)."""
    long = selection_long(runs)
    rows = []
    for key, g in long.groupby([*KEYS, "layer", "activation"], sort=False):
        low, high, note, how = mean_ci(g["fraction"])
        rows.append({**dict(zip([*KEYS, "layer", "activation"], key, strict=True)),
                     "relative_depth": g["relative_depth"].iloc[0], "n_seeds": len(g),
                     "mean": g["fraction"].mean(), "std": std(g["fraction"]),
                     "ci_low": low, "ci_high": high, "ci_method": how, "note": note})
    cols = [*KEYS, "layer", "relative_depth", "activation", "n_seeds", "mean", "std",
            "ci_low", "ci_high", "ci_method", "note"]
    out = pd.DataFrame(rows, columns=cols)
    return out.sort_values(["config_id", "layer"], kind="stable").reset_index(drop=True)


def selection_consistency(runs: pd.DataFrame) -> pd.DataFrame:
    """Per (configuration, layer): do the seeds pick the same distribution?

    ``jsd_mean``/``jsd_max``: mean/max pairwise Jensen–Shannon *distance* (base 2, in [0, 1])
    between the seeds' distributions.  ``chi2, dof, p_value``: chi-square test of homogeneity
    of the seeds × activations count table (activations no seed chose are dropped);
    ``min_expected`` flags the usual "expected counts >= 5" condition.  Units of one network
    are trained jointly, so the independence the test assumes holds only approximately.
    """
    long = selection_long(runs)
    rows = []
    for key, g in long.groupby([*KEYS, "layer"], sort=False):
        wide = g.pivot(index="seed", columns="activation", values="fraction")
        counts = g.pivot(index="seed", columns="activation", values="count")
        n = len(wide)
        row = {**dict(zip([*KEYS, "layer"], key, strict=True)), "n_seeds": n, "jsd_mean": np.nan,
               "jsd_max": np.nan, "chi2": np.nan, "dof": np.nan, "p_value": np.nan,
               "min_expected": np.nan, "note": ""}
        if n < 2:
            row["note"] = "one seed: nothing to compare"
            rows.append(row)
            continue
        d = [jensenshannon(p, q, base=2) for p, q in
             itertools.combinations(wide.to_numpy(dtype=float), 2)]
        row.update(jsd_mean=float(np.mean(d)), jsd_max=float(np.max(d)))
        table = counts.loc[:, counts.sum(axis=0) > 0]
        if table.isna().to_numpy().any():
            row["note"] = "layer width unknown: no chi-square"
        elif table.shape[1] < 2:
            row["note"] = "every seed chose a single activation: chi-square undefined"
        else:
            res = stats.chi2_contingency(table.to_numpy(dtype=float), correction=False)
            row.update(chi2=float(res.statistic), dof=int(res.dof), p_value=float(res.pvalue),
                       min_expected=float(res.expected_freq.min()))
            if row["min_expected"] < 5:
                row["note"] = "some expected counts < 5: chi-square approximate"
        rows.append(row)
    return pd.DataFrame(rows, columns=[*KEYS, "layer", "n_seeds", "jsd_mean", "jsd_max",
                                       "chi2", "dof", "p_value", "min_expected", "note"])


def _spearman(x, y) -> float:
    if np.ptp(x) == 0 or np.ptp(y) == 0:
        return float("nan")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return float(stats.spearmanr(x, y).statistic)


def _cluster_bootstrap(g: pd.DataFrame, n_resamples: int, rng) -> tuple[float, float]:
    """95% percentile CI of Spearman's rho, resampling whole runs (a network's layers stay
    together); resamples with constant depth or fraction are dropped."""
    groups = [(d["relative_depth"].to_numpy(float), d["fraction"].to_numpy(float))
              for _, d in g.groupby("run_id")]
    rhos = []
    for _ in range(n_resamples):
        pick = rng.integers(len(groups), size=len(groups))
        rhos.append(_spearman(np.concatenate([groups[i][0] for i in pick]),
                              np.concatenate([groups[i][1] for i in pick])))
    rhos = np.asarray(rhos)
    rhos = rhos[np.isfinite(rhos)]
    if len(rhos) < n_resamples / 2:
        return float("nan"), float("nan")
    return float(np.percentile(rhos, 2.5)), float(np.percentile(rhos, 97.5))


def depth_trend(runs: pd.DataFrame, n_resamples: int = 1999,
                random_state: int = 0) -> pd.DataFrame:
    """Per activation, pooled over architectures and seeds: Spearman correlation between
    relative depth and the fraction choosing it over all (run, layer) points, with a 95%
    cluster-bootstrap CI that resamples runs (a network's layers are not independent).
    Positive rho = deeper layers prefer it (the paper's ELU/SELU claim).

    NaN with a note when depth or the fraction is constant, there are fewer than 3 points,
    or fewer than 2 runs (or most resamples are degenerate) for the CI.
    """
    long = selection_long(runs)
    rng = np.random.default_rng(random_state)
    rows = []
    for act, g in long.groupby("activation", sort=False):
        x, y = g["relative_depth"].to_numpy(float), g["fraction"].to_numpy(float)
        row = {"activation": act, "n_points": len(g), "n_runs": g["run_id"].nunique(),
               "n_architectures": g["architecture"].nunique(), "rho": np.nan,
               "ci_low": np.nan, "ci_high": np.nan, "p_value": np.nan,
               "mean_first_layer": g.loc[g["layer"] == 1, "fraction"].mean(),
               "mean_last_layer": g.loc[g["relative_depth"] == 1, "fraction"].mean(),
               "note": ""}
        if len(g) < 3 or np.ptp(x) == 0 or np.ptp(y) == 0:
            row["note"] = ("fewer than 3 points" if len(g) < 3 else
                           "relative depth is constant" if np.ptp(x) == 0 else
                           "fraction is constant")
        else:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                res = stats.spearmanr(x, y)
            low, high = _cluster_bootstrap(g, n_resamples, rng)
            row.update(rho=float(res.statistic), p_value=float(res.pvalue), ci_low=low,
                       ci_high=high)
            if not np.isfinite(low):
                row["note"] = "too few runs for a bootstrap CI"
        rows.append(row)
    return pd.DataFrame(rows, columns=["activation", "n_points", "n_runs", "n_architectures",
                                       "rho", "ci_low", "ci_high", "p_value",
                                       "mean_first_layer", "mean_last_layer", "note"])


def switch_metric_keys(runs: pd.DataFrame) -> list[str]:
    """The ``switched/layer_<l>`` metric names present in ``runs``."""
    return sorted((c for c in runs.columns if _SWITCH.match(c)),
                  key=lambda c: int(_SWITCH.match(c).group(1)))


def switching_dynamics(histories: pd.DataFrame, runs: pd.DataFrame) -> pd.DataFrame:
    """Per (configuration, layer, epoch): mean and std over seeds of the fraction of units
    that changed choice since the previous epoch (phase 1).  ``histories`` comes from
    :func:`analysis.load.metric_histories` with :func:`switch_metric_keys`."""
    cols = [*KEYS, "layer", "epoch", "n_seeds", "mean", "std"]
    if histories.empty:
        return pd.DataFrame(columns=cols)
    h = histories.merge(runs[["run_id", *KEYS]], on="run_id")
    h["layer"] = h["key"].map(lambda k: int(_SWITCH.match(k).group(1)))
    g = h.groupby([*KEYS, "layer", "step"], sort=True)["value"]
    out = pd.DataFrame({"n_seeds": g.size(), "mean": g.mean(), "std": g.std(ddof=1)})
    return out.reset_index().rename(columns={"step": "epoch"})[cols]
