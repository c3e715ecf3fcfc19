#!/usr/bin/env bash
# End-to-end load test on loopback: tallyd (release build) and a minimal recvmmsg receiver
# (examples/minrecv.rs), driven through the same ladder of rates by `tallyd-blast`, one line
# per datagram and packed. For every step it reports lines sent vs delivered, kernel drops,
# the receiver's CPU time per line (utime+stime deltas from /proc/<pid>/stat) and RSS, and the
# ratio of tallyd's figures to the minimal receiver's in the same run.
#
# Not run by `cargo test`. Loopback only; bounded (a watchdog stops it after MAX_SECONDS);
# stops every process it started. Usage:
#
#   bash benches/loadtest.sh                     # the full ladder (~4 minutes)
#   STEP_SECONDS=2 ONELINE_RATES="20000 100000" PACKED_RATES="200000" bash benches/loadtest.sh
#
# Settings (environment): STEP_SECONDS (3), ONELINE_RATES, PACKED_RATES (lines/s; 0 = as fast
# as the sender can), PACKED_BYTES (900: ~64 blast lines per datagram), NAMES (1000 series),
# TAGS (0), SENDERS (1 sender socket/thread), WORKERS (tallyd UDP workers, 2), RECV_BUFFER
# (bytes asked by both receivers, 8388608 = tallyd's default), UDP_PORT, HTTP_PORT, MIN_PORT,
# OUT (results directory, target/loadtest), MAX_SECONDS (900), TALLYD / BLAST / MINRECV.
set -euo pipefail
cd "$(dirname "$0")/.."

STEP_SECONDS=${STEP_SECONDS:-3}
ONELINE_RATES=${ONELINE_RATES:-"20000 50000 100000 200000 300000 400000 0"}
PACKED_RATES=${PACKED_RATES:-"200000 1000000 4000000 8000000 12000000 16000000 0"}
PACKED_BYTES=${PACKED_BYTES:-900}
NAMES=${NAMES:-1000}
TAGS=${TAGS:-0}
SENDERS=${SENDERS:-1}
WORKERS=${WORKERS:-2}
RECV_BUFFER=${RECV_BUFFER:-8388608}
UDP_PORT=${UDP_PORT:-18125}
HTTP_PORT=${HTTP_PORT:-19102}
MIN_PORT=${MIN_PORT:-18126}
OUT=${OUT:-target/loadtest}
MAX_SECONDS=${MAX_SECONDS:-900}

mkdir -p "$OUT"
TALLYD_PID=""
MIN_PID=""
WATCHDOG_PID=""
cleanup() {
    [ -n "$MIN_PID" ] && kill "$MIN_PID" 2>/dev/null || true
    [ -n "$TALLYD_PID" ] && kill "$TALLYD_PID" 2>/dev/null || true
    [ -n "$WATCHDOG_PID" ] && kill "$WATCHDOG_PID" 2>/dev/null || true
    wait 2>/dev/null || true
}
trap cleanup EXIT
trap 'echo "loadtest: interrupted" >&2; exit 130' INT TERM
# The watchdog: the whole run is bounded whatever happens.
(sleep "$MAX_SECONDS" && echo "loadtest: MAX_SECONDS=$MAX_SECONDS reached, stopping" >&2 \
    && kill -TERM $$) &
WATCHDOG_PID=$!

# TALLYD, BLAST, MINRECV: prebuilt binaries to use instead of this tree's (e.g. to compare
# two builds of tallyd in one sitting); without them, this tree's are built.
if [ -z "${TALLYD:-}" ] || [ -z "${BLAST:-}" ] || [ -z "${MINRECV:-}" ]; then
    echo "== build" >&2
    cargo build --release --bin tallyd --bin tallyd-blast --example minrecv >&2
fi
TALLYD=${TALLYD:-target/release/tallyd}
BLAST=${BLAST:-target/release/tallyd-blast}
MINRECV=${MINRECV:-target/release/examples/minrecv}

