//! `tallyd import statsd-exporter`, end to end through the binary and the real daemon:
//!
//! - golden cases (`tests/fixtures/statsd_exporter/*.yml` with their `.expect`): the mapping
//!   examples of statsd_exporter's README and test suite, imported, then fed the lines those
//!   document, each asserting the exact series statsd_exporter gives them;
//! - the round trip: every imported fixture passes `tallyd check-config`;
//! - each unsupported construct (and each file statsd_exporter refuses) fails with its line;
//! - every flag the import reads, translated and, for the listeners, driven.
//!
//! `.expect` lines: `> line` is sent (one datagram each, from one socket, so in order);
//! `= series value` is one StatsD sample of the scrape, all of which are listed (a quantile is
//! compared within the summary sketch's 2%); `~ series value` is one of tallyd's own;
//! `! text` must appear in the import's stderr.

mod common;

use std::net::UdpSocket;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::*;

/// Ephemeral loopback listeners in place of statsd_exporter's :9125 and :9102.
const LOOPBACK: [&str; 3] = [
    "--statsd.listen-udp=127.0.0.1:0",
    "--statsd.listen-tcp=",
    "--web.listen-address=127.0.0.1:0",
];

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/statsd_exporter")
}

/// Runs `tallyd import statsd-exporter <args>`: exit code, stdout, stderr.
fn import(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(binary())
        .args(["import", "statsd-exporter"])
        .args(args)
        .output()
        .expect("run tallyd import");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Imports `yml` with the loopback listeners and `more` flags (which replace a loopback flag
/// of the same name); panics unless it succeeds.
fn import_ok(yml: &Path, more: &[&str]) -> (String, String) {
    let mut args = vec!["--mapping-config", yml.to_str().unwrap(), "--"];
    // A flag in `more` replaces the loopback one (a flag may not be given twice).
    let name = |a: &str| a.split('=').next().unwrap_or(a).to_string();
    args.extend(
        LOOPBACK
            .iter()
            .filter(|l| !more.iter().any(|m| name(m) == name(l))),
    );
    args.extend(more);
    let (code, toml, err) = import(&args);
    assert_eq!(code, 0, "import of {} failed:\n{err}", yml.display());
    (toml, err)
}

#[derive(Default)]
struct Case {
    send: Vec<String>,
    want: Vec<(String, f64)>,
    counted: Vec<(String, f64)>,
    warns: Vec<String>,
}

fn read_case(path: &Path) -> Case {
    let mut c = Case::default();
    let pair = |s: &str| {
        let (k, v) = s.rsplit_once(' ').expect("series value");
        (k.to_string(), v.parse::<f64>().expect("a number"))
    };
    for l in std::fs::read_to_string(path).unwrap().lines() {
        match l.split_at_checked(2) {
            Some(("> ", s)) => c.send.push(s.to_string()),
            Some(("= ", s)) => c.want.push(pair(s)),
            Some(("~ ", s)) => c.counted.push(pair(s)),
            Some(("! ", s)) => c.warns.push(s.to_string()),
            _ if l.starts_with('#') || l.is_empty() => {}
            _ => panic!("{}: cannot read {l:?}", path.display()),
        }
    }
    c
}

fn samples(text: &str) -> Vec<(String, f64)> {
    let mut v: Vec<(String, f64)> = statsd_samples(text)
        .iter()
        .map(|l| {
            let (k, v) = l.rsplit_once(' ').unwrap();
            (k.to_string(), v.parse().unwrap())
        })
        .collect();
    v.sort_by(|a, b| a.0.cmp(&b.0));
    v
}

fn cases() -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(fixtures())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "expect"))
        .collect();
    v.sort();
    assert!(v.len() >= 20, "the golden cases are missing: {v:?}");
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn golden_cases_give_what_statsd_exporter_documents() {
    for expect in cases() {
        let case = read_case(&expect);
        let yml = expect.with_extension("yml");
        let (toml, err) = import_ok(&yml, &[]);
        for w in &case.warns {
            assert!(
                err.contains(w.as_str()),
                "{}: stderr lacks {w:?}:\n{err}",
                yml.display()
            );
        }
        let t = TestDaemon::start(&toml).await;
        let s = UdpSocket::bind("127.0.0.1:0").unwrap();
        s.connect(t.udp[0]).unwrap();
        for l in &case.send {
            s.send(l.as_bytes()).unwrap();
        }
        wait_datagrams(t.http, "udp://127.0.0.1:0", case.send.len() as u64).await;
        let text = wait_until(t.http, "the counted refusals", |text| {
            case.counted.iter().all(|(k, v)| value(text, k) == Some(*v))
        })
        .await;
        let got = samples(&text);
        let mut want = case.want.clone();
        want.sort_by(|a, b| a.0.cmp(&b.0));
        let names = |v: &[(String, f64)]| v.iter().map(|p| p.0.clone()).collect::<Vec<_>>();
        assert_eq!(
            names(&got),
            names(&want),
            "{}:\n{toml}\n{text}",
            expect.display()
        );
        for ((k, g), (_, w)) in got.iter().zip(&want) {
            let close = if k.contains("quantile=") {
                (g - w).abs() <= w.abs() * 0.02
            } else {
                (g - w).abs() <= f64::EPSILON * w.abs().max(1.0) * 4.0
            };
            assert!(close, "{}: {k} = {g}, want {w}", expect.display());
        }
        t.stop().await;
    }
}

