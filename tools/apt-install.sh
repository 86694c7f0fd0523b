#!/usr/bin/env bash
# apt-install.sh CALLER TEST PACKAGE...: install Debian packages for the named test, quietly, as root
# or with passwordless sudo. Never fails the build: where installation is impossible (no root,
# no network) it says so on stderr and the test skips with its own reason.
set -u
name=$1 what=$2; shift 2
SUDO=""
if [ "$(id -u)" -ne 0 ]; then
    if command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
        SUDO="sudo -n"
    else
        echo "$name: not root and no passwordless sudo; $what will be skipped" >&2
        exit 0
    fi
fi
export DEBIAN_FRONTEND=noninteractive
if ! { $SUDO apt-get update -qq >/dev/null 2>&1 \
        && $SUDO apt-get install -y -qq --no-install-recommends "$@" >/dev/null 2>&1; }; then
    echo "$name: could not install $*; $what will be skipped" >&2
fi
exit 0
