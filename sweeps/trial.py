"""One trial = one configuration x every seed of the spec.

The trial trains its seeds the way ``smartmixed train`` does: together, as one model with a
seeds dimension (:func:`~smartmixed_core.runner.train_together`), every seed with its own
generators, so each seed's numbers equal ``smartmixed train --seeds <that seed>``.  After
every epoch (a round) the trial reports the seed means (to Ray, so ASHA can stop the trial,
and to MLflow).  Parallelism comes from running trials side by side (one CPU each).

Fault handling (docs/sweeps.md, "Failure handling"): seeds with a FINISHED MLflow run are
not retrained; the others continue from the trial's latest mid-run checkpoint (the
:class:`~smartmixed_core.runner.RunState` at a round boundary, reported to Ray with
``tune.report(..., checkpoint=...)`` and read back with ``tune.get_checkpoint()``), bit for
bit as if uninterrupted.  A non-finite loss fails the trial with the reason tagged on its
runs, and its retries fail at once without training.
"""

from __future__ import annotations

import logging
import os
import tempfile
import time
from collections.abc import Callable, Collection
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from smartmixed_core.errors import ConfigError
from smartmixed_core.runner import RunState, load_data, summarize, train_together
from smartmixed_core.training import NonFiniteLossError
from sweeps import schema, store, tracking
from sweeps.space import decode
from sweeps.spec import SweepSpec
from sweeps.specfile import parse_spec

CHECKPOINT_FILE = "trial_state.pt"
"""The file inside a Ray checkpoint of a trial (``torch.save`` of what
:meth:`TrialRun._train` reports)."""
CHECKPOINT_VERSION = 2
"""1: before the seeds dimension (per-seed or batched states); not resumed from."""
CHECKPOINT_ENV = "SMARTMIXED_CHECKPOINT_SECONDS"
DEFAULT_CHECKPOINT_SECONDS = 60.0
CHECKPOINT_OVERHEAD = 20
"""Checkpoints are at least this many times their own cost apart (<= 5% of the time),
unless the interval is 0 (every round)."""

Report = Callable[[dict[str, Any], "dict[str, Any] | None"], None]
"""``report(metrics, checkpoint)``: ``ray.tune.report`` inside Ray (checkpoint may be None)."""


REPORT_ENV = "SMARTMIXED_REPORT_SECONDS"
QUIET_ENV = "SMARTMIXED_QUIET"
"""Set (by ``sweep run``/``resume`` without --verbose): the trials keep Ray's INFO notices
out of the console."""
DEFAULT_REPORT_SECONDS = 2.0


def _seconds(env: str, default: float) -> float:
    try:
        return max(0.0, float(os.environ.get(env, default)))
    except ValueError:
        return default


def checkpoint_seconds() -> float:
    """Least time between two mid-run checkpoints of a trial: ``$SMARTMIXED_CHECKPOINT_SECONDS``
    or 60; 0 checkpoints every round (epoch)."""
    return _seconds(CHECKPOINT_ENV, DEFAULT_CHECKPOINT_SECONDS)


def report_seconds() -> float:
    """Least time between two progress reports of a trial (seed means to Ray, per-epoch trial
    metrics to MLflow, which are buffered in between): ``$SMARTMIXED_REPORT_SECONDS`` or 2;
    0 reports every epoch.  With a scheduler (ASHA) Ray gets every epoch regardless."""
    return _seconds(REPORT_ENV, DEFAULT_REPORT_SECONDS)


@dataclass(frozen=True)
class SweepContext:
    """What every trial needs to find its sweep (passed with ``tune.with_parameters``)."""

    spec: dict[str, Any]
    tracking_uri: str
    experiment_id: str
    sweep_run_id: str


class TrialFailed(RuntimeError):
    """The trial cannot produce a result (e.g. a seed hit a non-finite loss)."""


def _row(record: dict[str, Any]) -> dict[str, float]:
    """What a trial keeps of a seed's history record: the epoch and its reported metrics."""
    return {k: record[k] for k in ("epoch", *schema.EPOCH_METRICS)}


