//! Property tests on stable, in `cargo test`: the parser and the store driven in-process (no
//! sockets, so thousands of cases run in seconds).
//!
//! - Any bytes, and any sequence of StatsD-shaped tokens, as datagrams: `parse::parse_line` and
//!   `Writer::ingest` never panic, every line is accounted for (`Stats`), and the rendered
//!   exposition passes the strict reader in `tests/exposition` (the structural checks
//!   `promtool check metrics` makes).
//! - Valid counter lines (a small set of names and tags, every tag dialect, v1.1 packs, two
//!   writers): the scraped totals equal the sums sent, exactly.
//! - Gauge set/delta sequences through one writer: the scraped value is the fold of the ops.
//!
//! `PROPTEST_CASES` scales every suite (the defaults below keep the file well under 60 s in a
//! debug build).

mod common; // for `skip_or_fail`, which `exposition` reports a missing promtool with
mod exposition;

use std::collections::BTreeMap;
use std::sync::{Arc, LazyLock};
use std::time::Duration;

use proptest::prelude::*;
use tallyd::clock::ManualClock;
use tallyd::config::live::{Live, Snapshot};
use tallyd::parse::{self, ParseOptions, Parsed};
use tallyd::pipeline::Writer;
use tallyd::store::Store;
use tallyd::telemetry::Telemetry;

/// tallyd's own family names, computed once (a registry per case would dominate the run).
static RESERVED: LazyLock<Vec<String>> = LazyLock::new(|| Telemetry::new().reserved_names());

struct Rig {
    store: Arc<Store>,
    writers: Vec<Writer>,
    telemetry: Telemetry,
}

impl Rig {
    fn new(writers: usize) -> Self {
        let live = Live::new(Snapshot::defaults(), None, None);
        let store = Store::new(Arc::new(ManualClock::default()), RESERVED.clone());
        let writers = (0..writers)
            .map(|_| Writer::new(&store, live.clone()))
            .collect();
        Self {
            store,
            writers,
            telemetry: Telemetry::new(),
        }
    }

    /// Renders the whole exposition (StatsD families and self-metrics) after flushing every
    /// writer's counters, and reads it back with the strict reader.
    fn scrape(&mut self) -> (String, Vec<exposition::Family>) {
        for w in &mut self.writers {
            self.telemetry.flush(&mut w.stats);
        }
        let text = tallyd::export::render(&self.store, &self.telemetry, Duration::from_secs(60));
        let fams = exposition::parse(&text)
            .unwrap_or_else(|e| panic!("invalid exposition: {e}\n{text:.4000}"));
        (text, fams)
    }
}

