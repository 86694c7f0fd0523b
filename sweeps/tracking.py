"""MLflow side of a sweep, written with :class:`mlflow.MlflowClient` (thread-safe, no global
active-run state) in the schema of :mod:`sweeps.schema` (docs/mlflow-schema.md).

Runs are found again by their tags, never remembered in memory, which is what makes retries
and ``sweep resume`` idempotent: a seed with a FINISHED run is not trained again, and RUNNING
leftovers of a crashed attempt are closed as FAILED before the seed is retrained.
"""

from __future__ import annotations

import functools
import json
import math
import os
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple
from urllib.parse import quote, unquote

from smartmixed_core.config import uses
from smartmixed_core.errors import ConfigError
from sweeps import schema

if TYPE_CHECKING:
    from mlflow import MlflowClient
    from mlflow.entities import Run

    from smartmixed_core.config import RunConfig
    from smartmixed_core.runner import SeedOutcome

NONFINITE = "non-finite"
"""Prefix of the failure tag of a seed that hit a NaN/inf loss (retries stop there)."""


SQLITE = "sqlite:///"


def sqlite_path(uri: str) -> Path | None:
    """The database file of a ``sqlite:///path`` URI, percent-decoded as SQLAlchemy reads it
    (None for any other URI, and for an in-memory database)."""
    if not uri.startswith(SQLITE):
        return None
    path = unquote(uri[len(SQLITE):])
    return Path(path) if path and path != ":memory:" else None


def normalize_uri(uri: str) -> str:
    """Make a relative ``sqlite:///x.db`` absolute: trial workers run in other folders."""
    path = sqlite_path(uri)
    if path is None or path.is_absolute():
        return uri
    return SQLITE + quote(str(path.resolve()))


def use_wal(uri: str) -> bool:
    """Switch a SQLite store to write-ahead logging (a setting kept in the file): a commit then
    costs one append instead of rewriting a journal, and readers never block the trials'
    writers.  Best effort (False when the file is busy or not SQLite); readers need no change
    (``mlflow ui`` included).  While a sweep runs, its latest writes sit in ``mlflow.db-wal``
    (with the index ``mlflow.db-shm``) beside the store; :func:`fold_wal` ends that."""
    return _pragma(uri, "journal_mode=WAL") == "wal"


def fold_wal(uri: str) -> bool:
    """After a sweep: close this process's pooled connections to a SQLite store and switch it
    back to a rollback journal, which moves the write-ahead log into ``mlflow.db`` and removes
    ``mlflow.db-wal`` and ``mlflow.db-shm``, so the database file alone holds every run.
    False where that did not happen (not SQLite, or another process, such as ``mlflow ui``,
    still has the store open: its last connection to close removes the files)."""
    path = sqlite_path(uri)
    if path is None:
        return False
    close_stores()
    return _pragma(uri, "journal_mode=DELETE") == "delete"


def close_stores() -> None:
    """Close this process's pooled connections to SQL tracking stores.  MLflow keeps one
    engine per store for the life of the process, and the console exits without closing
    them, so a SQLite store in write-ahead mode would keep its ``-wal`` and ``-shm`` files
    beside it; closed, SQLite removes them (when no other process has the store open).
    The next call through a client opens a new connection."""
    import sys

    store_module = sys.modules.get("mlflow.store.tracking.sqlalchemy_store")
    if store_module is None:  # no SQL store was opened by this process
        return
    for engine in list(getattr(store_module.SqlAlchemyStore, "_engine_map", {}).values()):
        engine.dispose()


def _pragma(uri: str, pragma: str) -> str | None:
    """The first value ``PRAGMA <pragma>`` returns on a SQLite store (None: not SQLite, busy)."""
    import sqlite3
    from contextlib import closing

    path = sqlite_path(uri)
    if path is None or not path.is_file():
        return None
    try:
        with closing(sqlite3.connect(path, timeout=5.0)) as con:
            row = con.execute(f"PRAGMA {pragma}").fetchone()
    except sqlite3.Error:
        return None
    return str(row[0]).lower() if row else None


def check_tracking(uri: str) -> None:
    """Fail with one line before any trial starts when ``uri`` cannot be used."""
    if uri.startswith(("http://", "https://")):
        from sweeps.redact import credentials

        bare = credentials(uri)[0]  # /health needs no login; urllib cannot parse user:pass@
        try:
            with urllib.request.urlopen(bare.rstrip("/") + "/health", timeout=5) as resp:
                ok = resp.status == 200
        except (urllib.error.URLError, OSError, ValueError) as exc:
            reason = getattr(exc, "reason", exc)
            raise ConfigError("tracking_uri", f"cannot reach the MLflow tracking server at "
                              f"{bare} ({reason}); start it or pass --tracking-uri") from None
        if not ok:
            raise ConfigError("tracking_uri", f"{bare}/health did not answer 200")
    elif (path := sqlite_path(uri)) is not None:
        folder = path.parent
        if not folder.is_dir():
            raise ConfigError("tracking_uri", f"folder {folder} of the SQLite store does not exist")
    elif uri.startswith("file:") or "://" not in uri:
        raise ConfigError("tracking_uri", "MLflow 3 refuses folder stores; use "
                          "sqlite:///path/mlflow.db or http://host:port")


