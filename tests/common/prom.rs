//! A real Prometheus server (Debian's `prometheus`) for the tests that need one: started on a
//! loopback port with its TSDB in a temp dir, queried through its HTTP API.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use super::{DEADLINE, http, skip_or_fail, wait_http};

/// A Prometheus server on a loopback port, its TSDB in `dir`.
pub struct Prom {
    child: Child,
    pub addr: SocketAddr,
}

impl Prom {
    /// Starts Prometheus on `addr` (port 0: a free one) with the remote-write receiver on,
    /// and waits for `/-/ready`.
    pub fn start(dir: &Path, addr: Option<SocketAddr>) -> Self {
        Self::start_with(
            dir,
            addr,
            "global:\n  scrape_interval: 1m\n",
            &["--web.enable-remote-write-receiver"],
        )
    }

    /// Starts Prometheus on `addr` (port 0: a free one) with `config` (YAML) and `args`, and
    /// waits for `/-/ready`.
    pub fn start_with(dir: &Path, addr: Option<SocketAddr>, config: &str, args: &[&str]) -> Self {
        let addr = addr.unwrap_or_else(|| {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap()
        });
        let cfg = dir.join("prometheus.yml");
        std::fs::write(&cfg, config).unwrap();
        let child = Command::new("prometheus")
            .arg(format!("--config.file={}", cfg.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("data").display()
            ))
            .arg(format!("--web.listen-address={addr}"))
            .args(args)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.join("prometheus.log")).unwrap())
            .spawn()
            .expect("start prometheus");
        let p = Self { child, addr };
        wait_http(addr, "/-/ready", 200);
        p
    }

    pub fn url(&self) -> String {
        format!("http://{}/api/v1/write", self.addr)
    }

    /// Stops it (SIGTERM) and waits for it to exit.
    pub fn stop(mut self) {
        // SAFETY-free: a plain kill(2) through the standard library is SIGKILL; SIGTERM lets
        // Prometheus close its TSDB cleanly, so send it with the `kill` command.
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status();
        let _ = self.child.wait();
    }

    /// An instant query's result vector: labels (without `__name__`) to value.
    pub fn query(&self, q: &str) -> Vec<(BTreeMap<String, String>, f64)> {
        let path = format!("/api/v1/query?query={}", urlencode(q));
        let (code, _, body) = http(self.addr, "GET", &path);
        assert_eq!(code, 200, "{q}: {body}");
        let v: Value = serde_json::from_str(&body).unwrap();
        v["data"]["result"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| {
                let labels = r["metric"]
                    .as_object()
                    .unwrap()
                    .iter()
                    .filter(|(k, _)| *k != "__name__")
                    .map(|(k, v)| (k.clone(), v.as_str().unwrap().to_string()))
                    .collect();
                let value = r["value"][1].as_str().unwrap();
                let value = match value {
                    "+Inf" => f64::INFINITY,
                    "NaN" => f64::NAN,
                    v => v.parse().unwrap(),
                };
                (labels, value)
            })
            .collect()
    }

    /// Polls `q` until `cond` holds for its result.
    pub async fn wait(
        &self,
        q: &str,
        cond: impl Fn(&[(BTreeMap<String, String>, f64)]) -> bool,
    ) -> Vec<(BTreeMap<String, String>, f64)> {
        let start = Instant::now();
        loop {
            let r = tokio::task::block_in_place(|| self.query(q));
            if cond(&r) {
                return r;
            }
            assert!(
                start.elapsed() < DEADLINE * 3,
                "{q} never held; last result {r:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for Prom {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

pub fn have_prometheus() -> bool {
    let ok = Command::new("prometheus")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        skip_or_fail("prometheus not installed (Debian: prometheus)");
    }
    ok
}
