"""The Optuna searcher of a sweep, safe to resume after the driver died (SIGKILL, lost node).

Ray restores a sweep from its latest *experiment snapshot*, which it writes every few seconds
(and whenever a trial checkpoints).  After a driver crash the snapshot can be behind the
Optuna study, which is written at once to its journal file:

- a trial that finished after the snapshot runs again (it finds its FINISHED seed runs and
  reports the final result without training), but Optuna already has it COMPLETE and refuses
  further reports (``UpdateFinishedTrialError``), which would stop the whole sweep;
- a trial that started after the snapshot is unknown to the restored Tuner ("lost"); Ray
  samples a replacement, and the lost trial would stay RUNNING in the study for ever.  It
  may even have finished (its MLflow runs FINISHED) with the driver killed before Ray passed
  the final result to the study.

:class:`ResumableOptunaSearch` ignores reports for trials the study has finished and tags
every study trial with its Ray trial id; :func:`settle_lost_trials` closes the trials still
RUNNING once a sweep has ended: COMPLETE with the result MLflow holds for a finished one,
FAIL otherwise.  Imports Ray and Optuna: load it inside the commands only.
"""

from __future__ import annotations

import contextlib
import logging
import pickle
import socket
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import optuna
from optuna.storages import JournalStorage
from optuna.storages.journal import JournalFileBackend
from ray.tune.search import Searcher
from ray.tune.search.optuna import OptunaSearch

from smartmixed_core.errors import ConfigError

log = logging.getLogger(__name__)

RAY_TRIAL_ATTR = "ray_trial_id"
"""User attribute of each study trial: the Ray trial id (= the MLflow ``smartmixed.trial`` tag)."""


class ResumableOptunaSearch(OptunaSearch):
    """``OptunaSearch`` that tags each study trial with its Ray trial id and skips results
    of trials the study has already finished."""

    def suggest(self, trial_id: str) -> dict | None:
        new = trial_id not in self._ot_trials
        config = super().suggest(trial_id)
        if new:  # written to the journal at once, before the trial runs
            self._ot_trials[trial_id].set_user_attr(RAY_TRIAL_ATTR, trial_id)
        return config

    def on_trial_result(self, trial_id: str, result: dict[str, Any]) -> None:
        try:
            super().on_trial_result(trial_id, result)
        except optuna.exceptions.UpdateFinishedTrialError:
            log.info("trial %s finished in the Optuna study before this resume; "
                     "its repeated result is not reported again", trial_id)


class PerCellSearch(Searcher):
    """One search per cell of ``search.per`` (e.g. per method), each with its own Optuna
    study and ``num_samples`` trials: equal tuning budgets by construction, in one sweep.

    Trials go to the cell with the fewest so far (cells advance together, so an interrupted
    sweep has spent about the same on each); results go back to the cell that suggested the
    trial.  Pickled whole with the experiment snapshot, like ``OptunaSearch``."""

    def __init__(self, cells: list[Searcher], num_samples: int, metric: str, mode: str):
        super().__init__(metric=metric, mode=mode)
        self.cells = cells
        self.num_samples = num_samples
        self.counts = [0] * len(cells)
        self.owner: dict[str, int] = {}

    def suggest(self, trial_id: str) -> dict | str | None:
        if trial_id in self.owner:
            return self.cells[self.owner[trial_id]].suggest(trial_id)
        left = [i for i, n in enumerate(self.counts) if n < self.num_samples]
        if not left:
            return Searcher.FINISHED
        i = min(left, key=lambda j: (self.counts[j], j))
        config = self.cells[i].suggest(trial_id)
        if isinstance(config, dict):
            self.counts[i] += 1
            self.owner[trial_id] = i
        return config

    def on_trial_result(self, trial_id: str, result: dict[str, Any]) -> None:
        if trial_id in self.owner:
            self.cells[self.owner[trial_id]].on_trial_result(trial_id, result)

    def on_trial_complete(self, trial_id: str, result: dict[str, Any] | None = None,
                          error: bool = False) -> None:
        if trial_id in self.owner:
            self.cells[self.owner[trial_id]].on_trial_complete(trial_id, result, error)

    def save(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "wb") as f:
            pickle.dump(self.__dict__, f)

    def restore(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "rb") as f:
            self.__dict__.update(pickle.load(f))


def journal_storage(path: Path) -> JournalStorage:
    return JournalStorage(JournalFileBackend(str(path)))


def settle_lost_trials(journal: Path, study_name: str,
                       finished: Mapping[str, float]) -> dict[int, str]:
    """Close the trials still RUNNING in the study; call it when the sweep has ended and was
    not interrupted (then every trial Ray knows is finished).  ``finished`` maps Ray trial
    ids to the final metric of trials whose MLflow trial run FINISHED: such a trial becomes
    COMPLETE with that value, any other FAIL.  Returns {trial number: state name}."""
    if not journal.is_file():
        return {}
    try:
        study = optuna.load_study(study_name=study_name, storage=journal_storage(journal))
    except KeyError:  # a study no trial was suggested from (a search.per cell)
        return {}
    settled = {}
    for trial in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
        ray_id = trial.user_attrs.get(RAY_TRIAL_ATTR)  # absent in journals of older sweeps
        value = None if ray_id is None else finished.get(ray_id)
        state = optuna.trial.TrialState.FAIL if value is None else optuna.trial.TrialState.COMPLETE
        study.tell(trial.number, value, state=state)
        settled[trial.number] = state.name
    return settled


DASHBOARD_HOST = "127.0.0.1"
"""optuna-dashboard has no authentication: it listens on this machine only (reach it from
elsewhere through an SSH tunnel)."""


def serve_dashboard(folder: Path, port: int) -> None:
    """Serve optuna-dashboard on the sweep's journal (every study of the sweep) at
    ``http://127.0.0.1:PORT`` until interrupted."""
    journal = folder / "optuna-journal.log"
    if not journal.is_file():
        raise ConfigError("sweep", f"{folder} has no Optuna journal ({journal.name}): a grid "
                          "sweep has no studies, and a sweep that never started has none yet")
    with socket.socket() as probe:  # a taken port is one error line, not a traceback
        try:
            probe.bind((DASHBOARD_HOST, port))
        except OSError as exc:
            raise ConfigError("port", f"cannot listen on {DASHBOARD_HOST}:{port} "
                              f"({exc.strerror}); choose another with --port") from None
    from optuna_dashboard import run_server

    print(f"optuna-dashboard for {folder.name}: http://{DASHBOARD_HOST}:{port}  (Ctrl+C stops)",
          flush=True)
    with contextlib.suppress(KeyboardInterrupt):
        run_server(journal_storage(journal), host=DASHBOARD_HOST, port=port)
