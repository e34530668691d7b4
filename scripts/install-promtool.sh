#!/usr/bin/env bash
# install-promtool.sh installs promtool (shipped by Debian's prometheus
# package), which the tests use to lint the agent's metrics and to unit-test
# the alert rules in deploy/prometheus. Idempotent and quiet on success. The
# package's own Prometheus server is not wanted: it is stopped and disabled
# where the package started one.
set -euo pipefail
if command -v promtool >/dev/null; then
	exit 0
fi
sudo=
if [ "$(id -u)" -ne 0 ]; then
	command -v sudo >/dev/null || { echo "install-promtool: need root (or sudo)" >&2; exit 1; }
	sudo=sudo
fi
log=$(mktemp)
trap 'rm -f "$log"' EXIT
if ! { $sudo apt-get update -qq &&
	$sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus; } >"$log" 2>&1; then
	cat "$log" >&2
	echo "install-promtool: apt-get install prometheus failed" >&2
	exit 1
fi
if command -v systemctl >/dev/null && systemctl is-active --quiet prometheus 2>/dev/null; then
	$sudo systemctl disable --now prometheus >/dev/null 2>&1 || true
fi
promtool --version >/dev/null 2>&1 || { echo "install-promtool: promtool does not run" >&2; exit 1; }
