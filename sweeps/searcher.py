"""The Optuna searcher of a sweep, safe to resume after the driver died (SIGKILL, lost node).

Ray restores a sweep from its latest *experiment snapshot*, which it writes every few seconds
(and whenever a trial checkpoints).  After a driver crash the snapshot can be behind the
Optuna study, which is written at once to its journal file:

- a trial that finished after the snapshot runs again (it finds its FINISHED seed runs and
  reports the final result without training), but Optuna already has it COMPLETE and refuses
  further reports (``UpdateFinishedTrialError``), which would stop the whole sweep;
- a trial that started after the snapshot is unknown to the restored Tuner ("lost"); Ray
  samples a replacement, and the lost trial would stay RUNNING in the study for ever.

:class:`ResumableOptunaSearch` ignores reports for trials the study has finished, and
:func:`fail_lost_trials` marks lost trials FAIL once a sweep has ended.  Imports Ray and
Optuna: load it inside the commands only.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import optuna
from optuna.storages import JournalStorage
from optuna.storages.journal import JournalFileBackend
from ray.tune.search.optuna import OptunaSearch

log = logging.getLogger(__name__)


class ResumableOptunaSearch(OptunaSearch):
    """``OptunaSearch`` that skips results of trials the study has already finished."""

    def on_trial_result(self, trial_id: str, result: dict[str, Any]) -> None:
        try:
            super().on_trial_result(trial_id, result)
        except optuna.exceptions.UpdateFinishedTrialError:
            log.info("trial %s finished in the Optuna study before this resume; "
                     "its repeated result is not reported again", trial_id)


def journal_storage(path: Path) -> JournalStorage:
    return JournalStorage(JournalFileBackend(str(path)))


def fail_lost_trials(journal: Path, study_name: str) -> list[int]:
    """Mark FAIL the trials still RUNNING in the study (call it when the sweep has ended and
    was not interrupted: then every trial Ray knows is finished); returns their numbers."""
    if not journal.is_file():
        return []
    study = optuna.load_study(study_name=study_name, storage=journal_storage(journal))
    lost = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,))
    for trial in lost:
        study.tell(trial.number, state=optuna.trial.TrialState.FAIL)
    return [t.number for t in lost]
