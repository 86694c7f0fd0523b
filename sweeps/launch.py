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
import re
import signal
import socket
import sys
import threading
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from smartmixed_core.errors import ConfigError, check_output_dir
from sweeps import schema, tracking
from sweeps import trial as trial_module
from sweeps.redact import (
    PASSWORD_ENV,
    USERNAME_ENV,
    redact_text,
    redact_uri,
    tracking_env,
    use_credentials,
    without_password,
)
from sweeps.spec import (
    SweepSpec,
    absolute_data_dir,
    check_datasets,
    check_tracking_uri,
    parse_spec,
    spec_doc,
)
from sweeps.trial import SweepContext

SPEC_FILE = "sweep.yaml"
"""The resolved spec, saved in the Ray experiment folder for ``sweep resume``."""
STATE_FILE = "sweep.json"
"""Tracking URI, experiment id and sweep run id, next to it."""
JOURNAL_FILE = "optuna-journal.log"
"""The Optuna study (JournalFileStorage), study name = sweep name."""
RAY_DASHBOARD_HOST = "127.0.0.1"
"""Where a Ray started here would serve its dashboard (it is not started: include_dashboard
is off); Ray's own gRPC ports are protected by its token authentication."""
_ADDRESS = re.compile(r"^(?:ray://)?(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9](?:[A-Za-z0-9.\-]*[A-Za-z0-9])?)"
                      r":(\d{1,5})$")
_ray_owned = False
"""Whether this module started or connected Ray (and so shuts it down after the sweep)."""


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


def study_names(spec: SweepSpec) -> list[str]:
    """The Optuna studies of a sweep: its name, or ``NAME/CELL`` for each ``search.per`` cell."""
    from sweeps.space import cell_label

    if not spec.search.per:
        return [spec.name]
    return [f"{spec.name}/{cell_label(cell)}" for cell in spec.search.cells()]


def _searcher(spec: SweepSpec, path: Path) -> Any:
    from sweeps.space import define_by_run

    if spec.search.algorithm == "grid":
        return None
    import optuna
    from ray.tune.search import ConcurrencyLimiter

    from sweeps.searcher import PerCellSearch, ResumableOptunaSearch, journal_storage

    def one(cell: dict[str, Any], study: str) -> ResumableOptunaSearch:
        sampler = (optuna.samplers.RandomSampler(seed=spec.search.seed)
                   if spec.search.algorithm == "random"
                   else optuna.samplers.TPESampler(seed=spec.search.seed))
        return ResumableOptunaSearch(space=define_by_run(spec, cell), metric=spec.search.metric,
                                     mode=spec.search.mode, sampler=sampler, study_name=study,
                                     storage=journal_storage(path / JOURNAL_FILE))

    cells = spec.search.cells()
    if spec.search.per:
        search: Any = PerCellSearch([one(c, n) for c, n in zip(cells, study_names(spec))],
                                    spec.search.num_samples, spec.search.metric,
                                    spec.search.mode)
    else:
        search = one({}, spec.name)
    if spec.max_concurrent:
        return ConcurrencyLimiter(search, max_concurrent=spec.max_concurrent)
    return search


def smartmixed_trial(config: dict[str, Any], ctx: SweepContext, env: dict[str, str]) -> None:
    """The trainable: sets the MLflow credential variables handed over by the driver (a Ray
    worker on another node does not inherit them), then runs
    :func:`sweeps.trial.smartmixed_trial`.  Same name, so Ray's trial names are unchanged."""
    for key in (USERNAME_ENV, PASSWORD_ENV):  # a reused worker may hold an earlier sweep's
        os.environ.pop(key, None)
    os.environ.update(env)
    trial_module.smartmixed_trial(config, ctx)


def total_trials(spec: SweepSpec) -> int:
    """How many trials the sweep runs: the grid's size, or ``num_samples`` per cell."""
    from sweeps.space import grid

    if spec.search.algorithm == "grid":
        return len(grid(spec))
    return spec.search.num_samples * len(spec.search.cells())


