#!/usr/bin/env bash
# Installs Debian's chromium, the browser the dashboard tests drive through Playwright's Python
# package (tests/browser.py), when it is missing. Playwright's own browser download is not used:
# it cannot reach its CDN from these machines. Needs root or password-less sudo; otherwise says so.
set -uo pipefail
command -v chromium >/dev/null 2>&1 && exit 0
if ! command -v apt-get >/dev/null 2>&1; then
  echo "chromium is not installed and apt-get is missing: install it with your package manager" >&2
  exit 0
fi
SUDO=""
if [ "$(id -u)" -ne 0 ]; then
  if sudo -n true 2>/dev/null; then SUDO="sudo -n"; else
    echo "chromium is not installed; run: sudo apt-get install chromium" >&2; exit 0
  fi
fi
LOG=/tmp/modeldrop-chromium-install.log
if ! DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq chromium >"$LOG" 2>&1; then
  ($SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq chromium) \
    >>"$LOG" 2>&1 || echo "could not install chromium (see $LOG)" >&2
fi
