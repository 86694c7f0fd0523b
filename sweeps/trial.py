"""One trial = one configuration x every seed of the spec, run in lockstep.

Each seed trains in its own thread, but only one thread runs at a time: they take turns of
one epoch each (a round), and after every round the trial's own thread aggregates the seeds'
records and reports the seed means (to Ray, so ASHA can stop the trial, and to MLflow).
Why turns instead of free-running threads: the core draws Gumbel noise from torch's global
generator, which threads would share; each seed's generator state is swapped in and out at
its turn boundaries, so every seed's numbers equal a standalone ``train_seed(cfg, seed)``
bit for bit.  Parallelism comes from running trials side by side (one CPU each), which for
these small networks beats intra-trial threads that would fight over the GIL anyway.

Fault handling: seeds with a FINISHED MLflow run are not retrained (seed-level checkpoints,
see docs/sweeps.md); a non-finite loss fails the trial with the reason tagged on its runs,
and its retries fail at once without training.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from smartmixed_core.errors import ConfigError
from smartmixed_core.runner import load_data, summarize, train_seed
from smartmixed_core.training import NonFiniteLossError
from sweeps import schema, tracking
from sweeps.space import decode
from sweeps.spec import SweepSpec, parse_spec

REPORTER = "reporter"


@dataclass(frozen=True)
class SweepContext:
    """What every trial needs to find its sweep (passed with ``tune.with_parameters``)."""

    spec: dict[str, Any]
    tracking_uri: str
    experiment_id: str
    sweep_run_id: str


class TrialFailed(RuntimeError):
    """The trial cannot produce a result (e.g. a seed hit a non-finite loss)."""


class _Aborted(Exception):
    """Raised inside a seed thread to unwind it when the trial is failing."""


class Turns:
    """Round-robin token among members; a member leaves when done."""

    def __init__(self, members: list[Any]):
        self._order = list(members)
        self._current = 0
        self._cond = threading.Condition()

    def wait(self, member: Any) -> None:
        with self._cond:
            self._cond.wait_for(lambda: self._order[self._current] == member)

    def pass_on(self, member: Any) -> None:
        with self._cond:
            self._current = (self._order.index(member) + 1) % len(self._order)
            self._cond.notify_all()

    def leave(self, member: Any) -> None:
        with self._cond:
            i = self._order.index(member)
            self._order.pop(i)
            self._current = i % len(self._order) if self._order else 0
            self._cond.notify_all()

    def members(self) -> list[Any]:
        with self._cond:
            return list(self._order)


class _RngState:
    """Swap torch's global generator state(s) in and out for one seed."""

    def __init__(self) -> None:
        self.cpu: torch.Tensor | None = None
        self.cuda: list[torch.Tensor] | None = None

    def save(self) -> None:
        self.cpu = torch.get_rng_state()
        self.cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else None

    def load(self) -> None:
        if self.cpu is not None:
            torch.set_rng_state(self.cpu)
        if self.cuda is not None:
            torch.cuda.set_rng_state_all(self.cuda)


class _Yield:
    """Seed callback: records the epoch, then yields the turn until the next round."""

    def __init__(self, trial: TrialRun, seed: int):
        self.trial, self.seed, self.rng = trial, seed, _RngState()

    def on_epoch_end(self, epoch: int, record: dict, model: object) -> None:
        self.trial.records[self.seed].append(
            {k: record[k] for k in ("epoch", *schema.EPOCH_METRICS)})
        self.rng.save()
        self.trial.turns.pass_on(self.seed)
        self.trial.turns.wait(self.seed)
        self.rng.load()
        if self.trial.abort_reason:
            raise _Aborted(self.trial.abort_reason)


def _mean(values: list[float]) -> float:
    return float(np.mean(values)) if values else float("nan")