def _concurrency(spec: SweepSpec) -> int:
    """Trials at once: ``max_concurrent``, or as many as this machine's CPUs hold."""
    fit = int((os.cpu_count() or 1) // max(spec.resources.cpu, 1e-9))
    return max(1, min(spec.max_concurrent or fit, fit if fit > 0 else 1))


def _tuner(spec: SweepSpec, ctx: SweepContext, path: Path, restore: bool,
           verbose: bool = False) -> Any:
    from ray import tune

    from smartmixed_core.config import RunConfig
    from sweeps.progress import SweepProgress, TrialStatuses
    from sweeps.space import grid

    fn = tune.with_resources(tune.with_parameters(smartmixed_trial, ctx=ctx, env=tracking_env()),
                             {"cpu": spec.resources.cpu, "gpu": spec.resources.gpu})
    if restore:
        return tune.Tuner.restore(str(path), trainable=fn, resume_unfinished=True,
                                  resume_errored=True)
    searcher = _searcher(spec, path)
    scheduler = None
    if spec.scheduler and spec.scheduler.asha:
        from ray.tune.schedulers import ASHAScheduler

        epochs = int(spec.base().get("epochs", RunConfig.epochs))
        scheduler = ASHAScheduler(time_attr="training_iteration", metric=spec.search.metric,
                                  mode=spec.search.mode, max_t=epochs + 1,
                                  grace_period=spec.scheduler.asha.grace_period,
                                  reduction_factor=spec.scheduler.asha.reduction_factor)
    if searcher is None:  # grid (or a fixed configuration): the factorial as one grid axis
        param_space: dict[str, Any] = {"trial": tune.grid_search(grid(spec))}
        num_samples = 1
    else:
        param_space, num_samples = {}, spec.search.num_samples * len(spec.search.cells())
    tune_config = tune.TuneConfig(
        search_alg=searcher, scheduler=scheduler, num_samples=num_samples,
        reuse_actors=True,  # one worker process per slot: imports and DB setup paid once
        max_concurrent_trials=spec.max_concurrent if searcher is None else None,
        **({} if searcher is not None or scheduler is not None
           else {"metric": spec.search.metric, "mode": spec.search.mode}))
    progress = SweepProgress(spec.name, total_trials(spec), spec.search.metric, spec.search.mode,
                             _concurrency(spec))
    if not verbose:  # Ray's newer console output prints its header boxes at every verbosity
        os.environ["RAY_AIR_NEW_OUTPUT"] = "0"
    run_config = tune.RunConfig(
        name=spec.name, storage_path=str(path.parent),
        failure_config=tune.FailureConfig(max_failures=spec.max_failures),
        checkpoint_config=tune.CheckpointConfig(num_to_keep=1),
        verbose=1 if verbose else 0,
        callbacks=[TrialStatuses(spec.name), *([] if verbose else [progress])])
    return tune.Tuner(fn, param_space=param_space, tune_config=tune_config, run_config=run_config)


def check_address(address: str | None) -> None:
    """``--address`` is ``auto``, ``local``, ``HOST:PORT`` or ``ray://HOST:PORT``."""
    if address is None or address in ("auto", "local"):
        return
    m = _ADDRESS.match(address)
    if not m or not 1 <= int(m.group(2)) <= 65535:
        raise ConfigError("address", f"{address!r} is not a Ray address; allowed: auto, local, "
                          "HOST:PORT (e.g. 10.0.0.5:6379) or ray://HOST:PORT (Ray client)")


def cluster_address(address: str | None) -> str | None:
    """``--address``, or else the ``RAY_ADDRESS`` environment variable (which Ray itself would
    read), checked now: its syntax, and that something listens there, so that a stale or
    garbled variable is one error line before anything is written."""
    if address is not None or not os.environ.get("RAY_ADDRESS", "").strip():
        check_address(address)
        return address
    env = os.environ["RAY_ADDRESS"].strip()
    try:
        check_address(env)
        if env != "local":
            _probe(env)
    except ConfigError as exc:
        raise ConfigError("RAY_ADDRESS", f"(environment variable) {exc.message}; unset it for "
                          "a local Ray, or pass --address") from None
    return env


def _bootstrap(address: str) -> str | None:
    """The host:port that ``address`` stands for; None for ``auto``, which only Ray can
    resolve (from the cluster file ``ray start`` writes; no public API gives it), so
    ``ray.init`` finds the cluster or says it found none."""
    if address == "auto":
        return None
    return address.removeprefix("ray://")


def _probe(address: str) -> None:
    """Fail in seconds, not minutes, when nothing listens at ``address`` (Ray retries for
    minutes and prints a line per retry)."""
    target = _bootstrap(address)
    if target is None:
        return
    host, _, port = target.rpartition(":")
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=5).close()
    except (OSError, ValueError) as exc:
        raise ConfigError("address", f"cannot connect to the Ray cluster at {address!r} "
                          f"({target}: {getattr(exc, 'strerror', None) or exc}); is "
                          "`ray start --head` running there?") from None


