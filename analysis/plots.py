"""Figures for the report.  Each function returns a ``matplotlib.figure.Figure`` (built
without pyplot, so no global state and no display backend is touched)."""

from __future__ import annotations

import numpy as np
import pandas as pd
from matplotlib import colormaps
from matplotlib.figure import Figure

from analysis.rank import architecture_order
from analysis.selection import activation_order
from smartmixed_core.activations import ACTIVATIONS

_PALETTE = colormaps["tab20"].colors
ACTIVATION_COLORS = {name: _PALETTE[(2 * i) % 20 + (2 * i) // 20]
                     for i, name in enumerate(ACTIVATIONS)}
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


def plot_rank_distribution(dist: pd.DataFrame) -> Figure:
    """Stacked bars: how often each method finished 1st, 2nd, ... (ties split)."""
    if dist.empty:
        return _empty("Rank distribution", "no ranked methods")
    fig = Figure(figsize=(max(5, 0.8 * len(dist) + 2), 3.5), layout="constrained")
    ax = fig.subplots()
    cmap = colormaps["viridis"]
    bottom = np.zeros(len(dist))
    k = len(dist.columns)
    for j, pos in enumerate(dist.columns):
        ax.bar(dist.index, dist[pos], bottom=bottom, label=f"{pos}",
               color=cmap(j / max(k - 1, 1)))
        bottom += dist[pos].to_numpy()
    ax.set_ylabel("architectures")
    ax.set_title("Rank distribution (position 1 = best)")
    ax.legend(title="rank", fontsize="small", ncols=min(k, 7))
    ax.tick_params(axis="x", rotation=30)
    return fig


def plot_accuracy(rankings: pd.DataFrame) -> Figure:
    """Mean test accuracy per architecture and method with 95% bootstrap CIs."""
    if rankings.empty:
        return _empty("Accuracy per architecture", "no data")
    archs = architecture_order(rankings["architecture"])
    methods = sorted(rankings["method"].unique())
    fig = Figure(figsize=(max(6, 0.9 * len(archs) * max(1, len(methods) / 4) + 2), 4),
                 layout="constrained")
    ax = fig.subplots()
    width = 0.8 / len(methods)
    for j, m in enumerate(methods):
        g = rankings[rankings["method"] == m].set_index("architecture").reindex(archs)
        x = np.arange(len(archs)) + (j - (len(methods) - 1) / 2) * width
        lo = (g["mean"] - g["ci_low"]).clip(lower=0).fillna(0)
        hi = (g["ci_high"] - g["mean"]).clip(lower=0).fillna(0)
        ax.errorbar(x, g["mean"], yerr=[lo, hi], fmt="o", ms=4, capsize=2,
                    color=method_color(m), label=m)
    ax.set_xticks(range(len(archs)), archs, rotation=30, ha="right")
    ax.set_ylabel("test accuracy (seed mean, 95% CI)")
    ax.set_title("Accuracy per architecture")
    ax.legend(fontsize="small")
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


def plot_selection(summary: pd.DataFrame) -> Figure:
    """Per configuration, stacked bars of the per-layer selection fractions (seed mean) with
    95% CI whiskers on each segment."""
    if summary.empty:
        return _empty("Selection per layer", "no selection metrics (no selective runs)")
    configs = list(dict.fromkeys(zip(summary["config_id"], summary["architecture"],
                                     summary["method"], strict=True)))
    acts = activation_order(summary["activation"])
    fig = Figure(figsize=(7, 2.8 * len(configs) + 0.5), layout="constrained")
    axes = np.atleast_1d(fig.subplots(len(configs), 1, squeeze=False)[:, 0])
    for ax, (cid, arch, method) in zip(axes, configs, strict=True):
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
        ax.set_xticks(layers, [f"layer {x}" for x in layers])
        ax.set_ylim(0, 1.05)
        ax.set_ylabel("fraction of units")
        ax.set_title(f"{method} [{arch}] (config {cid})", fontsize="medium")
    axes[0].legend(fontsize="small", ncols=min(len(acts), 6), loc="upper center",
                   bbox_to_anchor=(0.5, 1.45))
    return fig


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


def plot_weight_heatmap(groups: pd.DataFrame) -> Figure:
    """Mean connection weight from source-activation units to target-activation units."""
    if groups.empty:
        return _empty("Weights by activation", "no checkpoints with >= 2 selective layers")
    order = activation_order(set(groups["source"]) | set(groups["target"]))
    m = groups.pivot(index="source", columns="target", values="mean_weight")
    m = m.reindex(index=[a for a in order if a in m.index],
                  columns=[a for a in order if a in m.columns])
    fig = Figure(figsize=(1.1 * len(m.columns) + 2.5, 0.9 * len(m) + 1.8), layout="constrained")
    ax = fig.subplots()
    v = float(np.nanmax(np.abs(m.to_numpy()))) or 1.0
    im = ax.imshow(m.to_numpy(), cmap="coolwarm", vmin=-v, vmax=v)
    ax.set_xticks(range(len(m.columns)), m.columns, rotation=30, ha="right")
    ax.set_yticks(range(len(m.index)), m.index)
    for (i, j), val in np.ndenumerate(m.to_numpy()):
        if val == val:
            ax.text(j, i, f"{val:.3g}", ha="center", va="center", fontsize="small")
    ax.set_xlabel("target activation (layer l+1)")
    ax.set_ylabel("source activation (layer l)")
    ax.set_title("Mean weight between neuron groups")
    fig.colorbar(im, ax=ax)
    return fig
