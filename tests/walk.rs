//! Chunked scrapes (`Store::visit_some`, as `/metrics` streams) while families come and go
//! between chunks: a family is listed at most once per scrape, in name order, and every family
//! that lives through the scrape is listed with all its series. Families are expired by real
//! sweeps on a manual clock and re-created, and other scrapes run between the chunks (each one
//! merges new families into the name order the first is walking).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use tallyd::clock::ManualClock;
use tallyd::config::live::{Live, Snapshot};
use tallyd::naming::FamilyKind;
use tallyd::pipeline::Writer;
use tallyd::store::Store;
use tallyd::store::read::{Cursor, Values, Visitor};

/// Family headers (StatsD names) and series in visiting order.
#[derive(Default)]
struct Record {
    families: Vec<(String, FamilyKind)>,
    series: BTreeMap<String, Vec<(String, f64)>>,
}

impl Visitor for Record {
    fn family(
        &mut self,
        name: &str,
        kind: FamilyKind,
        _help: Option<&str>,
        _: &dyn Fn(&str) -> bool,
    ) -> bool {
        // Counters are named `<name>_total`; recorded by their StatsD name. A family announced
        // again at the start of a chunk continues the last header, as in the text exposition.
        let name = name.strip_suffix("_total").unwrap_or(name);
        if let Some((last, k)) = self.families.last()
            && last == name
        {
            return *k == kind;
        }
        self.families.push((name.to_string(), kind));
        true
    }

    fn series(&mut self, labels: &str, values: Values<'_>) {
        let v = match values {
            Values::Counter(v) | Values::Gauge(v) => v,
            other => panic!("unexpected {other:?}"),
        };
        let (family, _) = self.families.last().expect("a series after its family");
        self.series
            .entry(family.clone())
            .or_default()
            .push((labels.to_string(), v));
    }
}

fn full_walk(store: &Store) -> Record {
    let mut r = Record::default();
    store.visit(Duration::from_secs(60), &mut r);
    r
}

#[test]
fn families_come_and_go_between_the_chunks_of_a_scrape() {
    let clock = Arc::new(ManualClock::default());
    let store = Store::new(clock.clone(), Vec::new());
    let toml = "[defaults]\nttl = \"10s\"\n";
    let live = Live::new(Snapshot::from_toml(toml).expect("config"), None, None);
    let mut w = Writer::new(&store, live);
    // 40 families, each with three series (so chunks of 2 end inside families).
    let keepers: Vec<String> = (0..40)
        .filter(|i| !(20..30).contains(i))
        .map(|i| format!("f{i:02}"))
        .collect();
    let send = |w: &mut Writer, names: &[String]| {
        w.begin_batch();
        let lines: Vec<String> = names
            .iter()
            .flat_map(|n| (0..3).map(move |k| format!("{n}:1|c|#k:{k}")))
            .collect();
        w.ingest(lines.join("\n").as_bytes(), false);
    };
    let all: Vec<String> = (0..40).map(|i| format!("f{i:02}")).collect();
    send(&mut w, &all);

    let mut scrape = Record::default();
    let mut cursor = Cursor::default();
    let mut chunks = 0;
    let set_window = Duration::from_secs(60);
    while !store.visit_some(set_window, &mut cursor, 2, &mut scrape) {
        chunks += 1;
        match chunks {
            3 => {
                // New families on both sides of the cursor, merged into the name order by
                // another scrape.
                w.begin_batch();
                w.ingest(b"a_new:1|c\nzz_new:1|c", false);
                assert!(
                    full_walk(&store)
                        .families
                        .iter()
                        .any(|(n, _)| n == "zz_new")
                );
            }
            5 => {
                // f20..f29 go idle and are expired; everything else is touched.
                clock.advance(Duration::from_secs(11));
                send(&mut w, &keepers);
                w.ingest(b"a_new:1|c\nzz_new:1|c", false);
                store.sweep();
                w.begin_batch();
                assert_eq!(store.sweep(), 30, "f20..f29 reclaimed, three series each");
                // Re-created under other types (their family slots are reused) and merged in
                // by another scrape, ahead of the cursor.
                w.ingest(b"f25:5|g\nf26:7|g\nf21:1|c|#k:9", false);
                let other = full_walk(&store);
                assert_eq!(
                    other.families.iter().find(|(n, _)| n == "f25"),
                    Some(&("f25".to_string(), FamilyKind::Gauge))
                );
            }
            _ => {}
        }
        assert!(chunks < 200, "the walk must end");
    }

    // Each family at most once, in name order.
    let names: Vec<&str> = scrape.families.iter().map(|(n, _)| n.as_str()).collect();
    let mut sorted = names.clone();
    sorted.sort_unstable();
    sorted.dedup();
    assert_eq!(names, sorted, "listed once each, in name order");
    // Every family that lived through the scrape, with its three series and their values.
    for n in &keepers {
        let got = scrape
            .series
            .get(n)
            .unwrap_or_else(|| panic!("{n} missing"));
        let labels: Vec<&str> = got.iter().map(|(l, _)| l.as_str()).collect();
        assert_eq!(labels, ["k=\"0\"", "k=\"1\"", "k=\"2\""], "{n}");
    }
    // The re-created families appear (if at all) with their new type only.
    for (n, kind) in &scrape.families {
        if n == "f25" || n == "f26" {
            assert_eq!(*kind, FamilyKind::Gauge, "{n}");
        }
    }

    // A scrape after it sees exactly what is there now.
    let after = full_walk(&store);
    let mut want: Vec<String> = keepers.clone();
    want.extend(["a_new", "f21", "f25", "f26", "zz_new"].map(String::from));
    want.sort();
    let got: Vec<String> = after.families.iter().map(|(n, _)| n.clone()).collect();
    assert_eq!(got, want);
    assert_eq!(after.series["f25"], [(String::new(), 5.0)]);
    assert_eq!(after.series["f21"], [("k=\"9\"".to_string(), 1.0)]);
    assert_eq!(
        after.series["f00"],
        [0, 1, 2].map(|k| (format!("k=\"{k}\""), 2.0))
    );
}

