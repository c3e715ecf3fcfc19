#!/usr/bin/env bash
# Summarises the last criterion run (target/criterion/*/*/new) as one markdown table per
# group: throughput of each bench and its ratio to the group's baseline measured in the same
# run (baseline_split_f64, else the first baseline_* / mutex_u64 / rwlock_arc_load).
#
#   cargo bench --bench hotpath -- --warm-up-time 1 --measurement-time 3 && bash benches/ratios.sh
set -euo pipefail
cd "$(dirname "$0")/../target/criterion"
for group in */; do
    group=${group%/}
    [ "$group" = report ] && continue
    base=""
    for b in baseline_split_f64 baseline_write_lines baseline_memchr_split mutex_u64 rwlock_arc_load; do
        [ -f "$group/$b/new/estimates.json" ] && { base=$b; break; }
    done
    [ -n "$base" ] || continue
    base_ns=$(jq '.mean.point_estimate' "$group/$base/new/estimates.json")
    title=$(jq -r '.group_id' "$group/$base/new/benchmark.json")
    echo "### $title"
    echo
    echo "| bench | time per iteration | throughput (elements/s) | vs $base |"
    echo "|---|---|---|---|"
    for dir in "$group"/*/; do
        b=$(basename "$dir")
        [ -f "$dir/new/estimates.json" ] || continue
        ns=$(jq '.mean.point_estimate' "$dir/new/estimates.json")
        el=$(jq '.throughput.Elements // 1' "$dir/new/benchmark.json")
        awk -v b="$b" -v ns="$ns" -v el="$el" -v base="$base_ns" 'BEGIN {
            t = ns >= 1e6 ? sprintf("%.2f ms", ns / 1e6) : (ns >= 1e3 ? sprintf("%.2f us", ns / 1e3) : sprintf("%.2f ns", ns))
            r = el * 1e9 / ns
            tp = r >= 1e6 ? sprintf("%.2f M", r / 1e6) : sprintf("%.1f k", r / 1e3)
            printf "| %s | %s | %s | %.1f%% |\n", b, t, tp, 100 * base / ns
        }'
    done
    echo
done