def _init_ray(address: str | None, verbose: bool = False) -> bool:
    """Connect to ``address`` or start a local Ray with this machine's CPUs (no dashboard).
    True when this module started or connected it (and so shuts it down after the sweep)."""
    global _ray_owned
    import ray

    remote = bool(address) and address != "local"
    if remote:
        check_address(address)
        _probe(address)  # also when Ray is up already: a wrong address is an error anyway
    if ray.is_initialized():
        return _ray_owned
    # Trials find their package through the editable install, not a shipped working dir.
    # The trials' warnings reach the console (a tracking server that became unreachable);
    # their INFO notices are kept out by MLFLOW_LOGGING_LEVEL without --verbose.
    kwargs: dict[str, Any] = {"log_to_driver": True, "configure_logging": False}
    if remote:
        try:
            ray.init(address=address, **kwargs)
        except Exception as exc:  # ConnectionError, auth failure, version mismatch, ...
            raise ConfigError("address", f"cannot connect to the Ray cluster at {address!r}: "
                              f"{_first_line(exc)}") from None
    else:
        ray.init(num_cpus=os.cpu_count(), include_dashboard=False,
                 dashboard_host=RAY_DASHBOARD_HOST, **kwargs)
    _ray_owned = True
    return True


def release_ray() -> None:
    """Shut down the Ray that this module started or connected, if any."""
    global _ray_owned
    if _ray_owned:
        import ray

        ray.shutdown()
        _ray_owned = False


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def check_resources(spec: SweepSpec, address: str | None) -> None:
    """A trial must fit on one node: ``resources`` against this machine (local Ray) or the
    largest live node of the cluster (``--address``, connecting to it, or a Ray already
    initialised in this process)."""
    need = spec.resources
    ray_mod = sys.modules.get("ray")
    if (address and address != "local") or (ray_mod is not None and ray_mod.is_initialized()):
        import ray

        _init_ray(address)
        nodes = [n.get("Resources", {}) for n in ray.nodes() if n.get("Alive")]
        cpus = max((n.get("CPU", 0.0) for n in nodes), default=0.0)
        gpus = max((n.get("GPU", 0.0) for n in nodes), default=0.0)
        where = "the largest node of the Ray cluster has"
    else:
        import torch

        cpus, gpus = float(os.cpu_count() or 1), float(torch.cuda.device_count())
        where = "this machine has"
    if need.gpu > gpus:
        allowed = (f"allowed: 0 to {gpus:g} (a fraction such as 0.25 shares one GPU between "
                   "trials)" if gpus else "allowed: 0 here; for GPUs run on a cluster that "
                   "has them (--address)")
        raise ConfigError("resources.gpu", f"{need.gpu:g} GPU per trial, but {where} "
                          f"{gpus:g}; {allowed}")
    if need.cpu > cpus:
        raise ConfigError("resources.cpu", f"{need.cpu:g} CPUs per trial, but {where} "
                          f"{cpus:g}; allowed: more than 0, at most {cpus:g}")


def _check_server(uri: str, given: str) -> None:
    """The tracking store answers (``uri`` carries no credentials for http; errors show the
    URI redacted)."""
    try:
        tracking.check_tracking(uri)
    except ConfigError as exc:
        raise ConfigError(exc.field, redact_text(exc.message, given)) from None


