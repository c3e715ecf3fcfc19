#!/usr/bin/env bash
# The alert rules and the Grafana dashboard in deploy/, checked against the real thing:
# - `promtool check rules` and `promtool test rules` on deploy/prometheus/;
# - deploy/grafana/tallyd.json's structure (every datasource is the $datasource variable, only
#   timeseries and stat panels, rate windows are $__rate_interval, ids and grid positions);
# - the release binary on loopback, fed traffic (with malformed lines), scraped every 1 s by a
#   real Prometheus that also loads the alert rules and receives tallyd's remote write: one
#   [[remote_write]] section pushes to it (its copies of tallyd's own metrics carry another
#   instance label, which no panel may show), another points at a port where nothing listens
#   (failed attempts, retries, queue_full drops); then every panel's query must parse and
#   return data for the tallyd instance only, the instance variable must list it, every rule
#   must evaluate without error, and every metric and label the rules use must exist.
set -euo pipefail
cd "$(dirname "$0")/.."
rules=deploy/prometheus/tallyd-alerts.yml
rule_tests=deploy/prometheus/tallyd-alerts.test.yml
dashboard=deploy/grafana/tallyd.json
http=127.0.0.1:19402; udp=127.0.0.1:18425; prom=127.0.0.1:19490
# Where the "down" remote write endpoint points: nothing may listen there.
down=127.0.0.1:19491
# The instance label of the copies of tallyd's own metrics it pushes to Prometheus.
pushed=tallyd-remote-write-copy
command -v prometheus >/dev/null || { echo "prometheus not found (Debian package prometheus)"; exit 1; }
dir=$(mktemp -d)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
  rm -rf "$dir"
}
trap cleanup EXIT
logs() {
  echo "--- tallyd log (last 20 lines)"; tail -n 20 "$dir/tallyd.log" 2>/dev/null || true
  echo "--- prometheus log (last 20 lines)"; tail -n 20 "$dir/prometheus.log" 2>/dev/null || true
}

echo "== promtool check rules"
promtool check rules --lint=all --lint-fatal "$rules"
echo "== promtool test rules"
promtool test rules "$rule_tests"

echo "== dashboard structure"
python3 - "$dashboard" <<'PY'
import json, re, sys
path = sys.argv[1]
d = json.load(open(path))
DS = {"type": "prometheus", "uid": "${datasource}"}
errors = []

def walk(node, where):
    """Every datasource reference anywhere must be the $datasource variable."""
    if isinstance(node, dict):
        for k, v in node.items():
            if k == "datasource" and v != DS:
                errors.append(f"{where}: datasource {json.dumps(v)}, expected {json.dumps(DS)}")
            walk(v, f"{where}.{k}")
    elif isinstance(node, list):
        for i, v in enumerate(node):
            walk(v, f"{where}[{i}]")

walk(d, "$")
if "__inputs" in d:
    errors.append("__inputs present: the dashboard must use the $datasource variable only")
if not isinstance(d.get("schemaVersion"), int) or d["schemaVersion"] < 36:
    errors.append(f"schemaVersion {d.get('schemaVersion')!r}: expected 36 or later")
variables = d.get("templating", {}).get("list", [])
ds_vars = [v for v in variables if v.get("type") == "datasource"]
if [(v.get("name"), v.get("query")) for v in ds_vars] != [("datasource", "prometheus")]:
    errors.append("templating: expected one datasource variable named datasource with query prometheus")
for v in variables:
    if v.get("type") not in ("datasource", "query"):
        errors.append(f"variable {v.get('name')}: type {v.get('type')}, expected datasource or query")

def panels(items):
    for p in items:
        yield p
        yield from panels(p.get("panels", []))

