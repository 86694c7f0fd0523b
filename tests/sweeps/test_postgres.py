"""Slow test: the MLflow tracking server on a real PostgreSQL (Debian's, installed by
``tools/ensure-postgres.sh``), as in the Docker Compose stack of docs/deployment.md.

It proves that a sweep of three concurrent trials logging through ``mlflow server`` to
PostgreSQL rides out a restart of the server and then a restart of the database mid-sweep
(during the second the server answers 503, which the sweep's retry loop waits out), that
MLflow then holds exactly one FINISHED seed run per (trial, seed) and nothing RUNNING, and
that ``smartmixed analyze`` reads the runs back through the same server.

The cluster is a throwaway one in a temp folder, listening on 127.0.0.1 only (a free port,
its socket in that folder, trust authentication); as root, it runs as the ``postgres`` user
of the Debian package (or ``nobody``), since initdb and postgres refuse to run as root.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import pytest
from mlflow import MlflowClient

from sweeps import schema
from tests.sweeps.sweep_helpers import (
    VAL_CURVE,
    assert_run_tree,
    finish_sweep,
    free_port,
    log_tail,
    runs_by_kind,
    smartmixed_cmd,
    start_mlflow_server,
    sweep_process,
    wait_until,
    write_spec,
)

pytestmark = pytest.mark.slow

EPOCHS = 200
SEEDS = [0, 1]
METHODS = ["smartmixed", "fixed:relu", "fixed:tanh"]
DB_DOWN_SECONDS = 15  # longer than MLflow's own HTTP retries (~6 s): the sweep's loop waits


def _pg_bindir() -> Path | None:
    """Debian's ``/usr/lib/postgresql/<newest version>/bin``, else initdb on the PATH."""
    found = [p.parent for p in Path("/usr/lib/postgresql").glob("*/bin/initdb")
             if p.parent.parent.name.isdigit() and (p.parent / "pg_ctl").exists()]
    if found:
        return max(found, key=lambda p: int(p.parent.name))
    initdb = shutil.which("initdb")
    return Path(initdb).parent if initdb else None


def _unprivileged() -> tuple[list[str], pwd.struct_passwd | None]:
    """The prefix that runs a PostgreSQL program, and the user it runs as when that is not us:
    as root, the ``postgres`` user (or ``nobody``) through runuser."""
    if os.geteuid() != 0:
        return [], None
    runuser = shutil.which("runuser")
    for name in ("postgres", "nobody"):
        with contextlib.suppress(KeyError):
            user = pwd.getpwnam(name)
            if runuser:
                return [runuser, "-u", name, "--"], user
    pytest.skip("running as root (PostgreSQL refuses), and no runuser with a `postgres` or "
                "`nobody` user to run it as")


@dataclass
class Postgres:
    """A throwaway cluster: data, socket and log in ``folder``, on 127.0.0.1:``port``."""

    bindir: Path
    folder: Path
    port: int
    run_as: list[str]

    @property
    def data(self) -> Path:
        return self.folder / "data"

    @property
    def uri(self) -> str:
        """As docker/mlflow.Dockerfile names it: SQLAlchemy 2.1 reads a bare ``postgresql://``
        as psycopg 3, while MLflow's image and the dev extra ship psycopg2."""
        return f"postgresql+psycopg2://postgres@127.0.0.1:{self.port}/mlflow"

    def run(self, program: str, *args: str) -> None:
        out = subprocess.run([*self.run_as, str(self.bindir / program), *args], cwd=self.folder,
                             capture_output=True, text=True, timeout=120)
        assert out.returncode == 0, f"{program} {' '.join(args)} exited {out.returncode}:\n" \
            f"{out.stdout}{out.stderr}{self.log()}"

    def log(self) -> str:
        path = self.folder / "postgres.log"
        return path.read_text(errors="replace")[-3000:] if path.exists() else ""

    def start(self) -> None:
        self.run("pg_ctl", "start", "-w", "-D", str(self.data), "-l",
                 str(self.folder / "postgres.log"), "-o",
                 f"-c listen_addresses=127.0.0.1 -p {self.port} -k {self.folder}")

    def stop(self, mode: str = "fast") -> None:
        self.run("pg_ctl", "stop", "-w", "-D", str(self.data), "-m", mode)

    def kill(self) -> None:
        """Cleanup: stop the server whatever its state (SIGKILL if pg_ctl cannot)."""
        pidfile = self.data / "postmaster.pid"
        if pidfile.exists():
            with contextlib.suppress(subprocess.TimeoutExpired):
                subprocess.run([*self.run_as, str(self.bindir / "pg_ctl"), "stop", "-w", "-D",
                                str(self.data), "-m", "immediate"], cwd=self.folder,
                               capture_output=True, timeout=60)
        with contextlib.suppress(OSError, ValueError, IndexError):
            os.kill(int(pidfile.read_text().split()[0]), signal.SIGKILL)