#[test]
fn a_chunk_that_ends_at_a_family_start_does_not_lose_its_header() {
    // One series per family (names that embed ids), so chunks of the streamed size end
    // exactly where families start. Before the cursor remembered whether the header went out,
    // every such family was streamed without its `# TYPE` line, under the previous family.
    let store = Store::new(Arc::new(ManualClock::default()), Vec::new());
    let live = Live::new(Snapshot::from_toml("").expect("config"), None, None);
    let mut w = Writer::new(&store, live);
    let n = 2 * tallyd::export::CHUNK_SERIES + 3;
    let lines: Vec<String> = (0..n).map(|i| format!("id.{i:05}:{i}|g")).collect();
    w.ingest(lines.join("\n").as_bytes(), false);
    let mut r = Record::default();
    let mut cursor = Cursor::default();
    let set_window = Duration::from_secs(60);
    let budget = tallyd::export::CHUNK_SERIES;
    while !store.visit_some(set_window, &mut cursor, budget, &mut r) {}
    assert_eq!(r.families.len(), n);
    for (i, (name, kind)) in r.families.iter().enumerate() {
        assert_eq!(
            (name.as_str(), *kind),
            (&*format!("id_{i:05}"), FamilyKind::Gauge)
        );
        assert_eq!(r.series[name], [(String::new(), i as f64)], "{name}");
    }
}

#[test]
fn streamed_exposition_names_every_sample_across_chunk_ends() {
    // Families of 5 series and of 1: chunks end inside families and at their starts. Every
    // sample line must carry its family's name and follow that family's `# TYPE` line.
    let store = Store::new(Arc::new(ManualClock::default()), Vec::new());
    let live = Live::new(Snapshot::from_toml("").expect("config"), None, None);
    let mut w = Writer::new(&store, live);
    let mut lines = Vec::new();
    for f in 0..1500 {
        let members = if f % 2 == 0 { 5 } else { 1 };
        for m in 0..members {
            lines.push(format!("fam.{f:04}:1|c|#m:{m}"));
        }
    }
    for chunk in lines.chunks(500) {
        w.ingest(chunk.join("\n").as_bytes(), false);
    }
    let telemetry = tallyd::telemetry::Telemetry::new();
    let mut text = String::new();
    tallyd::export::render_chunks(
        &store,
        &telemetry,
        Duration::from_secs(60),
        tallyd::export::Format::Text,
        |c| {
            text.push_str(std::str::from_utf8(c).unwrap());
            true
        },
    );
    let mut typed = None;
    let mut samples = 0;
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            typed = rest.split(' ').next().map(str::to_string);
            continue;
        }
        if line.starts_with('#') || line.starts_with("tallyd_") || line.starts_with("process_") {
            continue;
        }
        let name = line.split(['{', ' ']).next().unwrap_or_default();
        assert_eq!(Some(name), typed.as_deref(), "{line}");
        samples += 1;
    }
    assert_eq!(samples, lines.len());
}
