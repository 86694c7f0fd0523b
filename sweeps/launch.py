"""The driver: validate, set up MLflow, assemble the Tuner, run or resume, summarise.

Everything that can be wrong with the input (spec, tracking server, an existing sweep of the
same name) is checked before Ray starts or any folder or run is created.
"""

from __future__ import annotations

import json
import os
import signal
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from smartmixed_core.errors import ConfigError
from sweeps import schema, tracking
from sweeps.spec import SweepSpec, parse_spec, spec_doc, to_yaml
from sweeps.trial import SweepContext

SPEC_FILE = "sweep.yaml"
"""The resolved spec, saved in the Ray experiment folder for ``sweep resume``."""
STATE_FILE = "sweep.json"
"""Tracking URI, experiment id and sweep run id, next to it."""
JOURNAL_FILE = "optuna-journal.log"
"""The Optuna study (JournalFileStorage), study name = sweep name."""


@dataclass
class SweepOutcome:
    """What the CLI prints after a sweep."""

    spec: SweepSpec
    path: Path
    context: SweepContext
    interrupted: bool
    errored: int


def experiment_dir(spec: SweepSpec) -> Path:
    return Path(spec.storage_path).expanduser().resolve() / spec.name


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


def _searcher(spec: SweepSpec, path: Path) -> Any:
    from sweeps.space import define_by_run

    if spec.search.algorithm == "grid" or not spec.search.space:
        return None
    import optuna
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend
    from ray.tune.search import ConcurrencyLimiter
    from ray.tune.search.optuna import OptunaSearch

    sampler = (optuna.samplers.RandomSampler(seed=spec.search.seed)
               if spec.search.algorithm == "random"
               else optuna.samplers.TPESampler(seed=spec.search.seed))
    storage = JournalStorage(JournalFileBackend(str(path / JOURNAL_FILE)))
    search = OptunaSearch(space=define_by_run(spec), metric=spec.search.metric,
                          mode=spec.search.mode, sampler=sampler, study_name=spec.name,
                          storage=storage)
    if spec.max_concurrent:
        return ConcurrencyLimiter(search, max_concurrent=spec.max_concurrent)
    return search


def _tuner(spec: SweepSpec, ctx: SweepContext, path: Path, restore: bool) -> Any:
    from ray import tune

    from sweeps.space import grid
    from sweeps.trial import smartmixed_trial

    fn = tune.with_resources(tune.with_parameters(smartmixed_trial, ctx=ctx),
                             {"cpu": spec.resources.cpu, "gpu": spec.resources.gpu})
    if restore:
        return tune.Tuner.restore(str(path), trainable=fn, resume_unfinished=True,
                                  resume_errored=True)
    searcher = _searcher(spec, path)
    scheduler = None
    if spec.scheduler and spec.scheduler.asha:
        from ray.tune.schedulers import ASHAScheduler

        epochs = int(spec.base().get("epochs", 40))
        scheduler = ASHAScheduler(time_attr="training_iteration", metric=spec.search.metric,
                                  mode=spec.search.mode, max_t=epochs + 1,
                                  grace_period=spec.scheduler.asha.grace_period,
                                  reduction_factor=spec.scheduler.asha.reduction_factor)
    if searcher is None:  # grid (or a fixed configuration): the factorial as one grid axis
        param_space: dict[str, Any] = {"trial": tune.grid_search(grid(spec))}
        num_samples = 1
    else:
        param_space, num_samples = {}, spec.search.num_samples
    tune_config = tune.TuneConfig(
        search_alg=searcher, scheduler=scheduler, num_samples=num_samples,
        reuse_actors=True,  # one worker process per slot: imports and DB setup paid once
        max_concurrent_trials=spec.max_concurrent if searcher is None else None,
        **({} if searcher is not None or scheduler is not None
           else {"metric": spec.search.metric, "mode": spec.search.mode}))
    run_config = tune.RunConfig(
        name=spec.name, storage_path=str(path.parent),
        failure_config=tune.FailureConfig(max_failures=spec.max_failures),
        checkpoint_config=tune.CheckpointConfig(num_to_keep=1), verbose=1)
    return tune.Tuner(fn, param_space=param_space, tune_config=tune_config, run_config=run_config)


def _init_ray(address: str | None) -> bool:
    """Connect to ``address`` or start a local Ray with this machine's CPUs; True if started."""
    import ray

    if ray.is_initialized():
        return False
    # Trials find their package through the editable install, not a shipped working dir.
    kwargs: dict[str, Any] = {"log_to_driver": True, "configure_logging": False}
    if address:
        ray.init(address=address, **kwargs)
    else:
        ray.init(num_cpus=os.cpu_count(), include_dashboard=False, **kwargs)
    return True