def _mlflow_error(exc: BaseException, given: str, what: str) -> ConfigError:
    hint = ("; if the server needs a login set MLFLOW_TRACKING_USERNAME and "
            "MLFLOW_TRACKING_PASSWORD" if given.lower().startswith("http") else "")
    return ConfigError("tracking_uri", redact_text(
        f"{what} at {redact_uri(given)}: {_first_line(exc)}{hint}", given))


def _sqlite_missing(uri: str) -> bool:
    path = tracking.sqlite_path(uri)
    return path is not None and not path.exists()


def _saved_differences(path: Path, doc: dict[str, Any]) -> list[str] | None:
    """Spec fields where the sweep saved in ``path`` differs from ``doc`` (None: unreadable)."""
    try:
        old = flat_params(yaml.safe_load((path / SPEC_FILE).read_text()))
    except Exception:
        return None
    new = flat_params(doc)
    return sorted(k for k in old.keys() | new.keys() if old.get(k) != new.get(k))


def _refuse_existing(spec: SweepSpec, path: Path, doc: dict[str, Any]) -> None:
    """A sweep of this name already has a folder: never overwrite it, whatever its spec."""
    diff = _saved_differences(path, doc)
    if diff is None:
        how = "(a folder that holds no readable sweep)"
    elif not diff:
        how = "with the same spec"
    else:
        more = ", ..." if len(diff) > 5 else ""
        how = f"with a different spec (differs in {', '.join(diff[:5])}{more})"
    raise ConfigError("name", f"a sweep named {spec.name!r} already exists at {path} {how}; "
                      f"continue it with `smartmixed sweep resume {path}` (it keeps its saved "
                      "spec) or choose a new name (--set name=...)")


def _refuse_tracked(spec: SweepSpec, uri: str, given: str) -> None:
    """A sweep run of this name already in the experiment (e.g. another storage_path)."""
    if _sqlite_missing(uri):
        return  # no store yet: nothing to collide with (and nothing gets created here)
    try:
        c = tracking.client(uri)
        exp = c.get_experiment_by_name(spec.experiment)
        found = exp is not None and tracking.find_runs(c, exp.experiment_id, schema.KIND_SWEEP,
                                                       spec.name)
    except Exception as exc:
        raise _mlflow_error(exc, given, "cannot read the tracking store") from None
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
    targets: list[Path] = []
    for folder in folders:
        if folder is None:
            continue
        target = folder.absolute()
        while not target.exists():
            target = target.parent
        if target.resolve() not in {t.resolve() for t in targets}:
            targets.append(target)
    with contextlib.ExitStack() as stack:
        for target in sorted(targets, key=lambda t: str(t.resolve())):  # one order: no deadlock
            fd = os.open(target, os.O_RDONLY)
            stack.callback(os.close, fd)
            fcntl.flock(fd, fcntl.LOCK_EX)
        yield


def _create_sweep_run(spec: SweepSpec, uri: str, given: str, saved: dict[str, Any],
                      path: Path, address: str | None, start_ray: bool,
                      verbose: bool = False) -> tuple[str, str]:
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
            store = pool.submit(tracking.client, uri)
            if start_ray:
                _init_ray(address, verbose)
        try:
            c = store.result()
            tracking.use_wal(uri)
            exp_id = tracking.ensure_experiment(c, spec.experiment, uri)
            run_id = tracking.create_sweep_run(c, exp_id, spec.name, flat_params(logged),
                                               yaml.safe_dump(logged, sort_keys=False), path)
        except ConfigError:
            raise
        except Exception as exc:
            raise _mlflow_error(exc, given, "cannot create the sweep run") from None
    except ConfigError:
        release_ray()
        raise
    return exp_id, run_id