class TrialRun:
    """Runs one trial; ``report(metrics)`` is ``ray.tune.report`` inside Ray."""

    def __init__(self, ctx: SweepContext, params: dict[str, Any], trial_id: str,
                 report: Callable[[dict[str, Any]], None]):
        self.ctx, self.trial_id, self.report = ctx, trial_id, report
        self.spec: SweepSpec = parse_spec(ctx.spec)
        self.params = decode(params)
        self.cfg = self.spec.run_config(self.params)
        self.client = tracking.client(ctx.tracking_uri)
        self.records: dict[int, list[dict[str, float]]] = {}
        self.summaries: dict[int, dict[str, Any]] = {}
        self.errors: dict[int, BaseException] = {}
        self.abort_reason = ""
        self.turns = Turns([])

    # -- MLflow helpers ------------------------------------------------------------------
    def _fail(self, run_id: str, reason: str) -> None:
        self.client.set_tag(run_id, schema.TAG_STATUS_REASON, reason)
        self.client.set_terminated(run_id, "FAILED")

    def run(self) -> dict[str, Any]:
        """Train the missing seeds, report per round, return the final seed-mean metrics."""
        ctx, name = self.ctx, self.spec.name
        self.run_id, last_step = tracking.open_trial_run(
            self.client, ctx.experiment_id, name, ctx.sweep_run_id, self.trial_id, self.cfg,
            self.params)
        reason = tracking.nonfinite_failure(self.client, ctx.experiment_id, name, self.trial_id)
        if reason:
            self._fail(self.run_id, reason)
            raise TrialFailed(reason)
        self.summaries = tracking.finished_seeds(self.client, ctx.experiment_id, name,
                                                 self.trial_id)
        for seed, summary in self.summaries.items():
            self.records[seed] = [{k: r[k] for k in ("epoch", *schema.EPOCH_METRICS)}
                                  for r in summary["history"]]
        todo = [s for s in self.spec.seeds if s not in self.summaries]
        self._lockstep(todo, last_step)
        if self.errors:
            reason = self.abort_reason or str(next(iter(self.errors.values())))
            self._fail(self.run_id, reason)
            raise TrialFailed(reason)
        final = self._final()
        self.client.set_terminated(self.run_id, "FINISHED")
        self.report(final)  # Ray may end the trial right here
        return final

    # -- lockstep ------------------------------------------------------------------------
    def _lockstep(self, todo: list[int], last_step: int) -> None:
        data = load_data(self.cfg) if todo else None
        self.turns = Turns([*todo, REPORTER])
        for seed in todo:
            self.records[seed] = []
        threads = [threading.Thread(target=self._seed_main, args=(seed, data), daemon=True,
                                    name=f"seed-{seed}") for seed in todo]
        for t in threads:
            t.start()
        epoch = 0
        while True:
            self.turns.wait(REPORTER)
            if self.errors and not self.abort_reason:
                seed, exc = next(iter(self.errors.items()))
                self.abort_reason = f"seed {seed}: {exc}"
            if self.turns.members() == [REPORTER]:
                break
            if not self.abort_reason and any(len(self.records[s]) > epoch for s in todo):
                self._report_round(epoch, logged=epoch <= last_step)
                epoch += 1
            self.turns.pass_on(REPORTER)
        for t in threads:
            t.join()

    def _seed_main(self, seed: int, data: Any) -> None:
        self.turns.wait(seed)
        run_id = None
        try:
            run_id = tracking.start_seed_run(self.client, self.ctx.experiment_id, self.spec.name,
                                             self.trial_id, self.run_id, seed, self.cfg)
            outcome = train_seed(self.cfg, seed, data, callbacks=[_Yield(self, seed)])
            tracking.finish_seed_run(self.client, run_id, self.cfg, outcome)
            self.summaries[seed] = outcome.summary
        except _Aborted as exc:
            self.errors[seed] = exc
            if run_id:
                self._fail(run_id, f"aborted: {exc}")
        except NonFiniteLossError as exc:
            self.errors[seed] = exc
            if run_id:
                self._fail(run_id, f"{tracking.NONFINITE} loss: {exc}")
        except BaseException as exc:  # report any crash through the trial, never hang
            self.errors[seed] = exc
            if run_id:
                self._fail(run_id, f"{type(exc).__name__}: {exc}")
        finally:
            self.turns.leave(seed)

    def _report_round(self, epoch: int, logged: bool) -> None:
        """Seed means of this epoch; seeds that stopped early carry their last record."""
        rows = [recs[min(epoch, len(recs) - 1)] for recs in self.records.values() if recs]
        metrics: dict[str, Any] = {k: _mean([r[k] for r in rows]) for k in schema.EPOCH_METRICS}
        if not logged:
            tracking.log_metrics(self.client, self.run_id,
                                 [(k, v, epoch) for k, v in metrics.items()])
        self.report({**metrics, "epoch": epoch, "final": False})

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
        return {"val_accuracy": summary["val_accuracy_mean"], "val_loss": _mean(val_loss),
                "test_accuracy": summary["test_accuracy_mean"],
                "test_f1_macro": summary["test_f1_macro_mean"],
                "val_accuracy_std": summary["val_accuracy_std"],
                "epoch": epochs, "final": True, "mlflow_run_id": self.run_id}


def smartmixed_trial(config: dict[str, Any], ctx: SweepContext) -> None:
    """The Ray Tune function trainable (``config`` = sampled params, or ``{"trial": {...}}``
    for the grid)."""
    from ray import tune
    torch.set_num_threads(max(1, int(ctx.spec.get("resources", {}).get("cpu", 1))))
    params = config.get("trial", config)
    trial_id = tune.get_context().get_trial_id()
    try:
        TrialRun(ctx, params, trial_id, tune.report).run()
    except ConfigError as exc:  # plain message: Ray copies the exception
        raise TrialFailed(str(exc)) from None