CLK_TCK=$(getconf CLK_TCK)
# utime + stime of a process, in seconds.
cpu_seconds() { awk -v t="$CLK_TCK" '{ sub(/^.*\) /, ""); printf "%.4f", ($12 + $13) / t }' "/proc/$1/stat"; }
rss_kib() { awk '/^VmRSS:/ { print $2 }' "/proc/$1/status"; }
# Sum of one metric family (all label sets) in tallyd's /metrics.
metric_sum() {
    curl -sf "http://127.0.0.1:$HTTP_PORT/metrics" \
        | awk -v m="$1" '$1 == m || index($1, m "{") == 1 { s += $NF } END { printf "%.0f", s }'
}
# Kernel drops of the UDP socket bound to a port, from /proc/net/udp.
udp_drops() {
    local hex
    hex=$(printf '%04X' "$1")
    awk -v p=":$hex" 'index($2, p) == length($2) - 4 { s += $NF } END { printf "%.0f", s }' /proc/net/udp
}
blast() { # rate packed port -> "lines datagrams"
    "$BLAST" --target "127.0.0.1:$3" --rate "$1" --duration "${STEP_SECONDS}s" \
        --names "$NAMES" --tags "$TAGS" --packed "$2" --senders "$SENDERS" \
        | sed -n 's/^sent lines=\([0-9]*\) datagrams=\([0-9]*\).*/\1 \2/p'
}

echo "== start tallyd" >&2
CONF="$OUT/tallyd.toml"
cat >"$CONF" <<TOML
[http]
listen = "127.0.0.1:$HTTP_PORT"

[[udp]]
listen = "127.0.0.1:$UDP_PORT"
workers = $WORKERS
recv_buffer = $RECV_BUFFER

[log]
level = "warn"
TOML
"$TALLYD" --config "$CONF" 2>"$OUT/tallyd.log" &
TALLYD_PID=$!
for _ in $(seq 100); do
    curl -sf "http://127.0.0.1:$HTTP_PORT/-/ready" >/dev/null 2>&1 && break
    sleep 0.1
done
curl -sf "http://127.0.0.1:$HTTP_PORT/-/ready" >/dev/null || { echo "tallyd did not start" >&2; cat "$OUT/tallyd.log" >&2; exit 1; }
# Create the series before measuring (steady state: every series exists).
"$BLAST" --target "127.0.0.1:$UDP_PORT" --rate 50000 --count $((NAMES * 4)) \
    --names "$NAMES" --tags "$TAGS" >/dev/null
sleep 0.5

RESULTS="$OUT/results.tsv"
printf 'mode\toffered\treceiver\tsent\tdatagrams\tdelivered\tdrops\tcpu_s\tcpu_us_per_line\trss_kib\n' >"$RESULTS"

step_tallyd() { # mode rate packed
    local l0 d0 c0 c1 l1 d1 sent
    l0=$(metric_sum tallyd_lines_received_total)
    d0=$(metric_sum tallyd_udp_kernel_drops_total)
    c0=$(cpu_seconds "$TALLYD_PID")
    sent=$(blast "$2" "$3" "$UDP_PORT")
    sleep 0.5
    c1=$(cpu_seconds "$TALLYD_PID")
    l1=$(metric_sum tallyd_lines_received_total)
    d1=$(metric_sum tallyd_udp_kernel_drops_total)
    emit "$1" "$2" tallyd "$sent" $((l1 - l0)) $((d1 - d0)) "$c0" "$c1" "$(rss_kib "$TALLYD_PID")"
}

step_min() { # mode rate packed
    local c0 c1 sent d1 rss out lines
    "$MINRECV" "127.0.0.1:$MIN_PORT" "$RECV_BUFFER" 30 >"$OUT/minrecv.out" &
    MIN_PID=$!
    for _ in $(seq 50); do grep -q listening "$OUT/minrecv.out" 2>/dev/null && break; sleep 0.05; done
    c0=$(cpu_seconds "$MIN_PID")
    sent=$(blast "$2" "$3" "$MIN_PORT")
    sleep 0.5
    c1=$(cpu_seconds "$MIN_PID")
    d1=$(udp_drops "$MIN_PORT")
    rss=$(rss_kib "$MIN_PID")
    kill -TERM "$MIN_PID"
    wait "$MIN_PID" || true
    MIN_PID=""
    out=$(grep '^minrecv lines=' "$OUT/minrecv.out")
    lines=$(sed 's/.*lines=\([0-9]*\).*/\1/' <<<"$out")
    emit "$1" "$2" minrecv "$sent" "$lines" "$d1" "$c0" "$c1" "$rss"
}

