"""Figures for the report.  Each function returns a ``matplotlib.figure.Figure`` (built
without pyplot, so no global state and no display backend is touched)."""

from __future__ import annotations

import numpy as np
import pandas as pd
from matplotlib import colormaps
from matplotlib.figure import Figure

from analysis.rank import architecture_order
from analysis.selection import activation_order
from smartmixed_core.names import ACTIVATION_NAMES

_PALETTE = colormaps["tab20"].colors
ACTIVATION_COLORS = {name: _PALETTE[(2 * i) % 20 + (2 * i) // 20]
                     for i, name in enumerate(ACTIVATION_NAMES)}
"""One colour per registry activation (stable across every plot)."""


def method_color(method: str):
    """``fixed:elu`` takes ELU's colour; SmartMixed is black; other methods grey shades."""
    name = method.split(":", 1)[1] if method.startswith("fixed:") else method
    if name in ACTIVATION_COLORS:
        return ACTIVATION_COLORS[name]
    if method == "smartmixed":
        return "black"
    return str(0.35 + 0.4 * (sum(map(ord, method)) % 100) / 100)  # stable across runs


def _empty(title: str, message: str) -> Figure:
    fig = Figure(figsize=(6, 2.5))
    ax = fig.subplots()
    ax.axis("off")
    ax.set_title(title)
    ax.text(0.5, 0.5, message, ha="center", va="center", wrap=True)
    return fig


def plot_mrr(mrr: pd.DataFrame) -> Figure:
    """Mean reciprocal rank per method (bars)."""
    if mrr.empty:
        return _empty("Mean reciprocal rank", "no ranked methods")
    fig = Figure(figsize=(max(5, 0.8 * len(mrr) + 2), 3.5), layout="constrained")
    ax = fig.subplots()
    ax.bar(mrr["method"], mrr["mrr"], color=[method_color(m) for m in mrr["method"]])
    ax.set_ylabel("MRR (test accuracy ranks)")
    ax.set_ylim(0, 1)
    ax.set_title("Mean reciprocal rank over architectures")
    ax.tick_params(axis="x", rotation=30)
    return fig


RANK_CMAP = "cividis"
"""Sequential, so rank colours read as an order and are never a method's colour."""
MAX_PANEL_COLUMNS = 6


def _grid(fig: Figure, n: int, ncols: int = MAX_PANEL_COLUMNS, **kw) -> list:
    """``n`` axes in a grid of at most ``ncols`` columns (unused cells hidden)."""
    ncols = max(1, min(n, ncols))
    nrows = -(-n // ncols)
    axes = fig.subplots(nrows, ncols, squeeze=False, **kw).ravel()
    for ax in axes[n:]:
        ax.set_visible(False)
    return list(axes[:n])


def plot_rank_distribution(dist: pd.DataFrame) -> Figure:
    """Stacked bars: how often each method finished 1st, 2nd, ... (ties split).  The y axis
    counts blocks (integer ticks); the legend sits outside the bars."""
    from matplotlib.ticker import MaxNLocator

    if dist.empty:
        return _empty("Rank distribution", "no ranked methods")
    fig = Figure(figsize=(max(5, 0.8 * len(dist) + 3), 3.8), layout="constrained")
    ax = fig.subplots()
    cmap = colormaps[RANK_CMAP]
    bottom = np.zeros(len(dist))
    k = len(dist.columns)
    for j, pos in enumerate(dist.columns):
        ax.bar(dist.index, dist[pos], bottom=bottom, label=f"{pos}",
               color=cmap(0.05 + 0.9 * j / max(k - 1, 1)), edgecolor="white", linewidth=0.5)
        bottom += dist[pos].to_numpy()
    ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylabel("architectures (blocks)")
    ax.set_title("Rank distribution (position 1 = best)")
    ax.legend(title="rank", fontsize="small", loc="upper left", bbox_to_anchor=(1.01, 1),
              borderaxespad=0)
    ax.tick_params(axis="x", rotation=30)
    return fig


def plot_accuracy(rankings: pd.DataFrame) -> Figure:
    """Small multiples, one panel per architecture (numeric order): each method's seed-mean
    test accuracy of its chosen configuration with the 95% CI; methods on the x axis, so no
    legend can hide a whisker."""
    if rankings.empty:
        return _empty("Accuracy per architecture", "no data")
    archs = architecture_order(rankings["architecture"])
    methods = sorted(rankings["method"].unique())
    ncols = min(len(archs), MAX_PANEL_COLUMNS if len(methods) > 3 else 2 * MAX_PANEL_COLUMNS)
    nrows = -(-len(archs) // ncols)
    fig = Figure(figsize=(min(18, ncols * (0.35 * len(methods) + 1.2) + 1), 2.6 * nrows + 0.6),
                 layout="constrained")
    axes = _grid(fig, len(archs), ncols)
    x = np.arange(len(methods))
    for ax, arch in zip(axes, archs, strict=True):
        g = rankings[rankings["architecture"] == arch].set_index("method").reindex(methods)
        lo = (g["mean"] - g["ci_low"]).clip(lower=0).fillna(0)
        hi = (g["ci_high"] - g["mean"]).clip(lower=0).fillna(0)
        for j, m in enumerate(methods):
            ax.errorbar(x[j], g["mean"].iloc[j], yerr=[[lo.iloc[j]], [hi.iloc[j]]], fmt="o",
                        ms=4, capsize=2, color=method_color(m))
        ax.set_xticks(x, methods, rotation=60, ha="right", fontsize="x-small")
        ax.set_xlim(-0.6, len(methods) - 0.4)
        ax.set_title(_wrap(arch, 30), fontsize="small")  # long paper nets: two lines
        ax.tick_params(axis="y", labelsize="x-small")
        ax.grid(axis="y", alpha=0.3)
    axes[0].set_ylabel("test accuracy\n(seed mean, 95% CI)", fontsize="small")
    fig.suptitle("Accuracy per architecture (chosen configuration of each method)")
    return fig


def plot_cd_diagram(avg_ranks: pd.Series, nemenyi: pd.DataFrame,
                    n_blocks: int | None = None) -> Figure:
    """Critical-difference diagram (scikit-posthocs) of average ranks and Nemenyi p-values;
    with ``n_blocks`` it also draws the CD bar (``significance.critical_difference``)."""
    import scikit_posthocs as sp

    from analysis.significance import critical_difference

    if len(avg_ranks) < 2 or nemenyi.isna().all().all():
        return _empty("Critical difference diagram",
                      "not computable: needs >= 2 methods on >= 2 complete architectures")
    fig = Figure(figsize=(7, 0.4 * len(avg_ranks) + 1.5), layout="constrained")
    ax = fig.subplots()
    sig = nemenyi.loc[avg_ranks.index, avg_ranks.index].fillna(1.0)
    cd = critical_difference(len(avg_ranks), n_blocks) if n_blocks else float("nan")
    sp.critical_difference_diagram(avg_ranks, sig, ax=ax, cd=cd if cd == cd else None,
                                   color_palette={m: method_color(m) for m in avg_ranks.index})
    ax.set_title("Average rank (Nemenyi, alpha 0.05)")
    return fig


def plot_performance_profile(profile: pd.DataFrame) -> Figure:
    """Performance profiles (Agarwal et al. 2021): fraction of runs above each test accuracy
    threshold, averaged over blocks, with stratified-bootstrap 95% bands."""
    if profile.empty:
        return _empty("Performance profile", "no complete blocks")
    fig = Figure(figsize=(7, 4), layout="constrained")
    ax = fig.subplots()
    for m, g in profile.groupby("method", sort=True):
        color = method_color(m)
        ax.step(g["tau"], g["fraction"], where="post", color=color, label=m)
        ax.fill_between(g["tau"], g["ci_low"], g["ci_high"], step="post", color=color,
                        alpha=0.2)
    ax.set_xlabel("test accuracy threshold tau")
    ax.set_ylabel("fraction of runs with score > tau")
    ax.set_ylim(-0.02, 1.02)
    ax.set_title("Performance profiles (stratified bootstrap 95% bands)")
    ax.legend(fontsize="small")
    return fig


MAX_SELECTION_PANELS = 24
"""Above this many configurations the selection figure shows only the chosen configuration
of each (architecture, method); selection.csv has them all."""


def plot_selection(summary: pd.DataFrame, labels: dict[int, str] | None = None,
                   chosen: set[int] | None = None) -> Figure:
    """Small multiples of stacked per-layer selection fractions (seed mean) with 95% CI
    whiskers: one panel per configuration, titled with its parameters (``labels``), methods
    in columns and architectures in rows.  With more than :data:`MAX_SELECTION_PANELS`
    configurations, only the ``chosen`` ones (one per architecture and method)."""
    if summary.empty:
        return _empty("Selection per layer", "no selection metrics (no selective runs)")
    keys = summary.drop_duplicates("config_id")[["config_id", "architecture", "method"]]
    shown_all = len(keys) <= MAX_SELECTION_PANELS or not chosen
    if not shown_all:
        keys = keys[keys["config_id"].isin(chosen)]
    archs = architecture_order(keys["architecture"])
    keys = keys.assign(_a=keys["architecture"].map(archs.index)).sort_values(
        ["_a", "method", "config_id"])
    methods = sorted(keys["method"].unique())
    ncols = len(methods) if 1 < len(methods) <= MAX_PANEL_COLUMNS else min(3, len(keys))
    nrows = -(-len(keys) // ncols)
    fig = Figure(figsize=(4.6 * ncols, 2.4 * nrows + 1.0), layout="constrained")
    axes = _grid(fig, len(keys), ncols)
    acts = activation_order(summary["activation"])
    for ax, (cid, arch, method) in zip(axes, keys[["config_id", "architecture", "method"]]
                                       .itertuples(index=False), strict=True):
        g = summary[summary["config_id"] == cid]
        layers = sorted(g["layer"].unique())
        bottom = np.zeros(len(layers))
        for a in acts:
            s = g[g["activation"] == a].set_index("layer").reindex(layers)
            mean = s["mean"].fillna(0).to_numpy()
            ax.bar(layers, mean, bottom=bottom, color=ACTIVATION_COLORS.get(a, "grey"),
                   label=a)
            lo = (s["mean"] - s["ci_low"]).clip(lower=0).fillna(0).to_numpy()
            hi = (s["ci_high"] - s["mean"]).clip(lower=0).fillna(0).to_numpy()
            ax.errorbar(layers, bottom + mean, yerr=[lo, hi], fmt="none", ecolor="black",
                        elinewidth=0.8, capsize=2)
            bottom += mean
        ax.set_xticks(layers, [str(x) for x in layers], fontsize="x-small")
        ax.set_ylim(0, 1.05)
        ax.tick_params(axis="y", labelsize="x-small")
        title = (labels or {}).get(int(cid), f"{method} · {arch}")
        ax.set_title(_wrap(title, 48), fontsize="small")
    for ax in axes[::ncols]:
        ax.set_ylabel("fraction of units", fontsize="small")
    handles, names = axes[0].get_legend_handles_labels()
    fig.legend(handles, names, loc="outside lower center", ncols=min(len(acts), 6),
               fontsize="small")
    what = ("every configuration" if shown_all
            else "chosen configuration per architecture and method; all in selection.csv")
    fig.suptitle(f"Selection per hidden layer (x: layer; {what})", fontsize="medium")
    return fig


def _wrap(text: str, width: int) -> str:
    import textwrap

    return "\n".join(textwrap.wrap(text, width)) or text


def plot_depth_trend(summary: pd.DataFrame, trend: pd.DataFrame) -> Figure:
    """Share of each activation against relative depth (networks with >= 2 hidden layers),
    with the mean run-level slope and its Holm-corrected p-value in the legend."""
    summary = summary[~((summary["layer"] == 1) & (summary["relative_depth"] == 1))]
    if summary.empty:
        return _empty("Depth trend", "no selective runs with >= 2 hidden layers")
    fig = Figure(figsize=(7, 4), layout="constrained")
    ax = fig.subplots()
    t = trend.set_index("activation") if not trend.empty else pd.DataFrame()
    for a in activation_order(summary["activation"]):
        g = summary[summary["activation"] == a].groupby("relative_depth")["mean"].mean()
        slope = t["mean_slope"].get(a, np.nan) if len(t) else np.nan
        p = t["p_holm"].get(a, np.nan) if len(t) else np.nan
        label = a if slope != slope else (f"{a} (slope {slope:+.2f}" +
                                          (f", Holm p {p:.2g})" if p == p else ")"))
        ax.plot(g.index, g.to_numpy(), "o-", color=ACTIVATION_COLORS.get(a, "grey"),
                label=label)
    ax.set_xlabel("relative depth (layer / hidden layers)")
    ax.set_ylabel("fraction of units (mean)")
    ax.set_title("Depth trend of selected activations (slope: mean over runs)")
    ax.legend(fontsize="small")
    return fig


def plot_switching(dynamics: pd.DataFrame) -> Figure:
    """Fraction of units still switching choice per phase-1 epoch, by layer (mean over
    configurations and seeds)."""
    if dynamics.empty:
        return _empty("Selection dynamics", "no switched/layer_<l> metrics logged")
    fig = Figure(figsize=(7, 3.5), layout="constrained")
    ax = fig.subplots()
    cmap = colormaps["plasma"]
    layers = sorted(dynamics["layer"].unique())
    for j, layer in enumerate(layers):
        g = dynamics[dynamics["layer"] == layer].groupby("epoch")["mean"].mean()
        ax.plot(g.index, g.to_numpy(), "-o", ms=3, label=f"layer {layer}",
                color=cmap(j / max(len(layers), 1)))
    ax.set_xlabel("epoch (phase 1)")
    ax.set_ylabel("fraction of units switching")
    ax.set_title("Convergence of choices")
    ax.legend(fontsize="small")
    return fig


MIN_CONNECTIONS = 30
"""A heatmap cell averages at least this many connections (and 0.1% of all of them) to be
coloured; fewer would let a handful of weights set the colour scale for thousands."""


def plot_weight_heatmap(groups: pd.DataFrame) -> Figure:
    """Mean connection weight from source-activation units to target-activation units, with
    the number of connections n in every cell.  Cells built from too few connections
    (:data:`MIN_CONNECTIONS`, or under 0.1% of all) are grey and do not set the colour
    scale."""
    if groups.empty:
        return _empty("Weights by activation", "no checkpoints with >= 2 selective layers")
    order = activation_order(set(groups["source"]) | set(groups["target"]))
    m = groups.pivot(index="source", columns="target", values="mean_weight")
    n = groups.pivot(index="source", columns="target", values="n_connections")
    rows = [a for a in order if a in m.index]
    cols = [a for a in order if a in m.columns]
    m, n = m.reindex(index=rows, columns=cols), n.reindex(index=rows, columns=cols).fillna(0)
    few = n.to_numpy() < max(MIN_CONNECTIONS, 0.001 * float(n.to_numpy().sum()))
    values = np.ma.masked_array(m.to_numpy(dtype=float), mask=few | m.isna().to_numpy())
    fig = Figure(figsize=(1.2 * len(cols) + 2.8, 0.9 * len(rows) + 1.9), layout="constrained")
    ax = fig.subplots()
    v = float(np.abs(values).max()) if values.count() else 1.0
    cmap = colormaps["coolwarm"].with_extremes(bad="#dddddd")
    im = ax.imshow(values, cmap=cmap, vmin=-(v or 1.0), vmax=v or 1.0)
    ax.set_xticks(range(len(cols)), cols, rotation=30, ha="right")
    ax.set_yticks(range(len(rows)), rows)
    for (i, j), val in np.ndenumerate(m.to_numpy(dtype=float)):
        count = int(n.iat[i, j])
        if count == 0:
            continue
        text = f"{val:.3g}\nn={count:,}" + ("\n(too few)" if few[i, j] else "")
        ax.text(j, i, text, ha="center", va="center", fontsize="x-small")
    ax.set_xlabel("target activation (layer l+1)")
    ax.set_ylabel("source activation (layer l)")
    ax.set_title("Mean weight between neuron groups (n = connections; grey: too few)",
                 fontsize="medium")
    fig.colorbar(im, ax=ax)
    return fig
