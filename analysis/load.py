"""Load seed runs back from MLflow: one row per (configuration, seed).

>>> runs = load_runs("smartmixed-quick", tracking_uri="sqlite:///mlflow.db")

Deduplication rule (documented in docs/analysis.md): only FINISHED seed runs count; among
FINISHED runs with the same configuration (every config param) and seed, the one that ended
last is kept.  Retries and ``sweep resume`` can leave FAILED runs and, in the worst case,
several FINISHED copies of the same computation; the newest is the most complete record.
"""

from __future__ import annotations

import json
import re
from typing import TYPE_CHECKING

import pandas as pd

from smartmixed_core.config import USED_BY, uses
from smartmixed_core.errors import ConfigError, first_line
from sweeps import schema, store

if TYPE_CHECKING:
    from mlflow import MlflowClient

DEFAULT_TRACKING_URI = schema.DEFAULT_TRACKING_URI

CONFIG_PARAMS: tuple[str, ...] = schema.CONFIG_PARAMS
"""Params that identify a configuration (``n_params`` is a result, not a choice)."""

BASE_COLUMNS = ("run_id", "sweep", "trial", "seed", "status", "start_time", "end_time")


def client_for(tracking_uri: str | MlflowClient | None) -> MlflowClient:
    """The project's MLflow client (:func:`sweeps.store.client`) for ``tracking_uri``, checked
    first (:func:`sweeps.store.check_tracking`: the store must exist, a server must answer);
    nothing global is changed.  A client given instead of a URI is returned as it is (one
    check serves every read of a report)."""
    if tracking_uri is not None and not isinstance(tracking_uri, str):
        return tracking_uri
    uri = tracking_uri or DEFAULT_TRACKING_URI
    store.check_tracking(uri, existing=True)
    try:
        return store.client(uri)
    except Exception as exc:  # a bad server URL, an unknown scheme, ...
        raise ConfigError("tracking_uri", f"cannot read {uri!r}: {first_line(exc)}") from None


def get_experiment(client, experiment: str):
    """The experiment named ``experiment``; ConfigError when missing or unreadable."""
    try:
        exp = client.get_experiment_by_name(experiment)
    except Exception as exc:  # MLflow raises many types for a bad store/server
        raise ConfigError("tracking_uri", f"cannot read {client.tracking_uri!r}: "
                          f"{first_line(exc)}") from None
    if exp is None:
        try:
            names = sorted(e.name for e in client.search_experiments())
        except Exception:
            names = []
        raise ConfigError("experiment", f"no experiment named {experiment!r}; found: "
                          f"{', '.join(names) or 'none'}")
    return exp


SEARCH_LIMIT = 10_000_000
"""Runs one search may return (``mlflow.search_runs`` pages through them)."""


def _search(client, experiment_id: str, filter_string: str) -> pd.DataFrame:
    """All runs matching ``filter_string``: ``mlflow.search_runs``'s DataFrame (columns
    ``run_id``, ``status``, ``start_time``/``end_time`` as UTC datetimes, ``params.*``,
    ``metrics.*``, ``tags.*``), on ``client``'s store.  ``mlflow.search_runs`` reads the
    process-wide tracking URI: it is set to the client's for the call, then what was there
    is put back (nothing, if nothing was set)."""
    import mlflow

    previous = mlflow.get_tracking_uri() if mlflow.is_tracking_uri_set() else None
    mlflow.set_tracking_uri(client.tracking_uri)
    try:
        return mlflow.search_runs([experiment_id], filter_string=filter_string,
                                  max_results=SEARCH_LIMIT)
    finally:
        mlflow.set_tracking_uri(previous)


def _tag_filter(kind: str, sweep: str | None) -> str:
    text = f"tags.`{schema.TAG_KIND}` = '{kind}'"
    if sweep is not None:
        text += f" AND tags.`{schema.TAG_SWEEP}` = '{sweep}'"
    return text


