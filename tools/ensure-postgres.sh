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
SUDO=""
if [ "$(id -u)" -ne 0 ]; then
    if command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
        SUDO="sudo -n"
    else
        echo "ensure-postgres: not root and no passwordless sudo; PostgreSQL test will be skipped" >&2
        exit 0
    fi
fi
export DEBIAN_FRONTEND=noninteractive
if ! { $SUDO apt-get update -qq >/dev/null 2>&1 \
        && $SUDO apt-get install -y -qq --no-install-recommends postgresql >/dev/null 2>&1; }; then
    echo "ensure-postgres: could not install postgresql; PostgreSQL test will be skipped" >&2
fi
exit 0
