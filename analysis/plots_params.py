"""Figures of the searched parameters, per method: importances and parallel coordinates.
Built without pyplot, as in :mod:`analysis.plots`."""

from __future__ import annotations

import numpy as np
import pandas as pd
from matplotlib import colormaps
from matplotlib.cm import ScalarMappable
from matplotlib.collections import LineCollection
from matplotlib.colors import Normalize
from matplotlib.figure import Figure

from analysis.params import OBJECTIVE, _value_order, short_value
from analysis.plots import _empty, _grid, method_color
from analysis.rank import architecture_order


def plot_param_importances(imp: pd.DataFrame) -> Figure:
    """One panel per method: importance of each searched param (bars sum to 1)."""
    if imp.empty:
        return _empty("Parameter importances", "no method searched >= 2 values of a param "
                      "over >= 3 configurations")
    methods = sorted(imp["method"].unique())
    most = int(imp.groupby("method")["param"].nunique().max())
    fig = Figure(figsize=(min(18, 3.2 * min(len(methods), 4) + 1),
                          (0.3 * most + 1.2) * -(-len(methods) // 4) + 0.6),
                 layout="constrained")
    axes = _grid(fig, len(methods), 4, sharex=True)
    for ax, m in zip(axes, methods, strict=True):
        # Only the params this method searched (a fixed activation has no temperature).
        g = imp[imp["method"] == m].sort_values("importance", ascending=False)
        ax.barh(g["param"], g["importance"], color=method_color(m))
        ax.set_xlim(0, 1)
        ax.invert_yaxis()
        ax.set_title(f"{m} ({int(g['n_configs'].max())} configs)", fontsize="small")
        ax.tick_params(labelsize="x-small")
    fig.supxlabel("importance (optuna, mean decrease impurity; objective: seed-mean val accuracy)",
                  fontsize="small")
    return fig


def _positions(values: pd.Series, param: str) -> tuple[np.ndarray, list[str]]:
    """Axis positions in [0, 1] of a param's values and the tick labels."""
    vals = values.astype(str)
    order = (architecture_order(vals) if param == "architecture" else _value_order(vals))
    index = {v: i for i, v in enumerate(order)}
    pos = vals.map(index).to_numpy(dtype=float) / max(len(order) - 1, 1)
    return pos, order


def plot_parallel_coordinates(table: pd.DataFrame) -> Figure:
    """One panel per method: every configuration a line through its param values (one axis
    per searched param, values in numeric order) ending at its objective, coloured by it."""
    params = list(table.columns[2:-1])
    if table.empty or not params:
        return _empty("Parallel coordinates", "no searched parameters")
    methods = sorted(table["method"].unique())
    norm = Normalize(table[OBJECTIVE].min(), table[OBJECTIVE].max() or 1.0)
    cmap = colormaps["viridis"]
    ncols = min(len(methods), 2)
    fig = Figure(figsize=(min(18, ncols * (1.6 * len(params) + 2.5)),
                          3.4 * -(-len(methods) // ncols) + 0.6), layout="constrained")
    axes = _grid(fig, len(methods), ncols)
    for ax, m in zip(axes, methods, strict=True):
        g = table[table["method"] == m]
        cols = [p for p in params if (g[p].astype(str) != "").any()]
        lo, hi = g[OBJECTIVE].min(), g[OBJECTIVE].max()
        y = np.column_stack([_positions(g[p], p)[0] for p in cols]
                            + [((g[OBJECTIVE] - lo) / ((hi - lo) or 1.0)).to_numpy()])
        order = np.argsort(g[OBJECTIVE].to_numpy(), kind="stable")  # best drawn last
        xs = np.arange(len(cols) + 1)
        ax.add_collection(LineCollection([np.column_stack([xs, y[i]]) for i in order],
                                         colors=cmap(norm(g[OBJECTIVE].to_numpy()[order])),
                                         alpha=0.7, linewidths=1))
        for i, p in enumerate(cols):
            ax.axvline(i, color="grey", lw=0.6)
            _, order = _positions(g[p], p)
            step = max(1, len(order) // 6)
            for k in range(0, len(order), step):
                ax.text(i + 0.03, k / max(len(order) - 1, 1), short_value(order[k]),
                        fontsize="xx-small", va="center")
        ax.axvline(len(cols), color="grey", lw=0.6)
        ax.text(len(cols) + 0.03, 0, f"{lo:.4g}", fontsize="xx-small", va="center")
        ax.text(len(cols) + 0.03, 1, f"{hi:.4g}", fontsize="xx-small", va="center")
        ax.set_xticks(range(len(cols) + 1), [*cols, "val acc"], fontsize="x-small",
                      rotation=20)
        ax.set_yticks([])
        ax.set_ylim(-0.05, 1.05)
        ax.set_xlim(-0.1, len(cols) + 0.5)
        ax.set_title(f"{m} ({len(g)} configurations)", fontsize="small")
    fig.colorbar(ScalarMappable(norm, cmap), ax=axes, label="seed-mean val accuracy",
                 shrink=0.8)
    return fig
