"""Progress of training runs on stderr: a bar (rich) on a terminal; in a log file (a cluster
job, ``nohup``) a plain line per epoch instead, at most one every ``LOG_SECONDS``."""

from __future__ import annotations

import sys
import time
from collections.abc import Sequence
from types import TracebackType

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn


class _EpochTick:
    def __init__(self, owner: EpochProgress, seed: int):
        self.owner, self.seed = owner, seed

    def on_epoch_end(self, epoch: int, record: dict, model: object) -> None:
        self.owner.advance(self.seed, record)


LOG_SECONDS = 10.0
"""Least time between two progress lines when stderr is not a terminal."""


class EpochProgress:
    """One bar over seeds x epochs; ``callbacks(seed)`` gives the fit callbacks for a seed.
    When stderr is not a terminal, lines like ``epoch 12/40 seed 0: train_loss 0.1234
    val_loss 0.1456 val_accuracy 0.9612 (34 s)`` replace the bar (``lines``)."""

    def __init__(self, epochs: int, seeds: Sequence[int], enabled: bool = True,
                 lines: bool | None = None):
        self.total = epochs * len(seeds)
        self.epochs = epochs
        self.lines = enabled and (not sys.stderr.isatty() if lines is None else lines)
        self._done, self._last, self._t0 = 0, -LOG_SECONDS, time.monotonic()
        self._progress = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=Console(stderr=True),
            disable=not enabled or self.lines,
        )
        self._task = self._progress.add_task("training", total=self.total)

    def __enter__(self) -> EpochProgress:
        self._progress.start()
        return self

    def __exit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._progress.stop()

    def callbacks(self, seed: int) -> list[object]:
        return [_EpochTick(self, seed)]

    def advance(self, seed: int, record: dict) -> None:
        self._done += 1
        if self.lines:
            now = time.monotonic()
            if now - self._last >= LOG_SECONDS or self._done == self.total:
                self._last = now
                print(f"epoch {record['epoch'] + 1}/{self.epochs} seed {seed}: "
                      f"train_loss {record['train_loss']:.4f} val_loss {record['val_loss']:.4f} "
                      f"val_accuracy {record['val_accuracy']:.4f} ({now - self._t0:.0f} s; "
                      f"{self._done}/{self.total} seed-epochs)", file=sys.stderr, flush=True)
            return
        self._progress.update(
            self._task,
            advance=1,
            description=(
                f"seed {seed} epoch {record['epoch'] + 1} val_acc {record['val_accuracy']:.3f}"
            ),
        )
