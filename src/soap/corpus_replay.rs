//! Replay every committed fuzz corpus file (fuzz/corpus/soap and fuzz/corpus/answer) under
//! `cargo test`, with the same invariants the fuzz targets check: the check code is the fuzz
//! targets' own (`fuzz/fuzz_targets/{soap,answer}_check.rs`, with the `view.rs` oracle),
//! included here by path so there is one copy. The lenient differential check is not part of
//! this replay (see `differential.rs`).

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::Path;

// The fuzz check files name the crate `obm`.
use crate as obm;

#[allow(dead_code)]
#[path = "../../fuzz/fuzz_targets/view.rs"]
mod view;

#[path = "../../fuzz/fuzz_targets/soap_check.rs"]
mod soap_check;

#[path = "../../fuzz/fuzz_targets/answer_check.rs"]
mod answer_check;

/// Run `check` on every file of `fuzz/corpus/<dir>`; the failures, one line each.
fn replay(dir: &str, check: fn(&[u8])) -> (usize, Vec<String>) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/corpus")
        .join(dir);
    let mut entries: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("cannot list {}: {e}", dir.display()))
        .map(|e| e.expect("a directory entry").path())
        .filter(|p| p.is_file())
        .collect();
    entries.sort();
    let mut failures = Vec::new();
    for path in &entries {
        let data = std::fs::read(path).expect("a corpus file");
        if let Err(panic) = catch_unwind(AssertUnwindSafe(|| check(&data))) {
            let why = panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| (*s).to_owned()))
                .unwrap_or_default();
            let name = path.file_name().unwrap_or_default().to_string_lossy();
            failures.push(format!("{name}: {}", why.lines().next().unwrap_or("")));
        }
    }
    (entries.len(), failures)
}

#[test]
fn every_soap_corpus_file_keeps_the_fuzz_invariants() {
    let (n, failures) = replay("soap", soap_check::check);
    assert!(n >= 90, "only {n} files in fuzz/corpus/soap");
    assert!(
        failures.is_empty(),
        "{} of {n} soap corpus files break a fuzz invariant:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

#[test]
fn every_answer_corpus_file_keeps_the_fuzz_invariants() {
    let (n, failures) = replay("answer", answer_check::check);
    assert!(n >= 9, "only {n} files in fuzz/corpus/answer");
    assert!(
        failures.is_empty(),
        "{} of {n} answer corpus files break a fuzz invariant:\n{}",
        failures.len(),
        failures.join("\n")
    );
}