def prepare(spec: SweepSpec,
            tracking_uri: str | None = None) -> tuple[SweepSpec, Path, SweepContext]:
    """Check everything, then create the MLflow sweep run and the experiment folder."""
    if tracking_uri:
        spec = parse_spec({**spec_doc(spec),
                           "tracking_uri": tracking_uri})
    uri = tracking.normalize_uri(spec.tracking_uri)
    spec = spec.model_copy(update={"tracking_uri": uri})
    path = experiment_dir(spec)
    if path.exists():
        raise ConfigError("name", f"{path} already exists; resume it (smartmixed sweep resume "
                          f"{path}) or choose another name (--set name=...)")
    if not path.parent.exists() and not path.parent.parent.exists():
        raise ConfigError("storage_path", f"{path.parent.parent} does not exist")
    if spec.search.algorithm == "grid":
        from sweeps.space import grid

        grid(spec)  # a range in a grid space is a spec error, reported now
    tracking.check_tracking(uri)
    c = tracking.client(uri)
    exp_id = tracking.ensure_experiment(c, spec.experiment, uri)
    spec_yaml = to_yaml(spec)
    run_id = tracking.create_sweep_run(c, exp_id, spec.name,
                                       flat_params(spec_doc(spec)), spec_yaml)
    path.mkdir(parents=True)
    (path / SPEC_FILE).write_text(spec_yaml)
    (path / STATE_FILE).write_text(json.dumps({"tracking_uri": uri, "experiment_id": exp_id,
                                               "sweep_run_id": run_id}, indent=1))
    ctx = SweepContext(spec_doc(spec), uri, exp_id, run_id)
    return spec, path, ctx


def locate(name_or_path: str, storage_path: str = "./ray_results") -> Path:
    """The experiment folder of a sweep given its folder or its name."""
    for cand in (Path(name_or_path), Path(storage_path) / name_or_path):
        if (cand / SPEC_FILE).is_file() and (cand / STATE_FILE).is_file():
            return cand.resolve()
    raise ConfigError("sweep", f"no sweep at {name_or_path!r} (looked for {SPEC_FILE} there and "
                      f"in {Path(storage_path) / name_or_path}); pass the sweep's folder")


def load_state(path: Path) -> tuple[SweepSpec, SweepContext]:
    spec = parse_spec(yaml.safe_load((path / SPEC_FILE).read_text()))
    state = json.loads((path / STATE_FILE).read_text())
    ctx = SweepContext(spec_doc(spec), state["tracking_uri"],
                       state["experiment_id"], state["sweep_run_id"])
    return spec, ctx


def execute(spec: SweepSpec, path: Path, ctx: SweepContext, *, address: str | None = None,
            restore: bool = False) -> SweepOutcome:
    """Run (or resume) the Tuner, then close leftover runs and the sweep run."""
    import ray

    started = _init_ray(address)
    c = tracking.client(ctx.tracking_uri)
    c.update_run(ctx.sweep_run_id, status="RUNNING")
    previous = signal.getsignal(signal.SIGINT)
    watch = (threading.current_thread() is threading.main_thread()
             and not int(os.getenv("TUNE_DISABLE_SIGINT_HANDLER", "0")))
    if watch:
        signal.signal(signal.SIGINT, _second_interrupt)
    try:
        results = _tuner(spec, ctx, path, restore).fit()
        trials = results._experiment_analysis.trials  # statuses are not public on ResultGrid
        errored = sum(1 for t in trials if t.status == "ERROR")
        # Ray's SIGINT handler puts back the handler it found (ours) once it has fired.
        interrupted = (watch and signal.getsignal(signal.SIGINT) is _second_interrupt) or any(
            t.status not in ("TERMINATED", "ERROR") for t in trials)
    except KeyboardInterrupt:
        interrupted, errored = True, 0
    finally:
        if watch:
            signal.signal(signal.SIGINT, previous)
        if started:
            ray.shutdown()
    reason = ("sweep interrupted; smartmixed sweep resume continues it" if interrupted
              else "stopped early by the scheduler")
    for kind in (schema.KIND_SEED, schema.KIND_TRIAL):
        runs = tracking.find_runs(c, ctx.experiment_id, kind, spec.name, status="RUNNING")
        tracking.close_running(c, runs, "KILLED", reason)
    c.set_terminated(ctx.sweep_run_id, "KILLED" if interrupted else "FINISHED")
    return SweepOutcome(spec, path, ctx, interrupted, errored)


def _second_interrupt(signum: int, frame: Any) -> None:
    """SIGINT handler in place while Ray runs (Ray's own handler wraps it)."""
    raise KeyboardInterrupt


def trial_rows(ctx: SweepContext, spec: SweepSpec) -> list[dict[str, Any]]:
    """One row per trial run: status, sampled params and seed-mean results, best first."""
    c = tracking.client(ctx.tracking_uri)
    rows = []
    for run in tracking.find_runs(c, ctx.experiment_id, schema.KIND_TRIAL, spec.name):
        m, p = run.data.metrics, run.data.params
        seeds = tracking.find_runs(c, ctx.experiment_id, schema.KIND_SEED, spec.name,
                                   trial=run.data.tags[schema.TAG_TRIAL], status="FINISHED")
        rows.append({
            "trial": run.data.tags[schema.TAG_TRIAL], "status": run.info.status,
            "method": p.get("method"), "architecture": p.get("architecture"),
            "params": {k[len(schema.SAMPLED_PREFIX):]: v for k, v in p.items()
                       if k.startswith(schema.SAMPLED_PREFIX)},
            "metric": m.get(f"{spec.search.metric}_mean", m.get(spec.search.metric)),
            "val_accuracy": m.get("val_accuracy_mean"),
            "val_accuracy_std": m.get("val_accuracy_std"),
            "test_accuracy": m.get("test_accuracy_mean"), "seeds_finished": len(seeds),
            "reason": run.data.tags.get(schema.TAG_STATUS_REASON, ""),
        })
    sign = -1 if spec.search.mode == "max" else 1
    rows.sort(key=lambda r: (r["status"] != "FINISHED",
                             sign * r["metric"] if r["metric"] is not None else 0.0))
    return rows
