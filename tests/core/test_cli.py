"""``smartmixed train``: the result.json contract and bad-input handling."""

import json
import subprocess
import sys

import pytest
import torch

from smartmixed.cli import main
from smartmixed_core import runner

SEED_KEYS = {
    "seed",
    "val_accuracy",
    "test_accuracy",
    "test_f1_macro",
    "test_roc_auc",
    "selection",
    "history",
    "train_seconds",
    "n_params",
}


def test_train_writes_result_json(tmp_path, capsys):
    out = tmp_path / "run"
    rc = main(
        [
            "train",
            "--dataset",
            "digits",
            "--arch",
            "32,16",
            "--method",
            "smartmixed",
            "--pool",
            "paper",
            "--epochs",
            "4",
            "--transition-epoch",
            "2",
            "--temperature",
            "0.5",
            "--temperature-end",
            "0.1",
            "--phase2-init",
            "transfer",
            "--lr",
            "1e-3",
            "--batch-size",
            "64",
            "--seeds",
            "0,1",
            "--device",
            "cpu",
            "--out",
            str(out),
            "--quiet",
        ]
    )
    assert rc == 0
    doc = json.loads((out / "result.json").read_text())
    assert doc["config"]["arch"] == "32-16" and doc["config"]["temperature_end"] == 0.1
    assert [s["seed"] for s in doc["seeds"]] == [0, 1]
    for s in doc["seeds"]:
        assert set(s) >= SEED_KEYS
        assert set(s["phase1"]) >= {"val_accuracy", "test_accuracy"}
        assert s["phase2_start_test_accuracy"] == s["phase1"]["test_accuracy"]
        assert sum(s["selection"]["layer_2"].values()) == 16
        assert len(s["history"]) == 4
    accs = [s["test_accuracy"] for s in doc["seeds"]]
    assert doc["summary"]["test_accuracy_mean"] == pytest.approx(sum(accs) / 2)
    assert {"test_accuracy_std", "test_f1_macro_mean", "phase1_test_accuracy_mean"} <= set(
        doc["summary"]
    )
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["seed_0.pt", "seed_1.pt"]
    ckpt = torch.load(out / "checkpoints" / "seed_0.pt", weights_only=False)
    assert ckpt["seed"] == 0 and len(ckpt["choices"]["layer_1"]) == 32
    assert "test accuracy" in capsys.readouterr().out


def test_fixed_method_has_no_phase_fields(tmp_path):
    out = tmp_path / "fixed"
    assert (
        main(
            [
                "train",
                "--method",
                "fixed:relu",
                "--epochs",
                "2",
                "--arch",
                "8",
                "--out",
                str(out),
                "--quiet",
                "--no-checkpoints",
            ]
        )
        == 0
    )
    seed = json.loads((out / "result.json").read_text())["seeds"][0]
    assert "phase1" not in seed and "selection" not in seed
    assert "phase2_start_test_accuracy" not in seed
    assert not (out / "checkpoints").exists()


BAD = [
    (["--arch", "64,-3"], "arch"),
    (["--arch", "0"], "arch"),
    (["--temperature", "0"], "temperature"),
    (["--temperature", "-1"], "temperature"),
    (["--epochs", "10", "--transition-epoch", "10"], "transition_epoch"),
    (["--dataset", "imagenet"], "dataset"),
    (["--method", "boosting"], "method"),
    (["--method", "fixed:softplus2"], "method"),
    (["--pool", "relu,nope"], "pool"),
    (["--dataset", "mnist", "--data-dir", "/nonexistent/dir"], "data_dir"),
    (["--dataset", "mnist"], "data_dir"),
    (["--epochs", "abc"], "--epochs"),
    (["--seeds", "1,1"], "seeds"),
    (["--model", "convnet", "--dataset", "breast_cancer"], "model"),
    (["--batch-seeds", "maybe"], "batch_seeds"),
    (["--method", "perlayer"], "layer_activations"),
    (["--method", "perlayer", "--layer-activations", "relu,elu,tanh"], "layer_activations"),
    (["--method", "perlayer", "--layer-activations", "relu,nope"], "layer_activations"),
    (["--restore", "best"], "restore"),
    (["--train-size", "0"], "train_size"),
    (["--train-size", "5"], "train_size"),
]


