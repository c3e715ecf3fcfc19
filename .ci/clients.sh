#!/usr/bin/env bash
# Conformance with real client libraries: Python `statsd` and `datadog`, Node `hot-shots`
# (plain, DogStatsD and Telegraf modes) against the release binary; asserts exact values.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
dir=$(mktemp -d)
trap 'kill "$pid" 2>/dev/null || true; rm -rf "$dir"' EXIT
http=127.0.0.1:19202; port=18225
cat > "$dir/tallyd.toml" <<TOML
[http]
listen = "$http"
[[udp]]
listen = "127.0.0.1:$port"
workers = 2
TOML
python3 -m pip install -q --disable-pip-version-check statsd datadog >/dev/null 2>&1 || python3 -m pip install -q statsd datadog
(cd "$dir" && npm init -y >/dev/null && npm install --silent --no-audit --no-fund hot-shots >/dev/null)
"$root/target/release/tallyd" --config "$dir/tallyd.toml" 2>"$dir/log" &
pid=$!
for _ in $(seq 100); do curl -fs "http://$http/-/ready" >/dev/null && break; sleep 0.1; done

python3 - "$port" <<'PY'
import sys, time, statsd, datadog
port = int(sys.argv[1])
c = statsd.StatsClient("127.0.0.1", port, prefix="py")
for _ in range(10):
    c.incr("statsd.hits")
c.incr("statsd.hits", 5)
c.timing("statsd.latency", 320)
c.gauge("statsd.temp", 20)
c.gauge("statsd.temp", -3, delta=True)
c.set("statsd.users", "alice"); c.set("statsd.users", "bob"); c.set("statsd.users", "alice")
d = datadog.DogStatsd(host="127.0.0.1", port=port, disable_telemetry=True)
for _ in range(7):
    d.increment("py.dd.hits", tags=["env:prod", "role:web"])
d.histogram("py.dd.size", 3, tags=["env:prod"])
d.distribution("py.dd.dist", 2)
d.gauge("py.dd.queue", 11)
d.service_check("py.dd.check", 1, tags=["env:prod"])
d.event("deploy", "text", alert_type="warning")
d.flush() if hasattr(d, "flush") else None
PY

cat > "$dir/send.js" <<'JS'
const StatsD = require('hot-shots');
const port = Number(process.argv[2]);
const plain = new StatsD({ host: '127.0.0.1', port, prefix: 'node.' });
const dog = new StatsD({ host: '127.0.0.1', port, prefix: 'node.dog.', globalTags: { env: 'prod' } });
const tele = new StatsD({ host: '127.0.0.1', port, prefix: 'node.tele.', telegraf: true });
for (let i = 0; i < 4; i++) plain.increment('hits');
plain.timing('latency', 250);
dog.increment('hits', 3, ['role:api']);
tele.increment('hits', 2, { region: 'eu' });
let open = 3;
for (const c of [plain, dog, tele]) c.close(() => { if (--open === 0) process.exit(0); });
JS
node "$dir/send.js" "$port"

want() { # series value
  local got
  for _ in $(seq 100); do
    got=$(curl -fs "http://$http/metrics" | awk -v s="$1" '$1 == s {print $2}')
    [ "$got" = "$2" ] && { echo "ok   $1 = $2"; return 0; }
    sleep 0.05
  done
  echo "FAIL $1: want $2, got '${got}'"; curl -fs "http://$http/metrics" | grep -v '^#' | grep -E '^(py|node|statsd)_' ; return 1
}
want py_statsd_hits_total 15
want py_statsd_latency_count 1
want py_statsd_latency_sum 0.32
want py_statsd_temp 17
want py_statsd_users 2
want 'py_dd_hits_total{env="prod",role="web"}' 7
want 'py_dd_size_count{env="prod"}' 1
want 'py_dd_size_sum{env="prod"}' 3
want py_dd_dist_sum 2
want py_dd_queue 11
want 'statsd_service_check_status{check="py.dd.check",env="prod"}' 1
want 'statsd_events_total{alert_type="warning",priority="normal"}' 1
want node_hits_total 4
want node_latency_sum 0.25
want 'node_dog_hits_total{env="prod",role="api"}' 3
want 'node_tele_hits_total{region="eu"}' 2
bad=$(curl -fs "http://$http/metrics" | awk '/^tallyd_parse_errors_total/ {s+=$2} END {print s+0}')
[ "$bad" = 0 ] || { echo "FAIL: parse errors from real clients: $bad"; curl -fs "http://$http/metrics" | grep parse_errors; exit 1; }
echo "clients: all values exact, no parse errors"
