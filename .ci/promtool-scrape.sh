#!/usr/bin/env bash
# Starts the release binary on loopback, feeds it the golden corpus and a mix of traffic,
# scrapes /metrics and runs `promtool check metrics` on it: exit 0 and no lint output.
set -euo pipefail
cd "$(dirname "$0")/.."
dir=$(mktemp -d)
trap 'kill "$pid" 2>/dev/null || true; rm -rf "$dir"' EXIT
http=127.0.0.1:19102; udp=127.0.0.1:18125
cat > "$dir/tallyd.toml" <<TOML
[http]
listen = "$http"
[[udp]]
listen = "$udp"
workers = 2
TOML
target/release/tallyd check-config "$dir/tallyd.toml"
target/release/tallyd --config "$dir/tallyd.toml" 2>"$dir/log" &
pid=$!
for _ in $(seq 100); do curl -fs "http://$http/-/ready" >/dev/null && break; sleep 0.1; done
curl -fs "http://$http/-/ready"
send() { printf '%b' "$1" > "/dev/udp/${udp%:*}/${udp#*:}"; }
send 'api.requests:1|c|#env:prod,role:web\napi.latency:320|ms|@0.5\nqueue.depth:12|g\nqueue.depth:-2|g'
send 'payload.size:1:2:3|d|#env:prod\nusers:alice|s\nusers:bob|s\nfoo.[env=prod]bar:1|c\nlegacy,host=a:5|c'
send 'weird-name.with/chars:1|c|#tag.with.dots:1,09x:2,__name__:x\nhist:1|h|#le:5\n_sc|db|2|#env:dev\n_e{5,4}:title|text|t:warning'
send 'bad\nfoo:1|c|@0\nfoo:NaN|g\nx:1|d\nx_count:1|d\ntallyd_series:5|g'
target/release/tallyd-blast --target "$udp" --rate 50000 --count 20000 --names 50 --tags 2 --packed 1400 >/dev/null
# Over 16k series, so /metrics streams in several chunks (2048 series each) that end both
# inside families (4 series each) and where families start (one series each).
target/release/tallyd-blast --target "$udp" --rate 50000 --count 12000 --names 3000 --tags 1 --prefix wide --packed 1400 >/dev/null
target/release/tallyd-blast --target "$udp" --rate 50000 --count 4001 --names 4001 --prefix solo --packed 1400 >/dev/null
for _ in $(seq 100); do
  n=$(curl -fs "http://$http/metrics" | awk '/^tallyd_lines_received_total/ {s+=$2} END {print s+0}')
  [ "$n" -ge 36020 ] && break; sleep 0.1
done
curl -fs "http://$http/metrics" > "$dir/scrape.prom"
grep -c . "$dir/scrape.prom"
out=$(promtool check metrics < "$dir/scrape.prom" 2>&1) || { echo "$out"; exit 1; }
if [ -n "$out" ]; then echo "promtool lint output:"; echo "$out"; exit 1; fi
echo "promtool check metrics: clean ($(grep -vc '^#' "$dir/scrape.prom") samples)"
curl -fs -H 'Accept-Encoding: gzip' "http://$http/metrics" | gzip -dc | promtool check metrics
kill -TERM "$pid"; wait "$pid"
echo "tallyd exited $?"
