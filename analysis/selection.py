"""Selection consistency: which activations the selective runs chose, and how reliably.

Neurons are not aligned across independently initialised seeds, so everything here compares
*per-layer distributions* of choices across seeds, never neuron-by-neuron picks.

>>> selection_summary(runs); selection_consistency(runs); depth_trend(runs); run_slopes(runs)
"""

from __future__ import annotations

import itertools
import re
import warnings

import numpy as np
import pandas as pd
from scipy import stats
from scipy.spatial.distance import jensenshannon

from analysis._stats import UNIT_INTERVAL, holm, mean_ci_groups
from analysis.load import hidden_widths
from smartmixed_core.names import ACTIVATION_NAMES
from sweeps import schema

_SELECTION = re.compile(re.escape(schema.SELECTION_PREFIX) + r"layer_(\d+)/(.+)$")
_SWITCH = re.compile("^" + re.escape(schema.SWITCH_METRIC).replace(r"\{layer\}", r"(\d+)")
                     + "$")
KEYS = ["config_id", "architecture", "method"]
CONSISTENCY_COLUMNS = [*KEYS, "layer", "n_seeds", "jsd_mean", "jsd_max", "chi2", "dof",
                       "p_value", "p_holm", "reject", "min_expected", "note"]


def activation_order(names) -> list[str]:
    """Registry order (``ACTIVATION_NAMES``); names the registry does not know go last."""
    names = set(names)
    known = [a for a in ACTIVATION_NAMES if a in names]
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
    layers = sorted({layer for layer, _ in cols.values()})
    parts = []
    for layer in layers:  # vectorised over runs: one block of rows per (layer, activation)
        names = {a: schema.selection_metric(layer, a) for a in acts}
        vals = pd.DataFrame({a: runs[c] if c in runs.columns else np.nan
                             for a, c in names.items()}, index=runs.index)
        has = vals.notna().any(axis=1)
        if not has.any():
            continue
        r = runs.loc[has]
        widths = r["architecture"].map(hidden_widths)  # KEYS: the runs have an architecture
        n_layers = widths.map(len).where(widths.map(len) > 0, max(layers))
        width = widths.map(lambda w, k=layer: w[k - 1] if k <= len(w) else np.nan)
        for a in acts:
            frac = vals.loc[has, a].fillna(0.0).astype(float)
            parts.append(pd.DataFrame({
                **{k: r[k] for k in KEYS}, "seed": r["seed"], "run_id": r["run_id"],
                "layer": layer, "n_layers": n_layers, "relative_depth": layer / n_layers,
                "width": width.astype(float), "activation": a, "fraction": frac,
                "count": (frac * width.astype(float)).round()}))
    if not parts:
        return pd.DataFrame(columns=out_cols)
    out = pd.concat(parts)
    # the row order of the former run-by-run loop: run, then layer, then activation
    out["_run"] = out.index
    out["_a"] = out["activation"].map(acts.index)
    out = out.sort_values(["_run", "layer", "_a"], kind="stable")
    return out[out_cols].reset_index(drop=True)


def selection_summary(runs: pd.DataFrame) -> pd.DataFrame:
    """Per (configuration, layer, activation): n_seeds, mean, std and 95% CI (Student-t up
    to 10 seeds, ``ci_method`` names it, cut to [0, 1]) of the fraction of units choosing the
    activation (across seeds)."""
    long = selection_long(runs)
    cols = [*KEYS, "layer", "relative_depth", "activation", "n_seeds", "mean", "std",
            "ci_low", "ci_high", "ci_method", "note"]
    if long.empty:
        return pd.DataFrame(columns=cols)
    keys = [*KEYS, "layer", "activation"]
    ci = mean_ci_groups(long, keys, "fraction", bounds=UNIT_INTERVAL).rename(
        columns={"n": "n_seeds"})
    # groups in first-appearance order (groupby(sort=False)), then sorted stably
    first = long.groupby(keys, sort=False)["relative_depth"].first()
    out = first.to_frame().join(ci).reset_index()[cols]
    return out.sort_values(["config_id", "layer"], kind="stable").reset_index(drop=True)


