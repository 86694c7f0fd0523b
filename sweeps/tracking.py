"""MLflow side of a sweep, written with :class:`mlflow.MlflowClient` (thread-safe, no global
active-run state) in the schema of :mod:`sweeps.schema` (docs/mlflow-schema.md).

Runs are found again by their tags, never remembered in memory, which is what makes retries
and ``sweep resume`` idempotent: a seed with a FINISHED run is not trained again, and RUNNING
leftovers of a crashed attempt are closed as FAILED before the seed is retrained.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import socket
import tempfile
import threading
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

from smartmixed_core.config import uses
from smartmixed_core.errors import ConfigError
from sweeps import schema
from sweeps.mlflow_ui import share_trials_view, sweep_note, trial_note, trial_run_name

if TYPE_CHECKING:
    from mlflow import MlflowClient
    from mlflow.entities import Run

    from smartmixed_core.config import RunConfig
    from smartmixed_core.runner import SeedOutcome

NONFINITE = "non-finite"
"""Prefix of the failure tag of a seed that hit a NaN/inf loss (retries stop there)."""


def _filter(tags: dict[str, Any]) -> str:
    """A search filter on the tags that are not None."""
    return " and ".join(f"tags.`{k}` = '{v}'" for k, v in tags.items() if v is not None)


def find_runs(c: MlflowClient, experiment_id: str, kind: str, sweep: str,
              trial: str | None = None, seed: int | None = None,
              status: str | None = None) -> list[Run]:
    """Runs of one kind of a sweep (optionally one trial / seed / status)."""
    query = _filter({schema.TAG_KIND: kind, schema.TAG_SWEEP: sweep, schema.TAG_TRIAL: trial,
                     schema.TAG_SEED: seed})
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
    """The schema params of ``cfg`` as strings (architecture canonical, None as 'None'),
    without the settings its method does not use (a fixed activation has no temperature)."""
    d = cfg.to_dict()
    d["architecture"] = d.pop("arch")
    kind = cfg.parsed_method.kind
    return {k: str(d[k]) for k in schema.CONFIG_PARAMS if uses(kind, k)}


MAX_PARAMS_PER_BATCH, MAX_METRICS_PER_BATCH = 100, 1000
"""MLflow's limits for one ``log_batch`` call (1000 entities in all)."""


def log_params(c: MlflowClient, run_id: str, params: dict[str, Any], lookup: bool = True,
               metrics: Iterable[tuple[str, float, int]] = ()) -> None:
    """Log the params not logged yet (params are immutable; a retry logs the same ones), and
    with them ``metrics`` (see :func:`log_metrics`) in as few calls as MLflow allows.

    ``lookup``: read the run's params first and log only the missing ones; off for a run just
    created, or params whose value cannot change (MLflow accepts a param logged again with the
    same value, and refuses another value)."""
    from mlflow.entities import Metric, Param

    have = c.get_run(run_id).data.params if lookup and params else {}
    todo = [Param(k, str(v)[:6000]) for k, v in params.items() if k not in have]
    now = int(time.time() * 1000)
    batch = [Metric(k, float(v), now, int(s)) for k, v, s in metrics
             if v is not None and math.isfinite(float(v))]
    while todo or batch:
        p, todo = todo[:MAX_PARAMS_PER_BATCH], todo[MAX_PARAMS_PER_BATCH:]
        n = MAX_METRICS_PER_BATCH - len(p)
        c.log_batch(run_id, params=p, metrics=batch[:n])
        batch = batch[n:]


def log_metrics(c: MlflowClient, run_id: str, metrics: Iterable[tuple[str, float, int]]) -> None:
    """Log (key, value, step) triples in batches, skipping non-finite values."""
    log_params(c, run_id, {}, metrics=metrics)


def create_sweep_run(c: MlflowClient, experiment_id: str, name: str, params: dict[str, Any],
                     spec_yaml: str, folder: Path | None = None) -> str:
    """The sweep's parent run (refuses a second sweep of the same name in the experiment),
    tagged with the sweep's ``folder``."""
    if find_runs(c, experiment_id, schema.KIND_SWEEP, name):
        raise ConfigError("name", f"a sweep named {name!r} already exists in this experiment; "
                          f"resume it (smartmixed sweep resume {name}) or choose another name "
                          "(--set name=...)")
    run = c.create_run(experiment_id, run_name=name, tags={
        schema.TAG_KIND: schema.KIND_SWEEP, schema.TAG_SWEEP: name,
        **({} if folder is None else {schema.TAG_FOLDER: str(folder)})})
    c.set_tag(run.info.run_id, schema.TAG_NOTE,
              sweep_note(name, spec_yaml, experiment_id, run.info.run_id, params))
    share_trials_view(c, experiment_id, name, run.info.run_id,
                      params.get("search.metric", "val_accuracy"),
                      params.get("search.mode", "max"))
    log_params(c, run.info.run_id, params, lookup=False)
    c.log_text(run.info.run_id, spec_yaml, schema.ARTIFACT_SPEC)
    return run.info.run_id


