#!/usr/bin/env bash
# Soak test: tallyd (release build) under mixed traffic, reloads and scrapes for a bounded time.
#
# For SOAK_SECONDS (default 60) it runs, all on loopback:
#   - BLASTERS `tallyd-blast` senders (one line per datagram, 50 names each, paced);
#   - a Python sender with counters, gauges, timers, sets, malformed lines, and series churn:
#     50 new series a second that the default ttl (2s) expires;
#   - a reload every second by SIGHUP, every other one an invalid file (the watcher sees the
#     file change too);
#   - a scrape every 250 ms (curl; every 10th through `promtool check metrics` when installed);
#   - an RSS sample every second.
# Then it stops the traffic, scrapes, sends SIGTERM, and asserts:
#   - no panic: the process was alive throughout, its log has no panic, it exits 0 on SIGTERM;
#   - every scrape answered 200 (and promtool accepted the ones it checked);
#   - RSS flat after warm-up: no sample after it exceeds the post-warm-up baseline by > 20%;
#   - accounting closes: lines sent = tallyd_lines_received_total + tallyd_udp_kernel_drops_total
#     (one line per datagram), and lines received = samples + parse errors + dropped + refused;
#   - exact totals for the accepted traffic: per sender and type, what tallyd aggregated is what
#     was sent (exactly, when the kernel dropped nothing; otherwise the shortfall of all
#     categories together equals the kernel drops);
#   - reloads: failures >= invalid files written, successes >= valid files written; churned
#     series expired (tallyd_series_expired_total > 0).
#
# Not part of `cargo test`. Usage: bash benches/soak.sh   (SOAK_SECONDS=20 for a quick run)
# Settings: SOAK_SECONDS (60), BLASTERS (3), BLAST_RATE (lines/s per blaster, 5000),
# PY_RATE (lines/s, 2000), CHURN_PER_SECOND (50), WORKERS (2), OUT (target/soak).
set -euo pipefail
cd "$(dirname "$0")/.."

SOAK_SECONDS=${SOAK_SECONDS:-60}
BLASTERS=${BLASTERS:-3}
BLAST_RATE=${BLAST_RATE:-5000}
PY_RATE=${PY_RATE:-2000}
CHURN_PER_SECOND=${CHURN_PER_SECOND:-50}
WORKERS=${WORKERS:-2}
OUT=${OUT:-target/soak}
MAX_SECONDS=$((SOAK_SECONDS * 3 + 120))

mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
rm -f "$OUT"/*.out "$OUT"/*.log "$OUT"/*.prom "$OUT"/*.toml "$OUT"/*.txt "$OUT"/*.json

PIDS=()
TALLYD_PID=""
cleanup() {
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    [ -n "$TALLYD_PID" ] && kill -TERM "$TALLYD_PID" 2>/dev/null || true
    wait 2>/dev/null || true
}
trap cleanup EXIT
trap 'echo "soak: interrupted" >&2; exit 130' INT TERM

fail() {
    echo "SOAK FAILED: $*" >&2
    exit 1
}

echo "== build (release)" >&2
cargo build --release --bin tallyd --bin tallyd-blast >&2
BIN_DIR=${CARGO_TARGET_DIR:-$(pwd)/target}/release
TALLYD=$BIN_DIR/tallyd
BLAST=$BIN_DIR/tallyd-blast

# The watchdog (started after the build, which may wait for cargo's lock): the run is bounded
# whatever happens.
(sleep "$MAX_SECONDS" && echo "soak: MAX_SECONDS=$MAX_SECONDS reached, stopping" >&2 \
    && kill -TERM $$) &
PIDS+=($!)

# Two free loopback ports (TCP for HTTP, UDP for StatsD).
read -r HTTP_PORT UDP_PORT < <(python3 - <<'EOF'
import socket
t = socket.socket(); t.bind(("127.0.0.1", 0))
u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); u.bind(("127.0.0.1", 0))
print(t.getsockname()[1], u.getsockname()[1])
EOF
)

CONFIG=$OUT/tallyd.toml
# A valid config; $1 varies a harmless setting so each reload is a real change.
valid_config() {
    cat <<EOF
[http]
listen = "127.0.0.1:$HTTP_PORT"

[[udp]]
listen = "127.0.0.1:$UDP_PORT"
workers = $WORKERS

[defaults]
ttl = "2s"

[limits]
max_series = 200000
max_series_per_metric = $((50000 + $1))

# The senders' steady series never expire, so their totals can be checked at the end; the
# churn series take the default ttl.
[[mapping]]
match = "soak_blast.*.*"
name = "soak_blast_total"
labels = { sender = "\$1", n = "\$2" }
ttl = "0s"

[[mapping]]
match = "soak_py.*"
name = "soak_py_\${1}"
ttl = "0s"
EOF
}
invalid_config() {
    case $(($1 % 3)) in
        0) valid_config "$1"; echo "[limits"; ;;                       # TOML syntax error
        1) valid_config "$1" | sed 's/ttl = "2s"/ttl = "2 parsecs"/' ;;  # bad duration
        2) valid_config "$1"; printf '[http]\nbogus = 1\n' ;;          # duplicate table
    esac
}
write_config() { # atomically, as editors do
    cat > "$CONFIG.tmp"
    mv "$CONFIG.tmp" "$CONFIG"
}
valid_config 0 | write_config

echo "== start tallyd (udp 127.0.0.1:$UDP_PORT, http 127.0.0.1:$HTTP_PORT)" >&2
RUST_LOG=${RUST_LOG:-info} "$TALLYD" --config "$CONFIG" 2> "$OUT/tallyd.log" &
TALLYD_PID=$!
for _ in $(seq 100); do
    curl -sf -o /dev/null "http://127.0.0.1:$HTTP_PORT/-/ready" && break
    kill -0 "$TALLYD_PID" 2>/dev/null || fail "tallyd exited at start (see $OUT/tallyd.log)"
    sleep 0.1
done
curl -sf -o /dev/null "http://127.0.0.1:$HTTP_PORT/-/ready" || fail "tallyd never became ready"

alive() { kill -0 "$TALLYD_PID" 2>/dev/null || fail "tallyd died (see $OUT/tallyd.log)"; }
rss_kib() { awk '/^VmRSS:/ {print $2}' "/proc/$TALLYD_PID/status"; }

echo "== traffic for ${SOAK_SECONDS}s: $BLASTERS blasters x $BLAST_RATE/s, python $PY_RATE/s" >&2
for i in $(seq 0 $((BLASTERS - 1))); do
    "$BLAST" --target "127.0.0.1:$UDP_PORT" --rate "$BLAST_RATE" \
        --duration "${SOAK_SECONDS}s" --names 50 --prefix "soak_blast.s$i" \
        > "$OUT/blast-$i.out" 2>&1 &
    PIDS+=($!)
done
BLAST_PIDS=("${PIDS[@]:1}")

python3 - "$UDP_PORT" "$SOAK_SECONDS" "$PY_RATE" "$CHURN_PER_SECOND" > "$OUT/python.json" <<'EOF' &
# One line per datagram; counts what it sent by category.
import json, random, socket, sys, time
port, seconds, rate, churn = int(sys.argv[1]), float(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.connect(("127.0.0.1", port))
sent = {"requests": 0, "latency": 0, "temp": 0, "users": 0, "bad": 0, "churn": 0, "errors": 0}
start = time.monotonic()
n = 0
last_churn = -1
while True:
    el = time.monotonic() - start
    if el >= seconds:
        break
    sec = int(el)
    lines = []
    if sec != last_churn:
        # A new generation of series every second; the previous ones go idle and expire.
        last_churn = sec
        lines += [("churn", "soak_churn.g%d.k%d:1|c" % (sec, k)) for k in range(churn)]
    k = n % 10
    if k < 5:
        lines.append(("requests", "soak_py.requests:1|c|#route:r%d" % (n % 7)))
    elif k < 7:
        lines.append(("latency", "soak_py.latency:%d|ms" % random.randint(1, 2000)))
    elif k == 7:
        lines.append(("temp", "soak_py.temp:%d|g" % random.randint(-40, 40)))
    elif k == 8:
        lines.append(("users", "soak_py.users:u%d|s" % random.randint(0, 5000)))
    else:
        lines.append(("bad", random.choice(["soak_bad", "soak_bad:1|x", ":1|c", "soak_bad:NaN|g"])))
    for cat, line in lines:
        try:
            s.send(line.encode())
            sent[cat] += 1
        except OSError:
            sent["errors"] += 1
    n += 1
    due = n / rate
    if due > el:
        time.sleep(due - el)
print(json.dumps(sent))
EOF
PY_PID=$!
PIDS+=($PY_PID)

# Reloads: every second, alternately valid and invalid, each followed by SIGHUP.
(
    i=1
    valid=0 invalid=0
    end=$((SECONDS + SOAK_SECONDS))
    while [ $SECONDS -lt $end ]; do
        sleep 1
        if [ $((i % 2)) -eq 0 ]; then
            valid_config "$i" | write_config; valid=$((valid + 1))
        else
            invalid_config "$i" | write_config; invalid=$((invalid + 1))
        fi
        kill -HUP "$TALLYD_PID" 2>/dev/null || true
        i=$((i + 1))
    done
    valid_config 0 | write_config
    kill -HUP "$TALLYD_PID" 2>/dev/null || true
    valid=$((valid + 1))
    echo "$valid $invalid" > "$OUT/reloads.txt"
) &
RELOADER_PID=$!
PIDS+=($RELOADER_PID)

# Scrapes every 250 ms, every 10th through promtool when it is installed.
HAVE_PROMTOOL=0
command -v promtool >/dev/null 2>&1 && HAVE_PROMTOOL=1
[ $HAVE_PROMTOOL -eq 1 ] || echo "soak: promtool not found; scrapes are checked for status only" >&2
(
    ok=0 bad=0 checked=0 worst=0
    end=$((SECONDS + SOAK_SECONDS))
    while [ $SECONDS -lt $end ]; do
        res=$(curl -s -o "$OUT/scrape.prom" -w '%{http_code} %{time_total}' --max-time 10 \
            "http://127.0.0.1:$HTTP_PORT/metrics" || echo "000 10")
        code=${res% *}; took=${res#* }
        if [ "$code" = 200 ]; then ok=$((ok + 1)); else bad=$((bad + 1)); fi
        worst=$(awk -v a="$worst" -v b="$took" 'BEGIN { print (b > a) ? b : a }')
        if [ $HAVE_PROMTOOL -eq 1 ] && [ "$code" = 200 ] && [ $(((ok + bad) % 10)) -eq 0 ]; then
            if ! out=$(promtool check metrics < "$OUT/scrape.prom" 2>&1) || [ -n "$out" ]; then
                cp "$OUT/scrape.prom" "$OUT/promtool-failed.prom"
                echo "$out" > "$OUT/promtool-failed.txt"
                bad=$((bad + 1))
            fi
            checked=$((checked + 1))
        fi
        sleep 0.25
    done
    echo "$ok $bad $checked $worst" > "$OUT/scrapes.txt"
) &
SCRAPER_PID=$!
PIDS+=($SCRAPER_PID)

# RSS, once a second, while the traffic runs.
: > "$OUT/rss.txt"
for _ in $(seq "$SOAK_SECONDS"); do
    alive
    rss_kib >> "$OUT/rss.txt"
    sleep 1
done

echo "== stopping traffic" >&2
for p in "${BLAST_PIDS[@]}" "$PY_PID" "$RELOADER_PID" "$SCRAPER_PID"; do
    wait "$p" || fail "a helper process failed (pid $p)"
done
alive
# Let the sockets drain and the final reload land, then scrape once more.
sleep 1.5
curl -sf --max-time 10 -o "$OUT/final.prom" "http://127.0.0.1:$HTTP_PORT/metrics" \
    || fail "the final scrape failed"
alive

echo "== SIGTERM" >&2
kill -TERM "$TALLYD_PID"
set +e
wait "$TALLYD_PID"
EXIT=$?
set -e
TALLYD_PID=""
[ "$EXIT" -eq 0 ] || fail "tallyd exited $EXIT on SIGTERM (see $OUT/tallyd.log)"
if grep -qi "panicked" "$OUT/tallyd.log"; then
    fail "a panic in $OUT/tallyd.log: $(grep -i -m1 panicked "$OUT/tallyd.log")"
fi

echo "== report" >&2
python3 - "$OUT" "$SOAK_SECONDS" "$BLASTERS" <<'EOF'
import json, os, re, sys
out, seconds, blasters = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
problems = []
def check(ok, what):
    print(("ok    " if ok else "FAIL  ") + what)
    if not ok:
        problems.append(what)

series = {}
for line in open(os.path.join(out, "final.prom")):
    if line.startswith("#") or not line.strip():
        continue
    key, value = line.rstrip("\n").rsplit(" ", 1)
    series[key] = float(value)
def total(name, **labels):
    t = 0.0
    for key, v in series.items():
        n, _, rest = key.partition("{")
        if n == name and all('%s="%s"' % kv in rest for kv in labels.items()):
            t += v
    return t

blast = 0
for i in range(blasters):
    text = open(os.path.join(out, "blast-%d.out" % i)).read()
    m = re.search(r"sent lines=(\d+) datagrams=(\d+) send_errors=(\d+)", text)
    if not m:
        sys.exit("blast %d printed no summary: %s" % (i, text))
    blast += int(m.group(1))
py = json.load(open(os.path.join(out, "python.json")))
py_lines = sum(v for k, v in py.items() if k != "errors")
sent = blast + py_lines
received = total("tallyd_lines_received_total")
drops = total("tallyd_udp_kernel_drops_total")
print("sent: %d lines (blast %d, python %s)" % (sent, blast, py))
print("received %d, kernel drops %d" % (received, drops))
check(sent == received + drops, "accounting: sent %d == received %d + kernel drops %d" % (sent, received, drops))
outcomes = sum(total(n) for n in ("tallyd_samples_total", "tallyd_parse_errors_total",
                                  "tallyd_samples_dropped_total", "tallyd_series_refused_total"))
check(received == outcomes, "accounting: received %d == samples + parse errors + dropped + refused (%d)" % (received, outcomes))

got = {
    "blast": total("soak_blast_total"),
    "requests": total("soak_py_requests_total"),
    "latency": total("soak_py_latency_count"),
    "bad": total("tallyd_parse_errors_total"),
    # Every gauge, set and churn line is a sample; their totals come from tallyd_samples_total.
    "temp": total("tallyd_samples_total", type="gauge"),
    "users": total("tallyd_samples_total", type="set"),
}
want = {"blast": blast, "requests": py["requests"], "latency": py["latency"], "bad": py["bad"],
        "temp": py["temp"], "users": py["users"]}
for k in want:
    if drops == 0:
        check(got[k] == want[k], "exact total %s: %d == %d sent" % (k, got[k], want[k]))
    else:
        check(got[k] <= want[k], "total %s: %d <= %d sent (kernel drops %d)" % (k, got[k], want[k], drops))
churn_counted = total("tallyd_samples_total", type="counter") - got["blast"] - got["requests"]
if drops == 0:
    check(churn_counted == py["churn"], "exact total churn: %d == %d sent" % (churn_counted, py["churn"]))
missing = (sum(want.values()) + py["churn"]) - (sum(got.values()) + churn_counted)
check(missing == drops, "the shortfall over all categories (%d) is the kernel drops (%d)" % (missing, drops))

expired = total("tallyd_series_expired_total")
check(expired > 0, "churned series expired: %d" % expired)
live_churn = sum(1 for k in series if k.startswith("soak_churn_"))
check(live_churn <= 6 * int(os.environ.get("CHURN_PER_SECOND", "50")),
      "churn series live at the end: %d (ttl 2s bounds them)" % live_churn)

valid, invalid = map(int, open(os.path.join(out, "reloads.txt")).read().split())
ok_reloads = total("tallyd_config_reloads_total", outcome="success")
bad_reloads = total("tallyd_config_reloads_total", outcome="failure")
check(bad_reloads >= invalid, "reload failures %d >= invalid files %d" % (bad_reloads, invalid))
check(ok_reloads >= valid, "reload successes %d >= valid files %d" % (ok_reloads, valid))
check(total("tallyd_config_last_reload_successful") == 1, "the last reload succeeded")

ok, bad, checked, worst = open(os.path.join(out, "scrapes.txt")).read().split()
check(int(bad) == 0 and int(ok) > 0, "scrapes: %s ok, %s failed, %s through promtool, worst %.3fs" % (ok, bad, checked, float(worst)))

rss = [int(x) for x in open(os.path.join(out, "rss.txt")).read().split()]
warm = max(3, len(rss) // 4)
if len(rss) >= warm + 3:
    base = sorted(rss[warm:warm + 3])[1]
    peak = max(rss[warm:])
    print("rss KiB: start %d, baseline after %ds warm-up %d, peak %d, end %d" % (rss[0], warm, base, peak, rss[-1]))
    check(peak <= base * 1.2, "RSS flat after warm-up: peak %d <= 1.2 x %d" % (peak, base))
else:
    print("rss: too few samples for a warm-up check (%d)" % len(rss))
json.dump({"sent": sent, "received": received, "drops": drops, "rss_kib": rss, "problems": problems},
          open(os.path.join(out, "report.json"), "w"))
sys.exit(1 if problems else 0)
EOF
echo "soak: passed (${SOAK_SECONDS}s; results in $OUT)" >&2
