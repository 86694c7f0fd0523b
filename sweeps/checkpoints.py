"""Mid-trial checkpoints: what one holds, when the next is due, and the Ray side of them.

A checkpoint is taken at a round boundary (every seed has finished the same epoch): the
:class:`~smartmixed_core.runner.RunState` of the seeds still training and their MLflow seed
runs.  Ray keeps it (``tune.report(..., checkpoint=...)``) and hands it back to a retry
(``tune.get_checkpoint()``), which continues those seeds bit for bit.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from smartmixed_core.runner import RunState
from sweeps.store import env_seconds

CHECKPOINT_FILE = "trial_state.pt"
"""The file inside a Ray checkpoint of a trial (``torch.save`` of :func:`make`'s dict)."""
CHECKPOINT_VERSION = 2
"""1: before the seeds dimension (per-seed or batched states); not resumed from."""
CHECKPOINT_ENV = "SMARTMIXED_CHECKPOINT_SECONDS"
"""Minimum seconds between a trial's checkpoints (default 60; 0 = every round)."""
DEFAULT_CHECKPOINT_SECONDS = 60.0
CHECKPOINT_OVERHEAD = 20
"""Checkpoints are at least this many times their own cost apart (<= 5% of the time),
unless the interval is 0 (every round)."""


def make(trial_id: str, epoch: int, runs: dict[int, str], state: RunState) -> dict[str, Any]:
    """The checkpoint of the seeds ``runs`` ({seed: MLflow run id}) after ``epoch``."""
    return {"version": CHECKPOINT_VERSION, "trial": trial_id, "epoch": epoch,
            "seeds": {s: {"run_id": run_id} for s, run_id in runs.items()},
            "state": state.snapshot()}


def restore(ckpt: dict[str, Any] | None,
            todo: list[int]) -> tuple[RunState, dict[int, str], int] | None:
    """``(state, {seed: run id}, epoch completed)`` to continue ``todo`` from, or None when
    ``ckpt`` is missing, of another version, or not of exactly these seeds (a state continues
    the seeds it was saved with)."""
    if (not ckpt or not todo or ckpt.get("version") != CHECKPOINT_VERSION
            or list(ckpt.get("seeds", {})) != todo):
        return None
    runs = {s: ckpt["seeds"][s]["run_id"] for s in todo}
    return RunState.restore(ckpt["state"]), runs, int(ckpt["epoch"])


class Throttle:
    """When the next checkpoint is due: every :data:`CHECKPOINT_ENV` seconds, and at least
    :data:`CHECKPOINT_OVERHEAD` times the last one's cost apart."""

    def __init__(self) -> None:
        self.interval = env_seconds(CHECKPOINT_ENV, DEFAULT_CHECKPOINT_SECONDS)
        self._last, self._cost = time.monotonic(), 0.0

    def send(self, make_checkpoint: Callable[[], dict[str, Any]],
             send: Callable[[dict[str, Any] | None], None]) -> None:
        """``send(checkpoint)`` with a checkpoint when one is due, else ``send(None)``; the
        time both took is the checkpoint's cost."""
        t0 = time.monotonic()
        wait = max(self.interval, CHECKPOINT_OVERHEAD * self._cost)
        due = self.interval == 0 or time.monotonic() - self._last >= wait
        ckpt = make_checkpoint() if due else None
        send(ckpt)
        if ckpt is not None:
            self._last = time.monotonic()
            self._cost = self._last - t0


def from_ray() -> dict[str, Any] | None:
    """The checkpoint Ray hands this trial (a retry or a resumed sweep), or None."""
    from ray import tune

    checkpoint = tune.get_checkpoint()
    if checkpoint is None:
        return None
    with checkpoint.as_directory() as folder:
        path = Path(folder) / CHECKPOINT_FILE
        return torch.load(path, map_location="cpu", weights_only=True) if path.is_file() else None


def ray_report(metrics: dict[str, Any], checkpoint: dict[str, Any] | None) -> None:
    """``tune.report``, with the checkpoint dict saved in a folder Ray persists."""
    from ray import tune

    if checkpoint is None:
        tune.report(metrics)
        return
    with tempfile.TemporaryDirectory() as folder:
        torch.save(checkpoint, Path(folder) / CHECKPOINT_FILE)
        tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(folder))