def selection_consistency(runs: pd.DataFrame, alpha: float = 0.05) -> pd.DataFrame:
    """Per (configuration, layer): do the seeds pick the same distribution?

    ``jsd_mean``/``jsd_max``: mean/max pairwise Jensen–Shannon *distance* (base 2, in [0, 1])
    between the seeds' distributions.  ``chi2, dof, p_value``: chi-square test of homogeneity
    of the seeds × activations count table (activations no seed chose are dropped);
    ``min_expected`` flags the usual "expected counts >= 5" condition.  Units of one network
    are trained jointly, so the independence the test assumes holds only approximately.
    ``p_holm``/``reject``: Holm over every (configuration, layer) test in the table.
    """
    long = selection_long(runs)
    rows = []
    n_acts = long["activation"].nunique()
    # selection_long gives every (run, layer) all activations in one order: a seeds x
    # activations block per (configuration, layer) is a reshape, no pivot needed
    long = long.sort_values([*KEYS, "layer", "seed"], kind="stable")
    for key, idx in long.groupby([*KEYS, "layer"], sort=False).indices.items():
        fractions = long["fraction"].to_numpy(dtype=float)[idx].reshape(-1, n_acts)
        counts = long["count"].to_numpy(dtype=float)[idx].reshape(-1, n_acts)
        n = len(fractions)
        row = dict.fromkeys(CONSISTENCY_COLUMNS, np.nan)
        row.update(zip([*KEYS, "layer"], key, strict=True), n_seeds=n, note="")
        if n < 2:
            row["note"] = "one seed: nothing to compare"
            rows.append(row)
            continue
        d = [jensenshannon(p, q, base=2) for p, q in itertools.combinations(fractions, 2)]
        row.update(jsd_mean=float(np.mean(d)), jsd_max=float(np.max(d)))
        table = counts[:, np.nansum(counts, axis=0) > 0]
        if np.isnan(table).any():
            row["note"] = "layer width unknown: no chi-square"
        elif table.shape[1] < 2:
            row["note"] = "every seed chose a single activation: chi-square undefined"
        else:
            res = stats.chi2_contingency(table, correction=False)
            row.update(chi2=float(res.statistic), dof=int(res.dof), p_value=float(res.pvalue),
                       min_expected=float(res.expected_freq.min()))
            if row["min_expected"] < 5:
                row["note"] = "some expected counts < 5: chi-square approximate"
        rows.append(row)
    out = pd.DataFrame(rows, columns=CONSISTENCY_COLUMNS)
    out["reject"] = False
    holm(out, alpha)
    return out


