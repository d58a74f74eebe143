#!/usr/bin/env bash
# Sets up .venv (see setup.sh) and runs the whole test suite, real-model tests included.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
# The chat page's browser test drives Debian's chromium through chromedriver (CI runs this as
# root); the main job does not need a browser, so setup.sh leaves it out.
if ! command -v chromedriver >/dev/null 2>&1 && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium chromium-driver
fi
exec .venv/bin/python -m pytest -q "$@"
