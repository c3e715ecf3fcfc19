//! The `[[unixgram]]` socket file: what tallyd may replace at start (only a stale socket), what
//! it removes at stop (only the socket it made), and the socket's mode from the moment it
//! appears (under umask 0, no window in which another user could connect).
#![allow(unsafe_code)] // umask set in the child before exec; the block says why it holds

mod common;

use std::os::unix::fs::PermissionsExt as _;
use std::os::unix::net::UnixDatagram;
use std::path::Path;

use common::*;
use tallyd::daemon::{Daemon, Options};

/// Starts a daemon on `config_text(1, extra)` and returns its bind error, with the config path.
async fn start_error(dir: &Path, extra: &str) -> (String, std::path::PathBuf, usize) {
    let path = dir.join("tallyd.toml");
    let text = config_text(1, extra);
    let line = 1 + text.lines().position(|l| l.starts_with("path = ")).unwrap();
    std::fs::write(&path, &text).unwrap();
    let mut opts = Options::new(Some(path.clone()));
    opts.watch = false;
    let starting = Daemon::start_http(opts).await.expect("http starts");
    match starting.bind_listeners().await {
        Ok(d) => {
            d.shutdown().await;
            panic!("the unixgram listener must not bind");
        }
        Err(e) => (e.to_string(), path, line),
    }
}

fn unixgram(path: &Path) -> String {
    format!("[[unixgram]]\npath = \"{}\"\n", path.display())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_regular_file_or_symlink_at_the_path_is_refused_and_left_alone() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("precious.txt");
    std::fs::write(&file, "keep me").unwrap();
    let (err, config, line) = start_error(dir.path(), &unixgram(&file)).await;
    assert_eq!(
        err,
        format!(
            "cannot bind the unixgram listener unixgram://{f} ({c}, line {line}): {f} exists and \
             is a regular file; tallyd replaces only a stale socket",
            f = file.display(),
            c = config.display()
        )
    );
    assert_eq!(std::fs::read_to_string(&file).unwrap(), "keep me");

    let link = dir.path().join("link.sock");
    std::os::unix::fs::symlink(&file, &link).unwrap();
    let (err, _, _) = start_error(dir.path(), &unixgram(&link)).await;
    assert!(
        err.ends_with(&format!(
            "{} exists and is a symlink; tallyd replaces only a stale socket",
            link.display()
        )),
        "{err}"
    );
    assert!(std::fs::symlink_metadata(&link).unwrap().is_symlink());
    assert_eq!(std::fs::read_to_string(&file).unwrap(), "keep me");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_socket_someone_receives_on_is_in_use() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("live.sock");
    let holder = UnixDatagram::bind(&path).unwrap();
    let (err, _, _) = start_error(dir.path(), &unixgram(&path)).await;
    assert!(
        err.ends_with(&format!("{} is in use by another process", path.display())),
        "{err}"
    );
    // The holder's socket is untouched and still receives.
    UnixDatagram::unbound()
        .unwrap()
        .send_to(b"still mine", &path)
        .unwrap();
    let mut buf = [0u8; 32];
    let n = holder.recv(&mut buf).unwrap();
    assert_eq!(&buf[..n], b"still mine");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stale_socket_is_replaced() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("stale.sock");
    drop(UnixDatagram::bind(&path).unwrap()); // the file stays; nobody receives on it
    let t = TestDaemon::start(&config_text(1, &unixgram(&path))).await;
    UnixDatagram::unbound()
        .unwrap()
        .send_to(b"after_stale:3|c", &path)
        .unwrap();
    wait_for(t.http, &[("after_stale_total", 3.0)]).await;
    t.stop().await;
    assert!(!path.exists(), "tallyd's own socket is removed at stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stop_removes_only_the_socket_tallyd_made() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("moved.sock");
    let t = TestDaemon::start(&config_text(1, &unixgram(&path))).await;
    // Another program puts its own file at the path while tallyd runs.
    let other = dir.path().join("other.tmp");
    std::fs::write(&other, "someone else's").unwrap();
    std::fs::rename(&other, &path).unwrap();
    t.stop().await;
    assert_eq!(
        std::fs::read_to_string(&path).unwrap(),
        "someone else's",
        "a file that is no longer tallyd's socket is left in place"
    );
}

/// A socket path of 104 bytes with a short file name: the private directory's path would not
/// fit a socket address, so the socket is bound through /proc/self/fd, and still works.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_socket_path_still_binds_with_its_mode() {
    let dir = tempfile::tempdir().unwrap();
    let base = dir.path().display().to_string().len();
    let pad = 104 - base - "/".len() - "/u.sock".len();
    let deep = dir.path().join("d".repeat(pad));
    std::fs::create_dir(&deep).unwrap();
    let path = deep.join("u.sock");
    assert_eq!(path.as_os_str().len(), 104);
    let t = TestDaemon::start(&config_text(
        1,
        &format!("{}mode = \"0640\"\n", unixgram(&path)),
    ))
    .await;
    let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o640);
    UnixDatagram::unbound()
        .unwrap()
        .send_to(b"long_path:1|c", &path)
        .unwrap();
    wait_for(t.http, &[("long_path_total", 1.0)]).await;
    t.stop().await;
    assert!(!path.exists());
    // Nothing is left of the private directory.
    assert_eq!(std::fs::read_dir(&deep).unwrap().count(), 0);
}

