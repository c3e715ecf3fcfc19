//! Control: one task that owns reloads, listener changes and the stop, one at a time; the
//! signals that ask for them; the watchdog that tells systemd the ingest workers are alive.
//!
//! A reload (SIGHUP, `POST /-/reload`, a config file event) parses and validates the new file
//! off the runtime's threads, publishes it through the live handle (a bad file never replaces
//! a good one), then brings the listeners in line with it: new ones are bound before old ones
//! stop, and a bind failure keeps every old listener running.

use std::pin::Pin;

use tokio::signal::unix::{Signal, SignalKind, signal};
use tokio::sync::{mpsc, watch};

use super::systemd::{self, Passed};
use super::{Key, Shared, start_listener};
use crate::config::ConfigError;
use crate::export::http::Control;
use crate::ingest::{self, Running};

pub(super) fn status(s: &Shared, last: &str) -> String {
    let n = crate::sync::lock(&s.listeners).len();
    format!(
        "{n} listener(s), {} series, last reload: {last}",
        s.store.series_count()
    )
}

/// A future that resolves on SIGTERM or SIGINT: what the binary passes as
/// [`super::Options::shutdown`]. The handlers are installed by this call, so a signal that
/// arrives before the future is first polled is kept, not fatal.
pub fn stop_signal() -> std::io::Result<impl Future<Output = ()> + Send + 'static> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    Ok(async move {
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
        tracing::info!("stop signal received; draining");
    })
}

/// SIGHUP, as the binary passes it in [`super::Options::hangup`]: installed by this call.
pub fn hangup_signal() -> std::io::Result<Signal> {
    signal(SignalKind::hangup())
}

/// Turns every SIGHUP into a reload request, as `POST /-/reload` makes one.
pub(super) async fn forward_hangups(mut hup: Signal, control: mpsc::Sender<Control>) {
    while hup.recv().await.is_some() {
        let reload = Control::Reload {
            only_if_changed: false,
            reply: None,
        };
        if control.send(reload).await.is_err() {
            return;
        }
    }
}

/// Stops the daemon when `shutdown` resolves.
pub(super) async fn stop_on(
    shutdown: Pin<Box<dyn Future<Output = ()> + Send>>,
    stop: watch::Sender<bool>,
) {
    shutdown.await;
    let _ = stop.send(true);
}

/// Pings the systemd watchdog at half its interval while the ingest workers make progress.
///
/// A worker goes round its loop at least every [`ingest::IDLE_TICK`], but with a short
/// `WatchdogSec` one slightly long idle round can fall between two checks; so a worker counts
/// as stuck only once it has made no round for three ticks. The ping stops then, and systemd's
/// watchdog fires one interval later.
///
/// Time is the store's clock, the one every timer of the daemon reads.
pub(super) fn watchdog(s: &Shared) -> Option<tokio::task::JoinHandle<()>> {
    let interval = systemd::watchdog_interval()?;
    let s = s.clone();
    let grace = ingest::IDLE_TICK * 3;
    Some(tokio::spawn(async move {
        let mut iv = tokio::time::interval(interval / 2);
        let mut progress = s.store.now();
        let mut withheld = false;
        loop {
            iv.tick().await;
            // Ask every listener (no short-circuit: each call also moves its reference point).
            let alive = crate::sync::lock(&s.listeners)
                .values()
                .fold(true, |ok, r| r.is_alive() & ok);
            if alive {
                progress = s.store.now();
            }
            if s.store.now().saturating_sub(progress) <= grace {
                systemd::watchdog_ping();
                withheld = false;
            } else if !withheld {
                tracing::error!("an ingest worker is stuck; withholding the watchdog ping");
                withheld = true;
            }
        }
    }))
}

/// Owns reloads and stops, one at a time.
pub(super) async fn control_loop(mut rx: mpsc::Receiver<Control>, s: Shared, passed: Vec<Passed>) {
    let mut stop_rx = s.stop_tx.subscribe();
    loop {
        let msg = tokio::select! {
            m = rx.recv() => m,
            _ = stop_rx.changed() => None,
        };
        match msg {
            Some(Control::Reload {
                only_if_changed,
                reply,
            }) => {
                let out = reload(&s, only_if_changed, &passed).await;
                if let Some(o) = &out {
                    let last = if o.is_ok() { "success" } else { "failure" };
                    systemd::ready(&status(&s, last));
                }
                if let Some(r) = reply {
                    let _ = r.send(out.unwrap_or_else(|| Ok("unchanged".into())));
                }
            }
            Some(Control::Shutdown(done)) => {
                stop(&s).await;
                let _ = done.send(());
                return;
            }
            None => {
                stop(&s).await;
                return;
            }
        }
    }
}

