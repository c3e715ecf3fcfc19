//! The golden-file test: a fixed corpus of mixed datagrams produces exactly the committed
//! exposition text.
//!
//! - Input: `tests/fixtures/golden/corpus.txt`, one UDP datagram per line, sent in file order
//!   from one socket to a daemon with one UDP worker and a manual (frozen) clock. A line that
//!   starts with `#` is a comment and an empty line is skipped; in the others `\n` is a line
//!   feed (several StatsD lines in one datagram), `\r` a carriage return, `\\` a backslash and
//!   `\xNN` the raw byte 0xNN.
//! - Output: the StatsD part of `/metrics` (everything before the first `# HELP process_` or
//!   `# HELP tallyd_` line: tallyd's own families come after the StatsD ones and hold
//!   timings), compared byte for byte with `tests/fixtures/golden/expected.prom`.
//! - `TALLYD_BLESS=1 cargo test --test golden` rewrites `expected.prom` from the current
//!   output; review the diff before committing it.
//! - If `promtool` is on `PATH`, the whole scrape (self-metrics included) must pass
//!   `promtool check metrics` with exit 0 and no output (no lint warnings). Without it the
//!   check is reported as SKIPPED on stderr, and fails under CI=true (CI installs promtool).

mod common;

use std::path::PathBuf;
use std::sync::Arc;

use common::*;
use tallyd::clock::ManualClock;

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/golden")
        .join(name)
}

/// Decodes one corpus line into a datagram.
fn unescape(line: &str) -> Vec<u8> {
    let b = line.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] != b'\\' {
            out.push(b[i]);
            i += 1;
            continue;
        }
        match b.get(i + 1) {
            Some(b'n') => out.push(b'\n'),
            Some(b'r') => out.push(b'\r'),
            Some(b'\\') => out.push(b'\\'),
            Some(b'x') => {
                let hex = line.get(i + 2..i + 4).expect("\\x needs two hex digits");
                out.push(u8::from_str_radix(hex, 16).expect("hex byte"));
                i += 2;
            }
            other => panic!("unknown escape \\{other:?} in corpus line {line:?}"),
        }
        i += 2;
    }
    out
}

/// The corpus as datagrams.
fn corpus() -> Vec<Vec<u8>> {
    std::fs::read_to_string(fixture("corpus.txt"))
        .expect("read corpus")
        .lines()
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(unescape)
        .collect()
}

#[test]
fn unescape_rules() {
    assert_eq!(unescape(r"a:1|c\nb:2|c\r"), b"a:1|c\nb:2|c\r");
    assert_eq!(unescape(r"p:C:\\d"), b"p:C:\\d");
    assert_eq!(unescape(r"\xc3(\xFF"), b"\xc3(\xff");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corpus_renders_the_committed_exposition() {
    let datagrams = corpus();
    let clock = Arc::new(ManualClock::default());
    let t = TestDaemon::start_with(&config_text(1, ""), move |o| {
        o.clock = clock;
        o.watch = false;
    })
    .await;
    let sock = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    sock.connect(t.udp[0]).unwrap();
    for d in &datagrams {
        sock.send(d).expect("send");
    }
    // The datagram counter is flushed after the batch that holds the datagrams is aggregated.
    let n = datagrams.len() as f64;
    wait_until(t.http, &format!("{n} datagrams"), |s| {
        family_sum(s, "tallyd_datagrams_received_total") == n
    })
    .await;
    let text = scrape_text(t.http).await;
    t.stop().await;
    let got = statsd_section(&text);

    let expected_path = fixture("expected.prom");
    if std::env::var_os("TALLYD_BLESS").is_some_and(|v| v == "1") {
        std::fs::write(&expected_path, got).expect("write expected.prom");
        eprintln!("blessed {}", expected_path.display());
    } else {
        let want = std::fs::read_to_string(&expected_path)
            .expect("expected.prom (create it with TALLYD_BLESS=1)");
        if got != want {
            let first = got
                .lines()
                .zip(want.lines())
                .position(|(g, w)| g != w)
                .unwrap_or_else(|| got.lines().count().min(want.lines().count()));
            panic!(
                "the exposition differs from expected.prom from line {}:\n  got:  {:?}\n  want: {:?}\n\
                 (TALLYD_BLESS=1 rewrites it; full output:)\n{got}",
                first + 1,
                got.lines().nth(first),
                want.lines().nth(first),
            );
        }
    }
    promtool_check(&text);
}

/// `promtool check metrics` on the whole scrape: exit 0, no output.
fn promtool_check(text: &str) {
    use std::io::Write;
    let child = std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn();
    let mut child = match child {
        Ok(c) => c,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            skip_or_fail(
                "`promtool check metrics` of the golden scrape because promtool is not on PATH \
                 (CI installs it)",
            );
            return;
        }
        Err(e) => panic!("cannot run promtool: {e}"),
    };
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success(),
        "promtool check metrics failed:\n{report}"
    );
    assert_eq!(report.trim(), "", "promtool lint warnings:\n{report}");
}