seen_ids, cells, nrows = set(), {}, 0
for p in panels(d.get("panels", [])):
    name = f"panel {p.get('id')} {p.get('title')!r}"
    row = p.get("type") == "row"
    nrows += row
    if not row and p.get("type") not in ("timeseries", "stat"):
        errors.append(f"{name}: type {p.get('type')}, expected timeseries or stat")
    if p.get("id") in seen_ids:
        errors.append(f"{name}: duplicate id")
    seen_ids.add(p.get("id"))
    if row and (p.get("targets") or "datasource" in p):
        errors.append(f"{name}: a row has no targets and no datasource")
    if not row and p.get("datasource") != DS:
        errors.append(f"{name}: no panel datasource {json.dumps(DS)}")
    g = p.get("gridPos", {})
    if g.get("x", 0) + g.get("w", 0) > 24 or g.get("w", 0) <= 0 or g.get("h", 0) <= 0:
        errors.append(f"{name}: bad gridPos {g}")
    for x in range(g.get("x", 0), g.get("x", 0) + g.get("w", 0)):
        for y in range(g.get("y", 0), g.get("y", 0) + g.get("h", 0)):
            if (x, y) in cells:
                errors.append(f"{name}: overlaps {cells[(x, y)]}")
                break
            cells[(x, y)] = name
        else:
            continue
        break
    if row:
        continue
    targets = p.get("targets", [])
    if not targets:
        errors.append(f"{name}: no targets")
    refs = [t.get("refId") for t in targets]
    if len(set(refs)) != len(refs) or None in refs:
        errors.append(f"{name}: refIds {refs} not unique")
    for t in targets:
        expr = t.get("expr", "")
        if not expr.strip():
            errors.append(f"{name}: target {t.get('refId')} has no expr")
        for window in re.findall(r"\[([^\]]*)\]", expr):
            if window != "$__rate_interval":
                errors.append(f"{name}: range [{window}] in {expr!r}: use [$__rate_interval]")
if errors:
    print("\n".join(errors))
    sys.exit(1)
print(f"{len(seen_ids) - nrows} panels and {nrows} row(s), datasource ${{datasource}} throughout")
PY

echo "== tallyd and Prometheus on loopback"
cat > "$dir/tallyd.toml" <<TOML
[http]
listen = "$http"
[[udp]]
listen = "$udp"
workers = 2
[limits]
max_series = 50000
# Prometheus below, with its remote write receiver. Until it is up, requests wait in the queue.
[[remote_write]]
name = "ci"
url = "http://$prom/api/v1/write"
interval = "1s"
external_labels = { instance = "$pushed" }
# Nothing listens there: connection failures and retries; a queue of one request, so each push
# drops the one waiting (queue_full).
[[remote_write]]
name = "down"
url = "http://$down/api/v1/write"
interval = "1s"
timeout = "1s"
max_pending_requests = 1
max_backoff = "200ms"
TOML
if (exec 3<>"/dev/tcp/${down%:*}/${down#*:}") 2>/dev/null; then
  echo "something listens on $down, where the \"down\" remote write endpoint must fail"; exit 1
fi
target/release/tallyd check-config "$dir/tallyd.toml"
target/release/tallyd --config "$dir/tallyd.toml" 2>"$dir/tallyd.log" &
pids+=($!)
for _ in $(seq 100); do curl -fs "http://$http/-/ready" >/dev/null && break; sleep 0.1; done
curl -fs "http://$http/-/ready" >/dev/null || { echo "tallyd did not become ready on $http"; logs; exit 1; }
send() { printf '%b' "$1" > "/dev/udp/${udp%:*}/${udp#*:}"; }
send 'api.requests:1|c|#env:prod\napi.latency:320|ms\nqueue.depth:12|g\nusers:alice|s\npayload:3|d'
# Malformed lines, so the parse error and rejected line counters move.
send 'bad\nfoo:1|c|@0\nfoo:NaN|g\nnovalue:|c'
target/release/tallyd-blast --target "$udp" --rate 50000 --count 20000 --names 50 --tags 2 --packed 1400 >/dev/null
# A slow stream while Prometheus scrapes, so the rates are not all zero (stopped at exit).
target/release/tallyd-blast --target "$udp" --rate 200 --duration 120s --names 20 --prefix live >/dev/null &
pids+=($!)

cat > "$dir/prometheus.yml" <<YAML
global:
  scrape_interval: 1s
  scrape_timeout: 1s
  evaluation_interval: 1s
rule_files:
  - $PWD/$rules
