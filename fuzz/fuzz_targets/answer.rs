//! Fuzz the reader of the receiver's answer. The invariants are in `answer_check` (shared with
//! obmguard's corpus replay test).

#![no_main]

// Each target uses part of the oracle.
mod answer_check;
#[allow(dead_code)]
mod view;

use libfuzzer_sys::fuzz_target;
use obmguard as obm;

fuzz_target!(|data: &[u8]| answer_check::check(data));