def sweep_folders(c: MlflowClient, name: str | None = None) -> dict[str, str]:
    """Sweep name -> folder of the sweep runs in every experiment of the store (newest first
    wins); only ``name`` when given."""
    exps = [e.experiment_id for e in c.search_experiments()]
    flt = _filter({schema.TAG_KIND: schema.KIND_SWEEP, schema.TAG_SWEEP: name})
    folders: dict[str, str] = {}
    for run in c.search_runs(exps, flt, order_by=["attributes.start_time DESC"]) if exps else ():
        sweep = run.data.tags.get(schema.TAG_SWEEP)
        if sweep and sweep not in folders:
            folders[sweep] = run.data.tags.get(schema.TAG_FOLDER, "")
    return folders


class TrialRunInfo(NamedTuple):
    """What :func:`open_trial_run` found."""

    run_id: str
    last_step: int
    """The last per-epoch step logged on the trial run (-1: none)."""
    new: bool
    """The run was created now: this is the trial's first attempt, so it has no seed runs."""


def open_trial_run(c: MlflowClient, experiment_id: str, sweep: str, sweep_run_id: str,
                   trial: str, cfg: RunConfig, sampled: dict[str, Any]) -> TrialRunInfo:
    """The trial's run, reopened on retry (seed runs are created only after it exists)."""
    worker = f"{socket.gethostname()}:{os.getpid()}"
    params = {**config_params(cfg), **{f"{schema.SAMPLED_PREFIX}{k}": v
                                       for k, v in sampled.items()}}
    runs = find_runs(c, experiment_id, schema.KIND_TRIAL, sweep, trial=trial)
    if not runs:
        run_id = c.create_run(experiment_id, run_name=trial_run_name(cfg, sampled, trial), tags={
            schema.TAG_KIND: schema.KIND_TRIAL, schema.TAG_SWEEP: sweep, schema.TAG_TRIAL: trial,
            schema.TAG_PARENT: sweep_run_id, schema.TAG_WORKER: worker,
            schema.TAG_NOTE: trial_note(cfg, sampled)}).info.run_id
        log_params(c, run_id, params, lookup=False)
        return TrialRunInfo(run_id, -1, True)
    run_id = runs[0].info.run_id
    _reopen(c, runs[0])
    history = c.get_metric_history(run_id, schema.epoch_metric("val_accuracy"))
    c.set_tag(run_id, schema.TAG_WORKER, worker)
    log_params(c, run_id, params)
    return TrialRunInfo(run_id, max((m.step for m in history), default=-1), False)


def nonfinite_failure(c: MlflowClient, experiment_id: str, sweep: str, trial: str) -> str | None:
    """The reason when an earlier attempt of ``trial`` hit a non-finite loss."""
    reasons = (run.data.tags.get(schema.TAG_STATUS_REASON, "") for run in
               find_runs(c, experiment_id, schema.KIND_SEED, sweep, trial=trial, status="FAILED"))
    return next((reason for reason in reasons if reason.startswith(NONFINITE)), None)


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


def close_running(c: MlflowClient, runs: Iterable[Run], status: str, reason: str) -> None:
    """Terminate RUNNING ``runs`` with ``status`` and the reason tag."""
    for run in runs:
        if run.info.status == "RUNNING":
            c.set_tag(run.info.run_id, schema.TAG_STATUS_REASON, reason)
            c.set_terminated(run.info.run_id, status)


def _reopen(c: MlflowClient, run: Run) -> None:
    """Set ``run`` RUNNING again and drop the failure reason of an earlier attempt."""
    if schema.TAG_STATUS_REASON in run.data.tags:
        c.delete_tag(run.info.run_id, schema.TAG_STATUS_REASON)
    c.update_run(run.info.run_id, status="RUNNING")


