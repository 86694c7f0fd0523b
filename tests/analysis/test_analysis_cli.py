"""``smartmixed analyze``: files written, artifacts logged, bad input -> one line, exit 2."""

from __future__ import annotations

import pandas as pd
import pytest
from conftest import EXP, Store

from smartmixed.cli import main

PLOTS = ("mrr", "rank_distribution", "accuracy", "cd_diagram", "performance_profile",
         "selection", "depth_trend", "switching", "weight_heatmap", "importances",
         "parallel_coordinates")


def test_report_files(cli_report):
    _, out, rc, _ = cli_report
    assert rc == 0
    for name in PLOTS:
        data = (out / f"{name}.png").read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 2000
    rankings = pd.read_csv(out / "rankings.csv")
    assert list(rankings.columns[:6]) == ["architecture", "method", "mean", "std", "n_seeds",
                                          "rank"]
    assert len(rankings) == 8
    assert rankings.loc[(rankings["architecture"] == "64-32")
                        & (rankings["method"] == "fixed:elu"), "rank"].item() == 2.5
    mrr = pd.read_csv(out / "mrr.csv").set_index("method")
    assert mrr.loc["smartmixed", "mrr"] == pytest.approx(5 / 6)
    assert len(pd.read_csv(out / "configs.csv")) == 8
    sel = pd.read_csv(out / "selection.csv")
    assert {"layer", "activation", "mean", "ci_low", "ci_high"} <= set(sel.columns)
    for extra in ("friedman", "control", "iqm", "improvement", "performance_profile",
                  "budgets", "validation", "wilcoxon", "nemenyi", "assumptions", "top3",
                  "selection_consistency", "depth_trend", "switching", "weights", "runs"):
        assert (out / f"{extra}.csv").is_file()
    best = pd.read_csv(out / "best_configs.csv")
    assert len(best) == 8 and {"configuration", "test_accuracy", "lr", "temperature",
                               "val_accuracy", "decided_by"} <= set(best.columns)
    assert (best.loc[best["method"] == "smartmixed", "configuration"].str.startswith(
        "smartmixed · ")).all()
    seeds = pd.read_csv(out / "runs.csv")
    assert seeds["start_time"].str.match(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC$").all()
    html = (out / "index.html").read_text()
    assert html.count("data:image/png;base64,") == len(PLOTS)
    assert "<script" not in html and "http://" not in html and "https://" not in html


def test_protocol_and_budgets(cli_report):
    """Budgets come from the trial runs of sweep s1 (one per architecture and method), the
    validation resolution from the logged values (val = test - 0.01: multiples of 1/200)."""
    _, out, _, stdout = cli_report
    budgets = pd.read_csv(out / "budgets.csv").set_index("method")
    assert budgets["n_trials"].to_dict() == {"fixed:elu": 2, "fixed:relu": 3, "smartmixed": 3}
    assert budgets.loc["fixed:elu", "max_per_block"] == 1
    head = pd.read_csv(out / "headline.csv").set_index("method")
    assert head.loc["fixed:elu", "n_trials"] == 2
    val = pd.read_csv(out / "validation.csv").iloc[0]
    assert (val["dataset"], val["n_val"]) == ("digits", 200)
    html = (out / "index.html").read_text()
    body = html[html.index("<h1>"):]
    assert body.index("id='summary'") < body.index("Tracking URI")  # the report opens with it
    for text in ("Protocol: for each architecture and method one configuration is chosen on "
                 "validation data", "2–3 seeds per configuration (seed-mean CIs: student-t "
                 "(up to 10 seeds))", "Budgets differ (trials per method: fixed:elu 2, "
                 "fixed:relu 3, smartmixed 3)", "1/200 = 0.50 points",
                 "no significant difference among the methods",
                 "Against smartmixed (Holm): no significant difference",
                 "with 2 blocks Friedman&#x27;s chi-square cannot go below p = 0.14"):
        assert text in html, text
    assert "Budgets differ" in stdout and "Caveat:" in stdout
    assert "Per architecture the trials" not in html  # one trial per cell everywhere
    ranks = pd.read_csv(out / "rankings.csv")
    assert {"n_trials", "n_tied", "decided_by", "ci_method"} <= set(ranks.columns)
    assert (ranks["ci_method"].dropna() == "student-t").all()


def test_headline_printed(cli_report):
    stdout = cli_report[3]
    assert "smartmixed" in stdout and "0.8333" in stdout  # MRR of smartmixed
    assert "mean_test_accuracy" in stdout and "…" not in stdout  # header not truncated
    row = next(line for line in stdout.splitlines() if "fixed:elu" in line)
    cells = [c.strip() for c in row.split("│") if c.strip()]
    # method, mrr, mean_rank, first, n_architectures, mean_test_accuracy, n_trials
    assert cells[4] == "2" and cells[6] == "2", cells  # counts as integers, not 2.0000
    assert "index.html" in stdout and "logged to sweep run" in stdout


def test_report_logged_to_sweep_run(cli_report):
    st = cli_report[0]
    names = {f.path for f in st.client.list_artifacts(st.sweep_run_ids["s1"], "report")}
    assert "report/index.html" in names and "report/rankings.csv" in names
    assert not st.client.list_artifacts(st.sweep_run_ids["s2"])  # not analysed


def run_cli(args, capsys):
    rc = main(["analyze", *args])
    err = capsys.readouterr().err.strip()
    return rc, err


def test_unknown_experiment(cli_report, tmp_path, capsys):
    st = cli_report[0]
    rc, err = run_cli(["--experiment", "nope", "--tracking-uri", st.uri, "--out",
                       str(tmp_path / "o")], capsys)
    assert rc == 2 and len(err.splitlines()) == 1
    assert err.startswith("smartmixed: error: experiment: no experiment named 'nope'")
    assert not (tmp_path / "o").exists()


def test_no_finished_runs(tmp_path, capsys):
    st = Store(tmp_path)
    st.run("seed", "s", tags={"smartmixed.seed": "0"}, status="KILLED")
    capsys.readouterr()  # MLflow's own store-creation log lines
    rc, err = run_cli(["--experiment", EXP, "--tracking-uri", st.uri, "--out",
                       str(tmp_path / "o")], capsys)
    assert rc == 2 and len(err.splitlines()) == 1 and "no FINISHED seed runs" in err


@pytest.mark.parametrize("uri", ["sqlite:////nonexistent/x.db", "bogus://x"])
def test_unreadable_uri(uri, tmp_path, capsys):
    rc, err = run_cli(["--experiment", EXP, "--tracking-uri", uri, "--out",
                       str(tmp_path / "o")], capsys)
    assert rc == 2 and len(err.splitlines()) == 1
    assert err.startswith("smartmixed: error: tracking_uri:")


def test_out_is_a_file(cli_report, tmp_path, capsys):
    (tmp_path / "f").write_text("x")
    rc, err = run_cli(["--experiment", EXP, "--tracking-uri", cli_report[0].uri, "--out",
                       str(tmp_path / "f")], capsys)
    assert rc == 2 and "out:" in err


def _tree(root):
    return {p: p.stat().st_mtime_ns for p in root.rglob("*")}


@pytest.mark.parametrize("where", ["under-a-file", "proc"])
def test_out_unusable_fails_before_analysis(where, tmp_path, capsys):
    """--out under a regular file or under /proc: one line naming `out`, exit 2, and the
    analysis never starts (the store is not even opened: no -wal/-shm, no report)."""
    st = Store(tmp_path / "store")
    st.run("seed", "s", params={"architecture": "8", "method": "smartmixed"},
           tags={"smartmixed.seed": "0"}, metrics={"test_accuracy": 0.9})
    capsys.readouterr()
    (tmp_path / "f").write_text("x")
    out = tmp_path / "f" / "report" if where == "under-a-file" else "/proc/smartmixed-report"
    before = _tree(tmp_path)
    rc, err = run_cli(["--experiment", EXP, "--tracking-uri", st.uri, "--out", str(out),
                       "--no-log"], capsys)
    assert rc == 2 and len(err.splitlines()) == 1, err
    assert err.startswith("smartmixed: error: out: ")
    assert _tree(tmp_path) == before


def test_dead_tracking_server_fails_fast(tmp_path, capsys):
    """Nothing listens on port 9: one line naming tracking_uri within 10 s, nothing written."""
    import time

    start = time.monotonic()
    rc, err = run_cli(["--experiment", EXP, "--tracking-uri", "http://127.0.0.1:9", "--out",
                       str(tmp_path / "o")], capsys)
    assert time.monotonic() - start < 10
    assert rc == 2 and len(err.splitlines()) == 1, err
    assert err.startswith("smartmixed: error: tracking_uri: cannot reach the MLflow tracking "
                          "server at http://127.0.0.1:9")
    assert list(tmp_path.iterdir()) == []


def test_unknown_sweep_lists_the_sweeps(cli_report, tmp_path, capsys):
    rc, err = run_cli(["--experiment", EXP, "--sweep", "nope", "--tracking-uri",
                       cli_report[0].uri, "--out", str(tmp_path / "o")], capsys)
    assert rc == 2 and err == ("smartmixed: error: sweep: no sweep named 'nope' in experiment "
                               "'exp'; found: s1, s2")
    assert not (tmp_path / "o").exists()


def test_package_loads_lazily():
    """`smartmixed` attaches the analyze command without loading pandas/SciPy/matplotlib (a
    `sweep run` must not pay seconds for them); every public name still resolves."""
    import subprocess
    import sys

    code = ("import sys, analysis, analysis.cli\n"
            "heavy = [m for m in ('pandas', 'scipy.stats', 'matplotlib', 'mlflow') "
            "if m in sys.modules]\n"
            "assert not heavy, heavy\n"
            "for name in analysis.__all__:\n"
            "    assert getattr(analysis, name) is not None, name\n"
            "assert 'pandas' in sys.modules and sorted(dir(analysis)) == dir(analysis)\n"
            "try:\n"
            "    analysis.no_such_name\n"
            "except AttributeError:\n"
            "    pass\n"
            "else:\n"
            "    raise SystemExit('no AttributeError')\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]


def test_no_validation_accuracy_is_refused(tmp_path, capsys):
    """Two configurations compete but no run logged val_accuracy: the analysis must not fall
    back to the test set."""
    st = Store(tmp_path)
    for lr, acc in (("0.1", 0.9), ("0.01", 0.8)):
        st.run("seed", "s", params={"architecture": "8", "method": "smartmixed", "lr": lr},
               tags={"smartmixed.seed": "0"}, metrics={"test_accuracy": acc})
    capsys.readouterr()
    rc, err = run_cli(["--experiment", EXP, "--tracking-uri", st.uri, "--out",
                       str(tmp_path / "o"), "--no-log"], capsys)
    assert rc == 2 and len(err.splitlines()) == 1
    assert err.startswith("smartmixed: error: select_by: 2 configurations of smartmixed on 8")
    assert "never on the test set" in err and not (tmp_path / "o").exists()


def test_control_option(cli_report, tmp_path, capsys):
    st = cli_report[0]
    out = tmp_path / "o"
    rc, _ = run_cli(["--experiment", EXP, "--sweep", "s1", "--tracking-uri", st.uri, "--out",
                     str(out), "--no-log", "--no-weights", "--control", "fixed:relu"], capsys)
    assert rc == 0
    control = pd.read_csv(out / "control.csv")
    assert set(control["control"]) == {"fixed:relu"}
    assert set(control["method"]) == {"fixed:elu", "smartmixed"}
    rc, err = run_cli(["--experiment", EXP, "--sweep", "s1", "--tracking-uri", st.uri,
                       "--out", str(tmp_path / "p"), "--no-log", "--control", "nope"], capsys)
    assert rc == 2 and err == ("smartmixed: error: control: unknown method 'nope'; allowed: "
                               "fixed:elu, fixed:relu, smartmixed")
