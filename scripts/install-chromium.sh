#!/usr/bin/env bash
# install-chromium.sh installs Debian's Chromium, which the evaluation tests
# use to render report.html headless. Idempotent and quiet on success.
set -euo pipefail
if [ -x /usr/bin/chromium ]; then
	exit 0
fi
sudo=
if [ "$(id -u)" -ne 0 ]; then
	command -v sudo >/dev/null || { echo "install-chromium: need root (or sudo)" >&2; exit 1; }
	sudo=sudo
fi
$sudo apt-get update -qq >/dev/null
$sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
/usr/bin/chromium --version >/dev/null
