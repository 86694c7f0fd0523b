"""What a sweep shows while it runs: one view of the whole sweep instead of Ray's boxes.

Trials done / running / failed out of the total, elapsed time and an estimate of what is
left, and the best seed-mean result so far of each method with its configuration.  On a
terminal it is one live table (rich) that redraws in place; when the output goes to a file
(a cluster job, ``nohup``) it is one line per finished trial and one every
``LOG_EVERY_SECONDS``.  Ray's own trial tables come back with ``sweep run --verbose``.
A Ray Tune callback: it runs in the driver and reads what Ray already has (no MLflow calls).
"""

from __future__ import annotations

import sys
import time
from typing import Any, ClassVar

from ray.tune import Callback

from sweeps.mlflow_ui import describe

LOG_EVERY_SECONDS = 60.0


def _duration(seconds: float) -> str:
    seconds = round(seconds)
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}h{m:02d}m" if h else f"{m}m{s:02d}s" if m else f"{s}s"


def trial_params(config: dict[str, Any]) -> dict[str, Any]:
    """The sampled values of a trial's Ray config (grid trials nest them under ``trial``)."""
    inner = config.get("trial")
    return dict(inner) if isinstance(inner, dict) else dict(config)


class SweepProgress(Callback):
    """The sweep's progress for ``total`` trials, optimising ``metric`` (``mode``).

    Picklable (Ray saves it with the experiment and gives it back on ``sweep resume``):
    the counters and the live view start again in :meth:`setup`."""

    def __init__(self, name: str, total: int, metric: str, mode: str, concurrency: int):
        self.name, self.total, self.metric, self.mode = name, total, metric, mode
        self.concurrency = max(1, concurrency)
        self.setup()  # the live view starts with Ray's own call of setup()

    def __getstate__(self) -> dict[str, Any]:
        return {k: self.__dict__[k] for k in ("name", "total", "metric", "mode", "concurrency")}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self.setup()

    # -- Ray Tune hooks --------------------------------------------------------------------
    def setup(self, **info: Any) -> None:
        self.started = self.last_line = time.monotonic()
        self.running: set[str] = set()
        self.done = self.failed = 0
        self.trial_seconds: list[float] = []
        self.begun: dict[str, float] = {}
        self.best: dict[str, tuple[float, str]] = {}
        self.live: Any = None
        if info and sys.stderr.isatty():  # called by Ray (with info), on a terminal
            from rich.console import Console
            from rich.live import Live

            self.live = Live(self.table(), console=Console(file=sys.stderr),
                             refresh_per_second=1, transient=False)
            self.live.start()

    def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self.running.add(trial.trial_id)
        self.begun.setdefault(trial.trial_id, time.monotonic())

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._finished(trial)
        self.done += 1
        value = (trial.last_result or {}).get(self.metric)
        params = trial_params(trial.config)
        method = str(params.get("method", "?"))
        # Scores on different datasets do not compare: a searched dataset gets its own rows.
        key = f"{method} · {params['dataset']}" if "dataset" in params else method
        if isinstance(value, (int, float)) and value == value:
            old = self.best.get(key)
            if old is None or (value > old[0] if self.mode == "max" else value < old[0]):
                self.best[key] = (float(value), describe(params))
        self._line(f"trial {self.done + self.failed}/{self.total} done: {method} "
                   f"({describe(params)}) {self.metric} {_value(value)}")

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._finished(trial)
        self.failed += 1
        self._line(f"trial {self.done + self.failed}/{self.total} failed: "
                   f"{trial_params(trial.config).get('method', '?')} (its MLflow runs say why)")

    def on_step_end(self, iteration: int, trials: list, **info: Any) -> None:
        if self.live is not None:
            self.live.update(self.table())
        elif time.monotonic() - self.last_line >= LOG_EVERY_SECONDS:
            self._line(self.status())

    def on_experiment_end(self, trials: list, **info: Any) -> None:
        if self.live is not None:
            self.live.update(self.table())
            self.live.stop()
            self.live = None
        else:
            self._line(self.status())

    # -- what is shown -----------------------------------------------------------------------
    def eta(self) -> float | None:
        """Seconds left: the trials not finished × the mean trial time / trials at once."""
        if not self.trial_seconds:
            return None
        left = max(self.total - self.done - self.failed, 0)
        mean = sum(self.trial_seconds) / len(self.trial_seconds)
        return left * mean / min(self.concurrency, max(left, 1))

    def status(self) -> str:
        eta = self.eta()
        return (f"sweep {self.name}: {self.done}/{self.total} done, {len(self.running)} "
                f"running, {self.failed} failed; {_duration(time.monotonic() - self.started)} "
                f"elapsed" + ("" if eta is None else f", about {_duration(eta)} left"))

    def table(self) -> Any:
        from rich.table import Table

        table = Table(title=self.status(), title_justify="left")
        for col in ("method", f"best {self.metric} (seed mean)", "its configuration"):
            table.add_column(col)
        for method, (value, label) in sorted(self.best.items()):
            table.add_row(method, _value(value), label)
        return table

    def _finished(self, trial: Any) -> None:
        self.running.discard(trial.trial_id)
        begun = self.begun.pop(trial.trial_id, None)
        if begun is not None:
            self.trial_seconds.append(time.monotonic() - begun)

    def _line(self, text: str) -> None:
        if self.live is not None:
            self.live.console.print(text)
        else:
            print(text, file=sys.stderr, flush=True)
        self.last_line = time.monotonic()


def _value(v: Any) -> str:
    return f"{v:.4f}" if isinstance(v, (int, float)) and v == v else "-"


class TrialStatuses(Callback):
    """Every trial's id and final status when the experiment ends, through Ray Tune's public
    callback API, for the driver's clean-up after ``Tuner.fit`` (``ResultGrid`` does not give
    statuses).  Kept on the class by sweep name: a restored Tuner unpickles its own instance."""

    ended: ClassVar[dict[str, dict[str, str]]] = {}

    def __init__(self, name: str):
        self.name = name

    def on_experiment_end(self, trials: list, **info: Any) -> None:
        TrialStatuses.ended[self.name] = {t.trial_id: t.status for t in trials}
