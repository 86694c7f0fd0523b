"""The sequential baseline trains each trial's seeds the way the sweep's trial does."""

from smartmixed_core import runner
from sweeps.sequential import run_sequential
from sweeps.specfile import parse_spec


def test_sequential_baseline_trains_seeds_together_as_the_trial_does(monkeypatch):
    doc = {"name": "s", "seeds": [0, 1],
           "fixed": {"epochs": 2, "transition_epoch": 1, "architecture": "8", "device": "cpu"},
           "search": {"algorithm": "grid",
                      "space": {"method": {"choice": ["smartmixed", "adact"]}}}}
    calls = []
    real = runner.train_seeds

    def spy(cfg, seeds, data=None, batched=None):
        calls.append((cfg.method, list(seeds), batched))
        return real(cfg, seeds, data=data, batched=batched)

    monkeypatch.setattr(runner, "train_seeds", spy)
    params = [{"method": "smartmixed"}, {"method": "adact"}]
    assert run_sequential(parse_spec(doc), params, batched=True) > 0
    # every method trains its seeds together, as the trial does
    assert calls == [("smartmixed", [0, 1], True), ("adact", [0, 1], True)]
    calls.clear()
    run_sequential(parse_spec(doc), params, batched=False)
    assert [c[2] for c in calls] == [False] * 2
