//! The status page (`GET /`) and its JSON (`GET /api/v1/status`), read from a real daemon fed
//! over real sockets: every number the page shows, exactly; the config's story through
//! reloads; refused lines escaped; the same auth as `/metrics`; no markup from a datagram.

mod common;

use std::net::SocketAddr;
use std::path::PathBuf;

use common::*;
use serde_json::{Value, json};

/// `GET path` off the runtime's threads: (status, head, body).
async fn get(addr: SocketAddr, path: &'static str) -> (u16, String, String) {
    tokio::task::spawn_blocking(move || http(addr, "GET", path))
        .await
        .expect("request task")
}

/// `GET /api/v1/status`, parsed.
async fn status(addr: SocketAddr) -> Value {
    let (code, head, body) = get(addr, "/api/v1/status").await;
    assert_eq!(code, 200, "{head}\n{body}");
    assert!(
        head.to_ascii_lowercase()
            .contains("content-type: application/json"),
        "{head}"
    );
    serde_json::from_str(&body).unwrap_or_else(|e| panic!("status JSON: {e}\n{body}"))
}

fn sha256_hex(text: &str) -> String {
    use sha2::Digest as _;
    sha2::Sha256::digest(text.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

const GOOD: &[u8] = b"api.requests:1|c|#env:prod,host:a\napi.requests:2|c|#env:prod,host:b\napi.requests:3|c|#env:dev,host:a\nqueue.depth:5|g";
const BAD: &[u8] = b"bad line\nx:abc|c\ny:1|zz";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_counts_every_listener_series_and_refusal_exactly() {
    let t = TestDaemon::start(&config_text(
        1,
        "[[tcp]]\nlisten = \"127.0.0.1:0\"\n\n[limits]\nmax_series = 5000\n",
    ))
    .await;
    // The `listener` label is the configured address.
    let udp = "udp://127.0.0.1:0".to_string();
    t.send(GOOD);
    t.send(BAD);
    let lines = format!("tallyd_lines_received_total{{listener=\"{udp}\"}}");
    let scrape = wait_for(t.http, &[(&lines, 7.0)]).await;
    let s = status(t.http).await;

    assert_eq!(s["version"], env!("CARGO_PKG_VERSION"));
    assert!(s["uptime_seconds"].as_f64().unwrap() >= 0.0);
    assert!(s["started_at"].as_f64().unwrap() <= s["now"].as_f64().unwrap());

    let cfg = &s["config"];
    let text = std::fs::read_to_string(&t.config_path).unwrap();
    assert_eq!(cfg["path"], t.config_path.display().to_string());
    assert_eq!(cfg["sha256"], sha256_hex(&text));
    assert_eq!(cfg["loaded_by"], "start");
    assert_eq!(cfg["last_reload_successful"], true);
    assert_eq!(cfg["restart_required"], false);
    assert_eq!(cfg["last_reload"], Value::Null);
    assert_eq!(cfg["last_error"], Value::Null);

    let ls = s["listeners"].as_array().unwrap();
    assert_eq!(ls.len(), 2, "{ls:?}");
    let u = &ls[0];
    assert_eq!(u["name"], udp);
    assert_eq!(u["transport"], "udp");
    assert_eq!(u["up"], true);
    assert_eq!(u["lines_received"], 7);
    assert_eq!(u["lines_rejected"], 3);
    assert_eq!(u["datagrams_received"], 2);
    assert_eq!(u["bytes_received"], (GOOD.len() + BAD.len()) as u64);
    assert_eq!(u["kernel_drops"], 0);
    let buf = value(
        &scrape,
        &format!("tallyd_udp_receive_buffer_bytes{{listener=\"{udp}\"}}"),
    )
    .unwrap();
    assert_eq!(u["receive_buffer_bytes"].as_f64().unwrap(), buf);
    // The rate history ends now and has at least the interval from the start sample.
    let hist = u["rate_history"].as_array().unwrap();
    assert!(!hist.is_empty(), "{u}");
    assert_eq!(
        u["lines_per_second"],
        hist.last().unwrap()["lines_per_second"]
    );
    let tcp = &ls[1];
    assert_eq!(tcp["transport"], "tcp");
    // A TCP listener's label is its bound address.
    assert_eq!(tcp["name"], format!("tcp://{}", t.d().tcp_addrs()[0]));
    assert_eq!(tcp["lines_received"], 0);
    assert_eq!(tcp["datagrams_received"], Value::Null);
    assert_eq!(tcp["kernel_drops"], Value::Null);
    assert_eq!(tcp["receive_buffer_bytes"], Value::Null);

    assert_eq!(
        s["series"],
        json!({"count": 4, "max_series": 5000, "max_series_per_metric": 0, "families": 2})
    );
    let top = &s["top_families"]["by_series"];
    assert_eq!(
        top,
        &json!([
            {"name": "api_requests_total", "type": "counter", "series": 3, "growth": 3,
             "labels": [{"name": "env", "values": 2, "capped": false},
                        {"name": "host", "values": 2, "capped": false}]},
            {"name": "queue_depth", "type": "gauge", "series": 1, "growth": 1, "labels": []},
        ])
    );
    // No baseline yet (the first is taken a minute in): growth counts from the start.
    assert_eq!(s["top_families"]["by_growth"], *top);
    assert_eq!(s["top_families"]["growth_since"], s["started_at"]);

    let reasons: Vec<&Value> = s["refusals"].as_array().unwrap().iter().collect();
    assert_eq!(reasons.len(), 18);
    let reason = |r: &str| {
        *reasons
            .iter()
            .find(|v| v["reason"] == r)
            .unwrap_or_else(|| panic!("no reason {r}"))
    };
    for (r, line) in [
        ("malformed_line", "bad line"),
        ("invalid_value", "x:abc|c"),
        ("unknown_type", "y:1|zz"),
    ] {
        let v = reason(r);
        assert_eq!(v["metric"], "tallyd_parse_errors_total");
        assert_eq!(v["count"], 1, "{v}");
        let recent = v["recent"].as_array().unwrap();
        assert_eq!(recent.len(), 1, "{v}");
        assert_eq!(recent[0]["line"], line);
        assert_eq!(recent[0]["listener"], udp);
        // The same count as /metrics.
        let m = value(
            &scrape,
            &format!("tallyd_parse_errors_total{{reason=\"{r}\"}}"),
        );
        assert_eq!(m, Some(1.0));
    }
    assert_eq!(
        reason("max_series")["metric"],
        "tallyd_series_refused_total"
    );
    assert_eq!(reason("conflict")["metric"], "tallyd_samples_dropped_total");
    let total: u64 = reasons.iter().map(|v| v["count"].as_u64().unwrap()).sum();
    assert_eq!(total, 3);
    t.stop().await;
}

/// Series refused at the limit and samples dropped for a type conflict keep their lines too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_and_dropped_samples_keep_their_lines() {
    let t = TestDaemon::start(&config_text(1, "[limits]\nmax_series = 2\n")).await;
    t.send(b"a:1|c\nb:1|c");
    wait_for(t.http, &[("tallyd_series", 2.0)]).await;
    t.send(b"c:1|c|#k:v");
    t.send(b"a_total:1|g");
    wait_for(
        t.http,
        &[
            ("tallyd_series_refused_total{reason=\"max_series\"}", 1.0),
            ("tallyd_samples_dropped_total{reason=\"conflict\"}", 1.0),
        ],
    )
    .await;
    let s = status(t.http).await;
    let find = |r: &str| {
        s["refusals"]
            .as_array()
            .unwrap()
            .iter()
            .find(|v| v["reason"] == r)
            .unwrap()
            .clone()
    };
    let max = find("max_series");
    assert_eq!(max["count"], 1);
    assert_eq!(max["recent"][0]["line"], "c:1|c|#k:v");
    let conflict = find("conflict");
    assert_eq!(conflict["count"], 1);
    assert_eq!(conflict["recent"][0]["line"], "a_total:1|g");
    assert_eq!(s["series"]["count"], 2);
    assert_eq!(s["series"]["max_series"], 2);
    // The limit is exported too, for the alert on it.
    wait_for(t.http, &[("tallyd_series_limit", 2.0)]).await;
    t.stop().await;
}

/// Only the last few lines per reason are kept, newest last; a line is cut and escaped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recent_lines_are_bounded_cut_and_escaped() {
    let t = TestDaemon::start(&config_text(1, "")).await;
    for i in 0..8 {
        t.send(format!("bad{i}").as_bytes());
    }
    let long = format!("{}\x01\\", "L".repeat(300));
    t.send(long.as_bytes());
    t.send(b"esc\x01\\ape");
    wait_for(
        t.http,
        &[("tallyd_parse_errors_total{reason=\"malformed_line\"}", 10.0)],
    )
    .await;
    let s = status(t.http).await;
    let r = s["refusals"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["reason"] == "malformed_line")
        .unwrap();
    let lines: Vec<&str> = r["recent"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["line"].as_str().unwrap())
        .collect();
    let cut = format!("{}...", "L".repeat(200));
    assert_eq!(
        lines,
        ["bad5", "bad6", "bad7", cut.as_str(), r"esc\x01\\ape"],
        "{r}"
    );
    t.stop().await;
}

