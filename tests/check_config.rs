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
