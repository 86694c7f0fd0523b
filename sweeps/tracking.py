"""MLflow side of a sweep, written with :class:`mlflow.MlflowClient` (thread-safe, no global
active-run state) in the schema of :mod:`sweeps.schema` (docs/mlflow-schema.md).

Runs are found again by their tags, never remembered in memory, which is what makes retries
and ``sweep resume`` idempotent: a seed with a FINISHED run is not trained again, and RUNNING
leftovers of a crashed attempt are closed as FAILED before the seed is retrained.
"""

from __future__ import annotations

import json
import math
import tempfile
import urllib.error
import urllib.request
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from smartmixed_core.errors import ConfigError
from sweeps import schema

if TYPE_CHECKING:
    from mlflow import MlflowClient
    from mlflow.entities import Run

    from smartmixed_core.config import RunConfig
    from smartmixed_core.runner import SeedOutcome

NONFINITE = "non-finite"
"""Prefix of the failure tag of a seed that hit a NaN/inf loss (retries stop there)."""


def normalize_uri(uri: str) -> str:
    """Make a relative ``sqlite:///x.db`` absolute: trial workers run in other folders."""
    if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        return "sqlite:///" + str(Path(uri[len("sqlite:///"):]).resolve())
    return uri


def check_tracking(uri: str) -> None:
    """Fail with one line before any trial starts when ``uri`` cannot be used."""
    if uri.startswith(("http://", "https://")):
        try:
            with urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=5) as resp:
                ok = resp.status == 200
        except (urllib.error.URLError, OSError, ValueError) as exc:
            reason = getattr(exc, "reason", exc)
            raise ConfigError("tracking_uri", f"cannot reach the MLflow tracking server at "
                              f"{uri} ({reason}); start it or pass --tracking-uri") from None
        if not ok:
            raise ConfigError("tracking_uri", f"{uri}/health did not answer 200")
    elif uri.startswith("sqlite:///"):
        folder = Path(uri[len("sqlite:///"):]).parent
        if not folder.is_dir():
            raise ConfigError("tracking_uri", f"folder {folder} of the SQLite store does not exist")
    elif uri.startswith("file:") or "://" not in uri:
        raise ConfigError("tracking_uri", "MLflow 3 refuses folder stores; use "
                          "sqlite:///path/mlflow.db or http://host:port")


def client(uri: str) -> MlflowClient:
    import os

    from mlflow import MlflowClient

    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")

    return MlflowClient(tracking_uri=uri)


def ensure_experiment(c: MlflowClient, name: str, uri: str) -> str:
    """The experiment's id, created (driver only) with an absolute artifact root for SQLite."""
    exp = c.get_experiment_by_name(name)
    if exp is not None:
        return exp.experiment_id
    location = None
    if uri.startswith("sqlite:///"):
        location = (Path(uri[len("sqlite:///"):]).parent / "mlartifacts").resolve().as_uri()
    return c.create_experiment(name, artifact_location=location)


def _filter(**tags: Any) -> str:
    return " and ".join(f"tags.`{k}` = '{v}'" for k, v in tags.items())


def find_runs(c: MlflowClient, experiment_id: str, kind: str, sweep: str,
              trial: str | None = None, seed: int | None = None,
              status: str | None = None) -> list[Run]:
    """Runs of one kind of a sweep (optionally one trial / seed / status)."""
    tags: dict[str, Any] = {schema.TAG_KIND: kind, schema.TAG_SWEEP: sweep}
    if trial is not None:
        tags[schema.TAG_TRIAL] = trial
    if seed is not None:
        tags[schema.TAG_SEED] = seed
    query = _filter(**tags)
    if status is not None:
        query += f" and attributes.status = '{status}'"
    runs: list[Run] = []
    token = None
    while True:
        page = c.search_runs([experiment_id], query, max_results=1000, page_token=token)
        runs += list(page)
        token = page.token
        if not token:
            return runs


def config_params(cfg: RunConfig) -> dict[str, str]:
    """The schema params of ``cfg`` as strings (architecture canonical, None as 'None')."""
    d = cfg.to_dict()
    d["architecture"] = d.pop("arch")
    return {k: str(d[k]) for k in (*schema.SEED_PARAMS, *schema.EXTRA_PARAMS) if k in d}