class _Record:
    """Seed callback: records the epoch."""

    def __init__(self, trial: TrialRun, seed: int):
        self.trial, self.seed = trial, seed

    def on_epoch_end(self, epoch: int, record: dict, model: object) -> None:
        self.trial.records[self.seed].append(_row(record))


def _mean(values: list[float]) -> float:
    return float(np.mean(values)) if values else float("nan")


class TrialRun:
    """Runs one trial; ``report(metrics, checkpoint)`` is ``ray.tune.report`` inside Ray.

    ``resume``: the latest checkpoint dict that this trial reported (None: start afresh).
    """

    def __init__(self, ctx: SweepContext, params: dict[str, Any], trial_id: str,
                 report: Report, resume: dict[str, Any] | None = None):
        self.ctx, self.trial_id, self.report = ctx, trial_id, report
        self.resume = resume
        self.seed_runs: dict[int, str] = {}
        self.interval = checkpoint_seconds()
        self._last_checkpoint, self._checkpoint_cost = time.monotonic(), 0.0
        self.report_interval = report_seconds()
        self._last_report = time.monotonic()
        self._pending: list[tuple[str, float, int]] = []  # per-epoch trial metrics, unsent
        self.resumed_after = -1
        self.first_attempt = False
        self.spec: SweepSpec = parse_spec(ctx.spec)
        self.every_epoch = self.report_interval == 0 or self.spec.scheduler is not None
        self.params = decode(params)
        self.cfg = self.spec.run_config(self.params)
        self.client = store.client(ctx.tracking_uri)
        self.records: dict[int, list[dict[str, float]]] = {}
        self.summaries: dict[int, dict[str, Any]] = {}
        self.errors: dict[int, BaseException] = {}
        self.abort_reason = ""
        self.state: RunState | None = None
        self._report_error: BaseException | None = None

    # -- MLflow helpers ------------------------------------------------------------------
    def _fail(self, run_id: str, reason: str) -> None:
        self.client.set_tag(run_id, schema.TAG_STATUS_REASON, reason)
        self.client.set_terminated(run_id, "FAILED")

    def run(self) -> dict[str, Any]:
        """Train the missing seeds, report per round, return the final seed-mean metrics."""
        ctx, name = self.ctx, self.spec.name
        self.run_id, last_step, self.first_attempt = tracking.open_trial_run(
            self.client, ctx.experiment_id, name, ctx.sweep_run_id, self.trial_id, self.cfg,
            self.params)
        if not self.first_attempt:  # a first attempt has no seed runs to look at
            reason = tracking.nonfinite_failure(self.client, ctx.experiment_id, name,
                                                self.trial_id)
            if reason:
                self._fail(self.run_id, reason)
                raise TrialFailed(reason)
            self.summaries = tracking.finished_seeds(self.client, ctx.experiment_id, name,
                                                     self.trial_id)
        for seed, summary in self.summaries.items():
            self.records[seed] = [_row(r) for r in summary["history"]]
        todo = [s for s in self.spec.seeds if s not in self.summaries]
        self.resumed_after = self._restore(todo)
        if self.resumed_after >= 0:
            self.client.set_tag(self.run_id, schema.TAG_RESUMED, str(self.resumed_after))
        try:
            if todo:
                with tracking.system_metrics(self.run_id, ctx.tracking_uri):
                    self._train(todo, last_step)
        finally:
            self._flush()  # also after a failure: the epochs it trained stay visible
        if self.errors:
            reason = self.abort_reason or str(next(iter(self.errors.values())))
            self._fail(self.run_id, reason)
            raise TrialFailed(reason)
        final = self._final()
        self.client.set_terminated(self.run_id, "FINISHED")
        self.report(final, None)  # Ray may end the trial right here
        return final

    # -- checkpoints ---------------------------------------------------------------------
    def _restore(self, todo: list[int]) -> int:
        """Load the unfinished seeds' state from the checkpoint; the epoch it had completed,
        or -1 (no usable checkpoint: they start from epoch 0).  The checkpoint must hold
        exactly ``todo`` (a state continues the seeds it was saved with)."""
        ckpt = self._usable_checkpoint(todo)
        if ckpt is None or list(ckpt.get("seeds", {})) != todo:
            return -1
        state = RunState.restore(ckpt["state"])
        for i, s in enumerate(todo):
            self.seed_runs[s] = ckpt["seeds"][s]["run_id"]
            self.records[s] = [_row(r) for r in (*state.histories[i],
                                                 *state.fit.seeds[i].history)]
        self.state = state
        return int(ckpt["epoch"])

    def _usable_checkpoint(self, todo: list[int]) -> dict[str, Any] | None:
        """The checkpoint to resume from, if there is one of this version and seeds are left
        to train."""
        ckpt = self.resume
        if not ckpt or not todo or ckpt.get("version") != CHECKPOINT_VERSION:
            return None
        return ckpt

    def _end_round(self, epoch: int, last_step: int,
                   checkpoint: Callable[[int], dict[str, Any] | None],
                   latest: Collection[int] = ()) -> None:
        """Report the round, with ``checkpoint(epoch)`` when one is due (its cost sets how long
        until the next; see :data:`CHECKPOINT_OVERHEAD`)."""
        t0 = time.monotonic()
        ckpt = checkpoint(epoch) if self._checkpoint_due() else None
        self._report_round(epoch, logged=epoch <= last_step, checkpoint=ckpt, latest=latest)
        if ckpt is not None:
            self._last_checkpoint = time.monotonic()
            self._checkpoint_cost = self._last_checkpoint - t0

    def _checkpoint_due(self) -> bool:
        if self.interval == 0:
            return True
        wait = max(self.interval, CHECKPOINT_OVERHEAD * self._checkpoint_cost)
        return time.monotonic() - self._last_checkpoint >= wait

    def _open_seed_run(self, seed: int, resumed_after: int) -> str:
        """The seed's run: the checkpoint's run reopened, or a new one."""
        c, exp, name = self.client, self.ctx.experiment_id, self.spec.name
        run_id = None
        if seed in self.seed_runs and resumed_after >= 0:
            run_id = tracking.reopen_seed_run(c, exp, name, self.trial_id, seed,
                                              self.seed_runs[seed], resumed_after)
        if run_id is None:
            run_id = tracking.start_seed_run(c, exp, name, self.trial_id, self.run_id, seed,
                                             self.cfg, first_attempt=self.first_attempt)
        self.seed_runs[seed] = run_id
        return run_id

    # -- training ----------------------------------------------------------------------
    def _train(self, todo: list[int], last_step: int) -> None:
        """Train ``todo`` together (docs/sweeps.md, "How a trial runs"): report and
        checkpoint after every round, one seed run per seed."""
        data = load_data(self.cfg, todo)
        state = self.state or RunState()
        for seed in todo:
            self.records.setdefault(seed, [])
        runs: dict[int, str] = {}

        def on_round(r: int) -> None:
            self._end_round(r, last_step, lambda epoch: {
                "version": CHECKPOINT_VERSION, "trial": self.trial_id, "epoch": epoch,
                "seeds": {s: {"run_id": runs[s]} for s in todo}, "state": state.snapshot()},
                latest=todo)

        try:
            for seed in todo:
                runs[seed] = self._open_seed_run(seed, self.resumed_after)
            outcomes = train_together(self.cfg, todo, data, [[_Record(self, s)] for s in todo],
                                      state=state, on_round=on_round)
        except NonFiniteLossError as exc:
            culprit = exc.seed if exc.seed in runs else todo[0]
            self.errors[culprit] = exc
            self.abort_reason = f"seed {culprit}: {exc}"
            for seed, run_id in runs.items():
                self._fail(run_id, f"{tracking.NONFINITE} loss: {exc}" if seed == culprit
                           else f"aborted: {self.abort_reason}")
            return
        except Exception as exc:  # a crash: fails the trial with the reason on its runs
            if exc is self._report_error:  # e.g. Ray stopping the trial
                raise
            self.errors[todo[0]] = exc
            self.abort_reason = f"{type(exc).__name__}: {exc}"
            for run_id in runs.values():
                self._fail(run_id, self.abort_reason)
            return
        for seed, outcome in zip(todo, outcomes):
            tracking.finish_seed_run(self.client, runs[seed], self.cfg, outcome)
            self.summaries[seed] = outcome.summary

    def _report_round(self, epoch: int, logged: bool,
                      checkpoint: dict[str, Any] | None = None,
                      latest: Collection[int] = ()) -> None:
        """Seed means of this epoch (for the seeds in ``latest``, those in training: their
        latest record); seeds that stopped early carry their last record.

        Sent at most every :func:`report_seconds` (the MLflow metrics are buffered, never
        dropped), and always with a checkpoint, after the buffer is written: whatever a
        checkpoint covers is in MLflow before Ray holds the checkpoint."""
        rows = [recs[-1 if seed in latest else min(epoch, len(recs) - 1)]
                for seed, recs in self.records.items() if recs]
        metrics: dict[str, Any] = {k: _mean([r[k] for r in rows]) for k in schema.EPOCH_METRICS}
        if not logged:
            self._pending += [(schema.epoch_metric(k), v, epoch) for k, v in metrics.items()]
        due = time.monotonic() - self._last_report >= self.report_interval
        if checkpoint is not None or due or self.every_epoch:
            self._flush()
            try:
                self.report({**metrics, "epoch": epoch, "final": False}, checkpoint)
            except BaseException as exc:  # e.g. Ray stopping the trial: not a training failure
                self._report_error = exc
                raise
            self._last_report = time.monotonic()

    def _flush(self) -> None:
        """Write the buffered per-epoch trial metrics to MLflow."""
        if self._pending:
            tracking.log_metrics(self.client, self.run_id, self._pending)
            self._pending = []

    def _final(self) -> dict[str, Any]:
        seeds = [self.summaries[s] for s in self.spec.seeds]
        summary = summarize(seeds)
        val_loss = []
        for s in seeds:
            best = {r["epoch"]: r["val_loss"] for r in s["history"]}
            val_loss.append(best.get(s.get("best_epoch"), s["history"][-1]["val_loss"]))
        summary["val_loss_mean"] = _mean(val_loss)
        tracking.log_metrics(self.client, self.run_id, [
            (k, v, 0) for k, v in summary.items() if isinstance(v, (int, float))])
        epochs = max(len(s["history"]) for s in seeds)
        return {"val_accuracy": summary["val_accuracy_mean"], "val_loss": summary["val_loss_mean"],
                "test_accuracy": summary["test_accuracy_mean"],
                "test_f1_macro": summary["test_f1_macro_mean"],
                "val_accuracy_std": summary["val_accuracy_std"],
                "epoch": epochs, "final": True, "mlflow_run_id": self.run_id}


