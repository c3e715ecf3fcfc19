//! `tallyd check-config` against golden outputs: each `tests/fixtures/check-config/<case>.toml`
//! is checked by the built binary (run in that directory, so paths print as written) and its
//! exit code, stdout and stderr compared byte for byte with `<case>.out`.
//!
//! `TALLYD_BLESS=1 cargo test --test check_config` rewrites the `.out` files from the current
//! output; review the diff before committing it.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

fn dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/check-config")
}

/// What `tallyd check-config <args>` does, as one text.
fn run(args: &[&str]) -> String {
    let out = Command::new(common::binary())
        .arg("check-config")
        .args(args)
        .current_dir(dir())
        .output()
        .expect("run tallyd");
    format!(
        "exit {}\n--- stdout\n{}--- stderr\n{}",
        out.status
            .code()
            .map_or_else(|| "by signal".to_string(), |c| c.to_string()),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn compare(case: &str, got: &str, failures: &mut Vec<String>) {
    let path: &Path = &dir().join(format!("{case}.out"));
    if std::env::var_os("TALLYD_BLESS").is_some_and(|v| v == "1") {
        std::fs::write(path, got).unwrap();
        eprintln!("blessed {}", path.display());
        return;
    }
    let want = std::fs::read_to_string(path).unwrap_or_default();
    if got != want {
        failures.push(format!(
            "{case}: check-config output differs from {case}.out (TALLYD_BLESS=1 rewrites it)\n\
             --- want\n{want}--- got\n{got}"
        ));
    }
}

#[test]
fn every_fixture_matches_its_golden_output() {
    let mut cases: Vec<String> = std::fs::read_dir(dir())
        .unwrap()
        .filter_map(|e| {
            let name = e.unwrap().file_name().into_string().unwrap();
            name.strip_suffix(".toml").map(str::to_string)
        })
        .collect();
    cases.sort();
    assert!(cases.len() >= 15, "fixtures missing: {cases:?}");
    let mut failures = Vec::new();
    for case in &cases {
        let got = run(&[&format!("{case}.toml")]);
        compare(case, &got, &mut failures);
    }
    // The file can also be given as --config, as to run; both at once is a usage error.
    compare(
        "config-flag",
        &run(&["--config", "good.toml"]),
        &mut failures,
    );
    compare(
        "config-flag-and-path",
        &run(&["-c", "several-errors.toml", "good.toml"]),
        &mut failures,
    );
    compare(
        "missing-file",
        &run(&["/nonexistent/tallyd.toml"]),
        &mut failures,
    );
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// A config file, or its directory, that every user may write to is a warning: anyone on the
/// host could change what tallyd does at its next reload. Git keeps no such modes, so the files
/// are made here.
#[test]
fn a_config_file_or_directory_anyone_can_write_is_a_warning() {
    use std::os::unix::fs::PermissionsExt as _;
    let dir = tempfile::tempdir().unwrap();
    let open = dir.path().join("open");
    std::fs::create_dir(&open).unwrap();
    let file = open.join("tallyd.toml");
    std::fs::write(&file, "[limits]\nmax_series = 10\n").unwrap();
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o666)).unwrap();
    std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o777)).unwrap();
    let out = Command::new(common::binary())
        .args(["check-config", "tallyd.toml"])
        .current_dir(&open)
        .output()
        .unwrap();
    assert!(out.status.success());
    assert_eq!(
        String::from_utf8_lossy(&out.stderr),
        "tallyd.toml: warning: tallyd.toml is writable by every user (mode 0666): anyone on the \
         host can change tallyd's config; chmod o-w it\n\
         tallyd.toml: warning: the directory . is writable by every user (mode 0777): anyone on \
         the host can replace tallyd's config file\n"
    );
    // The sticky bit (as on /tmp) keeps others from replacing the file: no directory warning.
    std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o1777)).unwrap();
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();
    let out = Command::new(common::binary())
        .args(["check-config", "tallyd.toml"])
        .current_dir(&open)
        .output()
        .unwrap();
    assert!(out.status.success());
    assert_eq!(String::from_utf8_lossy(&out.stderr), "");
}