def load_runs(experiment: str, sweep: str | None = None,
              tracking_uri: str | MlflowClient | None = None) -> pd.DataFrame:
    """FINISHED seed runs of ``experiment`` (optionally one sweep), deduplicated, from
    ``tracking_uri`` (or a client of :func:`client_for`).

    Columns: ``run_id, sweep, trial, seed, status, start_time, end_time`` (UTC datetimes, as
    ``mlflow.search_runs`` gives them), the config params
    (:data:`CONFIG_PARAMS` that were logged; a param a run did not log is ``""``),
    ``config_id`` (same id = same configuration), and every metric by its schema name
    (``test_accuracy``, ``selection/layer_1/relu``, ...; latest value).  ``df.attrs`` holds
    ``n_seed_runs`` (before filtering), ``n_not_finished`` and ``n_duplicates`` (dropped).
    """
    client = client_for(tracking_uri)
    exp = get_experiment(client, experiment)
    raw = _search(client, exp.experiment_id, _tag_filter(schema.KIND_SEED, sweep))
    where = f"experiment {experiment!r}" + (f", sweep {sweep!r}" if sweep else "")
    if raw.empty and sweep is not None:
        names = sweep_names(client, exp.experiment_id)
        if sweep not in names:
            raise ConfigError("sweep", f"no sweep named {sweep!r} in experiment {experiment!r}; "
                              f"found: {', '.join(names) or 'none'}")
    if raw.empty:
        raise ConfigError("experiment", f"no seed runs in {where}")
    n_total = len(raw)
    raw = raw[raw["status"] == "FINISHED"]
    if raw.empty:
        raise ConfigError("experiment", f"no FINISHED seed runs in {where} "
                          f"({n_total} seed runs, none finished)")
    df = _flatten(raw)
    config_cols = [c for c in CONFIG_PARAMS if c in df.columns]
    df = df.sort_values(["end_time", "start_time", "run_id"], na_position="first")
    deduped = df.drop_duplicates(subset=[*config_cols, "seed"], keep="last")
    out = deduped.sort_values([*config_cols, "seed"]).reset_index(drop=True)
    out.insert(len(BASE_COLUMNS), "config_id",
               out.groupby(config_cols, sort=True).ngroup().astype(int))
    out = label_arms(out, arm_keys(client, exp.experiment_id, sweep))
    out.attrs.update(n_seed_runs=n_total, n_not_finished=n_total - len(raw),
                     n_duplicates=len(df) - len(deduped), experiment=experiment, sweep=sweep,
                     tracking_uri=client.tracking_uri, config_columns=config_cols)
    return out


TRIAL_COLUMNS = ("trial", "run_id", "status", "sweep", "dataset", "architecture", "method",
                 "val_loss_mean")


def load_trials(experiment: str, sweep: str | None = None,
                tracking_uri: str | MlflowClient | None = None) -> pd.DataFrame:
    """The trial runs of ``experiment`` (optionally one sweep): one row per trial id (the
    newest run of a trial that was retried), any status: a trial stopped early still used
    budget.  Columns :data:`TRIAL_COLUMNS`; ``val_loss_mean`` is the seed-mean validation
    loss of the restored best weights (NaN when not logged).  Empty when there are none."""
    client = client_for(tracking_uri)
    exp = get_experiment(client, experiment)
    raw = _search(client, exp.experiment_id, _tag_filter(schema.KIND_TRIAL, sweep))
    if raw.empty:
        return pd.DataFrame(columns=list(TRIAL_COLUMNS))
    out = pd.DataFrame({
        "trial": raw.get(f"tags.{schema.TAG_TRIAL}", raw["run_id"]).fillna(raw["run_id"]),
        "run_id": raw["run_id"], "status": raw["status"],
        "sweep": raw.get(f"tags.{schema.TAG_SWEEP}", pd.Series("", index=raw.index)),
        "start_time": raw["start_time"]})
    keys = arm_keys(client, exp.experiment_id, sweep)
    for p in ("dataset", "architecture", "method", *keys):
        out[p] = raw.get(f"params.{p}", pd.Series("", index=raw.index)).fillna("").astype(str)
    out = label_arms(out, keys)
    col = "metrics.val_loss_mean"
    out["val_loss_mean"] = (pd.to_numeric(raw[col], errors="coerce") if col in raw.columns
                            else float("nan"))
    out = out.sort_values("start_time").drop_duplicates(["sweep", "trial"], keep="last")
    return out[list(TRIAL_COLUMNS)].reset_index(drop=True)