def prepare(spec: SweepSpec, tracking_uri: str | None = None, address: str | None = None, *,
            start_ray: bool = False, verbose: bool = False
            ) -> tuple[SweepSpec, Path, SweepContext]:
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
    given = tracking.normalize_uri(spec.tracking_uri)
    uri = use_credentials(given)  # http(s): user/password -> MLFLOW_TRACKING_* variables
    spec = spec.model_copy(update={"tracking_uri": without_password(given)})
    saved = spec_doc(spec)
    path = experiment_dir(spec)
    check_output_dir("storage_path", path.parent)
    with _creation_lock(path.parent, tracking.sqlite_path(uri)):
        if path.exists():
            _refuse_existing(spec, path, saved)
        if spec.search.algorithm == "grid":
            from sweeps.space import grid

            grid(spec)  # a range in a grid space is a spec error, reported now
        if address is None:  # a cluster's workers read their own disks
            check_datasets(spec)
        _check_server(uri, given)
        exp_id, run_id = _create_sweep_run(spec, uri, given, saved, path, address,
                                           start_ray, verbose)
        path.mkdir(parents=True)
        (path / SPEC_FILE).write_text(yaml.safe_dump(saved, sort_keys=False))
        (path / STATE_FILE).write_text(json.dumps({"tracking_uri": spec.tracking_uri,
                                                   "experiment_id": exp_id,
                                                   "sweep_run_id": run_id}, indent=1))
    ctx = SweepContext(saved, uri, exp_id, run_id)
    return spec, path, ctx


def locate(name_or_path: str, tracking_uri: str | None = None,
           storage_path: str = "./ray_results") -> Path:
    """The experiment folder of a sweep given its folder, or its name: under
    ``./ray_results``, else where the tracking store's sweep run of that name says
    (``--tracking-uri``, default ``sqlite:///mlflow.db``)."""
    for cand in (Path(name_or_path), Path(storage_path) / name_or_path):
        if _is_sweep(cand):
            return cand.resolve()
    given = tracking_uri or schema.DEFAULT_TRACKING_URI
    try:
        uri = tracking.normalize_uri(check_tracking_uri(given))
    except ValueError as exc:
        raise ConfigError("tracking_uri", str(exc)) from None
    looked = f"looked for {SPEC_FILE} and {STATE_FILE} in {name_or_path} and " \
             f"{Path(storage_path) / name_or_path}"
    if _sqlite_missing(uri):
        raise ConfigError("sweep", f"no sweep at {name_or_path!r} ({looked}; no tracking store "
                          f"at {given}: pass --tracking-uri)")
    _check_server(use_credentials(uri), given)
    try:
        folders = tracking.sweep_folders(tracking.client(use_credentials(uri)))
    except Exception as exc:
        raise _mlflow_error(exc, given, "cannot list the sweeps") from None
    folder = folders.get(name_or_path)
    if folder and _is_sweep(Path(folder)):
        return Path(folder)
    if folder is not None:
        raise ConfigError("sweep", f"the sweep {name_or_path!r} of {given} was in "
                          f"{folder or 'a folder it did not record'}, which holds no sweep now; "
                          "pass the sweep's folder (<storage_path>/<name>)")
    known = ", ".join(sorted(folders)) or "none"
    raise ConfigError("sweep", f"no sweep named {name_or_path!r} ({looked}; sweeps in "
                      f"{given}: {known})")


def _is_sweep(folder: Path) -> bool:
    return (folder / SPEC_FILE).is_file() and (folder / STATE_FILE).is_file()


def load_state(path: Path, tracking_uri: str | None = None) -> tuple[SweepSpec, SweepContext]:
    """The saved spec and context of the sweep in ``path``.  ``tracking_uri`` (``--tracking-uri``
    of resume/status) replaces the saved URI, e.g. to give the password again; otherwise
    credentials come from MLFLOW_TRACKING_USERNAME/PASSWORD."""
    try:
        spec = parse_spec(yaml.safe_load((path / SPEC_FILE).read_text()))
        state = json.loads((path / STATE_FILE).read_text())
        saved_uri, exp_id, run_id = (state["tracking_uri"], state["experiment_id"],
                                     state["sweep_run_id"])
    except ConfigError as exc:
        raise ConfigError("sweep", f"the spec saved in {path / SPEC_FILE} is invalid: "
                          f"{exc}") from None
    except (OSError, ValueError, KeyError, TypeError, yaml.YAMLError) as exc:
        raise ConfigError("sweep", f"cannot read the state saved in {path} "
                          f"({type(exc).__name__}: {_first_line(exc)})") from None
    given = saved_uri
    if tracking_uri:
        given = tracking.normalize_uri(parse_spec(
            {**spec_doc(spec), "tracking_uri": tracking_uri}).tracking_uri)
    uri = use_credentials(given)
    spec = spec.model_copy(update={"tracking_uri": without_password(given)})
    return spec, SweepContext(spec_doc(spec), uri, exp_id, run_id)