fn cases(default: u32) -> ProptestConfig {
    let n = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default);
    ProptestConfig {
        cases: n,
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

/// What the parser alone says a datagram holds: (lines, parse errors, samples of metric
/// lines, special lines).
fn expected_outcomes(datagram: &[u8], truncated: bool) -> (u64, u64, u64, u64) {
    let opts = ParseOptions::default();
    let all: Vec<&[u8]> = parse::lines(datagram).collect();
    let (mut errors, mut samples, mut specials) = (0, 0, 0);
    for (i, line) in all.iter().enumerate() {
        if truncated && i + 1 == all.len() {
            errors += 1;
            continue;
        }
        let mut k = 0u64;
        match parse::parse_line(line, &opts, &mut |_| k += 1) {
            Err(_) => errors += 1,
            Ok(Parsed::Metric(_)) => {
                assert!(k >= 1, "a metric line without samples: {:?}", line);
                samples += k;
            }
            Ok(Parsed::Special(_)) => specials += 1,
        }
    }
    (all.len() as u64, errors, samples, specials)
}

/// Feeds datagrams through the writers (round robin) and checks that every line is accounted
/// for: each line is one parse error, or its samples are each aggregated or refused (counted),
/// or it is an event / service check.
fn feed_and_account(rig: &mut Rig, datagrams: &[(Vec<u8>, bool)]) {
    let (mut lines, mut errors, mut samples, mut specials) = (0, 0, 0, 0);
    for (i, (d, truncated)) in datagrams.iter().enumerate() {
        let (l, e, s, sp) = expected_outcomes(d, *truncated);
        lines += l;
        errors += e;
        samples += s;
        specials += sp;
        let n = rig.writers.len();
        let w = &mut rig.writers[i % n];
        w.begin_batch();
        w.ingest(d, *truncated);
    }
    let mut got_lines = 0;
    let mut outcomes = 0;
    let mut got_specials = 0;
    for w in &rig.writers {
        let s = &w.stats;
        got_lines += s.lines;
        outcomes += s.parse_errors.iter().sum::<u64>()
            + s.samples.iter().sum::<u64>()
            + s.dropped.iter().sum::<u64>()
            + s.refused.iter().sum::<u64>();
        got_specials += s.events + s.service_checks;
    }
    assert_eq!(got_lines, lines, "lines counted");
    assert_eq!(got_specials, specials, "events and service checks counted");
    // A special line may also be refused (a type conflict on its family): at most one each.
    assert!(
        outcomes >= errors + samples && outcomes <= errors + samples + specials,
        "outcomes {outcomes} for {errors} errors + {samples} samples (+ up to {specials} refused specials)"
    );
}

/// Pieces of StatsD lines and of everything hostile around them.
const TOKENS: &[&[u8]] = &[
    b"a",
    b"b.c",
    b"x",
    b"x_sum",
    b"x_count",
    b"x_bucket",
    b"foo",
    b"foo_total",
    b"tallyd_",
    b"tallyd_series",
    b"process_cpu_seconds",
    b"process_open_fds",
    b"statsd_events_total",
    b"statsd_service_check_status",
    b"9",
    b"\xc3\xa9",
    b"\xe6\x97\xa5",
    b":",
    b":",
    b":",
    b"|",
    b"|",
    b"|",
    b"|c",
    b"|g",
    b"|ms",
    b"|h",
    b"|d",
    b"|s",
    b"|@",
    b"|@0.5",
    b"|@1e-320",
    b"|@1e-300",
    b"|#",
    b"|#",
    b",",
    b"=",
    b"#",
    b"[",
    b"]",
    b"[k=v]",
    b"le",
    b"quantile",
    b"__name__",
    b"__",
    b"k:v",
    b"le:1",
    b"quantile:0.5",
    b"0",
    b"1",
    b"-1",
    b"+2",
    b".5",
    b"1e308",
    b"1e309",
    b"-1e308",
    b"NaN",
    b"Inf",
    b"e",
    b"\n",
    b"\n",
    b"\r",
    b"\r\n",
    b"\0",
    b"\\",
    b"\"",
    b"_e{",
    b"_e{1,1}:a|b",
    b"_sc|",
    b"_sc|db|2",
    b"|c:abc",
    b"|T123",
    b"|e:x",
    b"|card:low",
    b"|t:warning",
    b"|p:low",
    b"}",
    b"{",
    b" ",
    b"\t",
    b"\xff",
    b"\xc3(",
];

fn token_datagram() -> impl Strategy<Value = Vec<u8>> {
    prop::collection::vec(prop::sample::select(TOKENS), 0..48).prop_map(|t| t.concat())
}

fn any_datagram() -> impl Strategy<Value = Vec<u8>> {
    prop::collection::vec(any::<u8>(), 0..300)
}

proptest! {
    #![proptest_config(cases(600))]

    /// Any bytes at all: no panic, everything accounted, a valid exposition.
    #[test]
    fn any_bytes_never_panic_and_render_valid(
        datagrams in prop::collection::vec((any_datagram(), any::<bool>()), 1..6)
    ) {
        let mut rig = Rig::new(2);
        for (d, _) in &datagrams {
            for line in parse::lines(d) {
                let _ = parse::parse_line(line, &ParseOptions::default(), &mut |_| {});
            }
        }
        feed_and_account(&mut rig, &datagrams);
        rig.scrape();
    }
}

proptest! {
    #![proptest_config(cases(2000))]

    /// The indexed split gives the lines of `parse::lines`, each with its first `:` and the
    /// first `|` after it, as separate searches find them. Bytes from a small alphabet, so
    /// separators are dense; long runs cross the index's 8-byte words and 64-byte blocks.
    #[test]
    fn split_lines_is_lines_with_their_separators(
        d in prop::collection::vec(
            prop::sample::select(b"ab:|\n\r1".to_vec()),
            0..200,
        ),
        pad in 0usize..150,
    ) {
        let mut d = d;
        // A long name first, so some lines reach past a 64-byte window and across blocks.
        d.splice(0..0, std::iter::repeat_n(b'n', pad));
        // The index is reused, as a writer reuses it: first for a longer, other datagram.
        let mut seps = parse::Separators::default();
        let other: Vec<u8> = d.iter().rev().chain(&d).copied().collect();
        prop_assert_eq!(parse::split_lines(&other, &mut seps).count(), parse::lines(&other).count());
        let got: Vec<_> = parse::split_lines(&d, &mut seps)
            .map(|s| (&d[s.start..s.end], s.colon_bar))
            .collect();
        let want: Vec<_> = parse::lines(&d)
            .map(|l| {
                let colon = l.iter().position(|&c| c == b':');
                let split = colon.and_then(|c| {
                    l[c + 1..].iter().position(|&b| b == b'|').map(|b| (c, c + 1 + b))
                });
                (l, split)
            })
            .collect();
        prop_assert_eq!(got, want);
    }
}

proptest! {
    #![proptest_config(cases(1200))]

    /// StatsD-shaped noise (names that collide with histogram suffixes, self-metrics,
    /// reserved labels, brackets, packs, events, huge and tiny numbers): same properties.
    #[test]
    fn statsd_shaped_noise_never_panics_and_renders_valid(
        datagrams in prop::collection::vec((token_datagram(), prop::bool::weighted(0.1)), 1..10)
    ) {
        let mut rig = Rig::new(2);
        feed_and_account(&mut rig, &datagrams);
        rig.scrape();
    }
}

const NAMES: &[(&str, &str)] = &[
    ("alpha", "alpha_total"),
    ("beta.gamma", "beta_gamma_total"),
    ("delta_eps", "delta_eps_total"),
    ("zeta-eta", "zeta_eta_total"),
];
const KEYS: &[&str] = &["env", "role", "zone"];
const VALUES: &[&str] = &["a", "b", "prod-1"];

#[derive(Debug, Clone)]
struct CounterLine {
    name: usize,
    values: Vec<u32>,
    tags: BTreeMap<usize, usize>,
    style: u8,
    explicit_rate: bool,
}

fn counter_line() -> impl Strategy<Value = CounterLine> {
    (
        0..NAMES.len(),
        prop::collection::vec(0u32..100_000, 1..4),
        prop::collection::btree_map(0..KEYS.len(), 0..VALUES.len(), 0..=KEYS.len()),
        0u8..5,
        any::<bool>(),
    )
        .prop_map(|(name, values, tags, style, explicit_rate)| CounterLine {
            name,
            values,
            tags,
            style,
            explicit_rate,
        })
}

impl CounterLine {
    /// The line in one of the tag dialects.
    fn render(&self) -> String {
        let name = NAMES[self.name].0;
        let vals = self
            .values
            .iter()
            .map(u32::to_string)
            .collect::<Vec<_>>()
            .join(":");
        let kv = |sep: char| -> Vec<String> {
            self.tags
                .iter()
                .map(|(k, v)| format!("{}{sep}{}", KEYS[*k], VALUES[*v]))
                .collect()
        };
        let rate = if self.explicit_rate { "|@1" } else { "" };
        if self.tags.is_empty() {
            return format!("{name}:{vals}|c{rate}");
        }
        match self.style {
            0 => format!("{name}:{vals}|c{rate}|#{}", kv(':').join(",")),
            1 => format!("{name},{}:{vals}|c{rate}", kv('=').join(",")),
            2 => format!("{name}#{}:{vals}|c{rate}", kv('=').join(",")),
            3 => format!("{name}[{}]:{vals}|c{rate}", kv('=').join(",")),
            _ => {
                // The first tag in the name (InfluxDB), the rest as DogStatsD tags.
                let mut t = kv('=');
                let first = t.remove(0);
                let rest: Vec<String> = t.iter().map(|x| x.replacen('=', ":", 1)).collect();
                if rest.is_empty() {
                    format!("{name},{first}:{vals}|c{rate}")
                } else {
                    format!("{name},{first}:{vals}|c{rate}|#{}", rest.join(","))
                }
            }
        }
    }

    /// The series this line adds to, as the exposition names it.
    fn series(&self) -> (String, Vec<(String, String)>) {
        let labels = self
            .tags
            .iter()
            .map(|(k, v)| (KEYS[*k].to_string(), VALUES[*v].to_string()))
            .collect();
        (NAMES[self.name].1.to_string(), labels)
    }
}

proptest! {
    #![proptest_config(cases(200))]

    /// Valid counter lines in every dialect, packed, over two writers: exact totals.
    #[test]
    fn counter_totals_are_exact(
        datagrams in prop::collection::vec(prop::collection::vec(counter_line(), 1..12), 1..12),
        crlf in any::<bool>(),
    ) {
        let mut rig = Rig::new(2);
        let mut want: BTreeMap<(String, Vec<(String, String)>), f64> = BTreeMap::new();
        let mut sent = Vec::new();
        for lines in &datagrams {
            let sep = if crlf { "\r\n" } else { "\n" };
            let d = lines.iter().map(CounterLine::render).collect::<Vec<_>>().join(sep);
            for l in lines {
                *want.entry(l.series()).or_default() +=
                    l.values.iter().map(|v| f64::from(*v)).sum::<f64>();
            }
            sent.push((d.into_bytes(), false));
        }
        feed_and_account(&mut rig, &sent);
        let parse_errors: u64 = rig.writers.iter().map(|w| w.stats.parse_errors.iter().sum::<u64>()).sum();
        let tag_errors: u64 = rig.writers.iter().map(|w| w.stats.tag_errors.iter().sum::<u64>()).sum();
        prop_assert_eq!(parse_errors + tag_errors, 0);
        let (_, fams) = rig.scrape();
        let mut got: BTreeMap<(String, Vec<(String, String)>), f64> = BTreeMap::new();
        for f in &fams {
            if f.name.starts_with("tallyd_") || f.name.starts_with("process_") {
                continue;
            }
            for s in &f.samples {
                let mut labels = s.labels.clone();
                labels.sort();
                got.insert((s.name.clone(), labels), s.value);
            }
        }
        prop_assert_eq!(got, want);
    }
}

#[derive(Debug, Clone)]
enum GaugeOp {
    Set(u32),
    Delta(i32),
}

fn gauge_op() -> impl Strategy<Value = (usize, Vec<GaugeOp>)> {
    (
        0..3usize,
        prop::collection::vec(
            prop_oneof![
                (0u32..1_000_000).prop_map(GaugeOp::Set),
                (-100_000i32..100_000).prop_map(GaugeOp::Delta),
            ],
            1..4,
        ),
    )
}

proptest! {
    #![proptest_config(cases(200))]

    /// Gauge sets and deltas (single and packed) through one writer: the fold of the ops.
    #[test]
    fn gauge_sequences_fold_exactly(
        batches in prop::collection::vec(prop::collection::vec(gauge_op(), 1..10), 1..10)
    ) {
        let names = ["g_one", "g.two", "g_three"];
        let exported = ["g_one", "g_two", "g_three"];
        let mut rig = Rig::new(1);
        let mut want: [Option<f64>; 3] = [None; 3];
        let mut sent = Vec::new();
        for lines in &batches {
            let mut d = Vec::new();
            for (n, ops) in lines {
                let vals: Vec<String> = ops
                    .iter()
                    .map(|op| match op {
                        GaugeOp::Set(v) => v.to_string(),
                        GaugeOp::Delta(d) if *d >= 0 => format!("+{d}"),
                        GaugeOp::Delta(d) => d.to_string(),
                    })
                    .collect();
                d.push(format!("{}:{}|g", names[*n], vals.join(":")));
                for op in ops {
                    want[*n] = Some(match op {
                        GaugeOp::Set(v) => f64::from(*v),
                        GaugeOp::Delta(x) => want[*n].unwrap_or(0.0) + f64::from(*x),
                    });
                }
            }
            sent.push((d.join("\n").into_bytes(), false));
        }
        feed_and_account(&mut rig, &sent);
        let (_, fams) = rig.scrape();
        for (i, w) in want.iter().enumerate() {
            prop_assert_eq!(exposition::exact(&fams, exported[i], &[]), *w, "{}", exported[i]);
        }
    }
}

/// Line shapes whose value slot the differential suite below fills: every type, sample rates,
/// tags, a container id, unknown and excess fields, the Etsy multi-typed form, events.
const SHAPES: &[&str] = &[
    "dif.a:{}|c",
    "dif.a:{}|c|@0.1",
    "dif.a:{}|c|#k:v,z:w",
    "dif.a:{}|c|@0.5|#k:v|c:cid",
    "dif.b:{}|g",
    "dif.b:{}|g|#k:v",
    "dif.c:{}|ms|@0.25",
    "dif.c:{}|h|#k:v",
    "dif.d:{}|d",
    "dif.e:{}|s",
    "dif.f:{}|c|x:unknown",
    "dif.f:{}|c|#a|#b|#c|#d|#e",
    "dif.g:{}|c:2|ms",
    "dif.h:{}|x",
    "dif.b:{}|c",
    "_e{1,1}:{}|t",
    "dif[k=v]:{}|c",
];

/// What fills a shape's value slot: plain, signed, fractional, exponent, and values the
/// parser refuses (negative counters, NaN, hex, empty, a v1.1 pack, bad UTF-8).
const VALUES_IN: &[&[u8]] = &[
    b"1",
    b"2",
    b"0",
    b"+3",
    b"-4",
    b"1.5",
    b"1e3",
    b".5",
    b"NaN",
    b"0x10",
    b"",
    b"1:2",
    b"\xff",
    b"-0",
    b"12345678901234567890",
];

proptest! {
    #![proptest_config(cases(300))]

    /// The parser-skipping hit path (`Writer::line`'s line key) changes nothing: one writer
    /// that sees each line shape many times ends with the same exposition and the same counts
    /// (but the cache's counts) as one whose cache is emptied before every line, so every line of it
    /// takes the full parse.
    #[test]
    fn known_lines_skip_the_parser_with_the_same_outcome(
        lines in prop::collection::vec((0..SHAPES.len(), 0..VALUES_IN.len()), 1..120),
    ) {
        let lines: Vec<Vec<u8>> = lines
            .iter()
            .map(|&(s, v)| {
                let (pre, post) = SHAPES[s].split_once("{}").unwrap();
                [pre.as_bytes(), VALUES_IN[v], post.as_bytes()].concat()
            })
            .collect();
        let run = |cold: bool| {
            let live = Live::new(Snapshot::defaults(), None, None);
            let store = Store::new(Arc::new(ManualClock::default()), RESERVED.clone());
            let mut w = Writer::new(&store, live.clone());
            for l in &lines {
                if cold {
                    // A new config, equal to the old: the writer drops its cache.
                    live.publish(Snapshot::defaults());
                }
                w.begin_batch();
                w.ingest(l, false);
            }
            let mut stats = std::mem::take(&mut w.stats);
            let hits = (stats.cache_hits, stats.cache_misses);
            // Counted per resolution, not per sample, like the cache's own counts.
            stats.cache_hits = 0;
            stats.cache_misses = 0;
            stats.unmapped = 0;
            let text = tallyd::export::render(&store, &Telemetry::new(), Duration::from_secs(60));
            let own: String = text
                .lines()
                .filter(|l| !l.contains("tallyd_") && !l.contains("process_"))
                .map(|l| format!("{l}\n"))
                .collect();
            (own, stats, hits)
        };
        let (warm, warm_stats, warm_hits) = run(false);
        let (cold, cold_stats, cold_hits) = run(true);
        // Every sample is one lookup either way (a line-key miss is not counted).
        prop_assert_eq!(warm_hits.0 + warm_hits.1, cold_hits.0 + cold_hits.1);
        prop_assert_eq!(warm_stats, cold_stats);
        prop_assert_eq!(warm, cold);
    }
}
