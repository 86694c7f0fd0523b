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
from dataclasses import dataclass
from typing import Any

import torch

from smartmixed_core.errors import ConfigError
from smartmixed_core.runner import RunState, load_data, train_together
from smartmixed_core.training import NonFiniteLossError
from sweeps import checkpoints, schema, store, tracking
from sweeps.redact import PASSWORD_ENV, USERNAME_ENV
from sweeps.rounds import Report, Rounds
from sweeps.space import decode
from sweeps.spec import SweepSpec
from sweeps.specfile import parse_spec

QUIET_ENV = "SMARTMIXED_QUIET"
"""Set (by ``sweep run``/``resume`` without --verbose): the trials keep Ray's and MLflow's
INFO notices out of the console."""

CONSOLE_ENV = (QUIET_ENV, "MLFLOW_LOGGING_LEVEL", "MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT")
"""The driver's console settings that the trials receive with the credentials (workers on a
cluster do not inherit the driver's environment): without them, each finished run of a sweep
against a tracking server printed MLflow's two "View run" lines into the console."""


@dataclass(frozen=True)
class SweepContext:
    """What every trial needs to find its sweep (passed with ``tune.with_parameters``)."""

    spec: dict[str, Any]
    tracking_uri: str
    experiment_id: str
    sweep_run_id: str


class TrialFailed(RuntimeError):
    """The trial cannot produce a result (e.g. a seed hit a non-finite loss)."""


