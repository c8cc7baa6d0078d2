//! Fuzz the Outbound Message parser and the SessionId rewrite.
//!
//! A panic anywhere is a finding. Two sets of invariants:
//! - `soap_check` (shared with obmguard's corpus replay test): obmguard's parse agrees with a
//!   namespace-aware reader, and every rewrite keeps what it must and drops the old session id;
//! - the differential check of `obmguard::soap::lenient` (compiled under `--cfg fuzzing`): the
//!   production pipeline (parse, policy, rewrite) in strip, remove, reject and inject mode, read
//!   back by a lenient receiver that follows SOAP-encoding `href`/`id` references and takes the
//!   first SessionId/EnterpriseUrl/PartnerUrl anywhere (Header included) and the first regex
//!   match: it must find no session id value (strip, remove, reject), exactly the token and only
//!   instance URLs (inject), and one `notifications`.

#![no_main]

// Each target uses part of the oracle.
mod soap_check;
#[allow(dead_code)]
mod view;

use libfuzzer_sys::fuzz_target;
use obmguard as obm;
use obmguard::soap::lenient;

fuzz_target!(|data: &[u8]| {
    soap_check::check(data);
    let v = lenient::check(data);
    if !v.is_empty() {
        let lines: Vec<String> = v.iter().map(|v| format!("  - {v}")).collect();
        panic!(
            "a lenient receiver reads what obmguard did not mean it to:\n{}",
            lines.join("\n")
        );
    }
});