def reopen_seed_run(c: MlflowClient, experiment_id: str, sweep: str, trial: str, seed: int,
                    run_id: str, epoch: int) -> str | None:
    """Continue the seed run ``run_id`` that a mid-run checkpoint (after ``epoch``) belongs to.

    Other RUNNING runs of the same (trial, seed) become FAILED (superseded).  Returns None
    when the run is gone or already FINISHED (the caller starts a new one)."""
    from mlflow.exceptions import MlflowException

    try:
        run = c.get_run(run_id)
    except MlflowException:
        return None
    if run.info.status == "FINISHED" or run.info.lifecycle_stage != "active":
        return None
    stale = [r for r in find_runs(c, experiment_id, schema.KIND_SEED, sweep, trial=trial,
                                  seed=seed, status="RUNNING") if r.info.run_id != run_id]
    close_running(c, stale, "FAILED", "superseded: the attempt that ran it crashed; retried")
    _reopen(c, run)
    c.set_tag(run_id, schema.TAG_RESUMED, str(epoch))
    return run_id


LOST = "lost"
"""Prefix of the failure tag of a trial that the resumed sweep no longer knows."""


def close_lost_trials(c: MlflowClient, experiment_id: str, sweep: str,
                      known: Iterable[str]) -> list[str]:
    """Close the runs of unfinished trials that Ray no longer knows; returns their trial ids.

    After the driver died, Ray resumes from its latest experiment snapshot, which misses
    trials started after it; the sweep samples replacements for them.  A lost trial that had
    finished keeps its FINISHED runs (a complete result, COMPLETE in the Optuna study too).
    An unfinished one has its trial run and seed runs, FINISHED seeds included (so that every
    FINISHED seed run belongs to a FINISHED trial), closed as KILLED ``lost: ...``.
    """
    known = set(known)
    reason = (f"{LOST}: started after Ray's last experiment snapshot, then the driver died; "
              "the resumed sweep ran a replacement trial")
    lost = []
    for run in find_runs(c, experiment_id, schema.KIND_TRIAL, sweep):
        trial = run.data.tags.get(schema.TAG_TRIAL, "")
        if trial in known or run.info.status == "FINISHED" or \
                run.data.tags.get(schema.TAG_STATUS_REASON, "").startswith(LOST):
            continue
        seeds = [r for r in find_runs(c, experiment_id, schema.KIND_SEED, sweep, trial=trial)
                 if r.info.status in ("RUNNING", "FINISHED")]
        for r in (*seeds, run):
            c.set_tag(r.info.run_id, schema.TAG_STATUS_REASON, reason)
            c.set_terminated(r.info.run_id, "KILLED")
        lost.append(trial)
    return lost


def finished_trial_results(c: MlflowClient, experiment_id: str, sweep: str,
                           metric: str) -> dict[str, float]:
    """{trial id: seed-mean ``metric``} of the sweep's FINISHED trial runs."""
    key = f"{metric}_mean"
    return {r.data.tags[schema.TAG_TRIAL]: r.data.metrics[key]
            for r in find_runs(c, experiment_id, schema.KIND_TRIAL, sweep, status="FINISHED")
            if key in r.data.metrics}


def start_seed_run(c: MlflowClient, experiment_id: str, sweep: str, trial: str,
                   trial_run_id: str, seed: int, cfg: RunConfig, first_attempt: bool = False
                   ) -> str:
    """A RUNNING seed run; earlier RUNNING runs of the same (trial, seed) become FAILED
    (``first_attempt``: the trial run is new, so there are none to look for)."""
    if not first_attempt:
        stale = find_runs(c, experiment_id, schema.KIND_SEED, sweep, trial=trial, seed=seed,
                          status="RUNNING")
        close_running(c, stale, "FAILED", "superseded: the attempt that ran it crashed; retried")
    run = c.create_run(experiment_id, run_name=f"seed {seed}", tags={
        schema.TAG_KIND: schema.KIND_SEED, schema.TAG_SWEEP: sweep, schema.TAG_TRIAL: trial,
        schema.TAG_SEED: str(seed), schema.TAG_PARENT: trial_run_id})
    log_params(c, run.info.run_id, config_params(cfg), lookup=False)
    return run.info.run_id