def arm_keys(client, experiment_id: str, sweep: str | None) -> list[str]:
    """Method-specific settings that name ``search.per`` cells of the sweep(s) (e.g.
    ``phase2_init``): each of their values is an arm of the comparison of its own."""
    runs = sweep_runs(client, experiment_id, None if sweep is None else [sweep])
    keys: list[str] = []
    for text in runs.get("params.search.per", pd.Series(dtype=str)).dropna():
        try:
            per = json.loads(text)
        except ValueError:
            continue
        keys += [k for k in per if k in USED_BY and k not in keys]
    return keys


def label_arms(df: pd.DataFrame, keys: list[str]) -> pd.DataFrame:
    """``df`` with ``method`` naming the arm: ``smartmixed (reinit)`` for a run whose method
    uses an :func:`arm_keys` setting (its value in brackets), the method alone otherwise."""
    if not keys or df.empty:
        return df
    def label(row: pd.Series) -> str:
        kind = str(row["method"]).split(":")[0]
        vals = [str(row[k]) for k in keys if k in row and row[k] != "" and uses(kind, k)]
        return schema.arm_label(str(row["method"]), vals)
    return df.assign(method=df.apply(label, axis=1))


def _flatten(raw: pd.DataFrame) -> pd.DataFrame:
    """Strip MLflow prefixes, type the columns, keep params as strings."""
    out = pd.DataFrame({
        "run_id": raw["run_id"],
        "sweep": raw.get(f"tags.{schema.TAG_SWEEP}", pd.Series("", index=raw.index)),
        "trial": raw.get(f"tags.{schema.TAG_TRIAL}", raw["run_id"]),
        "seed": pd.to_numeric(raw.get(f"tags.{schema.TAG_SEED}"), errors="coerce"),
        "status": raw["status"],
        "start_time": raw["start_time"],
        "end_time": raw["end_time"],
    })
    if out["seed"].isna().any():
        bad = out.loc[out["seed"].isna(), "run_id"].iloc[0]
        raise ConfigError("experiment", f"seed run {bad} has no integer "
                          f"{schema.TAG_SEED!r} tag")
    out["seed"] = out["seed"].astype(int)
    for p in CONFIG_PARAMS:
        col = f"params.{p}"
        if col in raw.columns:
            out[p] = raw[col].fillna("").astype(str)
    metrics = {c[len("metrics."):]: pd.to_numeric(raw[c], errors="coerce")
               for c in sorted(raw.columns, key=_natural) if c.startswith("metrics.")}
    if "n_params" not in metrics and "params.n_params" in raw.columns:
        metrics["n_params"] = pd.to_numeric(raw["params.n_params"], errors="coerce")
    out = pd.concat([out, pd.DataFrame(metrics, index=raw.index)], axis=1)
    return out.fillna({c: "" for c in ("sweep", "trial")})


def _natural(name: str) -> list:
    """Sort key: ``layer_2`` before ``layer_10`` (``mlflow.search_runs`` orders columns as it
    meets them, which is not stable)."""
    return [int(p) if p.isdigit() else p for p in re.split(r"(\d+)", name)]


def config_columns(runs: pd.DataFrame) -> list[str]:
    """The config param columns present in ``runs`` (in :data:`CONFIG_PARAMS` order)."""
    return [c for c in CONFIG_PARAMS if c in runs.columns]


def hidden_widths(architecture: str) -> tuple[int, ...]:
    """``"64-32"`` -> ``(64, 32)``; empty tuple when not parseable."""
    try:
        return tuple(int(w) for w in str(architecture).split("-"))
    except ValueError:
        return ()


def sweep_runs(client, experiment_id: str, sweeps: list[str] | None) -> pd.DataFrame:
    """Sweep parent runs (newest first), optionally restricted to the named sweeps."""
    df = _search(client, experiment_id, _tag_filter(schema.KIND_SWEEP, None))
    if df.empty:
        return df
    col = f"tags.{schema.TAG_SWEEP}"
    df["sweep"] = df[col] if col in df.columns else ""
    if sweeps is not None:
        df = df[df["sweep"].isin(sweeps)]
    return df.sort_values("start_time", ascending=False)