async fn stop(s: &Shared) {
    s.ready.set_not_ready();
    systemd::stopping();
    let running: Vec<Running> = crate::sync::lock(&s.listeners)
        .drain()
        .map(|(_, r)| r)
        .collect();
    let _ = tokio::task::spawn_blocking(move || {
        for r in running {
            r.stop();
        }
    })
    .await;
    let _ = s.stop_tx.send(true);
    tracing::info!("stopped");
}

/// One reload; `None` when a file event changed nothing.
async fn reload(
    s: &Shared,
    only_if_changed: bool,
    passed: &[Passed],
) -> Option<Result<String, String>> {
    if only_if_changed && !s.live.changed_on_disk() {
        return None;
    }
    systemd::reloading();
    let live = s.live.clone();
    let result = tokio::task::spawn_blocking(move || live.reload(false))
        .await
        .unwrap_or_else(|e| {
            Err(ConfigError {
                line: 0,
                column: 0,
                key: None,
                message: format!("reload panicked: {e}"),
            })
        });
    Some(match result {
        Ok(None) => Ok("no config file; running on the embedded defaults".into()),
        Ok(Some(r)) => {
            s.telemetry.reload_outcome(true);
            for w in &r.warnings {
                tracing::warn!("config: {w}");
            }
            let mut msg = String::from("config reloaded");
            let mut failed = false;
            if r.listeners_changed {
                match apply_listeners(s, passed).await {
                    Ok(()) => msg.push_str("; listeners updated"),
                    Err(e) => {
                        failed = true;
                        tracing::error!(error = %e, "listener change failed; the old listeners keep running");
                        msg.push_str(&format!(
                            "; listener change failed ({e}), old listeners kept"
                        ));
                    }
                }
            }
            // [http] address, TLS and limits apply at start only.
            let http_pending = s.started.config.http_differs(&s.live.load().config);
            if http_pending {
                tracing::warn!("[http] listen/TLS/limit changes take effect at the next restart");
                msg.push_str("; [http] changes need a restart");
            }
            s.telemetry
                .restart_required
                .set(i64::from(failed || http_pending));
            tracing::info!("{msg}");
            Ok(msg)
        }
        Err(e) => {
            s.telemetry.reload_outcome(false);
            tracing::error!(error = %e, file = ?s.live.path(), "config reload failed; the running config stays");
            Err(format!("config reload failed: {e}"))
        }
    })
}

/// Brings the running listeners in line with the config: binds new ones first, and only then
/// stops the ones that went away. A bind failure leaves every old listener running.
pub(super) async fn apply_listeners(s: &Shared, passed: &[Passed]) -> Result<(), String> {
    let cfg = s.live.load();
    let want = Key::all(&cfg.config);
    let have: Vec<Key> = crate::sync::lock(&s.listeners).keys().cloned().collect();
    let mut added = Vec::new();
    for k in want.iter().filter(|k| !have.contains(k)) {
        match start_listener(k, passed, s) {
            Ok(r) => added.push((k.clone(), r)),
            Err(e) => {
                let undo: Vec<Running> = added.into_iter().map(|(_, r)| r).collect();
                let _ =
                    tokio::task::spawn_blocking(move || undo.into_iter().for_each(Running::stop))
                        .await;
                return Err(format!("{k:?}: {e}"));
            }
        }
    }
    let removed: Vec<Running> = {
        let mut map = crate::sync::lock(&s.listeners);
        for (k, r) in added {
            map.insert(k, r);
        }
        let gone: Vec<Key> = map.keys().filter(|k| !want.contains(k)).cloned().collect();
        gone.iter().filter_map(|k| map.remove(k)).collect()
    };
    for r in &removed {
        tracing::info!(listener = %r.label, "listener removed");
    }
    let _ = tokio::task::spawn_blocking(move || removed.into_iter().for_each(Running::stop)).await;
    Ok(())
}
