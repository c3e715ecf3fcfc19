//! Control: one task that owns reloads, listener changes and the stop, one at a time; the
//! signals that ask for them; the watchdog that tells systemd the ingest workers are alive.
//!
//! A reload (SIGHUP, `POST /-/reload`, a config file event) parses and validates the new file
//! off the runtime's threads, publishes it through the live handle (a bad file never replaces
//! a good one), then brings the listeners in line with it: new ones are bound before old ones
//! stop, and a bind failure keeps every old listener running.

use std::path::PathBuf;
use std::pin::Pin;
use std::time::Duration;

use tokio::signal::unix::{Signal, SignalKind, signal};
use tokio::sync::{mpsc, watch};

use super::systemd::{self, Passed};
use super::{Key, Shared, start_listener};
use crate::config::live::{ConfigWatch, Outcome};
use crate::config::{ConfigError, read_file};
use crate::export::http::Control;
use crate::ingest::{self, Running};
use crate::telemetry::ReloadOutcome;

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
            reply: None,
            by: "sighup",
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
            if s.died().is_some() {
                // A dead worker: no more pings; the daemon is stopping.
                break;
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

/// How long the config file must be quiet (no event that names it) before it is read: longer
/// than the pause between two `write()`s of an editor or a shell redirect that writes in parts.
pub const SETTLE: Duration = Duration::from_secs(1);

/// How often a configured listener that could not be bound is tried again.
pub const LISTENER_RETRY: Duration = Duration::from_secs(5);

/// Owns reloads, listener changes and stops, one at a time.
pub(super) async fn control_loop(mut rx: mpsc::Receiver<Control>, s: Shared, passed: Vec<Passed>) {
    let mut stop_rx = s.stop_tx.subscribe();
    let mut retry = tokio::time::interval(LISTENER_RETRY);
    retry.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let msg = tokio::select! {
            m = rx.recv() => m,
            _ = stop_rx.changed() => None,
            _ = retry.tick() => {
                retry_listeners(&s, &passed).await;
                continue;
            }
        };
        match msg {
            Some(Control::Reload { reply, by }) => {
                systemd::reloading();
                let live = s.live.clone();
                let read = tokio::task::spawn_blocking(move || live.reload())
                    .await
                    .unwrap_or_else(|e| Err(panicked(&e)));
                let out = finish(&s, read, &passed, by).await;
                systemd::ready(&status(&s, outcome_word(&out)));
                if let Some(r) = reply {
                    let _ = r.send(out);
                }
            }
            Some(Control::FileSettled(read)) => {
                systemd::reloading();
                let live = s.live.clone();
                let read = match read {
                    Ok(text) => tokio::task::spawn_blocking(move || live.apply(text).map(Some))
                        .await
                        .unwrap_or_else(|e| Err(panicked(&e))),
                    Err(e) => {
                        live.failed();
                        Err(e)
                    }
                };
                let out = finish(&s, read, &passed, "file_change").await;
                systemd::ready(&status(&s, outcome_word(&out)));
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

/// The last reload's outcome, for the systemd status line.
fn outcome_word(out: &Result<String, String>) -> &'static str {
    match out {
        Ok(m) if m.starts_with("config unchanged") && !m.contains("successful") => "unchanged",
        Ok(_) => "success",
        Err(m) if m.starts_with("config reload failed") => "failure",
        Err(_) => "partial",
    }
}

fn panicked(e: &tokio::task::JoinError) -> ConfigError {
    ConfigError {
        line: 0,
        column: 0,
        key: None,
        message: format!("reload panicked: {e}"),
    }
}

/// Turns the watcher's events into settled reads of the config file, sent to the control loop
/// as [`Control::FileSettled`]. Each burst of events is followed by [`SETTLE`] of quiet, then
/// two reads that must agree (else the file is still being written: settle again). An empty
/// file is not applied from an event (a truncate-then-write seen between its two steps; an
/// empty config is applied only when asked for, by SIGHUP or `POST /-/reload`). A read that
/// gives what the last one gave (the same text, or the same error: a missing file) sends
/// nothing, so a missing file is one failure however many events its directory sees.
pub(super) async fn watch_file(
    path: PathBuf,
    mut events: mpsc::Receiver<()>,
    mut watch: ConfigWatch,
    control: mpsc::Sender<Control>,
    initial: Option<String>,
) {
    let mut last: Option<Result<String, String>> = initial.map(Ok);
    'events: while events.recv().await.is_some() {
        loop {
            // Quiet for SETTLE: every event restarts the wait.
            loop {
                match tokio::time::timeout(SETTLE, events.recv()).await {
                    Ok(Some(())) => {}
                    Ok(None) => return,
                    Err(_) => break,
                }
            }
            if let Err(e) = watch.refresh() {
                tracing::warn!(error = %e, "cannot watch a directory on the config's path");
            }
            let p = path.clone();
            let reads = tokio::task::spawn_blocking(move || (read_file(&p), read_file(&p))).await;
            let Ok((a, b)) = reads else {
                continue 'events;
            };
            let settled = match (a, b) {
                (Ok(a), Ok(b)) if a == b => Ok(a),
                (Err(e), Err(_)) => Err(e),
                _ => continue, // still being written
            };
            let settled = match settled {
                Ok(t) if t.trim().is_empty() => Err(ConfigError {
                    line: 0,
                    column: 0,
                    key: None,
                    message: format!(
                        "{} is empty; not applied (an empty config applies on SIGHUP or POST /-/reload)",
                        path.display()
                    ),
                }),
                other => other,
            };
            let seen = settled.clone().map_err(|e| e.to_string());
            if last.as_ref() != Some(&seen) {
                last = Some(seen);
                if control.send(Control::FileSettled(settled)).await.is_err() {
                    return;
                }
            }
            continue 'events;
        }
    }
}

/// What a reload attempt (asked for `by`) comes to: counted, logged, its listeners and
/// `[log]` applied, and recorded for the status page.
async fn finish(
    s: &Shared,
    read: Result<Option<Outcome>, ConfigError>,
    passed: &[Passed],
    by: &'static str,
) -> Result<String, String> {
    let (line, column) = match &read {
        Err(e) => (e.line, e.column),
        Ok(_) => (0, 0),
    };
    let applied = matches!(read, Ok(Some(Outcome::Applied(_))));
    let out = settle(s, read, passed).await;
    if applied {
        let text = s.live.applied_text();
        s.telemetry
            .records
            .config_loaded(s.live.path(), text.as_deref(), by);
    }
    let outcome = outcome_word(&out);
    s.telemetry
        .records
        .reload_attempt(crate::telemetry::Attempt {
            at_unix: crate::telemetry::unix_now(),
            trigger: by,
            outcome,
            message: match &out {
                Err(m) => Some(m.clone()),
                Ok(_) => None,
            },
            line,
            column,
        });
    out
}

/// A reload attempt's outcome counted, logged, and its listeners and `[log]` applied; the
/// answer for whoever asked ([`finish`] records it).
async fn settle(
    s: &Shared,
    read: Result<Option<Outcome>, ConfigError>,
    passed: &[Passed],
) -> Result<String, String> {
    let r = match read {
        Ok(None) => return Ok("no config file; running on the embedded defaults".into()),
        Ok(Some(Outcome::Unchanged)) => {
            tracing::info!("config unchanged; nothing to reload");
            return Ok("config unchanged".into());
        }
        Ok(Some(Outcome::Recovered)) => {
            s.telemetry.reload_outcome(ReloadOutcome::Success);
            tracing::info!("config file readable again, unchanged: the running config stays");
            return Ok("config unchanged; reload successful".into());
        }
        Ok(Some(Outcome::Applied(r))) => r,
        Err(e) => {
            s.telemetry.reload_outcome(ReloadOutcome::Failure);
            tracing::error!(
                error = %e,
                file = %s.live.path().map_or_else(String::new, |p| p.display().to_string()),
                "config reload failed; the running config stays"
            );
            return Err(format!("config reload failed: {e}"));
        }
    };
    for w in &r.warnings {
        tracing::warn!("config: {w}");
    }
    let mut msg = String::from("config reloaded");
    let mut outcome = ReloadOutcome::Success;
    if r.listeners_changed {
        match apply_listeners(s, passed).await {
            Ok(()) => msg.push_str("; listeners updated"),
            Err(e) => {
                outcome = ReloadOutcome::Partial;
                tracing::error!(
                    error = %e,
                    "a listener could not be bound; it is retried every {}s, and the listeners it replaces keep running until it binds",
                    LISTENER_RETRY.as_secs()
                );
                msg.push_str(&format!("; listener not bound ({e}), retried"));
            }
        }
    }
    if r.log_changed
        && let Some(apply) = &s.log_reload
    {
        match apply(&s.live.load().config.log) {
            Ok(()) => msg.push_str("; [log] applied"),
            Err(e) => {
                outcome = ReloadOutcome::Partial;
                tracing::error!(error = %e, "cannot apply [log]");
                msg.push_str(&format!("; [log] not applied ({e})"));
            }
        }
    }
    if let Err(e) = apply_remotes(s).await {
        outcome = ReloadOutcome::Partial;
        tracing::error!(error = %e, "a remote write endpoint could not be started");
        msg.push_str(&format!("; remote write not started ({e})"));
    }
    let pending = restart_pending(s);
    if !pending.is_empty() {
        tracing::warn!(
            keys = %pending.join(", "),
            "these settings take effect at the next restart"
        );
        msg.push_str(&format!("; needs a restart: {}", pending.join(", ")));
    }
    s.telemetry.reload_outcome(outcome);
    tracing::info!("{msg}");
    match outcome {
        ReloadOutcome::Partial => Err(msg),
        _ => Ok(msg),
    }
}

/// The settings of the file in force that the running daemon does not apply until a restart
/// (what `tallyd_config_restart_required` reports): `[http]` listen, TLS files and limits,
/// `[relay]`, and `[log]` when the logger cannot be changed live. Sets the gauge.
fn restart_pending(s: &Shared) -> Vec<&'static str> {
    let now = s.live.load();
    let (a, b) = (&s.started.config.http, &now.config.http);
    let mut keys = Vec::new();
    if a.listen != b.listen {
        keys.push("[http] listen");
    }
    if a.tls_cert_file != b.tls_cert_file || a.tls_key_file != b.tls_key_file {
        keys.push("[http] tls_cert_file/tls_key_file");
    }
    if a.max_connections != b.max_connections
        || a.header_read_timeout != b.header_read_timeout
        || a.write_timeout != b.write_timeout
    {
        keys.push("[http] max_connections/header_read_timeout/write_timeout");
    }
    if s.started.config.relay != now.config.relay {
        keys.push("[relay]");
    }
    if s.log_reload.is_none() && s.started.config.log != now.config.log {
        keys.push("[log]");
    }
    s.telemetry
        .restart_required
        .set(i64::from(!keys.is_empty()));
    keys
}

/// Tries again to bind the configured listeners that are not running.
async fn retry_listeners(s: &Shared, passed: &[Passed]) {
    let cfg = s.live.load();
    let missing = {
        let map = crate::sync::lock(&s.listeners);
        Key::all(&cfg.config).iter().any(|k| !map.contains_key(k))
    };
    if missing && apply_listeners(s, passed).await.is_ok() {
        tracing::info!("every configured listener is bound");
        // The config in force now runs whole.
        s.telemetry.last_reload_ok.set(1);
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
    // Every line received is in the store now: one last push to each endpoint, at once.
    let remotes: Vec<_> = crate::sync::lock(&s.remotes).drain(..).collect();
    let pushes: Vec<_> = remotes
        .into_iter()
        .map(|e| tokio::spawn(e.stop(true)))
        .collect();
    for p in pushes {
        let _ = p.await;
    }
    let _ = s.stop_tx.send(true);
    tracing::info!("stopped");
}

/// Brings the running remote write endpoints in line with the config: an unchanged section
/// keeps its endpoint (and its queue); a changed or removed one is stopped (its queue
/// dropped, counted as `shutdown`) and a changed or new one started.
pub(super) async fn apply_remotes(s: &Shared) -> Result<(), String> {
    let want = s.live.load().config.remote_write.clone();
    let running: Vec<_> = crate::sync::lock(&s.remotes).drain(..).collect();
    let (keep, gone): (Vec<_>, Vec<_>) = running.into_iter().partition(|e| want.contains(&e.cfg));
    for e in gone {
        e.stop(false).await;
    }
    let mut keep = keep;
    let mut errors = Vec::new();
    for cfg in &want {
        if keep.iter().any(|e| &e.cfg == cfg) {
            continue;
        }
        match crate::remote::start(cfg, s.store.clone(), s.telemetry.clone(), s.live.clone()) {
            Ok(e) => keep.push(e),
            Err(e) => errors.push(format!("{}: {e}", cfg.endpoint())),
        }
    }
    *crate::sync::lock(&s.remotes) = keep;
    if errors.is_empty() {
        Ok(())
    } else {
        Err(errors.join("; "))
    }
}

/// Brings the running listeners in line with the config. Every configured listener that is
/// not running is bound; one that cannot be is reported (`tallyd_listener_up` 0) and retried
/// every [`LISTENER_RETRY`]. Listeners the config no longer has are stopped only once every
/// configured one is bound, so a failed change never leaves fewer listeners than before,
/// except where a new TCP or Unix listener takes the address of an old one: the old one is
/// stopped first (a stream address cannot be bound twice).
pub(super) async fn apply_listeners(s: &Shared, passed: &[Passed]) -> Result<(), String> {
    let cfg = s.live.load();
    let want = Key::all(&cfg.config);
    let mut failed = Vec::new();
    for (n, k) in want.iter().enumerate() {
        if crate::sync::lock(&s.listeners).contains_key(k) {
            continue;
        }
        let displaced: Vec<Running> = {
            let mut map = crate::sync::lock(&s.listeners);
            let same: Vec<Key> = map
                .keys()
                .filter(|h| !want.contains(h) && h.same_stream_address(k))
                .cloned()
                .collect();
            same.iter().filter_map(|h| map.remove(h)).collect()
        };
        if !displaced.is_empty() {
            let _ =
                tokio::task::spawn_blocking(move || displaced.into_iter().for_each(Running::stop))
                    .await;
        }
        match start_listener(k, passed, s) {
            Ok(r) => {
                s.telemetry
                    .listener_up
                    .with_label_values(&[&k.label()])
                    .set(1);
                crate::sync::lock(&s.listeners).insert(k.clone(), r);
            }
            Err(e) => {
                s.telemetry
                    .listener_up
                    .with_label_values(&[&k.label()])
                    .set(0);
                failed.push(super::bind_err(&want, n, &cfg, s.live.path(), e).to_string());
            }
        }
    }
    if !failed.is_empty() {
        return Err(failed.join("; "));
    }
    let removed: Vec<(Key, Running)> = {
        let mut map = crate::sync::lock(&s.listeners);
        let gone: Vec<Key> = map.keys().filter(|k| !want.contains(k)).cloned().collect();
        gone.into_iter()
            .filter_map(|k| map.remove(&k).map(|r| (k, r)))
            .collect()
    };
    for (k, r) in &removed {
        tracing::info!(listener = %r.label, "listener removed");
        if !want.iter().any(|w| w.label() == k.label()) {
            let _ = s.telemetry.listener_up.remove_label_values(&[&k.label()]);
        }
    }
    let _ = tokio::task::spawn_blocking(move || {
        removed.into_iter().for_each(|(_, r)| Running::stop(r))
    })
    .await;
    Ok(())
}
