"""The comparison's protocol and its honest headline: budgets, validation resolution, the
tie rule, and a summary in words of what the tests can and cannot say.

>>> trials = load_trials("smartmixed-quick", tracking_uri="sqlite:///mlflow.db")
>>> trial_budgets(trials); validation_resolution(runs)
>>> summary(rep.tables)   # the report's opening paragraph, one sentence per item
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy import stats

from analysis.rank import SELECTION_RULE

ALPHA = 0.05
MAX_N_VAL = 20000


def cell_budgets(trials: pd.DataFrame) -> pd.DataFrame:
    """Trials per (architecture, method): architecture, method, n_trials."""
    if trials.empty:
        return pd.DataFrame(columns=["architecture", "method", "n_trials"])
    return (trials.groupby(["architecture", "method"]).size().rename("n_trials")
            .reset_index())


def trial_budgets(trials: pd.DataFrame) -> pd.DataFrame:
    """Trials (tuning budget) per method: method, n_trials, min_per_block, max_per_block
    (a block: the ``architecture`` column, ``dataset/architecture`` after
    :func:`analysis.rank.label_blocks`).  Every trial counts, also one stopped early: it used
    budget."""
    cols = ["method", "n_trials", "min_per_block", "max_per_block"]
    if trials.empty:
        return pd.DataFrame(columns=cols)
    cells = cell_budgets(trials).groupby("method")["n_trials"]
    out = pd.DataFrame({"n_trials": trials.groupby("method").size(),
                        "min_per_block": cells.min(),
                        "max_per_block": cells.max()}).reset_index()
    return out[cols]


def attach_val_loss(configs: pd.DataFrame, runs: pd.DataFrame,
                    trials: pd.DataFrame) -> pd.DataFrame:
    """``configs`` with ``val_loss_mean``: the seed-mean validation loss of the restored
    weights logged on the trial run(s) its seed runs belong to (the seed runs' own
    ``val_loss`` is the last epoch's, not the restored weights').  NaN when not logged."""
    loss = trials.set_index("trial")["val_loss_mean"] if len(trials) else pd.Series(
        dtype=float)
    loss = loss[~loss.index.duplicated(keep="last")]
    per_config = runs.groupby("config_id")["trial"].agg(lambda t: loss.reindex(
        t.unique()).mean())
    return configs.assign(val_loss_mean=configs["config_id"].map(per_config).astype(float))


def _smallest_denominator(values: np.ndarray) -> int | None:
    """The smallest n <= MAX_N_VAL with every value a multiple of 1/n (float32 tolerance)."""
    for n in range(1, MAX_N_VAL + 1):
        x = values * n
        if np.all(np.abs(x - np.round(x)) <= 1e-6 * n + 1e-9):
            return n
    return None


def validation_resolution(runs: pd.DataFrame) -> pd.DataFrame:
    """Per dataset: n_val, resolution (1/n_val), n_values, source.

    ``n_val`` is a logged ``n_val`` column when the runs carry one; otherwise the smallest n
    that makes every logged ``val_accuracy`` a multiple of 1/n (``source`` says
    "inferred"); the true split size is a multiple of it.
    """
    cols = ["dataset", "n_val", "resolution", "n_values", "source"]
    if "val_accuracy" not in runs.columns:
        return pd.DataFrame(columns=cols)
    datasets = runs["dataset"] if "dataset" in runs.columns else pd.Series("", index=runs.index)
    rows = []
    for ds, g in runs.groupby(datasets, sort=True):
        vals = np.unique(g["val_accuracy"].dropna().to_numpy(float))
        logged = g["n_val"].dropna() if "n_val" in g.columns else pd.Series(dtype=float)
        if len(logged):
            n, source = int(pd.to_numeric(logged).max()), "logged"
        else:
            n = _smallest_denominator(vals) if len(vals) else None
            source = f"inferred from {len(vals)} distinct val_accuracy values"
        rows.append({"dataset": ds, "n_val": n if n else np.nan,
                     "resolution": 1 / n if n else np.nan, "n_values": len(vals),
                     "source": source if n else "unknown"})
    return pd.DataFrame(rows, columns=cols)


def _friedman_floor(n: int, k: int) -> float:
    """The smallest Friedman chi-square p-value N blocks and k methods can give (perfect
    agreement, chi2 = N(k-1))."""
    return float(stats.chi2.sf(n * (k - 1), k - 1))


def _n(count: int, noun: str) -> str:
    return f"{count} {noun}" + ("" if count == 1 else "s")


def _fmt(p: float) -> str:
    return f"{p:.2g}" if p >= 0.001 else "< 0.001"


def _list(items: list[str]) -> str:
    return ", ".join(items) if items else "none"


def _block_kind(rankings: pd.DataFrame) -> str:
    several = rankings["architecture"].astype(str).str.contains("/").any()
    return "dataset × architecture pairs" if several else "architectures"


def _ci_methods(rankings: pd.DataFrame) -> str:
    used = sorted(set(rankings.get("ci_method", pd.Series(dtype=str)).dropna()) - {""})
    return ("seed-mean CIs: " + " and ".join(used) +
            (" (up to 10 seeds)" if used == ["student-t"] else "")) if used else "no seed CIs"


def summary(tables: dict[str, pd.DataFrame], alpha: float = ALPHA) -> list[str]:
    """The report's opening paragraph, one sentence (or two) per item: protocol, budgets,
    what is significant at ``alpha`` and what is not, and the caveats that apply."""
    rankings, friedman = tables["rankings"], tables["friedman"].set_index("test")
    budgets, resolution = tables.get("budgets"), tables.get("validation")
    fr, idav = friedman.loc["friedman"], friedman.loc["iman-davenport"]
    n, k = int(fr["n_blocks"]), int(fr["n_methods"])
    lo, hi = rankings["n_seeds"].min(), rankings["n_seeds"].max()
    seeds = _n(lo, "seed") if lo == hi else f"{lo}–{hi} seeds"
    out = [f"Protocol: for each architecture and method one configuration is chosen on "
           f"validation data ({SELECTION_RULE}); methods are then compared on its seed-mean "
           f"test accuracy over {_n(n, 'complete block')} ({_block_kind(rankings)}) and "
           f"{_n(k, 'method')}, with "
           f"{seeds} per configuration ({_ci_methods(rankings)}). Significance level "
           f"{alpha}; every family of tests is Holm-corrected."]
    if resolution is not None and len(resolution) and resolution["n_val"].notna().any():
        parts = [f"{r.dataset or 'data'}: 1/{int(r.n_val)} = {100 * r.resolution:.2f} points "
                 f"({r.source})" for r in resolution.itertuples() if r.n_val == r.n_val]
        out.append("Validation resolution (one validation sample): " + "; ".join(parts) +
                   ". Configurations closer than this are tied and the tie rule decides "
                   f"({int((rankings['n_tied'] > 1).sum())} of {len(rankings)} "
                   "(architecture, method) choices were ties).")
    if budgets is None or budgets.empty:
        out.append("Budgets: unknown (no trial runs found).")
    else:
        text = ", ".join(f"{r.method} {r.n_trials}" for r in budgets.itertuples())
        if budgets["n_trials"].nunique() > 1:
            out.append(f"Budgets differ (trials per method: {text}): the ranking compares "
                       "best-of-unequal searches and favours the methods searched more.")
        else:
            out.append(f"Budgets: equal, {_n(int(budgets['n_trials'].iloc[0]), 'trial')} per "
                       "method.")
        cells = budgets[["min_per_block", "max_per_block"]].to_numpy()
        if np.nanmin(cells) != np.nanmax(cells):
            out.append(f"Per block the trials range from {int(np.nanmin(cells))} to "
                       f"{int(np.nanmax(cells))}: within a block the methods' budgets differ.")
    if np.isfinite(idav["p_value"]):
        sig = idav["p_value"] < alpha
        out.append(f"Omnibus: Friedman chi2 = {fr['statistic']:.3g} (p = {_fmt(fr['p_value'])}),"
                   f" Iman–Davenport F = {idav['statistic']:.3g} (p = {_fmt(idav['p_value'])})"
                   ": " + ("the methods differ." if sig else
                           "no significant difference among the methods."))
    else:
        out.append(f"Omnibus: not computable ({fr['note']}).")
    control = tables.get("control")
    if control is not None and len(control):
        c = control["control"].iloc[0]
        better = control[control["reject"] & (control["z"] < 0)]["method"].tolist()
        worse = control[control["reject"] & (control["z"] > 0)]["method"].tolist()
        if better or worse:
            out.append(f"Against {c} (Holm): significantly better than {c}: {_list(better)};"
                       f" significantly worse: {_list(worse)}; no significant difference "
                       "for the others.")
        else:
            out.append(f"Against {c} (Holm): no significant difference.")
    elif control is not None:
        out.append("Against a control: not computed (the control method did not run on every "
                   "complete block, or there are fewer than 2 blocks).")
    w = tables.get("wilcoxon")
    if w is not None and len(w):
        sig = w[w["reject"]]
        pairs = [f"{r.method_a} {'>' if r.mean_diff > 0 else '<'} {r.method_b}"
                 for r in sig.itertuples()]
        out.append("Pairwise Wilcoxon (Holm): " + (
            "significant: " + ", ".join(pairs) + "." if pairs else "no significant difference."))
    caveats = []
    if k >= 3 and n >= 2 and _friedman_floor(n, k) >= alpha:
        caveats.append(f"with {n} blocks Friedman's chi-square cannot go below p = "
                       f"{_friedman_floor(n, k):.2g}")
    if w is not None and len(w) and w["n_nonzero"].max() < 6:
        caveats.append("fewer than 6 paired differences: no Wilcoxon test can reach p < 0.05")
    if n <= 10:
        caveats.append(f"{_n(n, 'block')} {'is' if n == 1 else 'are'} few: p-values are "
                       "approximate and power is low, so "
                       "'no significant difference' is not evidence of equality")
    if caveats:
        out.append("Caveat: " + "; ".join(caveats) + ". MRR and rank tables are descriptive.")
    return out
