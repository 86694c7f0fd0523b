"""Terminal progress for training runs (rich), written to stderr."""

from __future__ import annotations

from collections.abc import Sequence
from types import TracebackType

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn


class _EpochTick:
    def __init__(self, owner: EpochProgress, seed: int):
        self.owner, self.seed = owner, seed

    def on_epoch_end(self, epoch: int, record: dict, model: object) -> None:
        self.owner.advance(self.seed, record)


class EpochProgress:
    """One bar over seeds x epochs; ``callbacks(seed)`` gives the fit callbacks for a seed."""

    def __init__(self, epochs: int, seeds: Sequence[int], enabled: bool = True):
        self.total = epochs * len(seeds)
        self.enabled = enabled
        self._progress = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=Console(stderr=True),
            disable=not enabled,
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
        self._progress.update(
            self._task,
            advance=1,
            description=(
                f"seed {seed} epoch {record['epoch'] + 1} val_acc {record['val_accuracy']:.3f}"
            ),
        )