def sweep_names(client, experiment_id: str) -> list[str]:
    """The sweep names of an experiment (tag ``smartmixed.sweep`` of its sweep runs)."""
    df = sweep_runs(client, experiment_id, None)
    return sorted(set(df["sweep"]) - {""}) if not df.empty else []


BULK_CHUNK = 500
"""Run ids per bulk history query (SQLite allows 32,766 bound variables; 500 keeps the
statements small)."""


def metric_histories(client, run_ids: list[str], keys: list[str], *,
                     runs: pd.DataFrame | None = None) -> pd.DataFrame:
    """Per-step values of ``keys`` for each run: columns run_id, key, step, value.

    With ``runs`` (:func:`load_runs`), a run's history of a key is fetched only when the run
    logged that key (its latest value is in ``runs``): most runs have few of the keys seen in
    any run (a fixed-activation run has no ``switched/*``, a one-layer net one).  Database
    stores (``sqlite:``, ``postgresql:``, ...) answer one select per key for up to
    :data:`BULK_CHUNK` runs on MLflow's ``metrics`` table (through the store's engine);
    a store without an engine but with ``get_metric_history_bulk`` one call per key and
    chunk; a tracking server is asked run by run (``get_metric_history``).
    """
    wanted = {key: _runs_with(run_ids, key, runs) for key in keys}
    store = getattr(getattr(client, "_tracking_client", None), "store", None)
    if getattr(store, "engine", None) is not None:
        return _tidy(_histories_sql(store, wanted))
    bulk = getattr(store, "get_metric_history_bulk", None)
    rows = []
    for key, ids in wanted.items():
        if bulk is not None:
            for i in range(0, len(ids), BULK_CHUNK):
                for m in bulk(ids[i:i + BULK_CHUNK], key, None):
                    rows.append((m.run_id, key, int(m.step), float(m.value), m.timestamp))
            continue
        for run_id in ids:
            for m in client.get_metric_history(run_id, key):
                rows.append((run_id, key, int(m.step), float(m.value), m.timestamp))
    return _tidy(pd.DataFrame(rows, columns=["run_id", "key", "step", "value", "timestamp"]))


def _histories_sql(store, wanted: dict[str, list[str]]) -> pd.DataFrame:
    """The rows of MLflow's ``metrics`` table for each key and its runs, read with one
    SQLAlchemy Core select per key and chunk of runs (through the store's own engine and
    table model): building an ORM entity per value was most of the time at scale."""
    import sqlalchemy as sa
    from mlflow.store.tracking.dbmodels.models import SqlMetric

    t = SqlMetric.__table__
    frames = []
    with store.engine.connect() as con:
        for key, ids in wanted.items():
            for i in range(0, len(ids), BULK_CHUNK):
                q = sa.select(t.c.run_uuid, t.c.key, t.c.step, t.c.value, t.c.timestamp,
                              t.c.is_nan).where(t.c.key == key,
                                                t.c.run_uuid.in_(ids[i:i + BULK_CHUNK]))
                frames.append(pd.DataFrame(con.execute(q).all(),
                                           columns=["run_id", "key", "step", "value",
                                                    "timestamp", "is_nan"]))
    if not frames:
        return pd.DataFrame(columns=["run_id", "key", "step", "value", "timestamp"])
    df = pd.concat(frames, ignore_index=True)
    df["value"] = df["value"].astype(float).where(~df["is_nan"].astype(bool), float("nan"))
    return df.drop(columns="is_nan").astype({"step": int})


def _tidy(df: pd.DataFrame) -> pd.DataFrame:
    # A metric re-logged at the same step (retry): the last write wins.
    df = df.sort_values("timestamp", kind="stable").drop_duplicates(
        ["run_id", "key", "step"], keep="last")
    return df.drop(columns="timestamp").sort_values(["run_id", "key", "step"]).reset_index(
        drop=True)


def _runs_with(run_ids: list[str], key: str, runs: pd.DataFrame | None) -> list[str]:
    if runs is None or key not in runs.columns:
        return list(run_ids)
    have = set(runs.loc[runs[key].notna(), "run_id"])
    return [r for r in run_ids if r in have]
