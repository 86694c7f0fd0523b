"""The Ray Tune side of a sweep: the searcher (one Optuna study per ``search.per`` cell, in
the sweep's journal), and the Tuner that runs or restores them with the trainable
(:func:`sweeps.trial.smartmixed_trial`)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from smartmixed_core.config import RunConfig
from sweeps.redact import tracking_env
from sweeps.space import DefineByRun, cell_label, grid
from sweeps.spec import SweepSpec
from sweeps.trial import CONSOLE_ENV, SweepContext, smartmixed_trial

JOURNAL_FILE = "optuna-journal.log"
"""The Optuna study (JournalFileStorage), study name = sweep name."""


def study_names(spec: SweepSpec) -> list[str]:
    """The Optuna studies of a sweep: its name, or ``NAME/CELL`` for each ``search.per`` cell."""
    if not spec.search.per:
        return [spec.name]
    return [f"{spec.name}/{cell_label(cell)}" for cell in spec.search.cells()]


def _searcher(spec: SweepSpec, path: Path) -> Any:
    if spec.search.algorithm == "grid":
        return None
    import optuna
    from ray.tune.search import ConcurrencyLimiter

    from sweeps.searcher import PerCellSearch, ResumableOptunaSearch, journal_storage

    def one(cell: dict[str, Any], study: str) -> ResumableOptunaSearch:
        sampler = (optuna.samplers.RandomSampler(seed=spec.search.seed)
                   if spec.search.algorithm == "random"
                   else optuna.samplers.TPESampler(seed=spec.search.seed))
        return ResumableOptunaSearch(space=DefineByRun(spec, cell), metric=spec.search.metric,
                                     mode=spec.search.mode, sampler=sampler, study_name=study,
                                     storage=journal_storage(path / JOURNAL_FILE))

    searches = [one(c, n) for c, n in zip(spec.search.cells(), study_names(spec))]
    search: Any = searches[0]  # without search.per: one cell ({}), one study (the sweep's name)
    if spec.search.per:
        search = PerCellSearch(searches, spec.search.num_samples, spec.search.metric,
                               spec.search.mode)
    if spec.max_concurrent:
        return ConcurrencyLimiter(search, max_concurrent=spec.max_concurrent)
    return search


def total_trials(spec: SweepSpec) -> int:
    """How many trials the sweep runs: the grid's size, or ``num_samples`` per cell."""
    if spec.search.algorithm == "grid":
        return len(grid(spec))
    return spec.search.num_samples * len(spec.search.cells())


def _concurrency(spec: SweepSpec) -> int:
    """Trials at once: ``max_concurrent``, or as many as this machine's CPUs hold."""
    fit = max(1, int((os.cpu_count() or 1) // max(spec.resources.cpu, 1e-9)))
    return min(spec.max_concurrent or fit, fit)


def build_tuner(spec: SweepSpec, ctx: SweepContext, path: Path, restore: bool,
           verbose: bool = False) -> Any:
    from ray import tune

    from sweeps.progress import SweepProgress, TrialStatuses

    env = {**tracking_env(), **{k: os.environ[k] for k in CONSOLE_ENV if k in os.environ}}
    fn = tune.with_resources(tune.with_parameters(smartmixed_trial, ctx=ctx, env=env),
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
    # grid (or a fixed configuration): the factorial as one grid axis, sampled once
    param_space = {"trial": tune.grid_search(grid(spec))} if searcher is None else {}
    tune_config = tune.TuneConfig(
        search_alg=searcher, scheduler=scheduler,
        num_samples=1 if searcher is None else total_trials(spec),
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
