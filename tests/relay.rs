//! `[relay]`: every line a listener accepts is forwarded, as received, to another StatsD
//! address over UDP, packed into datagrams of at most `max_datagram_size`; refused lines and
//! lines too long for a relay datagram are not (the latter counted); a change of `[relay]`
//! waits for a restart and says so.

mod common;

use std::net::UdpSocket;

use common::*;

/// Receives datagrams on `sock` until `want` lines came in; returns the datagrams.
fn receive(sock: &UdpSocket, want: usize) -> Vec<Vec<u8>> {
    sock.set_read_timeout(Some(DEADLINE)).unwrap();
    let mut out = Vec::new();
    let mut lines = 0;
    let mut buf = [0u8; 65536];
    while lines < want {
        let n = sock
            .recv(&mut buf)
            .unwrap_or_else(|e| panic!("relay sent {lines} of {want} lines: {e}"));
        lines += buf[..n].split(|&b| b == b'\n').count();
        out.push(buf[..n].to_vec());
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn accepted_lines_are_relayed_as_received_in_packed_datagrams() {
    let old = UdpSocket::bind("127.0.0.1:0").unwrap();
    let t = TestDaemon::start_with(
        &config_text(
            1,
            &format!(
                "[[tcp]]\nlisten = \"127.0.0.1:0\"\n\n[relay]\naddress = \"{}\"\nmax_datagram_size = 64\n",
                old.local_addr().unwrap()
            ),
        ),
        |o| o.watch = false,
    )
    .await;
    let mut good: Vec<String> = (0..20)
        .map(|i| format!("orders.count:{i}|c|#shop:s{}", i % 3))
        .collect();
    good.push("queue.depth:-2|g".into());
    good.push("api.latency:12.5|ms|@0.5".into());
    let long = format!("{}:1|c", "n".repeat(80));
    let mut udp = good[..10].join("\n");
    udp.push_str("\nnot a statsd line\n");
    udp.push_str(&long);
    t.send(udp.as_bytes());
    send_tcp(
        t.d().tcp_addrs()[0],
        format!("{}\nx:abc|c\n", good[10..].join("\n")).as_bytes(),
    );
    let datagrams = tokio::task::spawn_blocking(move || receive(&old, 22))
        .await
        .unwrap();
    let mut relayed: Vec<String> = datagrams
        .iter()
        .flat_map(|d| {
            String::from_utf8(d.clone())
                .unwrap()
                .lines()
                .map(String::from)
                .collect::<Vec<_>>()
        })
        .collect();
    assert!(datagrams.iter().all(|d| d.len() <= 64), "{datagrams:?}");
    relayed.sort();
    good.sort();
    assert_eq!(relayed, good);
    let m = wait_for(
        t.http,
        &[
            ("tallyd_relay_lines_total", 22.0),
            ("tallyd_relay_lines_dropped_total{reason=\"too_long\"}", 1.0),
            (
                "tallyd_relay_lines_dropped_total{reason=\"queue_full\"}",
                0.0,
            ),
        ],
    )
    .await;
    assert_eq!(
        value(&m, "tallyd_relay_datagrams_total"),
        Some(datagrams.len() as f64)
    );
    // The long line was aggregated all the same; it only did not fit a relay datagram.
    assert_eq!(value(&m, &format!("{}_total", "n".repeat(80))), Some(1.0));

    // A change of [relay] waits for a restart.
    t.rewrite_config(&config_text(1, "[relay]\naddress = \"127.0.0.1:9\"\n"));
    let out = t.d().reload().await.unwrap();
    assert!(out.contains("needs a restart: [relay]"), "{out}");
    wait_for(t.http, &[("tallyd_config_restart_required", 1.0)]).await;
    t.stop().await;
}

#[test]
fn a_bad_relay_section_is_refused_at_its_key() {
    for (text, key) in [
        ("[relay]\naddress = \"nowhere\"\n", "relay.address"),
        (
            "[relay]\naddress = \"127.0.0.1:9125\"\nmax_datagram_size = \"70000\"\n",
            "relay.max_datagram_size",
        ),
        (
            "[relay]\naddress = \"127.0.0.1:9125\"\nqueue = 0\n",
            "relay.queue",
        ),
    ] {
        let e = tallyd::config::Config::from_toml(text).unwrap_err();
        assert_eq!(e.key.as_deref(), Some(key), "{text}: {e}");
        assert!(e.line > 0);
    }
}