/// A failed reload shows its line and column and what asked for it, and stays listed after a
/// good reload; the config in force is the good file, by its hash.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reloads_are_recorded_with_the_error_place() {
    // No file watcher: every reload here is the one the test asks for.
    let t = TestDaemon::start_with(&config_text(1, ""), |o| o.watch = false).await;
    let bad = config_text(1, "[limits]\nmax_series = \"lots\"\n");
    let want = tallyd::config::Config::from_toml(&bad).unwrap_err();
    assert!(want.line > 0);
    t.rewrite_config(&bad);
    let (code, _, body) = tokio::task::spawn_blocking({
        let h = t.http;
        move || http(h, "POST", "/-/reload")
    })
    .await
    .unwrap();
    assert_eq!(code, 400, "{body}");
    let s = status(t.http).await;
    let cfg = &s["config"];
    assert_eq!(cfg["last_reload_successful"], false);
    assert_eq!(cfg["loaded_by"], "start");
    let err = &cfg["last_error"];
    assert_eq!(err["trigger"], "http");
    assert_eq!(err["outcome"], "failure");
    assert_eq!(err["line"], want.line);
    assert_eq!(err["column"], want.column);
    assert!(
        err["message"].as_str().unwrap().contains(&want.to_string()),
        "{err}"
    );
    assert_eq!(cfg["last_reload"], *err);

    let good = config_text(1, "[limits]\nmax_series = 7\n");
    t.rewrite_config(&good);
    let (code, _, body) = tokio::task::spawn_blocking({
        let h = t.http;
        move || http(h, "POST", "/-/reload")
    })
    .await
    .unwrap();
    assert_eq!(code, 200, "{body}");
    let s = status(t.http).await;
    let cfg = &s["config"];
    assert_eq!(cfg["last_reload_successful"], true);
    assert_eq!(cfg["loaded_by"], "http");
    assert_eq!(cfg["sha256"], sha256_hex(&good));
    assert_eq!(cfg["last_reload"]["outcome"], "success");
    assert_eq!(cfg["last_error"]["line"], want.line);
    assert_eq!(s["series"]["max_series"], 7);

    // The page shows the error's place.
    let (code, _, page) = get(t.http, "/").await;
    assert_eq!(code, 200);
    assert!(
        page.contains(&format!(
            "<span class=\"where\">line {}, column {}</span>",
            want.line, want.column
        )),
        "{page}"
    );
    t.stop().await;
}