class TrialRun:
    """Runs one trial: which seeds to train, their MLflow seed runs, and the trial's outcome.
    Rounds (reports and per-epoch metrics) are :class:`~sweeps.rounds.Rounds`; checkpoints
    :mod:`sweeps.checkpoints`.

    ``report(metrics, checkpoint)`` is ``ray.tune.report`` inside Ray; ``resume`` the latest
    checkpoint dict that this trial reported (None: start afresh).
    """

    def __init__(self, ctx: SweepContext, params: dict[str, Any], trial_id: str,
                 report: Report, resume: dict[str, Any] | None = None):
        self.ctx, self.trial_id, self.report = ctx, trial_id, report
        self.resume = resume
        self.seed_runs: dict[int, str] = {}  # the checkpoint's seed runs, to reopen
        self.throttle = checkpoints.Throttle()
        self.resumed_after = -1
        self.first_attempt = False
        self.spec: SweepSpec = parse_spec(ctx.spec)
        self.params = decode(params)
        self.cfg = self.spec.run_config(self.params)
        self.client = store.client(ctx.tracking_uri)
        self.summaries: dict[int, dict[str, Any]] = {}
        self.abort_reason = ""  # why training failed (set with the seed runs FAILED)
        self.state: RunState | None = None

    def _fail(self, run_id: str, reason: str) -> None:
        self.client.set_tag(run_id, schema.TAG_STATUS_REASON, reason)
        self.client.set_terminated(run_id, "FAILED")

    def run(self) -> dict[str, Any]:
        """Train the missing seeds, report per round, return the final seed-mean metrics."""
        ctx, name = self.ctx, self.spec.name
        self.run_id, last_step, self.first_attempt = tracking.open_trial_run(
            self.client, ctx.experiment_id, name, ctx.sweep_run_id, self.trial_id, self.cfg,
            self.params)
        self.rounds = Rounds(self.client, self.run_id, self.report,
                             every_epoch=self.spec.scheduler is not None)
        if not self.first_attempt:  # a first attempt has no seed runs to look at
            reason = tracking.nonfinite_failure(self.client, ctx.experiment_id, name,
                                                self.trial_id)
            if reason:
                self._fail(self.run_id, reason)
                raise TrialFailed(reason)
            self.summaries = tracking.finished_seeds(self.client, ctx.experiment_id, name,
                                                     self.trial_id)
        for seed, summary in self.summaries.items():
            self.rounds.keep(seed, summary["history"])
        todo = [s for s in self.spec.seeds if s not in self.summaries]
        self.resumed_after = self._restore(todo)
        if self.resumed_after >= 0:
            self.client.set_tag(self.run_id, schema.TAG_RESUMED, str(self.resumed_after))
        try:
            if todo:
                with tracking.system_metrics(self.run_id, ctx.tracking_uri,
                                             resume=not self.first_attempt):
                    self._train(todo, last_step)
        except BaseException:
            self.rounds.flush()  # the epochs it trained stay visible
            raise
        if self.abort_reason:
            self.rounds.flush()
            self._fail(self.run_id, self.abort_reason)
            raise TrialFailed(self.abort_reason)
        final = self.rounds.final([self.summaries[s] for s in self.spec.seeds])
        self.client.set_terminated(self.run_id, "FINISHED")
        self.report(final, None)  # Ray may end the trial right here
        return final

    def _restore(self, todo: list[int]) -> int:
        """Continue the unfinished seeds from the checkpoint: the epoch it had completed, or
        -1 (no usable checkpoint: they start from epoch 0)."""
        restored = checkpoints.restore(self.resume, todo)
        if restored is None:
            return -1
        self.state, runs, epoch = restored
        for i, s in enumerate(todo):
            self.seed_runs[s] = runs[s]
            self.rounds.keep(s, [*self.state.histories[i], *self.state.fit.seeds[i].history])
        return epoch

    def _open_seed_run(self, seed: int) -> str:
        """The seed's run: the checkpoint's run reopened, or a new one."""
        c, exp, name = self.client, self.ctx.experiment_id, self.spec.name
        run_id = None
        if seed in self.seed_runs and self.resumed_after >= 0:
            run_id = tracking.reopen_seed_run(c, exp, name, self.trial_id, seed,
                                              self.seed_runs[seed], self.resumed_after)
        if run_id is None:
            run_id = tracking.start_seed_run(c, exp, name, self.trial_id, self.run_id, seed,
                                             self.cfg, first_attempt=self.first_attempt)
        return run_id

    def _train(self, todo: list[int], last_step: int) -> None:
        """Train ``todo`` together (docs/sweeps.md, "How a trial runs"): report and
        checkpoint after every round, one seed run per seed."""
        data = load_data(self.cfg, todo)
        state = self.state or RunState()
        runs: dict[int, str] = {}

        def on_round(epoch: int) -> None:
            self.throttle.send(
                lambda: checkpoints.make(self.trial_id, epoch, runs, state),
                lambda ckpt: self.rounds.end(epoch, logged=epoch <= last_step,
                                             checkpoint=ckpt, latest=todo))

        try:
            for seed in todo:
                runs[seed] = self._open_seed_run(seed)
            outcomes = train_together(self.cfg, todo, data,
                                      [[self.rounds.callback(s)] for s in todo],
                                      state=state, on_round=on_round)
        except NonFiniteLossError as exc:
            culprit = exc.seed if exc.seed in runs else todo[0]
            self.abort_reason = f"seed {culprit}: {exc}"
            for seed, run_id in runs.items():
                self._fail(run_id, f"{tracking.NONFINITE} loss: {exc}" if seed == culprit
                           else f"aborted: {self.abort_reason}")
            return
        except Exception as exc:  # a crash: fails the trial with the reason on its runs
            if exc is self.rounds.report_error:  # e.g. Ray stopping the trial
                raise
            self.abort_reason = f"{type(exc).__name__}: {exc}"
            for run_id in runs.values():
                self._fail(run_id, self.abort_reason)
            return
        for seed, outcome in zip(todo, outcomes):
            tracking.finish_seed_run(self.client, runs[seed], self.cfg, outcome)
            self.summaries[seed] = outcome.summary


def smartmixed_trial(config: dict[str, Any], ctx: SweepContext, env: dict[str, str]) -> None:
    """The Ray Tune function trainable (``config`` = sampled params, or ``{"trial": {...}}``
    for the grid).  ``env``: the MLflow credential variables and the console settings
    (:data:`CONSOLE_ENV`) handed over by the driver (a Ray worker on another node does not
    inherit them)."""
    from ray import tune

    for key in (USERNAME_ENV, PASSWORD_ENV):  # a reused worker may hold an earlier sweep's
        os.environ.pop(key, None)
    os.environ.update(env)
    if os.environ.get(QUIET_ENV):  # "Checkpoint successfully created at ..." every epoch
        logging.getLogger("ray.train._internal.storage").setLevel(logging.WARNING)
        logging.getLogger("mlflow").setLevel(logging.WARNING)  # loaded before the env arrived
    torch.set_num_threads(max(1, int(ctx.spec.get("resources", {}).get("cpu", 1))))
    params = config.get("trial", config)
    trial_id = tune.get_context().get_trial_id()
    try:
        TrialRun(ctx, params, trial_id, checkpoints.ray_report, checkpoints.from_ray()).run()
    except ConfigError as exc:  # plain message: Ray copies the exception
        raise TrialFailed(str(exc)) from None