def _spearman(x, y) -> float:
    """Spearman's rho; NaN when x or y is constant (scipy returns NaN and warns)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return float(stats.spearmanr(x, y).statistic)


def _cluster_bootstrap(g: pd.DataFrame, n_resamples: int, rng) -> tuple[float, float]:
    """95% percentile CI of Spearman's rho, resampling whole runs (a network's layers stay
    together); resamples with constant depth or fraction are dropped.

    A resample is the data with run i repeated k_i times, so instead of concatenating
    copies each point carries the weight k_i: ranks with ties averaged are cumulative
    weights per distinct value, and rho is the weighted Pearson correlation of those ranks,
    the same number as ``spearmanr`` of the concatenated copies, at O(points) per resample."""
    run_ids, point_run = np.unique(g["run_id"].to_numpy(), return_inverse=True)
    ux, ix = np.unique(g["relative_depth"].to_numpy(float), return_inverse=True)
    uy, iy = np.unique(g["fraction"].to_numpy(float), return_inverse=True)

    def ranks(inv, n_unique, w):
        tot = np.bincount(inv, weights=w, minlength=n_unique)
        return (np.cumsum(tot) - (tot - 1) / 2)[inv], int((tot > 0).sum())

    rhos = []
    for _ in range(n_resamples):
        pick = rng.integers(len(run_ids), size=len(run_ids))
        w = np.bincount(pick, minlength=len(run_ids))[point_run].astype(float)
        rx, nx = ranks(ix, len(ux), w)
        ry, ny = ranks(iy, len(uy), w)
        if nx < 2 or ny < 2:
            rhos.append(float("nan"))
            continue
        mx, my = np.average(rx, weights=w), np.average(ry, weights=w)
        dx, dy = rx - mx, ry - my
        rhos.append(float(np.sum(w * dx * dy) / np.sqrt(np.sum(w * dx * dx)
                                                        * np.sum(w * dy * dy))))
    rhos = np.asarray(rhos)
    rhos = rhos[np.isfinite(rhos)]
    if len(rhos) < n_resamples / 2:
        return float("nan"), float("nan")
    return float(np.percentile(rhos, 2.5)), float(np.percentile(rhos, 97.5))


def run_slopes(runs: pd.DataFrame) -> pd.DataFrame:
    """One row per (selective run with >= 2 selective layers, activation): the least-squares
    slope of the fraction choosing the activation against relative depth within that run.

    Columns: run_id, config_id, architecture, method, seed, activation, n_layers, slope.
    A slope of +1 means the share grows by the whole layer from the first to the last layer.
    """
    long = selection_long(runs)
    cols = ["run_id", "config_id", "architecture", "method", "seed", "activation",
            "n_layers", "slope"]
    rows = []
    for (run_id, act), g in long.groupby(["run_id", "activation"], sort=False):
        x, y = g["relative_depth"].to_numpy(float), g["fraction"].to_numpy(float)
        if len(g) < 2 or np.ptp(x) == 0:
            continue
        slope = float(np.sum((x - x.mean()) * (y - y.mean())) / np.sum((x - x.mean()) ** 2))
        first = g.iloc[0]
        rows.append({"run_id": run_id, "config_id": first["config_id"],
                     "architecture": first["architecture"], "method": first["method"],
                     "seed": first["seed"], "activation": act, "n_layers": len(g),
                     "slope": slope})
    return pd.DataFrame(rows, columns=cols)


DEPTH_COLUMNS = ["activation", "n_runs", "n_one_layer_runs", "n_architectures", "mean_slope",
                 "slope_ci_low", "slope_ci_high", "t", "p_value", "p_holm", "reject", "rho",
                 "rho_ci_low", "rho_ci_high", "mean_first_layer", "mean_last_layer", "note"]


def depth_trend(runs: pd.DataFrame, n_resamples: int = 1999, random_state: int = 0,
                alpha: float = 0.05) -> pd.DataFrame:
    """Per activation: does its share grow with depth?  Tested at the run level.

    The unit of analysis is the run (one trained network): each selective run with >= 2
    selective layers gives one slope (:func:`run_slopes`), and a one-sample t-test asks
    whether the mean slope over runs is 0 (``t``, ``p_value``, 95% t interval
    ``slope_ci_low/high``); ``p_holm``/``reject`` Holm-correct over the activations.
    Layers of one network are never treated as independent points.  Runs with a single
    selective layer carry no depth information and are left out (``n_one_layer_runs``), so a
    one-hidden-layer net never counts as both first and last layer.

    Descriptive: ``rho``, Spearman's correlation of (relative depth, fraction) over the
    (run, layer) points of those runs, with a 95% bootstrap CI that resamples whole runs;
    ``mean_first_layer``/``mean_last_layer``, the mean share in the first and the last hidden
    layer.  Positive slope = deeper layers prefer the activation (the paper's ELU/SELU claim).
    """
    long = selection_long(runs)
    layers = long.groupby("run_id")["layer"].nunique()
    multi = long[long["run_id"].isin(layers[layers >= 2].index)]
    n_one = int((layers < 2).sum())
    slopes = run_slopes(runs)
    rng = np.random.default_rng(random_state)
    rows = []
    for act in activation_order(long["activation"]):
        g = multi[multi["activation"] == act]
        s = slopes.loc[slopes["activation"] == act, "slope"].to_numpy(float)
        row = dict.fromkeys(DEPTH_COLUMNS, np.nan)
        row.update(activation=act, n_runs=len(s), n_one_layer_runs=n_one,
                   n_architectures=g["architecture"].nunique(), reject=False, note="",
                   mean_first_layer=g.loc[g["layer"] == 1, "fraction"].mean(),
                   mean_last_layer=g.loc[g["relative_depth"] == 1, "fraction"].mean())
        if len(s) == 0:
            row["note"] = "no run with >= 2 selective layers"
        else:
            row["mean_slope"] = float(s.mean())
            if len(s) < 2:
                row["note"] = "one run: no test"
            elif np.ptp(s) == 0:
                row["note"] = "every run has the same slope: t-test undefined"
            else:
                res = stats.ttest_1samp(s, 0.0)
                ci = res.confidence_interval(0.95)
                row.update(t=float(res.statistic), p_value=float(res.pvalue),
                           slope_ci_low=float(ci.low), slope_ci_high=float(ci.high))
            x, y = g["relative_depth"].to_numpy(float), g["fraction"].to_numpy(float)
            row["rho"] = _spearman(x, y)
            if np.isfinite(row["rho"]) and len(s) >= 2:
                row["rho_ci_low"], row["rho_ci_high"] = _cluster_bootstrap(g, n_resamples, rng)
        rows.append(row)
    out = pd.DataFrame(rows, columns=DEPTH_COLUMNS)
    holm(out, alpha)
    out["reject"] = out["reject"].astype(bool)
    return out


def switch_metric_keys(runs: pd.DataFrame) -> list[str]:
    """The ``switched/layer_<l>`` metric names present in ``runs``."""
    return sorted((c for c in runs.columns if _SWITCH.match(c)),
                  key=lambda c: int(_SWITCH.match(c).group(1)))


def switching_dynamics(histories: pd.DataFrame, runs: pd.DataFrame) -> pd.DataFrame:
    """Per (configuration, layer, epoch): mean and std over seeds of the fraction of units
    that changed choice since the previous epoch (phase 1).  ``histories`` comes from
    :func:`analysis.load.metric_histories` with :func:`switch_metric_keys`."""
    cols = [*KEYS, "layer", "epoch", "n_seeds", "mean", "std"]
    if not histories.empty:  # other keys (val_loss, tau, ...) are not switching fractions
        histories = histories[histories["key"].map(lambda k: bool(_SWITCH.match(str(k))))]
    if histories.empty:
        return pd.DataFrame(columns=cols)
    h = histories.merge(runs[["run_id", *KEYS]], on="run_id")
    h["layer"] = h["key"].map(lambda k: int(_SWITCH.match(k).group(1)))
    g = h.groupby([*KEYS, "layer", "step"], sort=True)["value"]
    out = pd.DataFrame({"n_seeds": g.size(), "mean": g.mean(), "std": g.std(ddof=1)})
    return out.reset_index().rename(columns={"step": "epoch"})[cols]