/// The page: HTML with a Content-Security-Policy that allows only its own script, the
/// numbers of the JSON, and nothing from elsewhere.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_page_shows_the_json_numbers_and_loads_nothing_from_elsewhere() {
    let t = TestDaemon::start(&config_text(1, "")).await;
    t.send(GOOD);
    t.send(BAD);
    // The `listener` label is the configured address.
    let udp = "udp://127.0.0.1:0".to_string();
    wait_for(
        t.http,
        &[(
            &format!("tallyd_lines_received_total{{listener=\"{udp}\"}}"),
            7.0,
        )],
    )
    .await;
    let (code, head, page) = get(t.http, "/").await;
    assert_eq!(code, 200);
    let head = head.to_ascii_lowercase();
    assert!(
        head.contains("content-type: text/html; charset=utf-8"),
        "{head}"
    );
    assert!(
        head.contains("content-security-policy: default-src 'none'; style-src 'unsafe-inline'; script-src 'sha256-"),
        "{head}"
    );
    assert!(head.contains("x-content-type-options: nosniff"), "{head}");
    assert!(
        page.contains("<span id=\"series-count\">4</span>"),
        "{page}"
    );
    assert!(page.contains(&format!("<tr data-listener=\"{udp}\">")));
    assert!(page.contains("<td class=\"n\" data-field=\"lines_received\">7</td>"));
    assert!(page.contains("<td class=\"n\" data-field=\"lines_rejected\">3</td>"));
    assert!(page.contains("<code class=\"refused-line\">y:1|zz</code>"));
    assert!(page.contains("<svg class=\"rate-chart\""));
    assert_eq!(page.matches("<script").count(), 1);
    for far in ["http://", "https://", "src=", "url("] {
        assert!(!page.contains(far), "{far} in the page");
    }
    // HEAD answers the headers alone; other methods are refused.
    let (code, _, body) = tokio::task::spawn_blocking({
        let h = t.http;
        move || http(h, "HEAD", "/api/v1/status")
    })
    .await
    .unwrap();
    assert_eq!((code, body.as_str()), (200, ""));
    let (code, _, _) = tokio::task::spawn_blocking({
        let h = t.http;
        move || http(h, "POST", "/")
    })
    .await
    .unwrap();
    assert_eq!(code, 405);
    t.stop().await;
}

