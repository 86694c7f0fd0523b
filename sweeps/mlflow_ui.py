"""What MLflow's UI shows of a sweep (docs/mlflow-schema.md): run names and descriptions a
reader understands, and a shared view of the sweep's trials (columns, order) to open the UI
on."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from sweeps import schema

if TYPE_CHECKING:
    from mlflow import MlflowClient

    from smartmixed_core.config import RunConfig


def describe(params: dict[str, Any]) -> str:
    """A trial's sampled values as short text, the method left out (it leads the name):
    ``digits, 64-32, lr=0.00123, temperature=0.3``."""
    parts = []
    for key, value in params.items():
        if key == "method":
            continue
        if isinstance(value, float):
            value = f"{value:.3g}"
        parts.append(str(value) if key in ("architecture", "arch", "dataset") else
                     f"{key}={value}")
    return ", ".join(parts)


def trial_run_name(cfg: RunConfig, sampled: dict[str, Any], trial: str) -> str:
    """``smartmixed · digits · 64-32 · lr=0.00123 · 5130616b``: what the runs table shows,
    the distinguishing parts first (the table cuts long names)."""
    rest = describe({k: v for k, v in sampled.items()
                     if k not in ("dataset", "architecture", "arch")})
    return " · ".join(p for p in (cfg.method, cfg.dataset, cfg.arch, rest, trial) if p)


def trial_note(cfg: RunConfig, sampled: dict[str, Any]) -> str:
    """The trial run's description (markdown): what it is and what was searched (its
    configuration is the run's Parameters table)."""
    searched = ", ".join(f"`{k}`" for k in sampled) or "nothing (a fixed configuration)"
    return (f"**{cfg.method}** on **{cfg.dataset}**, architecture **{cfg.arch}**, trained once "
            f"per seed of the sweep (the seed runs below it).\n\nSampled by the search: "
            f"{searched} (as `sampled.*` parameters; the others are what they resolve to). "
            "Final metrics `*_mean`/`*_std` are over seeds, of each seed's restored weights; "
            "the `epoch/*` curves are seed means per epoch.\n")


def ui_link(experiment_id: str, view: str | None = None) -> str:
    """The runs table of an experiment in MLflow's UI (after the server's address), with the
    shared view ``view`` (:func:`share_trials_view`).  MLflow 3.17's UI takes an experiment's
    kind from the ``workflowType`` URL parameter or from the browser's last choice, not from
    the ``mlflow.experimentKind`` tag: without it a fresh browser opens the GenAI pages."""
    link = f"#/experiments/{experiment_id}/runs?workflowType=machine_learning"
    return link + (f"&viewStateShareKey={view}" if view else "")


VIEW_TAG = "mlflow.sharedViewState."
"""Experiment tags MLflow's UI reads shared runs-table views from (its "Share" button writes
them; the UI reads plain JSON as well as its own compressed form)."""


def share_trials_view(c: MlflowClient, experiment_id: str, sweep: str, key: str,
                      metric: str = "val_accuracy", mode: str = "max") -> None:
    """A view of the sweep's trial runs for the UI, under ``key``: one row per trial, best
    first, with method, dataset, architecture and the seed-mean results as columns (MLflow's
    default columns are Dataset/Source/Models, all empty here)."""
    columns = [f"params.`{p}`" for p in ("method", "dataset", "architecture")] + [
        f"metrics.`{m}`" for m in dict.fromkeys((f"{metric}_mean", "val_accuracy_mean",
                                                 "val_accuracy_std", "test_accuracy_mean",
                                                 "n_seeds"))]
    trials = (f"tags.`{schema.TAG_SWEEP}` = '{sweep}' AND "
              f"tags.`{schema.TAG_KIND}` = '{schema.KIND_TRIAL}'")
    state = {"searchFilter": trials,
             "orderByKey": f"metrics.`{metric}_mean`", "orderByAsc": mode == "min",
             "selectedColumns": columns}
    c.set_experiment_tag(experiment_id, VIEW_TAG + key, json.dumps(state))


def sweep_note(name: str, spec_yaml: str, experiment_id: str, run_id: str,
               params: dict[str, Any]) -> str:
    """The sweep run's description (markdown): how to read the sweep, and its spec."""
    uri = params.get("tracking_uri")
    where = f" --tracking-uri {uri}" if uri else ""
    return (f"Sweep **{name}**: every trial run below is one configuration, trained once per "
            "seed (its seed runs). Configurations are chosen on validation data, never on the "
            f"test set. [Its trials, best first]({ui_link(experiment_id, run_id)}). Compare "
            "the methods with "
            f"`smartmixed analyze --experiment {params.get('experiment', '')} --sweep {name}"
            f"{where} --out report`: the report is also logged here, under the artifacts' "
            f"`report/` folder.\n\n```yaml\n{spec_yaml}```\n")
