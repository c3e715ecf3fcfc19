//! Fuzzes the config loader: any text must load or fail with a located error, never panic,
//! and the error's line and column must point inside the text.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tallyd::config::live::Snapshot;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match Snapshot::from_toml(text) {
        Ok(snap) => {
            // A loaded config is internally consistent.
            assert!(snap.config.limits.max_series >= 1);
            for w in &snap.warnings {
                let _ = w.to_string();
            }
        }
        Err(e) => {
            let lines = text.lines().count().max(1) + 1;
            assert!(
                e.line <= lines,
                "error line {} beyond the text ({lines} lines): {e}",
                e.line
            );
            let _ = e.to_string();
        }
    }
});
