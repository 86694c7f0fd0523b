"""What the baselines chose or learned, for the configurations the comparison chose.

* :func:`perlayer_choices` -- the per-layer search (method ``perlayer``): the activation the
  search picked for every hidden layer of each block's chosen configuration, beside the
  layer's relative depth (the same question SmartMixed's selection answers per unit).
* :func:`shape_table` -- PAU and Swish-beta: each learned coefficient per layer (metrics
  ``shape/layer_<l>/<name>``), seed mean with a Student-t 95% CI.
"""

from __future__ import annotations

import re

import pandas as pd

from analysis._stats import mean_ci_groups
from analysis.load import hidden_widths
from sweeps import schema

_SHAPE = re.compile("^" + re.escape(schema.SHAPE_PREFIX) + r"layer_(\d+)/(\w+)$")
PERLAYER_COLUMNS = ("architecture", "method", "config_id", "layer", "relative_depth",
                    "activation")
SHAPE_COLUMNS = ("method", "architecture", "layer", "coefficient", "n_seeds", "mean",
                 "ci_low", "ci_high")


def _chosen(runs: pd.DataFrame, rankings: pd.DataFrame) -> pd.DataFrame:
    if "config_id" not in rankings.columns:
        return runs.iloc[0:0]
    return runs[runs["config_id"].isin(set(rankings["config_id"]))]


def perlayer_choices(runs: pd.DataFrame, rankings: pd.DataFrame) -> pd.DataFrame:
    """One row per (chosen perlayer configuration, hidden layer)."""
    if "layer_activations" not in runs.columns:
        return pd.DataFrame(columns=list(PERLAYER_COLUMNS))
    chosen = _chosen(runs, rankings)
    chosen = chosen[chosen["method"].str.startswith("perlayer")]
    rows = []
    for r in chosen.drop_duplicates("config_id").itertuples(index=False):
        acts = str(r.layer_activations).split(",")
        depth = len(hidden_widths(r.architecture.rpartition("/")[2])) or len(acts)
        rows += [(r.architecture, r.method, r.config_id, i, i / depth, a)
                 for i, a in enumerate(acts, start=1)]
    out = pd.DataFrame(rows, columns=list(PERLAYER_COLUMNS))
    return out.sort_values(["architecture", "layer"]).reset_index(drop=True)


def shape_table(runs: pd.DataFrame, rankings: pd.DataFrame) -> pd.DataFrame:
    """One row per (method, architecture, layer, coefficient) of the chosen pau/swish_beta
    configurations: the learned value's seed mean and 95% CI."""
    cols = {c: _SHAPE.match(c) for c in runs.columns}
    cols = {c: (int(m.group(1)), m.group(2)) for c, m in cols.items() if m}
    chosen = _chosen(runs, rankings)
    if not cols or chosen.empty:
        return pd.DataFrame(columns=list(SHAPE_COLUMNS))
    long = chosen.melt(id_vars=["method", "architecture", "seed"], value_vars=list(cols),
                       var_name="metric", value_name="value").dropna(subset=["value"])
    long["layer"] = long["metric"].map(lambda c: cols[c][0])
    long["coefficient"] = long["metric"].map(lambda c: cols[c][1])
    keys = ["method", "architecture", "layer", "coefficient"]
    ci = mean_ci_groups(long, keys, "value").rename(columns={"n": "n_seeds"}).reset_index()
    return ci[list(SHAPE_COLUMNS)].sort_values(keys).reset_index(drop=True)