def smartmixed_trial(config: dict[str, Any], ctx: SweepContext) -> None:
    """The Ray Tune function trainable (``config`` = sampled params, or ``{"trial": {...}}``
    for the grid)."""
    from ray import tune
    if os.environ.get(QUIET_ENV):  # "Checkpoint successfully created at ..." every epoch
        logging.getLogger("ray.train._internal.storage").setLevel(logging.WARNING)
    torch.set_num_threads(max(1, int(ctx.spec.get("resources", {}).get("cpu", 1))))
    params = config.get("trial", config)
    trial_id = tune.get_context().get_trial_id()
    resume = None
    checkpoint = tune.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as folder:
            path = Path(folder) / CHECKPOINT_FILE
            if path.is_file():
                resume = torch.load(path, map_location="cpu", weights_only=True)
    try:
        TrialRun(ctx, params, trial_id, _ray_report, resume).run()
    except ConfigError as exc:  # plain message: Ray copies the exception
        raise TrialFailed(str(exc)) from None


def _ray_report(metrics: dict[str, Any], checkpoint: dict[str, Any] | None) -> None:
    """``tune.report``, with the checkpoint dict saved in a folder Ray persists."""
    from ray import tune

    if checkpoint is None:
        tune.report(metrics)
        return
    with tempfile.TemporaryDirectory() as folder:
        torch.save(checkpoint, Path(folder) / CHECKPOINT_FILE)
        tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(folder))
