"""What the searched parameters did: configuration labels, Optuna parameter importances and
the table behind the parallel-coordinates plot, per method.

>>> imp = param_importances(configs, runs)        # method, param, importance, n_configs
>>> labels = config_labels(runs)                  # config_id -> "smartmixed · 64-32 · lr=0.001"

Importances come from Optuna's mean-decrease-impurity evaluator (``optuna.importance``, a
scikit-learn random forest, fixed seed) run on a
study built from the configurations (one ``FrozenTrial`` per configuration: its varying
params as categorical values, its seed-mean validation accuracy, the selection metric, as
the objective), so it reads what the sweep logged, not a live search.
"""

from __future__ import annotations

import math

import pandas as pd

from analysis.load import config_columns

OBJECTIVE = "val_accuracy_mean"
"""What a configuration scored: the seed-mean validation accuracy (the selection metric)."""
IMPORTANCE_COLUMNS = ["method", "param", "importance", "n_configs", "evaluator"]
EVALUATOR = "optuna mean decrease impurity"
"""Optuna's ``MeanDecreaseImpurityImportanceEvaluator`` (a scikit-learn random forest, 64
trees, fixed seed).  Its fANOVA evaluator took minutes on 288 configurations x 3 params;
this one well under a second, and both rank a param that decides the score first."""


def searched_params(runs: pd.DataFrame) -> list[str]:
    """Config columns that vary within at least one method (``method`` itself excluded)."""
    by_method = runs.groupby("method")
    return [c for c in config_columns(runs)
            if c != "method" and (by_method[c].nunique() > 1).any()]


def short_value(value: object) -> str:
    """A param as logged (a string), numbers to 4 significant digits: ``0.0006018``."""
    try:
        number = float(str(value))
    except ValueError:
        return str(value)
    return str(value) if number.is_integer() else f"{number:.4g}"


def config_labels(runs: pd.DataFrame) -> dict[int, str]:
    """``config_id`` -> ``"method · architecture · p=v, ..."`` with the params that vary in
    the analysed runs (a param a method does not use is left out)."""
    extra = [c for c in searched_params(runs) if c != "architecture"]
    first = runs.drop_duplicates("config_id").set_index("config_id")
    out = {}
    for cid, row in first.iterrows():
        kv = ", ".join(f"{c}={short_value(row[c])}" for c in extra if str(row[c]) != "")
        out[int(cid)] = " · ".join(x for x in (row["method"], row["architecture"], kv) if x)
    return out


def _value_order(values) -> list[str]:
    """Distinct values, numerically sorted when they all parse as numbers."""
    vals = sorted(set(map(str, values)))
    try:
        return sorted(vals, key=float)
    except ValueError:
        return vals


def param_table(configs: pd.DataFrame, runs: pd.DataFrame) -> pd.DataFrame:
    """One row per configuration: method, config_id, the searched params (strings) and the
    objective (:data:`OBJECTIVE`); the data of the parallel-coordinates plot."""
    params = searched_params(runs)
    cols = ["method", "config_id", *params, OBJECTIVE]
    if OBJECTIVE not in configs.columns or configs.empty:
        return pd.DataFrame(columns=cols)
    first = runs.drop_duplicates("config_id").set_index("config_id")[params]
    out = configs[["method", "config_id", OBJECTIVE]].join(first, on="config_id")
    return out[cols].dropna(subset=[OBJECTIVE]).reset_index(drop=True)


def param_importances(configs: pd.DataFrame, runs: pd.DataFrame,
                      seed: int = 0) -> pd.DataFrame:
    """Per method, the mean-decrease-impurity importance (:data:`EVALUATOR`) of each
    searched param that took ≥ 2 values for it (importances of a method sum to 1).
    Methods with fewer than 3 scored configurations or a constant objective get no rows."""
    import optuna
    from optuna.distributions import CategoricalDistribution
    from optuna.importance import MeanDecreaseImpurityImportanceEvaluator
    from optuna.trial import create_trial

    table = param_table(configs, runs)
    rows = []
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    for method, g in table.groupby("method", sort=True):
        params = [c for c in table.columns[2:-1]
                  if g[c].astype(str).replace("", pd.NA).dropna().nunique() > 1]
        if len(g) < 3 or not params or g[OBJECTIVE].nunique() < 2:
            continue
        dists = {p: CategoricalDistribution(_value_order(g[p])) for p in params}
        study = optuna.create_study(direction="maximize")
        for _, r in g.iterrows():
            study.add_trial(create_trial(params={p: str(r[p]) for p in params},
                                         distributions=dists, value=float(r[OBJECTIVE])))
        imp = optuna.importance.get_param_importances(
            study, evaluator=MeanDecreaseImpurityImportanceEvaluator(seed=seed), normalize=True)
        rows += [{"method": method, "param": p, "importance": float(v), "n_configs": len(g),
                  "evaluator": EVALUATOR} for p, v in imp.items()
                 if not math.isnan(v)]
    return pd.DataFrame(rows, columns=IMPORTANCE_COLUMNS)
