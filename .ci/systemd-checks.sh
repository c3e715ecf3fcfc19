#!/usr/bin/env bash
# Packaging and systemd checks: build the .deb with cargo-deb, install it with dpkg -i, run the
# installed binary's check-config on the installed config, `systemd-analyze verify` both units,
# and fail if `systemd-analyze security` rates the service's exposure above 2.0.
# Installs what it needs (systemd-analyze, dpkg-shlibdeps, /bin/kill, cargo-deb) when missing.
set -euo pipefail
cd "$(dirname "$0")/.."

max_exposure=2.0
apt_updated=
apt_install() { # package...
    if [ -z "$apt_updated" ]; then
        apt-get update -qq
        apt_updated=1
    fi
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}

command -v systemd-analyze >/dev/null || apt_install systemd
command -v dpkg-shlibdeps >/dev/null || apt_install dpkg-dev
# ExecReload uses /bin/kill; `verify` checks that every command exists.
[ -x /bin/kill ] || apt_install procps
command -v cargo-deb >/dev/null || cargo install cargo-deb --locked

echo "== cargo deb"
# CARGO_DEB_ARGS: extra flags, e.g. --no-build to package an existing release build.
# (tee writes a copy to the inherited stderr through >&2; `tee /dev/stderr` would reopen a log
# file that stderr points to and truncate it.)
deb_log=$(mktemp)
trap 'rm -f "$deb_log"' EXIT
# shellcheck disable=SC2086
cargo deb ${CARGO_DEB_ARGS:-} 2>&1 | tee "$deb_log" >&2
deb=$(grep -E '\.deb$' "$deb_log" | tail -n1)
[ -f "$deb" ] || { echo "cargo deb produced no .deb" >&2; exit 1; }

echo "== package contents"
dpkg-deb --contents "$deb"
conffiles=$(dpkg-deb --ctrl-tarfile "$deb" | tar -xOf - ./conffiles)
grep -qx /etc/tallyd/tallyd.toml <<<"$conffiles" \
    || { echo "/etc/tallyd/tallyd.toml is not a conffile" >&2; exit 1; }
# The package starts nothing: its postinst may only try-restart (restart if already running).
postinst=$(dpkg-deb --ctrl-tarfile "$deb" | tar -xOf - ./postinst 2>/dev/null || true)
if grep -E 'deb-systemd-invoke (start|restart)|systemctl .*(start|enable)' <<<"$postinst"; then
    echo "postinst starts or enables a unit" >&2
    exit 1
fi

echo "== dpkg -i"
dpkg -i "$deb"
test -x /usr/bin/tallyd
test -f /usr/lib/systemd/system/tallyd.service # = /lib/systemd/system on merged-/usr
test -f /usr/lib/systemd/system/tallyd.socket
dpkg-query -W -f='${Conffiles}\n' tallyd | grep -q /etc/tallyd/tallyd.toml
# ...and enables nothing: no tallyd link in any .wants directory.
if find /etc/systemd/system -name 'tallyd.*' 2>/dev/null | grep .; then
    echo "installing the package enabled a unit" >&2
    exit 1
fi

echo "== installed check-config"
/usr/bin/tallyd check-config /etc/tallyd/tallyd.toml

echo "== systemd-analyze verify"
# verify exits 0 on warnings it only prints; treat any output about these units as a failure.
out=$(systemd-analyze verify deploy/tallyd.service deploy/tallyd.socket 2>&1) || {
    echo "$out" >&2
    exit 1
}
if grep -E 'tallyd\.(service|socket)' <<<"$out"; then
    echo "systemd-analyze verify complained about the units" >&2
    exit 1
fi

echo "== systemd-analyze security"
report=$(systemd-analyze security --offline=yes deploy/tallyd.service 2>&1) || true
echo "$report" | grep -E '✗|Overall' || true
score=$(sed -n 's/.*Overall exposure level for tallyd\.service: \([0-9.]*\).*/\1/p' <<<"$report")
[ -n "$score" ] || { echo "no exposure score in:" >&2; echo "$report" >&2; exit 1; }
echo "exposure: $score (max $max_exposure)"
awk -v s="$score" -v m="$max_exposure" 'BEGIN { exit !(s <= m) }' \
    || { echo "exposure $score is above $max_exposure" >&2; exit 1; }

echo "systemd checks: ok"