def seed_metrics(cfg: RunConfig, summary: dict[str, Any],
                 choices: dict[str, list[str]]) -> list[tuple[str, float, int]]:
    """Final, per-epoch and selection metrics of one seed, as (key, value, step)."""
    # Final values at the step after the last epoch (the curves are schema.epoch_metric keys);
    # the frozen choices at the step after phase 1, the end of their per-epoch curves.
    last = max((r["epoch"] for r in summary["history"]), default=-1) + 1
    frozen = summary.get("phase1", {}).get("epochs", last)
    flat = {k: summary.get(k) for k in schema.FINAL_METRICS}
    if "phase1" in summary:
        for k in ("test_accuracy", "val_accuracy", "last_val_accuracy", "sampled_val_accuracy"):
            flat[f"phase1_{k}"] = summary["phase1"].get(k)
    out = [(k, v, last) for k, v in flat.items() if isinstance(v, (int, float))]
    for rec in summary["history"]:
        step = rec["epoch"]
        out += [(schema.epoch_metric(k), rec[k], step) for k in (
            *schema.EPOCH_METRICS, *schema.SAMPLED_METRICS, schema.TAU_METRIC) if k in rec]
        for layer, n in rec.get("changed", {}).items():
            idx = int(layer.split("_")[1])
            out.append((schema.SWITCH_METRIC.format(layer=idx), n / cfg.hidden[idx - 1], step))
        for layer, counts in rec.get("selection", {}).items():
            idx, units = int(layer.split("_")[1]), sum(counts.values())
            out += [(schema.selection_metric(idx, act), n / units, step)
                    for act, n in counts.items()]
    for layer, coefs in summary.get("learned_shape", {}).items():
        out += [(schema.shape_metric(int(layer.split("_")[1]), k), v, last)
                for k, v in coefs.items()]
    for layer, names in choices.items():
        idx = int(layer.split("_")[1])
        for act in cfg.pool_names:
            out.append((schema.selection_metric(idx, act), names.count(act) / len(names),
                        frozen))
    return out


def finish_seed_run(c: MlflowClient, run_id: str, cfg: RunConfig, outcome: SeedOutcome) -> None:
    """Log metrics and artifacts of a trained seed, then mark its run FINISHED."""
    from smartmixed_core.runner import save_checkpoint

    summary = outcome.summary
    log_params(c, run_id, {"n_params": summary.get("n_params")}, lookup=False,
               metrics=seed_metrics(cfg, summary, outcome.choices))
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        (d / schema.ARTIFACT_CHOICES).write_text(json.dumps(outcome.choices))
        (d / schema.ARTIFACT_RESULT).write_text(json.dumps(summary, allow_nan=True))
        save_checkpoint(d / schema.ARTIFACT_CHECKPOINT, cfg, outcome)
        c.log_artifacts(run_id, tmp)  # the three files at the artifact root, in one call
    c.set_terminated(run_id, "FINISHED")


SYSTEM_METRICS_ENV = "SMARTMIXED_SYSTEM_METRICS_SECONDS"
"""Sampling interval of the trial runs' system metrics (default 10 s; 0 turns them off)."""


@contextlib.contextmanager
def system_metrics(run_id: str, uri: str, resume: bool = True) -> Iterator[None]:
    """MLflow's own system metrics (``system/cpu_utilization_percentage``, memory, disk,
    network; GPU utilisation and memory where ``pynvml`` is installed) on the run while the
    block runs, sampled every :data:`SYSTEM_METRICS_ENV` seconds; nothing where ``psutil``
    is missing.  ``resume``: continue the steps the run already has (a retried trial).

    The monitor starts one interval into the block: a block shorter than that (a tiny trial)
    would get no sample anyway, and then pays nothing for the monitor (about 8 ms per trial
    on the development VM: starting it, and its last read of the run when it stops)."""
    seconds = float(os.environ.get(SYSTEM_METRICS_ENV, "10") or 0)
    try:
        import psutil  # noqa: F401  (MLflow's monitor needs it)
        from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor
    except ImportError:
        seconds = 0
    if seconds <= 0:
        yield
        return
    started = []

    def start() -> None:
        monitor = SystemMetricsMonitor(run_id, sampling_interval=seconds,
                                       samples_before_logging=1, resume_logging=resume,
                                       tracking_uri=uri)
        monitor.start()
        started.append(monitor)

    timer = threading.Timer(seconds, start)
    timer.daemon = True
    timer.start()
    try:
        yield
    finally:
        timer.cancel()
        timer.join()  # a start under way completes, and is stopped below
        for monitor in started:
            monitor.finish()
