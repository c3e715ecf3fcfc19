mod common;
use common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn counter_end_to_end() {
    let t = TestDaemon::start(&config_text(2, "")).await;
    t.send(b"foo:2|c\nfoo:1|c|@0.1");
    wait_for(t.http, &[("foo_total", 12.0)]).await;
    t.stop().await;
}
