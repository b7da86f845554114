#!/usr/bin/env bash
# Installs bubblewrap (Debian's package), the converter sandbox's namespaces, when it is
# missing. Without it the server still converts, but says "sandbox: degraded" at start and
# in /healthz (docs/security.md). Needs root or password-less sudo; otherwise says so.
set -uo pipefail
command -v bwrap >/dev/null 2>&1 && exit 0
if ! command -v apt-get >/dev/null 2>&1; then
  echo "bubblewrap is not installed and apt-get is missing: install it with your package manager" >&2
  exit 0
fi
SUDO=""
if [ "$(id -u)" -ne 0 ]; then
  if sudo -n true 2>/dev/null; then SUDO="sudo -n"; else
    echo "bubblewrap is not installed; run: sudo apt-get install bubblewrap" >&2; exit 0
  fi
fi
if ! DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq bubblewrap >/tmp/modeldrop-bwrap-install.log 2>&1; then
  ($SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq bubblewrap) \
    >>/tmp/modeldrop-bwrap-install.log 2>&1 || echo "could not install bubblewrap (see /tmp/modeldrop-bwrap-install.log)" >&2
fi
