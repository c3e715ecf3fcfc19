//! The status page in a real browser: Debian's Chromium driven through ChromeDriver (WebDriver,
//! the `fantoccini` client) loads `/` from a daemon under traffic. The chart is drawn, every
//! number shown equals `/api/v1/status` and `/metrics`, and the hostile markup corpus put
//! nothing on the page but text. A screenshot is saved for CI's output (`TALLYD_CI_OUTPUT`, or
//! `target/ci-output`).
//!
//! Without `chromium` and `chromedriver` the test says SKIPPED (a failure under CI=true).

mod common;

use std::io::BufRead as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use common::*;
use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::{Value, json};

const CHROMIUM: &str = "/usr/bin/chromium";

fn chromedriver() -> Option<PathBuf> {
    ["/usr/bin/chromedriver", "/usr/lib/chromium/chromedriver"]
        .into_iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
}

/// ChromeDriver on a port it picks; killed on drop.
struct Driver {
    child: Child,
    url: String,
}

impl Driver {
    /// Starts it and reads its port from `ChromeDriver was started successfully on port N.`
    fn start(bin: &Path) -> Self {
        let mut child = Command::new(bin)
            .arg("--port=0")
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("start chromedriver");
        let out = child.stdout.take().expect("stdout");
        let mut port = None;
        for line in std::io::BufReader::new(out).lines() {
            let line = line.expect("chromedriver output");
            if let Some(rest) = line.split("started successfully on port ").nth(1) {
                port = rest.trim_end_matches('.').trim().parse::<u16>().ok();
                break;
            }
        }
        let port = port.expect("chromedriver never said its port");
        Self {
            child,
            url: format!("http://127.0.0.1:{port}"),
        }
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn browser(driver: &Driver, profile: &Path) -> Client {
    let mut caps = serde_json::Map::new();
    caps.insert(
        "goog:chromeOptions".into(),
        json!({
            "binary": CHROMIUM,
            "args": [
                "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--disable-quic", "--no-first-run", "--disable-background-networking",
                "--disable-component-update", "--disable-sync", "--window-size=1280,1800",
                format!("--user-data-dir={}", profile.display()),
            ],
        }),
    );
    let connector = hyper_util::client::legacy::connect::HttpConnector::new();
    ClientBuilder::new(connector)
        .capabilities(caps)
        .connect(&driver.url)
        .await
        .expect("a WebDriver session in Chromium")
}

/// Where CI collects what a run produced.
fn ci_output() -> PathBuf {
    std::env::var_os("TALLYD_CI_OUTPUT").map_or_else(
        || PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/ci-output"),
        PathBuf::from,
    )
}

async fn status(addr: SocketAddr) -> Value {
    let (code, _, body) = tokio::task::spawn_blocking(move || http(addr, "GET", "/api/v1/status"))
        .await
        .unwrap();
    assert_eq!(code, 200, "{body}");
    serde_json::from_str(&body).expect("status JSON")
}

/// The text of the one element `css` selects.
async fn text_of(c: &Client, css: &str) -> String {
    c.find(Locator::Css(css))
        .await
        .unwrap_or_else(|e| panic!("no {css} on the page: {e}"))
        .text()
        .await
        .expect("element text")
}

/// `document.querySelectorAll(css).length`.
async fn count(c: &Client, css: &str) -> u64 {
    c.execute(
        "return document.querySelectorAll(arguments[0]).length;",
        vec![json!(css)],
    )
    .await
    .expect("script")
    .as_u64()
    .expect("a count")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_status_page_in_chromium_matches_the_api_and_the_metrics() {
    let Some(driver_bin) = chromedriver().filter(|_| Path::new(CHROMIUM).exists()) else {
        skip_or_fail("chromium and chromedriver not installed (Debian: chromium chromium-driver)");
        return;
    };
    let t = TestDaemon::start(&config_text(1, "[[tcp]]\nlisten = \"127.0.0.1:0\"\n")).await;
    let udp = "udp://127.0.0.1:0";
    let tcp = format!("tcp://{}", t.d().tcp_addrs()[0]);
    // Traffic: labelled counters from two senders, refused lines, the markup corpus.
    let a = Sender::start(t.udp[0], "checkout.orders:1|c|#region:eu,shop:a");
    let b = Sender::start(t.udp[0], "checkout.latency:12|ms|#region:us");
    t.send(b"bad line\nx:abc|c\ncheckout.orders:1|c|#region:us,shop:b");
    let markup = std::fs::read(
        PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/hostile/markup_injection.txt"),
    )
    .unwrap();
    send_tcp(t.d().tcp_addrs()[0], &markup);
    wait_until(t.http, "traffic counted", |m| {
        value(m, "checkout_orders_total{region=\"eu\",shop=\"a\"}").is_some_and(|v| v > 50.0)
            && value(
                m,
                &format!("tallyd_lines_received_total{{listener=\"{tcp}\"}}"),
            ) == Some(5.0)
    })
    .await;

    let driver = Driver::start(&driver_bin);
    let profile = tempfile::tempdir().unwrap();
    let c = browser(&driver, profile.path()).await;
    let page = format!("http://{}/", t.http);

    // Under traffic: the chart is drawn, a line with a length.
    c.goto(&page).await.expect("load the page");
    assert_eq!(c.title().await.unwrap(), "tallyd status");
    let drawn = c
        .execute(
            "const l = document.querySelector(arguments[0] + ' svg.rate-chart polyline');\
             return l ? [l.points.numberOfItems, l.getTotalLength(), l.getBBox().width] : null;",
            vec![json!(format!("tr[data-listener=\"{udp}\"]"))],
        )
        .await
        .unwrap();
    let drawn = drawn.as_array().expect("a rate chart for the UDP listener");
    assert!(drawn[0].as_u64().unwrap() >= 2, "{drawn:?}");
    assert!(drawn[1].as_f64().unwrap() > 0.0, "{drawn:?}");
    assert!(drawn[2].as_f64().unwrap() > 0.0, "{drawn:?}");
    let rate: f64 = text_of(
        &c,
        &format!("tr[data-listener=\"{udp}\"] td[data-field=\"lines_per_second\"]"),
    )
    .await
    .parse()
    .unwrap();
    assert!(rate > 0.0, "under traffic, a rate above 0");

    // Traffic stopped and settled: every number on the page is the API's and /metrics'.
    let sent = a.stop() + b.stop() + 1;
    let metrics = wait_datagrams(t.http, udp, sent).await;
    c.goto(&page).await.expect("reload the page");
    let s = status(t.http).await;
    for l in s["listeners"].as_array().unwrap() {
        let name = l["name"].as_str().unwrap();
        for field in [
            "lines_received",
            "lines_rejected",
            "bytes_received",
            "datagrams_received",
            "kernel_drops",
            "receive_buffer_bytes",
        ] {
            let shown = text_of(
                &c,
                &format!("tr[data-listener=\"{name}\"] td[data-field=\"{field}\"]"),
            )
            .await;
            let want = match &l[field] {
                Value::Null => "-".to_string(),
                v => v.to_string(),
            };
            assert_eq!(shown, want, "{name} {field}");
        }
        let lines = value(
            &metrics,
            &format!("tallyd_lines_received_total{{listener=\"{name}\"}}"),
        )
        .unwrap();
        assert_eq!(l["lines_received"].as_f64().unwrap(), lines, "{name}");
        let rejected = value(
            &metrics,
            &format!("tallyd_lines_rejected_total{{listener=\"{name}\"}}"),
        )
        .unwrap_or(0.0);
        assert_eq!(l["lines_rejected"].as_f64().unwrap(), rejected, "{name}");
    }
    assert_eq!(
        text_of(&c, "#series-count").await,
        s["series"]["count"].to_string()
    );
    assert_eq!(
        s["series"]["count"].as_f64().unwrap(),
        value(&metrics, "tallyd_series").unwrap()
    );
    for r in s["refusals"].as_array().unwrap() {
        let reason = r["reason"].as_str().unwrap();
        let shown = text_of(
            &c,
            &format!("tr[data-reason=\"{reason}\"] td[data-field=\"count\"]"),
        )
        .await;
        assert_eq!(shown, r["count"].to_string(), "{reason}");
        let metric = format!("{}{{reason=\"{reason}\"}}", r["metric"].as_str().unwrap());
        assert_eq!(
            r["count"].as_f64().unwrap(),
            value(&metrics, &metric).unwrap(),
            "{metric}"
        );
    }
    let top = &s["top_families"]["by_series"][0];
    assert_eq!(top["name"], "checkout_orders_total");
    assert_eq!(
        text_of(
            &c,
            "#top-by-series tr[data-family=\"checkout_orders_total\"] td[data-field=\"series\"]"
        )
        .await,
        top["series"].to_string()
    );

    // The markup corpus is text on the page, never markup.
    let pwned = c
        .execute("return typeof window.__pwned;", vec![])
        .await
        .unwrap();
    assert_eq!(pwned, json!("undefined"));
    assert_eq!(count(&c, "script").await, 1);
    assert_eq!(count(&c, "style").await, 1);
    assert_eq!(count(&c, "img, em, i, svg[onload]").await, 0);
    assert_eq!(count(&c, "svg").await, count(&c, "svg.rate-chart").await);
    let refused: Vec<String> = c
        .execute(
            "return Array.from(document.querySelectorAll('code.refused-line'), e => e.textContent);",
            vec![],
        )
        .await
        .unwrap()
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_string())
        .collect();
    for line in [
        "<script>window.__pwned=1</script>:1|zz",
        "</code></li></ul><svg onload=window.__pwned=2>:abc|c",
        "<style>*{display:none}</style>",
        "\"><img src=x onerror=window.__pwned=3>:1|zz",
    ] {
        assert!(
            refused.iter().any(|r| r == line),
            "{line} not shown: {refused:?}"
        );
    }

    let png = c.screenshot().await.expect("screenshot");
    assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n");
    let out = ci_output();
    std::fs::create_dir_all(&out).unwrap();
    std::fs::write(out.join("status-page.png"), &png).unwrap();
    eprintln!("screenshot: {}", out.join("status-page.png").display());
    c.close().await.unwrap();
    drop(driver);
    t.stop().await;
}
