"""A smoke sweep of the quick preset, then ``smartmixed analyze`` on its MLflow store."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

ROOT = Path(__file__).resolve().parents[2]
PRESET = ROOT / "sweeps" / "presets" / "quick.yaml"


def smartmixed(*args: str, cwd: Path, timeout: int = 600) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-c", "import sys; from smartmixed.cli import main; "
           "sys.exit(main())", *args]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=timeout,
                          env=env)


@pytest.mark.slow
def test_smoke_sweep_then_analysis(tmp_path):
    if not PRESET.is_file() or importlib.util.find_spec("sweeps.cli") is None:
        pytest.skip("the sweeps package (sweeps/cli.py, sweeps/presets/quick.yaml) is missing")
    import yaml

    experiment = yaml.safe_load(PRESET.read_text())["experiment"]
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    sweep = smartmixed("sweep", "run", str(PRESET), "--smoke-test", "--tracking-uri", uri,
                       cwd=tmp_path)
    assert sweep.returncode == 0, sweep.stderr[-3000:]
    out = tmp_path / "report"
    rep = smartmixed("analyze", "--experiment", experiment, "--tracking-uri", uri, "--out",
                     str(out), cwd=tmp_path)
    assert rep.returncode == 0, rep.stderr[-3000:]
    rankings = pd.read_csv(out / "rankings.csv")
    assert len(rankings) >= 1 and rankings["mean"].between(0, 1).all()
    assert (rankings["rank"] >= 1).all()
    runs = pd.read_csv(out / "runs.csv")
    assert (runs["status"] == "FINISHED").all()
    assert not runs.duplicated(["config_id", "seed"]).any()
    assert (out / "index.html").stat().st_size > 10_000
    assert "logged to sweep run" in rep.stdout