@pytest.mark.parametrize("args,field", BAD)
def test_bad_input_one_line_exit_2_nothing_written(tmp_path, capsys, args, field):
    out = tmp_path / "out"
    assert main(["train", *args, "--out", str(out), "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("smartmixed: error: ") and "\n" not in err
    assert field in err
    assert not out.exists()


def test_console_script_exit_status(tmp_path):
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "smartmixed.cli",
            "train",
            "--lr",
            "-1",
            "--out",
            str(tmp_path / "x"),
        ],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        "smartmixed: error: lr: must be a number in (0, 10], got -1.0"
    ]
    assert "Traceback" not in proc.stderr


def test_batch_seeds_on_writes_the_same_results_as_off(tmp_path, monkeypatch):
    common = ["train", "--arch", "16", "--epochs", "3", "--transition-epoch", "1",
              "--seeds", "0,1", "--device", "cpu", "--quiet", "--no-checkpoints"]
    calls = []
    real = runner.train_together
    monkeypatch.setattr(runner, "train_together",
                        lambda *a, **k: calls.append(list(a[1])) or real(*a, **k))
    docs = {}
    for mode in ("off", "on", "auto"):
        assert main([*common, "--batch-seeds", mode, "--out", str(tmp_path / mode)]) == 0
        docs[mode] = json.loads((tmp_path / mode / "result.json").read_text())
    assert calls == [[0], [1], [0, 1], [0, 1]]  # off: one at a time; on and auto: together
    def untimed(seed):
        return {**{k: v for k, v in seed.items() if k != "train_seconds"},
                "history": [{k: v for k, v in r.items() if k != "seconds"}
                            for r in seed["history"]]}

    assert [untimed(s) for s in docs["auto"]["seeds"]] == [untimed(s) for s in docs["on"]["seeds"]]
    for a, b in zip(docs["off"]["seeds"], docs["on"]["seeds"]):
        assert a["seed"] == b["seed"] and a["selection"] == b["selection"]
        assert abs(a["test_accuracy"] - b["test_accuracy"]) <= 0.02  # float32, 2 threads


def test_console_script_exits_as_the_interpreter_would_without_its_teardown(tmp_path):
    """The installed `smartmixed` runs `console`: main's exit status, non-daemon threads
    joined and atexit handlers run before the process ends, and no nanobind leak report from
    triton after training (a subprocess: console ends its process)."""
    import subprocess
    import sys
    from importlib.metadata import entry_points

    (script,) = entry_points(group="console_scripts", name="smartmixed")
    assert script.value == "smartmixed.cli:console"
    code = ("import atexit, pathlib, sys, threading, time\n"
            "from smartmixed.cli import console\n"
            "def late():\n"
            "    time.sleep(0.5)\n"
            "    pathlib.Path('thread.txt').write_text('joined')\n"
            "threading.Thread(target=late).start()\n"
            "atexit.register(lambda: pathlib.Path('atexit.txt').write_text('ran'))\n"
            "sys.argv = ['smartmixed', *sys.argv[1:]]\n"
            "console()\n"
            "raise SystemExit('console returned')\n")
    ok = subprocess.run([sys.executable, "-c", code, "train", "--help"], capture_output=True,
                        text=True, timeout=300, cwd=tmp_path)
    assert ok.returncode == 0 and "--transition-epoch" in ok.stdout, ok.stderr[-2000:]
    assert (tmp_path / "atexit.txt").read_text() == "ran"
    assert (tmp_path / "thread.txt").read_text() == "joined"
    bad = subprocess.run([sys.executable, "-c", code, "train", "--epochs", "-3"],
                         capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert bad.returncode == 2 and "error: epochs:" in bad.stderr, bad.stderr[-2000:]
    trained = subprocess.run(
        [sys.executable, "-c", code, "train", "--arch", "8", "--epochs", "2", "--transition-epoch",
         "1", "--quiet",
         "--no-checkpoints", "--out", "run"],
        capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert trained.returncode == 0 and (tmp_path / "run" / "result.json").is_file()
    assert "nanobind" not in trained.stderr and "leaked" not in trained.stderr, trained.stderr


def test_the_command_list_gives_each_command_one_line(capsys, monkeypatch):
    """``smartmixed --help`` and ``smartmixed sweep --help`` at 100 columns: every command's
    summary (its docstring's first paragraph) fits its row, with no hard line break."""
    monkeypatch.setenv("COLUMNS", "100")
    for argv, commands in ((["--help"], ("train", "analyze", "sweep")),
                           (["sweep", "--help"], ("run", "resume", "status"))):
        assert main(argv) == 0
        panel = capsys.readouterr().out.split("Commands")[1]
        rows = [line.strip("│ ") for line in panel.splitlines()[1:-1]]
        assert [row.split()[0] for row in rows if row][:len(commands)] == list(commands), rows
