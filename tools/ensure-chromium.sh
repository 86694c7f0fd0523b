#!/usr/bin/env bash
# Install headless Chromium + chromedriver (Debian packages) for the report-rendering test.
# Quiet and tolerant: if installation is impossible (no root, no network) the test that needs
# Chromium skips with a clear reason, so this script never fails the build.
set -u
if command -v chromium >/dev/null 2>&1 && [ -x /usr/bin/chromedriver ]; then
    exit 0
fi
exec bash "$(dirname "$0")/apt-install.sh" ensure-chromium "browser test" chromium chromium-driver
