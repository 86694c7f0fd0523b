"""A trial's rounds: after every epoch the seed means go to Ray (throttled, so ASHA and the
searcher see progress) and onto the trial run in MLflow (buffered between reports, never
dropped); at the end, the seed-mean final metrics."""

from __future__ import annotations

import time
from collections.abc import Callable, Collection
from typing import Any

import numpy as np
from mlflow import MlflowClient

from smartmixed_core.runner import summarize
from sweeps import schema, tracking
from sweeps.store import env_seconds

Report = Callable[[dict[str, Any], "dict[str, Any] | None"], None]
"""``report(metrics, checkpoint)``: ``ray.tune.report`` inside Ray (checkpoint may be None)."""

REPORT_ENV = "SMARTMIXED_REPORT_SECONDS"
"""Least seconds between two progress reports of a trial (seed means to Ray, per-epoch trial
metrics to MLflow, which are buffered in between); default 2, 0 reports every epoch.  With a
scheduler (ASHA) Ray gets every epoch regardless."""
DEFAULT_REPORT_SECONDS = 2.0


def row(record: dict[str, Any]) -> dict[str, float]:
    """What a trial keeps of a seed's history record: the epoch and its reported metrics."""
    return {k: record[k] for k in ("epoch", *schema.EPOCH_METRICS)}


def mean(values: list[float]) -> float:
    return float(np.mean(values)) if values else float("nan")


class _Record:
    """Seed callback: keeps the seed's record of each epoch."""

    def __init__(self, rows: list[dict[str, float]]):
        self.rows = rows

    def on_epoch_end(self, epoch: int, record: dict, model: object) -> None:
        self.rows.append(row(record))


class Rounds:
    """The per-epoch records of a trial's seeds, and what is sent of them."""

    def __init__(self, client: MlflowClient, run_id: str, report: Report, *,
                 every_epoch: bool = False):
        self.client, self.run_id, self.report = client, run_id, report
        self.records: dict[int, list[dict[str, float]]] = {}
        self.interval = env_seconds(REPORT_ENV, DEFAULT_REPORT_SECONDS)
        self.every_epoch = every_epoch or self.interval == 0
        self.report_error: BaseException | None = None
        """The exception ``report`` raised (e.g. Ray stopping the trial): not a failure."""
        self._last = time.monotonic()
        self._pending: list[tuple[str, float, int]] = []  # per-epoch trial metrics, unsent

    def keep(self, seed: int, history: list[dict[str, Any]]) -> None:
        """The seed's records so far (a finished seed, or one restored from a checkpoint)."""
        self.records[seed] = [row(r) for r in history]

    def callback(self, seed: int) -> _Record:
        """The callback that records the seed's epochs as it trains."""
        return _Record(self.records.setdefault(seed, []))

    def end(self, epoch: int, logged: bool, checkpoint: dict[str, Any] | None = None,
            latest: Collection[int] = ()) -> None:
        """Seed means of this epoch (for the seeds in ``latest``, those in training: their
        latest record); seeds that stopped early carry their last record.  ``logged``: the
        trial run has this epoch already (a retry repeating it).

        Sent at most every :data:`REPORT_ENV` seconds, and always with a checkpoint, after the
        buffer is written: whatever a checkpoint covers is in MLflow before Ray holds it."""
        rows = [recs[-1 if seed in latest else min(epoch, len(recs) - 1)]
                for seed, recs in self.records.items() if recs]
        metrics: dict[str, Any] = {k: mean([r[k] for r in rows]) for k in schema.EPOCH_METRICS}
        if not logged:
            self._pending += [(schema.epoch_metric(k), v, epoch) for k, v in metrics.items()]
        due = time.monotonic() - self._last >= self.interval
        if checkpoint is not None or due or self.every_epoch:
            self.flush()
            try:
                self.report({**metrics, "epoch": epoch, "final": False}, checkpoint)
            except BaseException as exc:
                self.report_error = exc
                raise
            self._last = time.monotonic()

    def flush(self) -> None:
        """Write the buffered per-epoch trial metrics to MLflow."""
        if self._pending:
            tracking.log_metrics(self.client, self.run_id, self._pending)
            self._pending = []

    def final(self, seeds: list[dict[str, Any]]) -> dict[str, Any]:
        """Log the seed-mean final metrics of the seeds' summaries on the trial run, with the
        per-epoch metrics still buffered (one MLflow call); return the final report (what the
        searcher receives)."""
        summary = summarize(seeds)
        val_loss = []
        for s in seeds:
            best = {r["epoch"]: r["val_loss"] for r in s["history"]}
            val_loss.append(best.get(s.get("best_epoch"), s["history"][-1]["val_loss"]))
        summary["val_loss_mean"] = mean(val_loss)
        tracking.log_metrics(self.client, self.run_id, [*self._pending, *(
            (k, v, 0) for k, v in summary.items() if isinstance(v, (int, float)))])
        self._pending = []
        epochs = max(len(s["history"]) for s in seeds)
        return {"val_accuracy": summary["val_accuracy_mean"], "val_loss": summary["val_loss_mean"],
                "test_accuracy": summary["test_accuracy_mean"],
                "test_f1_macro": summary["test_f1_macro_mean"],
                "val_accuracy_std": summary["val_accuracy_std"],
                "epoch": epochs, "final": True, "mlflow_run_id": self.run_id}