@pytest.fixture
def postgres() -> Iterator[Postgres]:
    """A running cluster with an empty database ``mlflow``; stopped and deleted afterwards."""
    bindir = _pg_bindir()
    if bindir is None:
        pytest.skip("PostgreSQL server programs (initdb, pg_ctl) not found; on Debian "
                    "`bash tools/ensure-postgres.sh` installs them (`make test-slow` runs it)")
    pytest.importorskip("psycopg2", reason="MLflow needs psycopg2 for postgresql:// stores "
                        "(psycopg2-binary, in the dev extra)")
    run_as, user = _unprivileged()
    # Not in tmp_path: pytest's base folder is private to root, which the server's user is not.
    folder = Path(tempfile.mkdtemp(prefix="smpg"))
    if user is not None:
        os.chown(folder, user.pw_uid, user.pw_gid)
    pg = Postgres(bindir, folder, free_port(), run_as)
    try:
        pg.run("initdb", "-D", str(pg.data), "-U", "postgres", "--auth=trust", "-E", "UTF8",
               "--locale=C", "--no-sync")
        pg.start()
        pg.run("createdb", "-h", "127.0.0.1", "-p", str(pg.port), "-U", "postgres", "mlflow")
        yield pg
    finally:
        pg.kill()
        shutil.rmtree(folder, ignore_errors=True)


def test_sweep_on_postgres_rides_out_server_and_database_restarts(tmp_path, postgres):
    """Three trials at once; the server restarts, then PostgreSQL (down 15 s); the sweep exits
    0 with one FINISHED seed run per (trial, seed), and the analysis reads them back."""
    port = free_port()
    artifacts, server_log = tmp_path / "server-artifacts", tmp_path / "server.log"
    uri = f"http://127.0.0.1:{port}"
    server = start_mlflow_server(port, postgres.uri, artifacts, log=server_log)
    try:
        spec = write_spec(tmp_path, uri=uri, seeds=SEEDS, max_concurrent=3,
                          resources={"cpu": 0.5, "gpu": 0},  # 3 trials at once on 2 cores
                          fixed={"epochs": EPOCHS, "transition_epoch": 5, "architecture": "16",
                                 "device": "cpu"},
                          search={"algorithm": "grid", "space": {"method": {"choice": METHODS}}})
        c = MlflowClient(uri)

        def running() -> dict[str, int]:
            """Epochs logged so far by each RUNNING trial run."""
            trials = runs_by_kind(uri, "t-exp")[schema.KIND_TRIAL]
            return {t.info.run_id: len(c.get_metric_history(t.info.run_id, VAL_CURVE))
                    for t in trials if t.info.status == "RUNNING"}

        with sweep_process(tmp_path, "run", str(spec)) as (proc, log):
            def all_three_training() -> dict[str, int] | None:
                now = running()
                return now if len(now) == 3 and min(now.values()) >= 2 else None

            before = wait_until(all_three_training, 300, "3 concurrent trials 2 epochs in", proc)
            server.terminate()
            server.wait(timeout=60)
            time.sleep(5)
            assert proc.poll() is None, log_tail(log)  # the sweep waits for the server
            server = start_mlflow_server(port, postgres.uri, artifacts, log=server_log)

            def progressed() -> dict[str, int] | None:
                now = running()
                moved = [r for r, n in now.items() if n >= before.get(r, 0) + 2]
                back = "reachable again" in log.read_text(errors="replace")
                return now if moved and back else None

            during = wait_until(progressed, 300, "training again after the server restart", proc)
            assert len(during) == 3, during  # all three trials are still mid-training
            mark = len(log.read_text(errors="replace"))
            postgres.stop()
            time.sleep(DB_DOWN_SECONDS)
            assert proc.poll() is None, log_tail(log)  # ... and waits for the database
            postgres.start()
            t_up = time.time()
            assert finish_sweep(proc, log, 600) == 0, log_tail(log)
            print(f"epochs at the server restart {sorted(before.values())}, at the database "
                  f"restart {sorted(during.values())} of {EPOCHS}; sweep finished "
                  f"{time.time() - t_up:.0f} s after the database came back")
        text = log.read_text(errors="replace")
        assert "unreachable" in text[:mark] and "reachable again" in text[:mark]
        # Without its database the server answers 503, which the trials wait out.
        assert "503 Service Unavailable" in server_log.read_text(errors="replace")
        waited = [line for line in text[mark:].splitlines() if "unreachable" in line]
        assert any("503" in line for line in waited), text[mark:][-4000:]
        assert "reachable again" in text[mark:]
        # MLflow prints two "View run" lines whenever a run on a server ends; the driver and
        # the trials keep them out of the console (the trials get the driver's setting).
        assert "View run" not in text and "View experiment" not in text

        runs = assert_run_tree(uri, "t-exp", "t-sweep", len(METHODS), SEEDS, EPOCHS)
        seeds = runs[schema.KIND_SEED]
        assert len(seeds) == len(METHODS) * len(SEEDS)  # exactly one seed run each, no repeats
        assert not [r for rs in runs.values() for r in rs if r.info.status != "FINISHED"]

        out = tmp_path / "report"
        rep = subprocess.run([*smartmixed_cmd(), "analyze", "--experiment", "t-exp", "--sweep",
                              "t-sweep", "--tracking-uri", uri, "--out", str(out)],
                             capture_output=True, text=True, timeout=600)
        assert rep.returncode == 0, rep.stdout[-2000:] + rep.stderr[-3000:]
        table = pd.read_csv(out / "runs.csv")
        assert sorted(table["run_id"]) == sorted(r.info.run_id for r in seeds)
        assert (table["status"] == "FINISHED").all()
        expected = {(r.data.tags[schema.TAG_TRIAL], int(r.data.tags[schema.TAG_SEED]))
                    for r in seeds}
        assert set(zip(table["trial"].astype(str), table["seed"].astype(int))) == expected
        assert "logged to sweep run" in rep.stdout
    finally:
        server.terminate()
        server.wait(timeout=60)
