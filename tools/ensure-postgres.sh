#!/usr/bin/env bash
# Install Debian's PostgreSQL server (initdb, pg_ctl, postgres under /usr/lib/postgresql/<ver>/bin)
# for the slow test that runs `mlflow server` on PostgreSQL (tests/sweeps/test_postgres.py).
# The test starts its own throwaway cluster in a temp folder, on 127.0.0.1 only; it does not
# use the package's default cluster. Quiet and tolerant: if installation is impossible (no
# root, no network) that test skips with a clear reason, so this script never fails the build.
set -u
if compgen -G "/usr/lib/postgresql/*/bin/initdb" >/dev/null \
        && compgen -G "/usr/lib/postgresql/*/bin/pg_ctl" >/dev/null; then
    exit 0
fi
exec bash "$(dirname "$0")/apt-install.sh" ensure-postgres "PostgreSQL test" postgresql
