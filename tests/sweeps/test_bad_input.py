"""Bad input never crashes with a traceback or writes half a result.

Every case runs the real entry point (``smartmixed.cli.main``) inside the test process
and checks the contract of docs/contracts.md: exit status 2, exactly one line on stderr,
``smartmixed: error: FIELD: what is allowed``, nothing on stdout, no traceback, and nothing
written: the tree under ``tmp_path`` (the MLflow SQLite store, the Ray results folder, the
output folders; the test also runs there, so relative defaults land in it) is byte for byte
what it was before.  A few cases run again in a subprocess, where a traceback would show.

No case starts Ray: the checks run before Ray would.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

import pytest

from smartmixed.cli import main
from tests.sweeps.bad_input_cases import (
    CASES,
    RUN,
    SECRETS,
    Case,
    existing_sweep,
    spec,
)
from tests.sweeps.sweep_helpers import smartmixed_cmd


@pytest.fixture(autouse=True)
def _isolated(tmp_path, monkeypatch):
    """Run in tmp_path (relative defaults land there) and keep credential variables local."""
    monkeypatch.chdir(tmp_path)
    for key in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD", "RAY_ADDRESS"):
        monkeypatch.setenv(key, "")
        monkeypatch.delenv(key)


def snapshot(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file()}


def sweep_runs(tmp: Path) -> int:
    db = tmp / "mlflow.db"
    if not db.exists():
        return 0
    import sqlite3

    with sqlite3.connect(db) as con:
        return con.execute("select count(*) from runs").fetchone()[0]


def check_one_line(err: str, field: str) -> str:
    """``smartmixed: error: FIELD: message``, one line, no traceback, no password."""
    lines = err.splitlines()
    assert len(lines) == 1, err
    line = lines[0]
    assert line.startswith(f"smartmixed: error: {field}: "), line
    assert len(line) > len(f"smartmixed: error: {field}: ") + 10, line  # says what is allowed
    assert "Traceback" not in err and not any(s in err for s in SECRETS), err
    return line


@pytest.mark.parametrize(("build", "field"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input_one_line_exit_2_nothing_written(tmp_path, capsys, build, field):
    argv = build(tmp_path)
    before, runs = snapshot(tmp_path), sweep_runs(tmp_path)
    capsys.readouterr()
    rc = main(argv)
    out, err = capsys.readouterr()
    assert rc == 2, (out, err)
    check_one_line(err, field)
    assert out == ""
    assert snapshot(tmp_path) == before  # no store, run, results folder or report written
    assert sweep_runs(tmp_path) == runs


def test_cases_cover_the_issue():
    assert len(CASES) >= 25 and len({c[0] for c in CASES}) == len(CASES)


def by_id(name: str) -> Case:
    return next(c for c in CASES if c[0] == name)


@pytest.mark.parametrize("name", ["yaml-syntax-error", "gpu-more-than-the-machine-has",
                                  "set-unknown-key", "resume-unknown-sweep",
                                  "tracking-uri-unreachable"])
def test_console_script_prints_no_traceback(tmp_path, name):
    _, build, field = by_id(name)
    argv = build(tmp_path)
    before = snapshot(tmp_path)
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_TRACKING_")}
    proc = subprocess.run([*smartmixed_cmd(), *argv], capture_output=True, text=True,
                          cwd=tmp_path, env=env, timeout=300)
    assert proc.returncode == 2, proc.stderr
    check_one_line(proc.stderr, field)
    assert "Traceback" not in proc.stdout and proc.stdout == ""
    assert snapshot(tmp_path) == before


def test_messages_say_what_is_allowed(tmp_path, capsys):
    """Spot checks of the wording: the allowed range, the line number, the way out."""
    expected = {
        "huge-epochs-int": "(0, 100000]",
        "huge-num-samples": "less than or equal to 100000",
        "huge-batch-size": "(0, 1e+07]",
        "yaml-syntax-error": "line 3, column 6: expected ',' or ']'",
        "unknown-top-level-key": "unknown key; allowed: name, experiment",
        "empty-search-space": "at least one parameter",
        "gpu-more-than-the-machine-has": "allowed: 0",
        "transition-epoch-not-below-epochs": "[1, 2]",
        "address-syntax": "HOST:PORT",
        "same-name-different-spec": "different spec (differs in fixed.epochs)",
        "same-name-same-spec": "with the same spec",
        "resume-unknown-sweep": "no sweep at 'no-such-sweep'",
        "tracking-uri-unreachable": "http://127.0.0.1:9",
        "analyze-unreachable-database": "alice:***@",
    }
    for name, words in expected.items():
        _, build, _ = by_id(name)
        sub = tmp_path / name
        sub.mkdir()
        os.chdir(sub)
        assert main(build(sub)) == 2
        err = capsys.readouterr().err
        assert words in err, (name, err)
        if name.startswith("same-name"):
            assert "smartmixed sweep resume" in err and "--set name=" in err


def test_same_name_refusal_leaves_the_first_sweep_resumable(tmp_path, capsys):
    path = existing_sweep(tmp_path)
    saved = (path / "sweep.yaml").read_text(), json.loads((path / "sweep.json").read_text())
    assert main([*RUN, spec(tmp_path, seeds=[5])]) == 2
    assert "differs in seeds" in capsys.readouterr().err
    assert ((path / "sweep.yaml").read_text(), json.loads((path / "sweep.json").read_text())) \
        == saved
    from sweeps.saved import load_state

    spec_, _ = load_state(path)
    assert spec_.seeds == [0, 1]


def test_ray_started_beside_a_failing_store_is_shut_down(tmp_path, capsys, monkeypatch):
    """`sweep run` starts Ray while the SQLite store is created: when the store then fails,
    the one-line error comes with Ray shut down again and no sweep folder written (Ray is
    replaced by a recorder here; the file check covers the tree apart from the store)."""
    from sweeps import cluster, launch, store

    calls: list[str] = []

    def init_ray(address: str | None, verbose: bool = False) -> bool:
        calls.append("init")
        monkeypatch.setattr(cluster, "_ray_owned", True)
        return True

    def broken_store(uri: str) -> Any:
        raise RuntimeError("(sqlite3.OperationalError) disk I/O error")

    monkeypatch.setattr(launch, "_init_ray", init_ray)
    monkeypatch.setattr(launch, "release_ray", lambda: calls.append("release"))
    monkeypatch.setattr(store, "client", broken_store)
    path = spec(tmp_path)
    before = snapshot(tmp_path)
    capsys.readouterr()
    rc = main(["sweep", "run", path])
    out, err = capsys.readouterr()
    assert rc == 2 and out == ""
    assert "disk I/O error" in check_one_line(err, "tracking_uri")
    assert calls == ["init", "release"]
    assert snapshot(tmp_path) == before and not (tmp_path / "ray_results").exists()


def test_an_error_leaves_no_write_ahead_log_beside_an_existing_store(tmp_path, capsys):
    """A store left in write-ahead mode (a killed sweep, an older version): a command that
    opens it and then fails closes it again, so SQLite removes ``-wal`` and ``-shm``."""
    from sweeps import store

    existing_sweep(tmp_path)
    assert store.use_wal(f"sqlite:///{tmp_path / 'mlflow.db'}")
    before = snapshot(tmp_path)
    assert not {"mlflow.db-wal", "mlflow.db-shm"} & set(before)
    capsys.readouterr()
    for argv in ([*RUN, spec(tmp_path)], ["sweep", "status", "no-such-sweep", "--tracking-uri",
                                          f"sqlite:///{tmp_path / 'mlflow.db'}"]):
        assert main(argv) == 2
        check_one_line(capsys.readouterr().err, "name" if argv[1] == "run" else "sweep")
        assert snapshot(tmp_path) == before


@pytest.mark.parametrize("value", ["garbage", "127.0.0.1:1", "ray://127.0.0.1:1"])
@pytest.mark.parametrize("command", ["run", "resume"])
def test_a_bad_ray_address_in_the_environment_is_refused_first(tmp_path, capsys, monkeypatch,
                                                                 value, command):
    argv = [*RUN, spec(tmp_path)] if command == "run" else [
        "sweep", "resume", str(existing_sweep(tmp_path))]
    before = snapshot(tmp_path)
    capsys.readouterr()
    monkeypatch.setenv("RAY_ADDRESS", value)
    assert main(argv) == 2
    line = check_one_line(capsys.readouterr().err, "RAY_ADDRESS")
    assert value in line and "unset it" in line
    assert snapshot(tmp_path) == before
