//! Fuzzes the line parser and the store behind it: any bytes as one datagram must neither
//! panic in `parse::parse_line` nor in `Writer::ingest`, every line must be accounted for, and
//! the rendered exposition must stay well-formed.
#![no_main]

use std::sync::{Arc, LazyLock, Mutex};
use std::time::Duration;

use libfuzzer_sys::fuzz_target;
use tallyd::config::live::{Live, Snapshot};
use tallyd::parse::{self, ParseOptions, Parsed};
use tallyd::clock::ManualClock;
use tallyd::pipeline::Writer;
use tallyd::store::Store;
use tallyd::telemetry::Telemetry;

struct Rig {
    store: Arc<Store>,
    writer: Writer,
    telemetry: Telemetry,
    runs: u32,
}

fn new_rig() -> Rig {
    let telemetry = Telemetry::new();
    let live = Live::new(Snapshot::defaults(), None, None);
    let store = Store::new(Arc::new(ManualClock::default()), telemetry.reserved_names());
    let writer = Writer::new(&store, live);
    Rig {
        store,
        writer,
        telemetry,
        runs: 0,
    }
}

/// One store across runs, so inputs meet the families earlier inputs created (type claims,
/// histogram suffixes); rebuilt now and then so it does not grow without bound.
static RIG: LazyLock<Mutex<Rig>> = LazyLock::new(|| Mutex::new(new_rig()));

fuzz_target!(|data: &[u8]| {
    let opts = ParseOptions::default();
    let mut lines = 0u64;
    for line in parse::lines(data) {
        lines += 1;
        let mut samples = 0u32;
        if let Ok(Parsed::Metric(_)) = parse::parse_line(line, &opts, &mut |_| samples += 1) {
            assert!(samples > 0, "a metric line without samples");
        }
    }
    let mut rig = RIG.lock().unwrap_or_else(|e| e.into_inner());
    rig.runs += 1;
    if rig.runs % 10_000 == 0 {
        *rig = new_rig();
    }
    let truncated = data.first().is_some_and(|b| b & 1 == 1) && data.len() > 64;
    let r = &mut *rig;
    r.writer.begin_batch();
    r.writer.stats.lines = 0; // flushed by the ingest loop in the daemon, not by telemetry
    r.writer.ingest(data, truncated);
    assert_eq!(r.writer.stats.lines, lines, "every line is counted");
    r.telemetry.flush(&mut r.writer.stats);
    if r.runs % 64 == 0 {
        let text = tallyd::export::render(&r.store, &r.telemetry, Duration::from_secs(60));
        check(&text);
    }
});

/// The cheap structural checks: every line is a HELP/TYPE comment or `name[{...}] value`,
/// with a legal name and a value Prometheus parses.
fn check(text: &str) {
    assert!(text.is_empty() || text.ends_with('\n'));
    for line in text.lines() {
        if line.starts_with("# HELP ") || line.starts_with("# TYPE ") {
            continue;
        }
        let name_end = line.find(['{', ' ']).expect("a sample line has a value");
        let name = &line[..name_end];
        assert!(
            !name.is_empty()
                && name.chars().enumerate().all(|(i, c)| c == '_'
                    || c == ':'
                    || c.is_ascii_alphabetic()
                    || (i > 0 && c.is_ascii_digit())),
            "bad name in {line:?}"
        );
        let value = line.rsplit(' ').next().unwrap();
        assert!(
            matches!(value, "+Inf" | "-Inf" | "NaN")
                || value.parse::<f64>().is_ok_and(f64::is_finite),
            "bad value in {line:?}"
        );
    }
}