/// Under umask 0 a socket bound at the path would be 0777 until chmod. tallyd's socket never
/// appears at the path by creation: it arrives by rename, already with its mode. The test
/// watches the directory (inotify) and sees the path appear only as a rename target.
#[test]
fn under_umask_0_the_socket_arrives_with_its_mode() {
    use notify::{Event, EventKind, RecursiveMode, Watcher as _};
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("stats.sock");
    let config = dir.path().join("tallyd.toml");
    std::fs::write(
        &config,
        binary_config(&format!("{}mode = \"0600\"\n", unixgram(&sock))),
    )
    .unwrap();
    let (tx, rx) = std::sync::mpsc::channel::<Event>();
    let mut watcher = notify::recommended_watcher(move |e: notify::Result<Event>| {
        if let Ok(e) = e {
            let _ = tx.send(e);
        }
    })
    .unwrap();
    watcher
        .watch(dir.path(), RecursiveMode::NonRecursive)
        .unwrap();
    let log_path = dir.path().join("tallyd.log");
    let log = std::fs::File::create(&log_path).unwrap();
    let mut cmd = std::process::Command::new(binary());
    cmd.arg("--config")
        .arg(&config)
        .env_remove("RUST_LOG")
        .stdout(std::process::Stdio::null())
        .stderr(log);
    // SAFETY: umask is async-signal-safe and touches only the child's own state.
    unsafe {
        std::os::unix::process::CommandExt::pre_exec(&mut cmd, || {
            libc::umask(0);
            Ok(())
        });
    }
    let mut child = cmd.spawn().unwrap();
    let http = wait_logged_addr(&mut child, &log_path, "HTTP endpoint serving", "address");
    // Every event naming the socket's path until it appears.
    let mut seen = Vec::new();
    while !seen
        .iter()
        .any(|k| matches!(k, EventKind::Modify(notify::event::ModifyKind::Name(_))))
    {
        let e = rx
            .recv_timeout(DEADLINE)
            .expect("the socket appears at its path");
        if e.paths.iter().any(|p| p == &sock) {
            seen.push(e.kind);
        }
    }
    assert!(
        !seen.iter().any(EventKind::is_create),
        "the socket was created at its path (open to connect before its chmod): {seen:?}"
    );
    let mode = std::fs::metadata(&sock).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);
    UnixDatagram::unbound()
        .unwrap()
        .send_to(b"masked:1|c", &sock)
        .unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(wait_for(http, &[("masked_total", 1.0)]));
    // SAFETY: kill(2) on the child we spawned and have not reaped.
    unsafe {
        libc::kill(child.id() as i32, libc::SIGTERM);
    }
    assert!(child.wait().unwrap().success());
    assert!(!sock.exists());
}