/// `/` and `/api/v1/status` need the same credentials as `/metrics`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_page_is_behind_basic_auth() {
    use base64::Engine as _;
    let hash = bcrypt::hash("s3cret", 4).unwrap();
    let t = TestDaemon::start(&format!(
        "[http]\nlisten = \"127.0.0.1:0\"\n[http.basic_auth_users]\nprom = \"{hash}\"\n\n[[udp]]\nlisten = \"127.0.0.1:0\"\nworkers = 1\n"
    ))
    .await;
    let h = t.http;
    let codes = tokio::task::spawn_blocking(move || {
        let cred = base64::engine::general_purpose::STANDARD.encode("prom:s3cret");
        let req = |path: &str, auth: bool| {
            use std::io::{Read as _, Write as _};
            let mut s = std::net::TcpStream::connect(h).unwrap();
            s.set_read_timeout(Some(DEADLINE)).unwrap();
            let a = if auth {
                format!("Authorization: Basic {cred}\r\n")
            } else {
                String::new()
            };
            write!(
                s,
                "GET {path} HTTP/1.1\r\nHost: t\r\n{a}Connection: close\r\n\r\n"
            )
            .unwrap();
            let mut raw = String::new();
            s.read_to_string(&mut raw).unwrap();
            raw.split_whitespace()
                .nth(1)
                .unwrap()
                .parse::<u16>()
                .unwrap()
        };
        [
            req("/", false),
            req("/api/v1/status", false),
            req("/", true),
            req("/api/v1/status", true),
            req("/-/healthy", false),
        ]
    })
    .await
    .unwrap();
    assert_eq!(codes, [401, 401, 200, 200, 200]);
    t.stop().await;
}

fn hostile_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/hostile")
}

/// Every tag the page itself writes; any other `<` in it would be markup from a datagram.
const PAGE_TAGS: &[&str] = &[
    "!DOCTYPE", "html", "head", "meta", "title", "style", "body", "h1", "h2", "p", "span", "a",
    "dl", "dt", "dd", "code", "table", "tr", "th", "td", "svg", "rect", "polyline", "meter", "ul",
    "li", "script",
];

/// The whole hostile corpus sent over UDP, then the markup fixture's lines as a TCP stream:
/// the page and its JSON still answer, every `<` on the page opens one of the page's own tags,
/// and the refused markup is there as escaped text.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_datagrams_cannot_put_markup_on_the_page() {
    let t = TestDaemon::start(&config_text(1, "[[tcp]]\nlisten = \"127.0.0.1:0\"\n")).await;
    let mut sent = 0;
    for e in std::fs::read_dir(hostile_dir()).unwrap() {
        let p = e.unwrap().path();
        let name = p.file_name().unwrap().to_string_lossy().into_owned();
        if name.ends_with(".py")
            || ["manifest.txt", "README.md", "markup_injection.txt"].contains(&name.as_str())
        {
            continue;
        }
        let payload = std::fs::read(&p).unwrap();
        if payload.len() <= 65507 {
            t.send(&payload);
            sent += 1;
        }
    }
    assert!(sent > 50);
    // The `listener` label is the configured address.
    let udp = "udp://127.0.0.1:0".to_string();
    wait_until(t.http, "every hostile datagram read", |m| {
        value(
            m,
            &format!("tallyd_datagrams_received_total{{listener=\"{udp}\"}}"),
        ) == Some(sent as f64)
    })
    .await;
    // The markup last, so its lines are among the last kept of their reasons.
    let markup = std::fs::read(hostile_dir().join("markup_injection.txt")).unwrap();
    send_tcp(t.d().tcp_addrs()[0], &markup);
    let tcp_lines = format!(
        "tallyd_lines_received_total{{listener=\"tcp://{}\"}}",
        t.d().tcp_addrs()[0]
    );
    wait_for(t.http, &[(&tcp_lines, 5.0)]).await;
    let (code, _, page) = get(t.http, "/").await;
    assert_eq!(code, 200);
    for (i, _) in page.match_indices('<') {
        let rest = &page[i + 1..];
        let rest = rest.strip_prefix('/').unwrap_or(rest);
        let tag: String = rest
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '!')
            .collect();
        assert!(
            PAGE_TAGS.contains(&tag.as_str()),
            "markup <{tag}> on the page: {}",
            &page[i..page.len().min(i + 120)]
        );
    }
    assert_eq!(page.matches("<script").count(), 1);
    assert!(page.contains("&lt;script&gt;window.__pwned=1&lt;/script&gt;:1|zz"));
    assert!(page.contains("&quot;&gt;&lt;img src=x onerror=window.__pwned=3&gt;:1|zz"));
    let s = status(t.http).await;
    let unknown = s["refusals"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["reason"] == "unknown_type")
        .unwrap();
    assert!(
        unknown["recent"]
            .as_array()
            .unwrap()
            .iter()
            .any(|l| l["line"] == "<script>window.__pwned=1</script>:1|zz"),
        "{unknown}"
    );
    t.stop().await;
}