/// Every imported fixture passes `tallyd check-config`; the only warnings it prints are the
/// one about statsd_exporter's names and rules an earlier one shadows (which statsd_exporter
/// never matches either).
#[test]
fn imported_files_pass_check_config() {
    let dir = tempfile::tempdir().unwrap();
    for expect in cases() {
        let yml = expect.with_extension("yml");
        let (toml, _) = import_ok(&yml, &[]);
        let out = dir.path().join("tallyd.toml");
        std::fs::write(&out, &toml).unwrap();
        let r = Command::new(binary())
            .args(["check-config", out.to_str().unwrap()])
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&r.stderr);
        assert!(r.status.success(), "{}:\n{toml}\n{err}", yml.display());
        let warnings: Vec<&str> = err.lines().filter(|l| l.contains("warning")).collect();
        assert!(
            warnings[0].contains("statsd_exporter naming")
                && warnings[1..]
                    .iter()
                    .all(|w| w.contains("this rule can never match")),
            "{}: {err}",
            yml.display()
        );
    }
}

/// Each construct tallyd cannot express fails the import with its line, unless
/// `--allow-lossy`; each file statsd_exporter itself refuses fails with its line whatever the
/// flags.
#[test]
fn unsupported_constructs_and_invalid_files_fail_with_their_line() {
    let dir = tempfile::tempdir().unwrap();
    let lossy: &[(&str, &str)] = &[
        (
            "mappings:\n- match: a.*\n  name: a\n  observer_type: histogram\n  histogram_options:\n    native_histogram_max_buckets: 2000\n",
            ":6: cannot translate: native_histogram_max_buckets 2000",
        ),
        (
            "mappings:\n- match: a.*\n  name: a\n  labels:\n    __x: y\n",
            ":5: cannot translate: label __x",
        ),
        (
            "mappings:\n- match: a.*\n  name: a\n  observer_type: histogram\n  labels:\n    le: x\n",
            ":6: cannot translate: label le",
        ),
        (
            &format!(
                "mappings:\n- match: a.*\n  name: a\n  observer_type: histogram\n  histogram_options:\n    buckets: [{}]\n",
                (1..=65)
                    .map(|i| i.to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            ":6: cannot translate: 65 buckets",
        ),
        (
            "mappings:\n- match: 'a(?=b)'\n  match_type: regex\n  name: a\n",
            ":2: cannot translate: regex a(?=b) does not compile for tallyd",
        ),
        (
            "defaults:\n  summary_options:\n    quantiles:\n    - quantile: 1\n    - quantile: 0.5\n",
            ":3: cannot translate: quantiles 0 and 1",
        ),
        (
            "mappings:\n- match: a.*\n  name: x\n  <<: {help: h}\n",
            ":4: cannot translate: YAML merge keys",
        ),
    ];
    for (i, (yaml, want)) in lossy.iter().enumerate() {
        let p = dir.path().join(format!("lossy{i}.yml"));
        std::fs::write(&p, yaml).unwrap();
        let path = p.to_str().unwrap();
        let (code, out, err) = import(&["--mapping-config", path]);
        assert_eq!(code, 1, "{yaml}\n{err}");
        assert!(out.is_empty(), "{out}");
        assert!(
            err.contains(&format!("{path}{want}")),
            "want {want:?} in:\n{err}"
        );
        let (code, out, _) = import(&["--mapping-config", path, "--allow-lossy"]);
        if want.contains("cannot translate") {
            assert_eq!(code, 0, "{yaml}");
            assert!(out.contains("naming = \"statsd_exporter\""), "{out}");
        } else {
            assert_eq!(code, 1, "{yaml}");
        }
    }
    let invalid: &[(&str, &str)] = &[
        (
            "mappings:\n- match: a.*\n  name: a\n  bogus: 1\n",
            ":4: error: bogus: unknown key",
        ),
        (
            "mappings:\n- match: a.*\n",
            ":2: error: metric mapping didn't set a metric name",
        ),
        (
            "mappings:\n- match: bad!!metric-line.*.*\n  name: a\n",
            ":2: error: invalid match",
        ),
        (
            "mappings:\n- match: a.*\n  name: 0foo\n",
            ":3: error: metric name '0foo'",
        ),
        (
            "mappings:\n- match: a.*\n  name: a\n  labels:\n    a: x\n",
            ":5: error: invalid label key: a",
        ),
        (
            "mappings:\n- match: a.*\n  name: a\n  observer_type: wrong\n",
            ":4: error: observer_type: invalid observer type",
        ),
        (
            "mappings:\n- match: a.*\n  name: a\n  match_metric_type: wrong\n",
            ":4: error: match_metric_type: invalid metric type",
        ),
        (
            "mappings:\n- match: a.*\n  name: a\n  action: xyz\n",
            ":4: error: action: invalid action type",
        ),
        (
            "mappings:\n- match: a.*\n  name: a\n  observer_type: histogram\n  summary_options:\n    max_age: 1m\n",
            ":6: error: cannot use histogram observer and summary options",
        ),
        (
            "mappings:\n- match: *.test.*\n  name: a\n",
            ": error: not valid YAML",
        ),
        (
            "defaults:\n  ttl: forever\n",
            ":2: error: ttl: expected a duration",
        ),
    ];
    for (i, (yaml, want)) in invalid.iter().enumerate() {
        let p = dir.path().join(format!("invalid{i}.yml"));
        std::fs::write(&p, yaml).unwrap();
        let path = p.to_str().unwrap();
        let (code, out, err) = import(&["--mapping-config", path, "--allow-lossy"]);
        assert_eq!(code, 1, "{yaml}\n{err}");
        assert!(out.is_empty(), "{out}");
        assert!(err.contains(want), "want {want:?} in:\n{err}");
    }
}

/// The TOML lines the import writes for statsd_exporter's flags, and what it says of the
/// flags it has no use for.
#[test]
fn every_flag_translates() {
    let dir = tempfile::tempdir().unwrap();
    let web = dir.path().join("web.yml");
    let hash = bcrypt::hash("s3cret", 4).unwrap();
    std::fs::write(
        &web,
        format!("tls_server_config:\n  cert_file: cert.pem\n  key_file: /etc/tls/key.pem\nbasic_auth_users:\n  prom: {hash}\n"),
    )
    .unwrap();
    let web_flag = format!("--web.config.file={}", web.display());
    let (code, toml, err) = import(&[
        "--allow-lossy",
        "--",
        "--statsd.listen-udp=127.0.0.1:9125",
        "--statsd.listen-tcp",
        ":9126",
        "--statsd.listen-unixgram=/run/statsd.sock",
        "--statsd.unixsocket-mode=660",
        "--web.listen-address=localhost:9102",
        "--web.telemetry-path=/stats",
        "--statsd.read-buffer=1048576",
        "--statsd.cache-size=5000",
        "--no-statsd.parse-dogstatsd-tags",
        "--no-statsd.parse-influxdb-tags",
        "--statsd.parse-librato-tags",
        "--no-statsd.parse-signalfx-tags",
        "--statsd.relay.address=10.0.0.5:8125",
        "--statsd.relay.packet-length=1200",
        "--web.enable-lifecycle",
        &web_flag,
        "--log.level=debug",
        "--log.format=json",
    ]);
    assert_eq!(code, 0, "{err}");
    let cert = dir.path().join("cert.pem");
    for want in [
        "[http]\nlisten = \"127.0.0.1:9102\"\nmetrics_path = \"/stats\"\nenable_lifecycle = true\n",
        &format!(
            "tls_cert_file = \"{}\"\ntls_key_file = \"/etc/tls/key.pem\"\n",
            cert.display()
        ),
        &format!("[http.basic_auth_users]\n\"prom\" = \"{hash}\"\n"),
        "[[udp]]\nlisten = \"127.0.0.1:9125\"\nrecv_buffer = 1048576\n",
        "[[tcp]]\nlisten = \"0.0.0.0:9126\"\n",
        "[[unixgram]]\npath = \"/run/statsd.sock\"\nmode = \"0660\"\nrecv_buffer = 1048576\n",
        "[parse]\ndogstatsd_tags = false\ninfluxdb_tags = false\nlibrato_tags = true\nsignalfx_tags = false\n",
        "[relay]\naddress = \"10.0.0.5:8125\"\nmax_datagram_size = 1200\n",
        "[log]\nlevel = \"debug\"\nformat = \"json\"\n",
    ] {
        assert!(toml.contains(want), "missing:\n{want}\nin:\n{toml}");
    }
    for want in [
        "--web.enable-lifecycle: cannot translate: POST /-/reload works",
        "--statsd.cache-size: note: no equivalent needed",
    ] {
        assert!(err.contains(want), "missing {want:?} in:\n{err}");
    }
    // Without --allow-lossy the lifecycle flag's /-/quit stops the import.
    let (code, _, err) = import(&["--", "--web.enable-lifecycle"]);
    assert_eq!(code, 1, "{err}");
    // Empty addresses turn listeners off; all three off is statsd_exporter's own error.
    let (code, toml, err) = import(&["--", "--statsd.listen-udp=", "--statsd.listen-tcp="]);
    assert_eq!(code, 1, "{toml}{err}");
    assert!(
        err.contains("At least one of UDP/TCP/Unixgram listeners"),
        "{err}"
    );
    let (code, toml, _) = import(&["--", "--statsd.listen-udp=", "--statsd.listen-tcp=:9125"]);
    assert_eq!(code, 0);
    assert!(
        toml.contains("udp = []\n") && !toml.contains("[[udp]]"),
        "{toml}"
    );
    // A host name is not an address tallyd can listen on; an unknown flag is refused.
    let (code, _, err) = import(&["--", "--statsd.listen-udp=statsd.internal:9125"]);
    assert_eq!(code, 1);
    assert!(
        err.contains("--statsd.listen-udp=statsd.internal:9125: cannot translate"),
        "{err}"
    );
    let (code, _, err) = import(&["--", "--statsd.bogus=1"]);
    assert_eq!(code, 1);
    assert!(err.contains("unknown long flag '--statsd.bogus'"), "{err}");
    let (code, _, err) = import(&["--", "--log.level=debug", "--log.level", "info"]);
    assert_eq!(code, 1);
    assert!(err.contains("flag 'log.level' cannot be repeated"), "{err}");
    // statsd_exporter's native histogram options become tallyd's; a factor of 1 turns them
    // off; without a mapping file statsd_exporter has none.
    let native = dir.path().join("native.yml");
    std::fs::write(
        &native,
        "defaults:\n  observer_type: histogram\n  histogram_options:\n    native_histogram_bucket_factor: 2\n    native_histogram_max_buckets: 100\nmappings:\n- match: a.*\n  name: a\n  histogram_options:\n    native_histogram_bucket_factor: 1\n",
    )
    .unwrap();
    let (code, toml, err) = import(&["--mapping-config", native.to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
    assert!(
        toml.contains(
            "observer = \"histogram\"\nnative_bucket_factor = 2.0\nnative_max_buckets = 100\n"
        ),
        "{toml}"
    );
    assert!(
        toml.contains("name = \"a\"\nhistograms = \"classic\"\n"),
        "{toml}"
    );
    let (_, toml, _) = import(&[]);
    assert!(toml.contains("histograms = \"classic\"\n"), "{toml}");
    // The mapping file can come through the flags.
    let yml = fixtures().join("readme.yml");
    let (code, toml, _) = import(&["--", &format!("--statsd.mapping-config={}", yml.display())]);
    assert_eq!(code, 0);
    assert!(
        toml.contains("name = \"dispatcher_events_total\""),
        "{toml}"
    );
}

/// The flags drive a real daemon: UDP and TCP listeners, the unixgram socket and its mode,
/// the metrics path, the tag dialects, the relay, the lifecycle endpoint, basic auth from a
/// web config.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn imported_flags_run_the_daemon() {
    use std::os::unix::fs::PermissionsExt as _;
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("statsd.sock");
    let relay = UdpSocket::bind("127.0.0.1:0").unwrap();
    let web = dir.path().join("web.yml");
    let hash = bcrypt::hash("s3cret", 4).unwrap();
    std::fs::write(&web, format!("basic_auth_users:\n  prom: {hash}\n")).unwrap();
    let yml = fixtures().join("readme.yml");
    let (toml, _) = import_ok(
        &yml,
        &[
            "--statsd.listen-tcp=127.0.0.1:0",
            &format!("--statsd.listen-unixgram={}", sock.display()),
            "--statsd.unixsocket-mode=640",
            "--web.telemetry-path=/stats",
            "--no-statsd.parse-dogstatsd-tags",
            &format!("--statsd.relay.address={}", relay.local_addr().unwrap()),
            "--statsd.relay.packet-length=512",
            &format!("--web.config.file={}", web.display()),
        ],
    );
    let t = TestDaemon::start(&toml).await;
    // Basic auth from the web config, on the metrics path the flags moved.
    assert_eq!(http(t.http, "GET", "/stats").0, 401);
    assert_eq!(
        http(t.http, "GET", "/metrics").0,
        404,
        "only the moved path serves"
    );
    let mode = std::fs::metadata(&sock).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o640);
    send(t.udp[0], b"test.dispatcher.P.send.ok:1|c|#env:prod");
    let tcp = t.d().tcp_addrs()[0];
    send_tcp(tcp, b"test.dispatcher.P.send.ok:2|c\n");
    let u = std::os::unix::net::UnixDatagram::unbound().unwrap();
    u.send_to(b"test.dispatcher.P.send.ok:4|c", &sock).unwrap();
    // DogStatsD tags are off: `|#env:prod` is ignored, not a label.
    let series = r#"dispatcher_events_total{action="send",job="test_dispatcher",outcome="ok",processor="P"}"#;
    let text = wait_until_auth(t.http, "/stats", "prom:s3cret", |text| {
        value(text, series) == Some(7.0)
    })
    .await;
    assert!(!text.contains("env=\"prod\""), "{text}");
    // The relay got the lines as received.
    relay.set_read_timeout(Some(DEADLINE)).unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 2048];
    while got.len() < 3 {
        let n = relay.recv(&mut buf).expect("relayed datagram");
        got.extend(
            String::from_utf8_lossy(&buf[..n])
                .lines()
                .map(str::to_string),
        );
    }
    got.sort();
    assert_eq!(
        got,
        [
            "test.dispatcher.P.send.ok:1|c|#env:prod",
            "test.dispatcher.P.send.ok:2|c",
            "test.dispatcher.P.send.ok:4|c",
        ]
    );
    t.stop().await;
}

/// `GET path` with basic auth `user:pass` until `cond` holds on the body.
async fn wait_until_auth(
    addr: std::net::SocketAddr,
    path: &str,
    userpass: &str,
    cond: impl Fn(&str) -> bool,
) -> String {
    use base64::Engine as _;
    use std::io::{Read as _, Write as _};
    let auth = base64::engine::general_purpose::STANDARD.encode(userpass);
    let start = std::time::Instant::now();
    loop {
        let path = path.to_string();
        let auth = auth.clone();
        let body = tokio::task::spawn_blocking(move || {
            let mut s = std::net::TcpStream::connect(addr).unwrap();
            write!(
                s,
                "GET {path} HTTP/1.1\r\nHost: t\r\nAuthorization: Basic {auth}\r\nConnection: close\r\n\r\n"
            )
            .unwrap();
            let mut raw = String::new();
            s.read_to_string(&mut raw).unwrap();
            dechunk(raw.split_once("\r\n\r\n").map_or("", |p| p.1))
        })
        .await
        .unwrap();
        if cond(&body) {
            return body;
        }
        assert!(start.elapsed() < DEADLINE, "condition never held:\n{body}");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}
