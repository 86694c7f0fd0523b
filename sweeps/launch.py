"""The driver: validate, set up MLflow, assemble the Tuner, run or resume, summarise.

Everything that can be wrong with the input (spec, tracking server, an existing sweep of the
same name, the Ray address, resources per trial larger than the machine or cluster has) is
checked before Ray starts (with ``--address``: before anything but connecting to the
cluster) and before any MLflow run or folder is created; see :func:`prepare`.

Credentials in the tracking URI never reach output, MLflow or disk (:mod:`sweeps.redact`):
the MLflow params and ``spec.yaml`` artifact show the URI redacted, ``sweep.yaml`` and
``sweep.json`` keep it without its password, and for ``http(s)`` the user and password
travel as ``MLFLOW_TRACKING_USERNAME``/``MLFLOW_TRACKING_PASSWORD`` (also to the trials).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import signal
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from smartmixed_core.errors import ConfigError, check_output_dir
from sweeps import schema, store, tracking
from sweeps.cluster import _init_ray, check_address, check_resources, release_ray
from sweeps.redact import redact_uri, use_credentials, without_password
from sweeps.saved import SPEC_FILE, STATE_FILE
from sweeps.space import grid
from sweeps.spec import SweepSpec, absolute_data_dir, check_datasets, spec_doc
from sweeps.specfile import parse_spec
from sweeps.trial import SweepContext
from sweeps.tuner import JOURNAL_FILE, build_tuner, smartmixed_trial, study_names, total_trials

__all__ = ["JOURNAL_FILE", "smartmixed_trial", "study_names", "total_trials"]
"""Re-exported: sweeps pickled before the split name ``sweeps.launch.smartmixed_trial``."""

@dataclass
class SweepOutcome:
    """What the CLI prints after a sweep."""

    spec: SweepSpec
    path: Path
    context: SweepContext
    interrupted: bool


def experiment_dir(spec: SweepSpec) -> Path:
    try:
        return Path(spec.storage_path).expanduser().resolve() / spec.name
    except (OSError, RuntimeError) as exc:  # RuntimeError: a symbolic-link loop
        raise ConfigError("storage_path", f"{spec.storage_path} cannot be resolved: "
                          f"{exc}") from None


def flat_params(doc: dict[str, Any], prefix: str = "") -> dict[str, str]:
    """The spec as MLflow params: dotted keys, values as YAML-ish strings."""
    out: dict[str, str] = {}
    for k, v in doc.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and v and not (prefix.startswith("search.space.")):
            out.update(flat_params(v, key + "."))
        else:
            out[key] = json.dumps(v) if not isinstance(v, str) else v
    return out


def _refuse_existing(spec: SweepSpec, path: Path, doc: dict[str, Any]) -> None:
    """A sweep of this name already has a folder: never overwrite it, whatever its spec (the
    error names the fields where the spec saved there differs from ``doc``)."""
    try:
        old = flat_params(yaml.safe_load((path / SPEC_FILE).read_text()))
    except Exception:
        how = "(a folder that holds no readable sweep)"
    else:
        new = flat_params(doc)
        diff = sorted(k for k in old.keys() | new.keys() if old.get(k) != new.get(k))
        more = ", ..." if len(diff) > 5 else ""
        how = (f"with a different spec (differs in {', '.join(diff[:5])}{more})" if diff
               else "with the same spec")
    raise ConfigError("name", f"a sweep named {spec.name!r} already exists at {path} {how}; "
                      f"continue it with `smartmixed sweep resume {path}` (it keeps its saved "
                      "spec) or choose a new name (--set name=...)")


def _refuse_tracked(spec: SweepSpec, uri: str, given: str) -> None:
    """A sweep run of this name already in the experiment (e.g. another storage_path)."""
    if store.sqlite_missing(uri):
        return  # no store yet: nothing to collide with (and nothing gets created here)
    try:
        c = store.client(uri)
        exp = c.get_experiment_by_name(spec.experiment)
        found = exp is not None and tracking.find_runs(c, exp.experiment_id, schema.KIND_SWEEP,
                                                       spec.name)
    except Exception as exc:
        raise store.mlflow_error(exc, given, "cannot read the tracking store") from None
    if found:
        raise ConfigError("name", f"a sweep named {spec.name!r} already exists in experiment "
                          f"{spec.experiment!r} at {redact_uri(given)}; continue it with "
                          f"`smartmixed sweep resume` on its folder or choose a new name "
                          "(--set name=...)")


@contextlib.contextmanager
def _creation_lock(*folders: Path | None) -> Iterator[None]:
    """Hold an exclusive ``flock`` on the nearest existing folder of each of ``folders`` (the
    storage folder, a SQLite store's folder): two ``sweep run``s racing for one new name, or
    for one new store, take turns instead of clashing half-way."""
    targets: dict[str, Path] = {}  # resolved path -> the folder
    for folder in filter(None, folders):
        target = folder.absolute()
        while not target.exists():
            target = target.parent
        targets.setdefault(str(target.resolve()), target)
    with contextlib.ExitStack() as stack:
        for _, target in sorted(targets.items()):  # one order: no deadlock
            fd = os.open(target, os.O_RDONLY)
            stack.callback(os.close, fd)
            fcntl.flock(fd, fcntl.LOCK_EX)
        yield


def _create_sweep_run(spec: SweepSpec, uri: str, given: str, saved: dict[str, Any],
                      path: Path, address: str | None, start_ray: bool) -> tuple[str, str]:
    """Check the resources and that no sweep of this name is tracked, then create the
    experiment (if needed) and the sweep run; Ray starts meanwhile with ``start_ray``.
    Returns (experiment id, sweep run id)."""
    logged = {**saved, "tracking_uri": redact_uri(given)}
    try:
        check_resources(spec, address)
        _refuse_tracked(spec, uri, given)  # instant while the SQLite store does not exist
        with ThreadPoolExecutor(1, thread_name_prefix="smartmixed-store") as pool:
            # A new SQLite store takes seconds to create its tables, and Ray seconds to start
            # its processes; both mostly wait, so they go side by side.
            made = pool.submit(store.client, uri)
            if start_ray:
                _init_ray(address)
        try:
            c = made.result()
            store.use_wal(uri)
            exp_id = store.ensure_experiment(c, spec.experiment, uri)
            run_id = tracking.create_sweep_run(c, exp_id, spec.name, flat_params(logged),
                                               yaml.safe_dump(logged, sort_keys=False), path)
        except ConfigError:
            raise
        except Exception as exc:
            raise store.mlflow_error(exc, given, "cannot create the sweep run") from None
    except ConfigError:
        release_ray()
        raise
    return exp_id, run_id


def prepare(spec: SweepSpec, tracking_uri: str | None = None, address: str | None = None, *,
            start_ray: bool = False) -> tuple[SweepSpec, Path, SweepContext]:
    """Check everything, then create the MLflow sweep run and the experiment folder.

    Order: spec and URI syntax, the sweep's folder, the tracking server, the resources per
    trial (with ``--address`` this connects to the cluster), an MLflow sweep run of the same
    name; only then the experiment, the sweep run and the folder are created.  With
    ``start_ray`` (``sweep run``: :func:`execute` follows) Ray starts while the tracking store
    opens; on an error it is shut down again.  The returned spec carries the tracking URI
    without its password (what is saved for resume).  Two commands creating sweeps in the
    same folder or store take turns (:func:`_creation_lock`): the second then finds the
    first's sweep, or its store already made."""
    check_address(address)
    if tracking_uri:
        spec = parse_spec({**spec_doc(spec), "tracking_uri": tracking_uri})
    spec = absolute_data_dir(spec)
    given = store.normalize_uri(spec.tracking_uri)
    uri = use_credentials(given)  # http(s): user/password -> MLFLOW_TRACKING_* variables
    spec = spec.model_copy(update={"tracking_uri": without_password(given)})
    saved = spec_doc(spec)
    path = experiment_dir(spec)
    check_output_dir("storage_path", path.parent)
    with _creation_lock(path.parent, store.sqlite_path(uri)):
        if path.exists():
            _refuse_existing(spec, path, saved)
        if spec.search.algorithm == "grid":
            grid(spec)  # a range in a grid space is a spec error, reported now
        if address is None:  # a cluster's workers read their own disks
            check_datasets(spec)
        store.check_server(uri, given)
        exp_id, run_id = _create_sweep_run(spec, uri, given, saved, path, address, start_ray)
        path.mkdir(parents=True)
        (path / SPEC_FILE).write_text(yaml.safe_dump(saved, sort_keys=False))
        (path / STATE_FILE).write_text(json.dumps({"tracking_uri": spec.tracking_uri,
                                                   "experiment_id": exp_id,
                                                   "sweep_run_id": run_id}, indent=1))
    ctx = SweepContext(saved, uri, exp_id, run_id)
    return spec, path, ctx


def execute(spec: SweepSpec, path: Path, ctx: SweepContext, *, address: str | None = None,
            restore: bool = False, verbose: bool = False) -> SweepOutcome:
    """Run (or resume) the Tuner, then close leftover runs and the sweep run.  ``verbose``:
    Ray's own trial tables instead of :mod:`sweeps.progress`."""
    started = _init_ray(address)
    c = store.client(ctx.tracking_uri)
    c.update_run(ctx.sweep_run_id, status="RUNNING")
    previous = signal.getsignal(signal.SIGINT)
    watch = (threading.current_thread() is threading.main_thread()
             and not int(os.getenv("TUNE_DISABLE_SIGINT_HANDLER", "0")))
    if watch:
        signal.signal(signal.SIGINT, _second_interrupt)
    crashed: set[str] = set()
    try:
        statuses = trial_statuses(spec.name, build_tuner(spec, ctx, path, restore, verbose).fit())
        # Ray's SIGINT handler puts back the handler it found (ours) once it has fired.
        interrupted = (watch and signal.getsignal(signal.SIGINT) is _second_interrupt) or any(
            st not in ("TERMINATED", "ERROR") for st in statuses.values())
        crashed = {t for t, st in statuses.items() if st == "ERROR"}
    except KeyboardInterrupt:
        interrupted = True
    finally:
        if watch:
            signal.signal(signal.SIGINT, previous)
        if started:
            release_ray()
    if not interrupted:  # trials lost with a killed driver (docs/sweeps.md, Failure handling)
        tracking.close_lost_trials(c, ctx.experiment_id, spec.name, set(statuses))
        if spec.search.algorithm != "grid":
            from sweeps.searcher import settle_lost_trials

            finished = tracking.finished_trial_results(c, ctx.experiment_id, spec.name,
                                                       spec.search.metric)
            for study in study_names(spec):
                settle_lost_trials(path / JOURNAL_FILE, study, finished)
    reason = ("sweep interrupted; smartmixed sweep resume continues it" if interrupted
              else "stopped early by the scheduler" if spec.scheduler
              else "ended before finishing")
    for kind in (schema.KIND_SEED, schema.KIND_TRIAL):
        runs = tracking.find_runs(c, ctx.experiment_id, kind, spec.name, status="RUNNING")
        failed = [r for r in runs if r.data.tags.get(schema.TAG_TRIAL) in crashed]
        tracking.close_running(c, failed, "FAILED",
                               f"crashed: the trial failed {spec.max_failures + 1} times")
        tracking.close_running(c, [r for r in runs if r not in failed], "KILLED", reason)
    c.set_terminated(ctx.sweep_run_id, "KILLED" if interrupted else "FINISHED")
    store.fold_wal(ctx.tracking_uri)
    return SweepOutcome(spec, path, ctx, interrupted)


def trial_statuses(name: str, results: Any) -> dict[str, str]:
    """Trial id -> final status of the sweep ``name`` that just ran: from its
    :class:`~sweeps.progress.TrialStatuses` callback, or, for a sweep begun by a version
    without it, from the public ``ResultGrid`` (trials that never reported are missing
    there; "PENDING" stands for any that did not end)."""
    from sweeps.progress import TrialStatuses

    seen = TrialStatuses.ended.pop(name, None)
    if seen is not None:
        return seen
    out = {r.metrics.get("trial_id", f"#{i}"): "ERROR" if r.error else "TERMINATED"
           for i, r in enumerate(results)}
    if results.num_terminated + results.num_errors < len(results):
        out["#unfinished"] = "PENDING"
    return out


def _second_interrupt(signum: int, frame: Any) -> None:
    """SIGINT handler in place while Ray runs (Ray's own handler wraps it)."""
    raise KeyboardInterrupt