OUTAGE_ENV = "SMARTMIXED_TRACKING_OUTAGE_SECONDS"
"""How long one tracking call keeps retrying while the MLflow server is unreachable."""
DEFAULT_OUTAGE_SECONDS = 1800.0
MAX_RETRY_WAIT = 15.0
"""Longest pause between two attempts: writes resume within ~20 s of the server's return."""
# MLflow's own HTTP retries (defaults 7 retries, backoff factor 2: ~4 min, pauses up to 2 min)
# are shortened so that an outage reaches the loop below within seconds; users' values win.
_MLFLOW_HTTP_DEFAULTS = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "3",
                         "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1"}


def outage_seconds() -> float:
    """``$SMARTMIXED_TRACKING_OUTAGE_SECONDS`` or the default (30 min); 0 disables retrying."""
    try:
        return max(0.0, float(os.environ.get(OUTAGE_ENV, DEFAULT_OUTAGE_SECONDS)))
    except ValueError:
        return DEFAULT_OUTAGE_SECONDS


def is_outage(exc: BaseException) -> bool:
    """True when ``exc`` (or what caused it) says the tracking server could not be reached:
    connection refused/reset, a timeout, or MLflow's retries exhausted on 5xx/429 answers."""
    import requests

    kinds = (requests.exceptions.ConnectionError, requests.exceptions.Timeout,
             requests.exceptions.RetryError)
    seen: set[int] = set()
    cur: BaseException | None = exc
    while cur is not None and id(cur) not in seen:
        if isinstance(cur, kinds):
            return True
        seen.add(id(cur))
        cur = cur.__cause__ or cur.__context__
    return False


class RetryingClient:
    """An ``MlflowClient`` whose calls ride out an outage of the tracking server.

    A call that fails because the server cannot be reached (:func:`is_outage`) is repeated,
    with pauses of 1, 2, 4, ... up to ``MAX_RETRY_WAIT`` seconds, until it succeeds or
    ``patience`` seconds have passed since its first failure; then the error is raised.  The
    caller just waits meanwhile (a trial's training pauses at its next MLflow write), so
    nothing is lost.  Any other error is raised at once.  Writes are safe to repeat: the server
    either never received a refused request, or deduplicates metrics, overwrites tags and
    artifacts, and rejects nothing that the sweep writes twice.
    """

    def __init__(self, inner: MlflowClient, uri: str, patience: float):
        self._inner, self._uri, self._patience = inner, uri, patience

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._inner, name)
        if name.startswith("_") or not callable(attr):
            return attr

        @functools.wraps(attr)
        def call(*args: Any, **kwargs: Any) -> Any:
            first: float | None = None
            wait = 1.0
            while True:
                try:
                    result = attr(*args, **kwargs)
                except Exception as exc:
                    now = time.monotonic()
                    first = now if first is None else first
                    if not is_outage(exc) or now - first >= self._patience:
                        raise
                    if wait == 1.0:
                        _say(f"MLflow tracking server {self._uri} unreachable ({name}: "
                             f"{_short_reason(exc)}); retrying for up to "
                             f"{self._patience:.0f} s ({OUTAGE_ENV})")
                    time.sleep(min(wait, max(0.0, self._patience - (now - first))))
                    wait = min(wait * 2, MAX_RETRY_WAIT)
                    continue
                if first is not None:
                    _say(f"MLflow tracking server {self._uri} reachable again after "
                         f"{time.monotonic() - first:.0f} s ({name})")
                return result

        return call


def _short_reason(exc: BaseException) -> str:
    cur: BaseException | None = exc
    while cur.__cause__ is not None or cur.__context__ is not None:
        cur = cur.__cause__ or cur.__context__
    return f"{type(cur).__name__}: {str(cur)[:120]}"


def _say(message: str) -> None:
    print(f"smartmixed: {message}", file=sys.stderr, flush=True)


def client(uri: str) -> MlflowClient:
    """A thread-safe client for ``uri``; for a tracking server, one that rides out outages of
    up to :func:`outage_seconds` (see :class:`RetryingClient`)."""
    from mlflow import MlflowClient

    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    if uri.startswith(("http://", "https://")):
        for key, value in _MLFLOW_HTTP_DEFAULTS.items():
            os.environ.setdefault(key, value)
        patience = outage_seconds()
        if patience > 0:
            return RetryingClient(MlflowClient(tracking_uri=uri), uri, patience)  # type: ignore[return-value]
    return MlflowClient(tracking_uri=uri)