def log_params(c: MlflowClient, run_id: str, params: dict[str, Any]) -> None:
    """Log the params not logged yet (params are immutable; a retry logs the same ones)."""
    from mlflow.entities import Param

    have = c.get_run(run_id).data.params
    new = [Param(k, str(v)[:6000]) for k, v in params.items() if k not in have]
    for i in range(0, len(new), 100):
        c.log_batch(run_id, params=new[i:i + 100])


def log_metrics(c: MlflowClient, run_id: str, metrics: Iterable[tuple[str, float, int]]) -> None:
    """Log (key, value, step) triples in batches, skipping non-finite values."""
    import time

    from mlflow.entities import Metric

    now = int(time.time() * 1000)
    batch = [Metric(k, float(v), now, int(s)) for k, v, s in metrics
             if v is not None and math.isfinite(float(v))]
    for i in range(0, len(batch), 500):
        c.log_batch(run_id, metrics=batch[i:i + 500])


def create_sweep_run(c: MlflowClient, experiment_id: str, name: str, params: dict[str, Any],
                     spec_yaml: str) -> str:
    """The sweep's parent run (refuses a second sweep of the same name in the experiment)."""
    if find_runs(c, experiment_id, schema.KIND_SWEEP, name):
        raise ConfigError("name", f"a sweep named {name!r} already exists in this experiment; "
                          f"resume it (smartmixed sweep resume {name}) or choose another name "
                          "(--set name=...)")
    run = c.create_run(experiment_id, run_name=name, tags={
        schema.TAG_KIND: schema.KIND_SWEEP, schema.TAG_SWEEP: name})
    log_params(c, run.info.run_id, params)
    c.log_text(run.info.run_id, spec_yaml, schema.ARTIFACT_SPEC)
    return run.info.run_id


def open_trial_run(c: MlflowClient, experiment_id: str, sweep: str, sweep_run_id: str,
                   trial: str, cfg: RunConfig, sampled: dict[str, Any]) -> tuple[str, int]:
    """The trial's run, reopened on retry; returns (run id, last per-epoch step logged)."""
    runs = find_runs(c, experiment_id, schema.KIND_TRIAL, sweep, trial=trial)
    if runs:
        run_id = runs[0].info.run_id
        c.update_run(run_id, status="RUNNING")
        history = c.get_metric_history(run_id, "val_accuracy")
        last = max((m.step for m in history), default=-1)
    else:
        run_id = c.create_run(experiment_id, run_name=trial, tags={
            schema.TAG_KIND: schema.KIND_TRIAL, schema.TAG_SWEEP: sweep, schema.TAG_TRIAL: trial,
            schema.TAG_PARENT: sweep_run_id}).info.run_id
        last = -1
    import os
    import socket

    c.set_tag(run_id, schema.TAG_WORKER, f"{socket.gethostname()}:{os.getpid()}")
    log_params(c, run_id, {**config_params(cfg),
                           **{f"{schema.SAMPLED_PREFIX}{k}": v for k, v in sampled.items()}})
    return run_id, last


def nonfinite_failure(c: MlflowClient, experiment_id: str, sweep: str, trial: str) -> str | None:
    """The reason when an earlier attempt of ``trial`` hit a non-finite loss."""
    for run in find_runs(c, experiment_id, schema.KIND_SEED, sweep, trial=trial, status="FAILED"):
        reason = run.data.tags.get(schema.TAG_STATUS_REASON, "")
        if reason.startswith(NONFINITE):
            return reason
    return None


def finished_seeds(c: MlflowClient, experiment_id: str, sweep: str,
                   trial: str) -> dict[int, dict[str, Any]]:
    """Seed -> result.json summary of the seeds of ``trial`` that already have a FINISHED run."""
    out: dict[int, dict[str, Any]] = {}
    for run in find_runs(c, experiment_id, schema.KIND_SEED, sweep, trial=trial,
                         status="FINISHED"):
        seed = int(run.data.tags[schema.TAG_SEED])
        with tempfile.TemporaryDirectory() as tmp:
            path = c.download_artifacts(run.info.run_id, schema.ARTIFACT_RESULT, tmp)
            out[seed] = json.loads(Path(path).read_text())
    return out


