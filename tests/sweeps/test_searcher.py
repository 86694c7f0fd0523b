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


def test_per_method_search_gives_every_method_the_same_budget(tmp_path):
    from ray.tune.search import Searcher

    from sweeps.specfile import parse_spec
    from sweeps.tuner import _searcher, study_names

    spec = parse_spec({"name": "eq", "search": {
        "algorithm": "optuna", "num_samples": 4, "per": ["method"], "seed": 3, "space": {
            "method": {"choice": ["smartmixed", "fixed:relu", "fixed:tanh"]},
            "temperature": {"loguniform": [0.1, 2.0]}, "lr": {"loguniform": [1e-4, 1e-2]}}}})
    search = _searcher(spec, tmp_path)
    configs = [search.suggest(f"t{i}") for i in range(12)]
    assert search.suggest("t12") == Searcher.FINISHED  # 3 cells x 4 trials, then done
    methods = [c["method"] for c in configs]
    assert {m: methods.count(m) for m in set(methods)} == {
        "smartmixed": 4, "fixed:relu": 4, "fixed:tanh": 4}
    assert methods[:3] == ["smartmixed", "fixed:relu", "fixed:tanh"]  # cells advance together
    assert all(("temperature" in c) == (c["method"] == "smartmixed") for c in configs)
    for i, c in enumerate(configs):
        search.on_trial_complete(f"t{i}", {"val_accuracy": c["lr"]})
    for name in study_names(spec):  # one study per cell, each with its 4 trials complete
        study = optuna.load_study(study_name=name, storage=journal_storage(
            tmp_path / "optuna-journal.log"))
        assert [t.state.name for t in study.trials] == ["COMPLETE"] * 4
    assert study_names(spec)[0] == "eq/method=smartmixed"
    # The same seed for every cell: fixed:relu and fixed:tanh (the same space) sample alike.
    lrs = {m: [c["lr"] for c in configs if c["method"] == m] for m in ("fixed:relu", "fixed:tanh")}
    assert lrs["fixed:relu"] == lrs["fixed:tanh"]


def test_per_cell_search_survives_a_save_and_restore(tmp_path):
    from sweeps.specfile import parse_spec
    from sweeps.tuner import _searcher

    spec = parse_spec({"name": "eq", "search": {"num_samples": 2, "per": ["method"], "space": {
        "method": {"choice": ["fixed:relu", "fixed:elu"]}, "lr": {"loguniform": [1e-4, 1e-2]}}}})
    search = _searcher(spec, tmp_path)
    search.suggest("a")
    search.save(str(tmp_path / "state.pkl"))
    again = _searcher(spec, tmp_path)
    again.restore(str(tmp_path / "state.pkl"))
    assert again.counts == [1, 0] and again.owner == {"a": 0}
    assert [again.suggest(t)["method"] for t in ("b", "c", "d")] == [
        "fixed:elu", "fixed:relu", "fixed:elu"]