def ensure_experiment(c: MlflowClient, name: str, uri: str) -> str:
    """The experiment's id, created (driver only) with an absolute artifact root for SQLite,
    as a model-development experiment (MLflow's UI then opens it on the runs table)."""
    kind = {schema.TAG_EXPERIMENT_KIND: schema.EXPERIMENT_KIND}
    exp = c.get_experiment_by_name(name)
    if exp is not None:
        if schema.TAG_EXPERIMENT_KIND not in exp.tags:
            c.set_experiment_tag(exp.experiment_id, *next(iter(kind.items())))
        return exp.experiment_id
    location = None
    if (path := sqlite_path(uri)) is not None:
        location = (path.parent / "mlartifacts").resolve().as_uri()
    return c.create_experiment(name, artifact_location=location, tags=kind)


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
    """``smartmixed · digits, 64-32, lr=0.00123 · 5130616b``: what the runs table shows."""
    detail = describe(sampled) or f"{cfg.dataset}, {cfg.arch}"
    return f"{cfg.method} · {detail} · {trial}"


def trial_note(cfg: RunConfig, sampled: dict[str, Any]) -> str:
    """The trial run's description (markdown): its configuration, what was searched."""
    rows = "\n".join(f"| {k} | {v} |" for k, v in config_params(cfg).items())
    searched = ", ".join(f"`{k}`" for k in sampled) or "nothing (a fixed configuration)"
    return (f"**{cfg.method}** on **{cfg.dataset}**, architecture **{cfg.arch}**, trained once "
            f"per seed of the sweep (the seed runs below it).\n\nSampled by the search: "
            f"{searched}. Metrics `*_mean`/`*_std` are over seeds; per-epoch curves are seed "
            f"means.\n\n| setting | value |\n|---|---|\n{rows}\n")


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
        schema.TAG_NOTE: sweep_note(name, spec_yaml),
        **({} if folder is None else {schema.TAG_FOLDER: str(folder)})})
    log_params(c, run.info.run_id, params, lookup=False)
    c.log_text(run.info.run_id, spec_yaml, schema.ARTIFACT_SPEC)
    return run.info.run_id


def sweep_folders(c: MlflowClient, name: str | None = None) -> dict[str, str]:
    """Sweep name -> folder of the sweep runs in every experiment of the store (newest first
    wins); only ``name`` when given."""
    exps = [e.experiment_id for e in c.search_experiments()]
    flt = f"tags.`{schema.TAG_KIND}` = '{schema.KIND_SWEEP}'"
    if name is not None:
        flt += f" and tags.`{schema.TAG_SWEEP}` = '{name}'"
    folders: dict[str, str] = {}
    for run in c.search_runs(exps, flt, order_by=["attributes.start_time DESC"]) if exps else ():
        sweep = run.data.tags.get(schema.TAG_SWEEP)
        if sweep and sweep not in folders:
            folders[sweep] = run.data.tags.get(schema.TAG_FOLDER, "")
    return folders


def sweep_note(name: str, spec_yaml: str) -> str:
    """The sweep run's description (markdown): how to read the sweep, and its spec."""
    return (f"Sweep **{name}**: every trial run below is one configuration, trained once per "
            "seed (its seed runs). Configurations are chosen on validation data, never on the "
            "test set. Compare the methods with `smartmixed analyze --experiment EXPERIMENT "
            f"--sweep {name} --out report`: the report is also logged here, under the "
            f"artifacts' `report/` folder.\n\n```yaml\n{spec_yaml}```\n")


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
    import socket

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
    history = c.get_metric_history(run_id, "val_accuracy")
    c.set_tag(run_id, schema.TAG_WORKER, worker)
    log_params(c, run_id, params)
    return TrialRunInfo(run_id, max((m.step for m in history), default=-1), False)


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
    # Final values one step past the last epoch: val_accuracy is also a per-epoch metric, and
    # MLflow's latest value must be the final (best-restored) one.
    last = max((r["epoch"] for r in summary["history"]), default=-1) + 1
    flat = {k: summary.get(k) for k in schema.FINAL_METRICS}
    if "phase1" in summary:
        flat["phase1_test_accuracy"] = summary["phase1"]["test_accuracy"]
        flat["phase1_val_accuracy"] = summary["phase1"]["val_accuracy"]
        for k in ("last_val_accuracy", "sampled_val_accuracy"):
            flat[f"phase1_{k}"] = summary["phase1"].get(k)
    out = [(k, v, last) for k, v in flat.items() if isinstance(v, (int, float))]
    for rec in summary["history"]:
        out += [(k, rec[k], rec["epoch"]) for k in (*schema.EPOCH_METRICS,
                                                     *schema.SAMPLED_METRICS) if k in rec]
        if "tau" in rec:
            out.append((schema.TAU_METRIC, rec["tau"], rec["epoch"]))
        for layer, n in rec.get("changed", {}).items():
            units = cfg.hidden[int(layer.split("_")[1]) - 1]
            out.append((schema.SWITCH_METRIC.format(layer=layer.split("_")[1]), n / units,
                        rec["epoch"]))
    for layer, coefs in summary.get("learned_shape", {}).items():
        out += [(schema.shape_metric(int(layer.split("_")[1]), k), v, last)
                for k, v in coefs.items()]
    for layer, names in choices.items():
        idx = int(layer.split("_")[1])
        for act in cfg.pool_names:
            out.append((schema.selection_metric(idx, act), names.count(act) / len(names), last))
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