def close_running(c: MlflowClient, runs: Iterable[Run], status: str, reason: str) -> int:
    """Terminate RUNNING ``runs`` with ``status`` and the reason tag; returns how many."""
    n = 0
    for run in runs:
        if run.info.status == "RUNNING":
            c.set_tag(run.info.run_id, schema.TAG_STATUS_REASON, reason)
            c.set_terminated(run.info.run_id, status)
            n += 1
    return n


def start_seed_run(c: MlflowClient, experiment_id: str, sweep: str, trial: str,
                   trial_run_id: str, seed: int, cfg: RunConfig) -> str:
    """A RUNNING seed run; earlier RUNNING runs of the same (trial, seed) become FAILED."""
    stale = find_runs(c, experiment_id, schema.KIND_SEED, sweep, trial=trial, seed=seed,
                      status="RUNNING")
    close_running(c, stale, "FAILED", "superseded: the attempt that ran it crashed; retried")
    run = c.create_run(experiment_id, run_name=f"{trial}-seed{seed}", tags={
        schema.TAG_KIND: schema.KIND_SEED, schema.TAG_SWEEP: sweep, schema.TAG_TRIAL: trial,
        schema.TAG_SEED: str(seed), schema.TAG_PARENT: trial_run_id})
    log_params(c, run.info.run_id, config_params(cfg))
    return run.info.run_id


def seed_metrics(cfg: RunConfig, summary: dict[str, Any],
                 choices: dict[str, list[str]]) -> list[tuple[str, float, int]]:
    """Final, per-epoch and selection metrics of one seed, as (key, value, step)."""
    # Final values one step past the last epoch: val_accuracy is also a per-epoch metric, and
    # MLflow's latest value must be the final (best-restored) one.
    last = max((r["epoch"] for r in summary["history"]), default=-1) + 1
    flat = {k: summary.get(k) for k in schema.FINAL_METRICS}
    if "phase1" in summary:
        flat["phase1_test_accuracy"] = summary["phase1"]["test_accuracy"]
        flat["phase1_val_accuracy"] = summary["phase1"]["val_accuracy"]
    out = [(k, v, last) for k, v in flat.items() if isinstance(v, (int, float))]
    for rec in summary["history"]:
        out += [(k, rec[k], rec["epoch"]) for k in schema.EPOCH_METRICS if k in rec]
        if "tau" in rec:
            out.append((schema.TAU_METRIC, rec["tau"], rec["epoch"]))
        for layer, n in rec.get("changed", {}).items():
            units = cfg.hidden[int(layer.split("_")[1]) - 1]
            out.append((schema.SWITCH_METRIC.format(layer=layer.split("_")[1]), n / units,
                        rec["epoch"]))
    for layer, names in choices.items():
        idx = int(layer.split("_")[1])
        for act in cfg.pool_names:
            out.append((schema.selection_metric(idx, act), names.count(act) / len(names), last))
    return out


def finish_seed_run(c: MlflowClient, run_id: str, cfg: RunConfig, outcome: SeedOutcome) -> None:
    """Log metrics and artifacts of a trained seed, then mark its run FINISHED."""
    from smartmixed_core.runner import save_checkpoint

    summary = outcome.summary
    log_params(c, run_id, {"n_params": summary.get("n_params")})
    log_metrics(c, run_id, seed_metrics(cfg, summary, outcome.choices))
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        (d / schema.ARTIFACT_CHOICES).write_text(json.dumps(outcome.choices))
        (d / schema.ARTIFACT_RESULT).write_text(json.dumps(summary, allow_nan=True))
        save_checkpoint(d / schema.ARTIFACT_CHECKPOINT, cfg, outcome)
        for name in (schema.ARTIFACT_CHOICES, schema.ARTIFACT_RESULT, schema.ARTIFACT_CHECKPOINT):
            c.log_artifact(run_id, str(d / name))
    c.set_terminated(run_id, "FINISHED")