scrape_configs:
  - job_name: tallyd
    static_configs:
      - targets: ['$http']
  # Prometheus's own process_* and scrape_* series: the dashboard must not show them.
  - job_name: prometheus
    static_configs:
      - targets: ['$prom']
YAML
promtool check config "$dir/prometheus.yml" >/dev/null
prometheus --config.file="$dir/prometheus.yml" --storage.tsdb.path="$dir/tsdb" \
  --web.listen-address="$prom" --web.enable-remote-write-receiver \
  --log.level=warn >"$dir/prometheus.log" 2>&1 &
pids+=($!)
for _ in $(seq 150); do curl -fs "http://$prom/-/ready" >/dev/null && break; sleep 0.2; done
curl -fs "http://$prom/-/ready" >/dev/null || { echo "prometheus did not become ready on $prom"; logs; exit 1; }

echo "== checks against Prometheus at $prom"
python3 - "$prom" "$http" "$pushed" "$dashboard" "$rules" <<'PY' || { logs; exit 1; }
import json, re, sys, time, urllib.error, urllib.parse, urllib.request
prom, instance, pushed, dashboard, rules_path = sys.argv[1:]
API = f"http://{prom}/api/v1"

def get(path, **params):
    url = f"{API}/{path}?" + urllib.parse.urlencode(params, doseq=True)
    try:
        with urllib.request.urlopen(url, timeout=10) as r:
            return json.load(r)
    except urllib.error.HTTPError as e:
        body = e.read().decode(errors="replace")
        try:
            return json.loads(body)
        except ValueError:
            return {"status": "error", "error": f"HTTP {e.code}: {body[:200]}"}

def query(q):
    return get("query", query=q)

# rate() needs two samples in its window: wait for 5 scrapes of tallyd, for every rule to have
# been evaluated, and for two samples of what only remote write makes: a failed attempt and a
# queue_full drop of the "down" endpoint, an accepted request of the "ci" one (scraped from
# tallyd), and the copy of tallyd_build_info that "ci" pushed to Prometheus.
def samples(selector):
    res = query(f"count_over_time({selector}[1m])").get("data", {}).get("result", [])
    return int(float(res[0]["value"][1])) if res else 0

scraped = f'job="tallyd", instance="{instance}"'
remote = [
    f'tallyd_remote_write_requests_failed_total{{{scraped}, endpoint="down", reason="connection"}}',
    f'tallyd_remote_write_samples_dropped_total{{{scraped}, endpoint="down", reason="queue_full"}}',
    f'tallyd_remote_write_last_success_timestamp_seconds{{{scraped}, endpoint="ci"}}',
    f'tallyd_build_info{{instance="{pushed}"}}',
]
scrapes, unevaluated, missing = 0, None, None
for _ in range(150):
    r = query(f'count_over_time(up{{{scraped}}}[1m]) and on () up{{{scraped}}} == 1')
    res = r.get("data", {}).get("result", [])
    scrapes = int(float(res[0]["value"][1])) if res else 0
    groups = get("rules").get("data", {}).get("groups", [])
    unevaluated = [x["name"] for g in groups for x in g["rules"] if x.get("health") == "unknown"]
    missing = [s for s in remote if samples(s) < 2]
    if scrapes >= 5 and groups and not unevaluated and not missing:
        break
    time.sleep(0.2)
else:
    sys.exit(f"FAIL: after 30 s Prometheus has {scrapes} successful scrapes of tallyd "
             f"(want 5), unevaluated rules {unevaluated}, and fewer than 2 samples of {missing}")
print(f"Prometheus: {scrapes} scrapes of tallyd at {instance}; remote write failing to the "
      f"\"down\" endpoint, and pushing to Prometheus as instance {pushed}")

failures = []

# The dashboard: every panel's query, with the variables as Grafana would fill them in for
# the tallyd instance selected.
d = json.load(open(dashboard))
grafana_instance = re.sub(r"([.\\+*?\[\]^$(){}|])", r"\\\\\1", instance)
values = {"__rate_interval": "30s", "__interval": "5s", "__range": "5m",
          "instance": grafana_instance, "datasource": "prometheus"}