emit() { # mode offered receiver "sent datagrams" delivered drops cpu0 cpu1 rss
    local sent dg cpu per
    read -r sent dg <<<"$4"
    cpu=$(awk -v a="$7" -v b="$8" 'BEGIN { printf "%.3f", b - a }')
    per=$(awk -v c="$cpu" -v l="$5" 'BEGIN { if (l > 0) printf "%.3f", c * 1e6 / l; else print "nan" }')
    printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$1" "$2" "$3" "$sent" "$dg" "$5" "$6" "$cpu" "$per" "$9" >>"$RESULTS"
    printf '  %-7s %-8s offered=%-9s sent=%-10s delivered=%-10s drops=%-8s cpu=%ss (%s us/line) rss=%s KiB\n' \
        "$1" "$3" "$2" "$sent" "$5" "$6" "$cpu" "$per" "$9" >&2
}

for mode in oneline packed; do
    if [ "$mode" = oneline ]; then rates=$ONELINE_RATES; packed=0; else rates=$PACKED_RATES; packed=$PACKED_BYTES; fi
    echo "== $mode" >&2
    for r in $rates; do
        step_tallyd "$mode" "$r" "$packed"
        step_min "$mode" "$r" "$packed"
    done
done

echo
echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'), kernel $(uname -r), rmem_max $(cat /proc/sys/net/core/rmem_max)"
echo "settings: STEP_SECONDS=$STEP_SECONDS NAMES=$NAMES TAGS=$TAGS SENDERS=$SENDERS WORKERS=$WORKERS RECV_BUFFER=$RECV_BUFFER PACKED_BYTES=$PACKED_BYTES"
echo
# The report: one row per step, tallyd beside the minimal receiver, ratios tallyd / minrecv.
awk -F'\t' '
NR == 1 { next }
{ k = $1 SUBSEP $2; key[k] = 1; if (!(k in seen)) { order[++n] = k; seen[k] = 1 }
  for (i = 4; i <= 10; i++) v[k, $3, i] = $i }
END {
  printf "| mode | offered lines/s | lines/dgram | tallyd delivered/sent | tallyd drops | tallyd us/line | tallyd RSS MiB | minrecv delivered/sent | minrecv drops | minrecv us/line | CPU/line ratio |\n"
  printf "|---|---|---|---|---|---|---|---|---|---|---|\n"
  for (j = 1; j <= n; j++) {
    k = order[j]; split(k, p, SUBSEP)
    ts = v[k, "tallyd", 4]; td = v[k, "tallyd", 6]; ms = v[k, "minrecv", 4]; md = v[k, "minrecv", 6]
    lpd = (v[k, "tallyd", 5] > 0) ? ts / v[k, "tallyd", 5] : 0
    ratio = (v[k, "minrecv", 9] > 0) ? sprintf("%.2fx", v[k, "tallyd", 9] / v[k, "minrecv", 9]) : "-"
    printf "| %s | %s | %.1f | %s / %s (%.2f%%) | %s | %s | %.1f | %s / %s (%.2f%%) | %s | %s | %s |\n", \
      p[1], (p[2] == 0 ? "max" : p[2]), lpd, td, ts, (ts > 0 ? 100 * td / ts : 0), v[k, "tallyd", 7], \
      v[k, "tallyd", 9], v[k, "tallyd", 10] / 1024, md, ms, (ms > 0 ? 100 * md / ms : 0), \
      v[k, "minrecv", 7], v[k, "minrecv", 9], ratio
  }
  # Highest loss-free step (delivered == sent, no drops) per receiver and mode.
  for (j = 1; j <= n; j++) {
    k = order[j]; split(k, p, SUBSEP)
    for (r = 0; r < 2; r++) {
      rc = (r == 0 ? "tallyd" : "minrecv")
      if (v[k, rc, 4] > 0 && v[k, rc, 6] == v[k, rc, 4] && v[k, rc, 7] == 0) {
        rate = v[k, rc, 4] / '"$STEP_SECONDS"'
        if (rate > best[p[1], rc]) best[p[1], rc] = rate
      }
    }
  }
  print ""
  split("oneline packed", ms2, " ")
  for (i = 1; i <= 2; i++) {
    printf "highest loss-free achieved rate, %s: tallyd %.0f lines/s, minrecv %.0f lines/s", ms2[i], best[ms2[i], "tallyd"], best[ms2[i], "minrecv"]
    if (best[ms2[i], "minrecv"] > 0) printf " (%.0f%%)", 100 * best[ms2[i], "tallyd"] / best[ms2[i], "minrecv"]
    printf "\n"
  }
}' "$RESULTS" | tee "$OUT/report.md"
echo
echo "raw results: $RESULTS; report: $OUT/report.md"
