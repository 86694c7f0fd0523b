"""Issue acceptance: SmartMixed on digits, 3 seeds, mean test accuracy >= 0.95 in < 2 CPU min."""

import json
import resource

from smartmixed.cli import main


def test_digits_smartmixed_three_seeds(tmp_path):
    before = resource.getrusage(resource.RUSAGE_SELF)
    rc = main(
        [
            "train",
            "--dataset",
            "digits",
            "--arch",
            "64,32",
            "--method",
            "smartmixed",
            "--pool",
            "paper",
            "--epochs",
            "40",
            "--transition-epoch",
            "15",
            "--temperature",
            "0.3",
            "--temperature-end",
            "0.3",
            "--lr",
            "1e-3",
            "--batch-size",
            "64",
            "--seeds",
            "0,1,2",
            "--device",
            "cpu",
            "--quiet",
            "--no-checkpoints",
            "--out",
            str(tmp_path),
        ]
    )
    after = resource.getrusage(resource.RUSAGE_SELF)
    assert rc == 0
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    summary = json.loads((tmp_path / "result.json").read_text())["summary"]
    assert summary["test_accuracy_mean"] >= 0.95
    assert cpu < 120
