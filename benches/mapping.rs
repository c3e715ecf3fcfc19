//! The cost of mapping rules: loading a config with N rules (10 globs to 1 regex, as
//! `common::mapping_rules` shapes them) for N from 1,100 to 110,000, and mapping a name that
//! misses every worker cache against them.
//!
//! Per size it prints the peak heap growth of one load (a counting allocator) and the heap the
//! loaded config keeps, then measures:
//!
//! - `load/<N>`: `Snapshot::check` on the file's text: TOML parse, validation, rule compilation
//!   and the shadowed-rule check, what a start or reload does;
//! - `map/<N>`: three lookups (a glob hit near the end of the file, a regex hit near the end,
//!   and a miss).
//!
//! The baseline, measured in the same run: 1,000 regex rules compiled the way tallyd used to,
//! with Unicode `\w`: each rule's regex as written and anchored, and one `regex::RegexSet`
//! over all of them (`baseline_unicode_regexes/1000`),
//! next to `load_regex_only/1000`, the same 1,000 rules loaded now.
//!
//! `cargo bench --bench mapping -- --warm-up-time 1 --measurement-time 3`

mod common;

use std::hint::black_box;

use common::measured;
use criterion::{Criterion, criterion_group, criterion_main};
use tallyd::config::live::Snapshot;
use tallyd::parse::MetricType;

#[global_allocator]
static GLOBAL: common::Peak = common::Peak;

const MIB: f64 = 1024.0 * 1024.0;

fn mapping(c: &mut Criterion) {
    let mut g = c.benchmark_group("mapping");
    g.sample_size(10);
    for (globs, regexes) in [
        (1_000, 100),
        (10_000, 1_000),
        (30_000, 3_000),
        (100_000, 10_000),
    ] {
        let n = globs + regexes;
        let text = common::mapping_rules(globs, regexes);
        let (snap, peak, kept) = measured(|| Snapshot::check(&text).expect("the rules load"));
        assert!(snap.warnings.is_empty(), "{:?}", &snap.warnings[..1]);
        eprintln!(
            "mapping {n} rules ({globs} globs, {regexes} regexes; {:.1} MiB of TOML): load peak \
             heap growth {:.1} MiB, kept {:.1} MiB",
            text.len() as f64 / MIB,
            peak as f64 / MIB,
            kept as f64 / MIB,
        );
        g.bench_function(format!("load/{n}"), |b| {
            b.iter(|| black_box(Snapshot::check(&text).is_ok()));
        });
        let glob_hit = format!("svc{}.users.requests.200", globs - 1);
        let regex_hit = format!("rsvc{}.users.latency_ms", regexes - 1);
        for name in [&glob_hit, &regex_hit] {
            assert!(
                matches!(
                    snap.mapper.map(name, MetricType::Counter),
                    tallyd::config::mapping::Mapped::Map { .. }
                ),
                "{name}"
            );
        }
        g.bench_function(format!("map/{n}"), |b| {
            b.iter(|| {
                black_box(snap.mapper.map(&glob_hit, MetricType::Counter));
                black_box(snap.mapper.map(&regex_hit, MetricType::Timer));
                black_box(snap.mapper.map("unmapped.name.here", MetricType::Counter));
            });
        });
    }
    // The baseline: 1,000 regex rules, then and now. Then: each rule's pattern compiled as
    // written (to check it), anchored (for captures), and all of them in one RegexSet.
    let text = common::mapping_rules(0, 1_000);
    let patterns: Vec<String> = (0..1_000)
        .map(|r| format!(r"rsvc{r}\.(\w+)\.latency_(\w+)"))
        .collect();
    let unicode = || {
        let each: Vec<(regex::Regex, regex::Regex)> = patterns
            .iter()
            .map(|p| {
                let own = regex::Regex::new(p).unwrap();
                let anchored = regex::Regex::new(&format!("^(?:{p})$")).unwrap();
                (own, anchored)
            })
            .collect();
        let set = regex::RegexSet::new(patterns.iter().map(|p| format!("^(?:{p})$")));
        (each, set.map(|s| s.len()))
    };
    let (_, peak, _) = measured(|| unicode().0.len());
    let (_, now_peak, _) = measured(|| Snapshot::check(&text).is_ok());
    eprintln!(
        "1000 regex rules: compiled as before (Unicode, one regex each and one set) peak heap \
         growth {:.1} MiB; tallyd now {:.1} MiB",
        peak as f64 / MIB,
        now_peak as f64 / MIB
    );
    g.bench_function("baseline_unicode_regexes/1000", |b| {
        b.iter(|| black_box(unicode().0.len()));
    });
    g.bench_function("load_regex_only/1000", |b| {
        b.iter(|| black_box(Snapshot::check(&text).is_ok()));
    });
    g.finish();
}

criterion_group!(benches, mapping);
criterion_main!(benches);