def check_state(ctx: SweepContext, given: str | None = None) -> None:
    """The saved sweep run can be read from the tracking store (before resume or status)."""
    given = given or ctx.tracking_uri
    _check_server(ctx.tracking_uri, given)
    if _sqlite_missing(ctx.tracking_uri):
        raise ConfigError("tracking_uri", f"the sweep's SQLite store {ctx.tracking_uri} does "
                          "not exist; pass --tracking-uri where it is now")
    try:
        tracking.client(ctx.tracking_uri).get_run(ctx.sweep_run_id)
    except Exception as exc:
        raise _mlflow_error(exc, given, f"cannot read the sweep run {ctx.sweep_run_id}") from None


def execute(spec: SweepSpec, path: Path, ctx: SweepContext, *, address: str | None = None,
            restore: bool = False, verbose: bool = False) -> SweepOutcome:
    """Run (or resume) the Tuner, then close leftover runs and the sweep run.  ``verbose``:
    Ray's own trial tables instead of :mod:`sweeps.progress`."""
    started = _init_ray(address, verbose)
    c = tracking.client(ctx.tracking_uri)
    c.update_run(ctx.sweep_run_id, status="RUNNING")
    previous = signal.getsignal(signal.SIGINT)
    watch = (threading.current_thread() is threading.main_thread()
             and not int(os.getenv("TUNE_DISABLE_SIGINT_HANDLER", "0")))
    if watch:
        signal.signal(signal.SIGINT, _second_interrupt)
    crashed: set[str] = set()
    try:
        statuses = trial_statuses(spec.name, _tuner(spec, ctx, path, restore, verbose).fit())
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
    tracking.fold_wal(ctx.tracking_uri)
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


def trial_rows(ctx: SweepContext, spec: SweepSpec) -> list[dict[str, Any]]:
    """One row per trial run: status, sampled params and seed-mean results, best first."""
    c = tracking.client(ctx.tracking_uri)
    finished = Counter(r.data.tags.get(schema.TAG_TRIAL) for r in tracking.find_runs(
        c, ctx.experiment_id, schema.KIND_SEED, spec.name, status="FINISHED"))
    rows = []
    for run in tracking.find_runs(c, ctx.experiment_id, schema.KIND_TRIAL, spec.name):
        m, p = run.data.metrics, run.data.params
        rows.append({
            "trial": run.data.tags[schema.TAG_TRIAL], "status": run.info.status,
            "method": p.get("method"), "architecture": p.get("architecture"),
            "params": {k[len(schema.SAMPLED_PREFIX):]: v for k, v in p.items()
                       if k.startswith(schema.SAMPLED_PREFIX)},
            # A running trial shows its latest epoch; a failed one has no result to show.
            "metric": m.get(f"{spec.search.metric}_mean",
                            m.get(spec.search.metric) if run.info.status == "RUNNING" else None),
            "val_accuracy_std": m.get("val_accuracy_std"),
            "test_accuracy": m.get("test_accuracy_mean"),
            "seeds_finished": finished[run.data.tags[schema.TAG_TRIAL]],
            "reason": run.data.tags.get(schema.TAG_STATUS_REASON, ""),
        })
    sign = -1 if spec.search.mode == "max" else 1
    rows.sort(key=lambda r: (r["status"] != "FINISHED",
                             sign * r["metric"] if r["metric"] is not None else 0.0))
    return rows
