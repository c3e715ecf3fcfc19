//! What mapping rules cost: 10,000 glob rules and 1,000 regex rules load in well under 200 MiB
//! of heap at peak, and a file that is refused (one bad rule after 11,000 good ones) leaves
//! nothing behind. Heap bytes are counted by a global allocator, so the figures are exact and
//! do not depend on the machine's speed; the load time is `benches/mapping.rs`'s.
//!
//! One `#[test]`: the allocator counts every thread, so nothing else may run in this binary.

use tallyd::config::live::Snapshot;
use tallyd::config::mapping::Mapped;
use tallyd::parse::MetricType;

#[path = "../benches/common/mod.rs"]
mod bench;

use bench::measured;

#[global_allocator]
static GLOBAL: bench::Peak = bench::Peak;

const MIB: i64 = 1 << 20;

#[test]
fn eleven_thousand_rules_load_in_bounded_memory_and_a_refused_file_keeps_none() {
    let text = bench::mapping_rules(10_000, 1_000);
    let (snap, peak, kept) = measured(|| Snapshot::check(&text).expect("the rules load"));
    eprintln!(
        "10,000 globs + 1,000 regexes: peak heap growth {} MiB, kept {} MiB",
        peak / MIB,
        kept / MIB
    );
    assert!(peak < 200 * MIB, "peak heap growth {} MiB", peak / MIB);
    assert!(snap.warnings.is_empty());
    // The last rules of each kind map, with their captures.
    let m = |name: &str, kind| match snap.mapper.map(name, kind) {
        Mapped::Map { name, labels, .. } => (name, labels),
        other => panic!("{name}: {other:?}"),
    };
    assert_eq!(
        m("svc9999.users.requests.200", MetricType::Counter),
        (
            "svc9999_requests".to_string(),
            vec![
                ("code".to_string(), "200".to_string()),
                ("endpoint".to_string(), "users".to_string())
            ]
        )
    );
    assert_eq!(
        m("rsvc999.orders.latency_ms", MetricType::Timer),
        (
            "rsvc999_latency".to_string(),
            vec![
                ("endpoint".to_string(), "orders".to_string()),
                ("unit".to_string(), "ms".to_string())
            ]
        )
    );
    // `\w` is ASCII, as in Go and statsd_exporter.
    assert_eq!(
        snap.mapper
            .map("rsvc999.ordérs.latency_ms", MetricType::Timer),
        Mapped::Unmapped
    );
    drop(snap);

    // A file refused at its last rule: the 11,000 rules compiled before it are all freed.
    let bad = format!("{text}[[mapping]]\nregex = 'oops('\nname = \"x\"\n");
    let ((), _, kept) = measured(|| {
        let refused = Snapshot::check(&bad).map(|_| ()).unwrap_err();
        assert_eq!(refused.errors.len(), 1, "{:?}", refused.errors);
        assert_eq!(
            refused.errors[0].key.as_deref(),
            Some("mapping[11000].regex")
        );
    });
    assert!(
        kept < 64 << 10,
        "a refused file left {kept} bytes of heap behind"
    );
}
