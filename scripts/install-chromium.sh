#!/usr/bin/env bash
# The Chromium the browser tests drive (tests/test_ui_browser.py), from Debian's packages.
# Already installed: nothing to do. Not root: say how, and leave it (those tests then skip,
# except under CI=true, where they fail).
set -euo pipefail
if command -v chromium >/dev/null || command -v chromium-browser >/dev/null; then
    exit 0
fi
if [ "$(id -u)" != 0 ]; then
    echo "Chromium is not installed; the browser tests need it: sudo apt-get install -y chromium" >&2
    exit 0
fi
export DEBIAN_FRONTEND=noninteractive
apt-get install -y -q chromium >/dev/null || { apt-get update -q && apt-get install -y -q chromium >/dev/null; }
echo "installed $(chromium --version 2>/dev/null)"
