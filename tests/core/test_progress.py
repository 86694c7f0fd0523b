"""Training progress in a log file: plain lines instead of a bar, throttled, the last always."""

from smartmixed_core import progress
from smartmixed_core.progress import EpochProgress


def record(epoch):
    return {"epoch": epoch, "train_loss": 0.5, "val_loss": 0.25, "val_accuracy": 0.875}


def test_lines_replace_the_bar_when_not_a_terminal(capsys, monkeypatch):
    monkeypatch.setattr(progress, "LOG_SECONDS", 0.0)
    with EpochProgress(2, [0, 7], lines=True) as p:
        for seed in (0, 7):
            for epoch in range(2):
                p.advance(seed, record(epoch))
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 4
    assert err[-1].startswith("epoch 2/2 seed 7: train_loss 0.5000 val_loss 0.2500 "
                              "val_accuracy 0.8750 (")
    assert err[-1].endswith("4/4 seed-epochs)")


def test_lines_are_throttled_but_the_last_epoch_is_printed(capsys, monkeypatch):
    monkeypatch.setattr(progress, "LOG_SECONDS", 3600.0)
    with EpochProgress(5, [0], lines=True) as p:
        for epoch in range(5):
            p.advance(0, record(epoch))
    err = capsys.readouterr().err.splitlines()
    assert [line.split(" seed")[0] for line in err] == ["epoch 1/5", "epoch 5/5"]