def substitute(expr):
    def var(m):
        name = m.group(1) or m.group(2)
        if name not in values:
            raise KeyError(name)
        return values[name]
    return re.sub(r"\$\{(\w+)(?::\w+)?\}|\$(\w+)", var, expr)

for v in d.get("templating", {}).get("list", []):
    if v.get("type") != "query":
        continue
    q = v["query"]["query"] if isinstance(v.get("query"), dict) else v.get("query", "")
    m = re.fullmatch(r"\s*label_values\((.+),\s*(\w+)\)\s*", q)
    if not m:
        failures.append(f"variable {v['name']}: query {q!r} is not label_values(metric, label)")
        continue
    r = get(f"label/{m.group(2)}/values", **{"match[]": m.group(1)})
    got = r.get("data") or []
    if r.get("status") != "success" or instance not in got:
        failures.append(f"variable {v['name']}: {q!r} gives {got or r.get('error')}, not {instance}")
    else:
        print(f"ok   variable ${v['name']}: {q} -> {got}")

def panels(items):
    for p in items:
        yield p
        yield from panels(p.get("panels", []))

nqueries = 0
for p in panels(d.get("panels", [])):
    for t in p.get("targets", []):
        name = f"panel {p.get('id')} {p.get('title')!r} target {t.get('refId')}"
        try:
            expr = substitute(t["expr"])
        except KeyError as e:
            failures.append(f"{name}: unknown variable ${e.args[0]} in {t['expr']!r}")
            continue
        nqueries += 1
        r = query(expr)
        if r.get("status") != "success":
            failures.append(f"{name}: query failed ({r.get('errorType')}: {r.get('error')}): {expr}")
            continue
        data = r["data"]
        result = data["result"]
        if data["resultType"] not in ("vector", "matrix"):
            failures.append(f"{name}: a {data['resultType']}, not series of the instance: {expr}")
            continue
        if not result:
            failures.append(f"{name}: no data: {expr}")
            continue
        # Every series must be the scraped tallyd's: not the copies pushed to Prometheus by
        # remote write (instance {pushed}), nor a series that has lost its instance label.
        others = sorted({str(s["metric"].get("instance")) for s in result
                         if s["metric"].get("instance") != instance})
        if others:
            failures.append(f"{name}: series of other instances {others} (None: none): {expr}")
            continue
        print(f"ok   {name}: {len(result)} series")

# The alert rules: loaded, evaluated without error, and using metrics and labels that exist.
rule_failures = len(failures)
groups = get("rules").get("data", {}).get("groups", [])
loaded = [x for g in groups for x in g["rules"]]
text = open(rules_path).read()
nrules = len(re.findall(r"^\s*- (?:alert|record):", text, re.M))
if len(loaded) != nrules:
    failures.append(f"rules: Prometheus loaded {len(loaded)} rules, {rules_path} has {nrules}")
for x in loaded:
    if x.get("health") != "ok":
        failures.append(f"rule {x['name']}: health {x.get('health')}: {x.get('lastError')}")
present = {s["metric"]["__name__"] for s in query('count by (__name__) ({__name__=~"tallyd_.+"})')["data"]["result"]}
for x in loaded:
    metrics = sorted(set(re.findall(r"\btallyd_\w+", x["query"])))
    for m in metrics:
        if m not in present:
            failures.append(f"rule {x['name']}: metric {m} is not exported by tallyd")
    labels = set(re.findall(r"\$labels\.(\w+)", json.dumps(x.get("annotations", {}))))
    for label in sorted(labels - {"job", "instance"}):
        for m in metrics:
            res = query(f"count by ({label}) ({m})")["data"]["result"]
            if not res or any(label not in s["metric"] for s in res):
                failures.append(f"rule {x['name']}: annotations use $labels.{label}, which {m} lacks")
if len(failures) == rule_failures:
    print(f"ok   {len(loaded)} rules loaded and evaluated; the metrics and labels they use exist")

if failures:
    print("FAIL:\n  " + "\n  ".join(failures))
    sys.exit(1)
print(f"dashboard: {nqueries} queries returned data")
PY
echo "dashboard-check: PASS (rules check and unit tests, dashboard structure, every panel query returns data from a real Prometheus)"
