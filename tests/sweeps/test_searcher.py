"""The resumable Optuna searcher: each study trial knows its Ray trial id, and the trials a
killed driver left RUNNING are settled from MLflow's results when the sweep ends."""

from __future__ import annotations

import optuna

from sweeps.searcher import (
    RAY_TRIAL_ATTR,
    ResumableOptunaSearch,
    journal_storage,
    settle_lost_trials,
)


def _space(trial: optuna.Trial) -> None:
    trial.suggest_float("lr", 1e-3, 1e-2, log=True)


def _study(journal):
    return optuna.load_study(study_name="s", storage=journal_storage(journal))


def test_study_trials_carry_their_ray_trial_id_and_lost_ones_are_settled(tmp_path):
    journal = tmp_path / "optuna-journal.log"
    search = ResumableOptunaSearch(space=_space, metric="val_accuracy", mode="max",
                                   sampler=optuna.samplers.RandomSampler(seed=0),
                                   study_name="s", storage=journal_storage(journal))
    configs = {t: search.suggest(t) for t in ("t-a", "t-b", "t-c")}
    assert search.suggest("t-a") == configs["t-a"]  # asked again: the same trial
    search.on_trial_complete("t-c", {"val_accuracy": 0.5})
    search.on_trial_result("t-c", {"val_accuracy": 0.7, "training_iteration": 3})  # ignored
    trials = _study(journal).trials
    assert [t.user_attrs[RAY_TRIAL_ATTR] for t in trials] == ["t-a", "t-b", "t-c"]
    assert [t.params["lr"] for t in trials] == [configs[t]["lr"] for t in ("t-a", "t-b", "t-c")]

    # t-a finished in MLflow (the driver died before the study heard of it); t-b did not.
    assert settle_lost_trials(journal, "s", {"t-a": 0.875, "t-c": 0.25}) == \
        {0: "COMPLETE", 1: "FAIL"}
    a, b, c = _study(journal).trials
    assert (a.state, a.value) == (optuna.trial.TrialState.COMPLETE, 0.875)
    assert (b.state, b.value) == (optuna.trial.TrialState.FAIL, None)
    assert (c.state, c.value) == (optuna.trial.TrialState.COMPLETE, 0.5)  # kept its own result
    assert settle_lost_trials(journal, "s", {"t-b": 0.1}) == {}  # nothing RUNNING any more
    assert settle_lost_trials(tmp_path / "none.log", "s", {}) == {}


def test_a_trial_of_a_journal_without_ray_ids_is_failed(tmp_path):
    journal = tmp_path / "optuna-journal.log"
    study = optuna.create_study(study_name="s", storage=journal_storage(journal))
    study.ask()
    assert settle_lost_trials(journal, "s", {"": 1.0, "t-a": 1.0}) == {0: "FAIL"}
