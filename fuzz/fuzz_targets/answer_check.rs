//! The invariants of the `answer` fuzz target, shared with the corpus replay in obmguard's unit
//! tests (`src/soap/corpus_replay.rs` includes this file by path).
//!
//! A panic is a finding. Beyond that, the one answer that matters is `Ack` (obmguard relays it
//! as success and Salesforce then drops the message), so whenever `parse_answer` says `Ack` the
//! check asserts that a namespace-aware reader (see `view`) accepts the body and finds exactly
//! one `Envelope/Body/notificationsResponse/Ack` whose whole text is `true` or `1`, with no other
//! element in the Body. A faultstring is never longer than 8 KiB (it is cut to 512 characters
//! only after secrets are scrubbed from it, in the upstream stage).
//! The including module provides `obm` (the obmguard crate) and `view` (the oracle).

use super::obm::soap::{parse_answer, Answer, Limits};
use super::view::{self, trim, OUT, SOAP};

/// Check one answer body; panics on a finding.
pub fn check(data: &[u8]) {
    match parse_answer(data, &Limits::default()) {
        Answer::Fault {
            faultstring: Some(s),
            ..
        } => assert!(s.len() <= 8 * 1024, "faultstring longer than 8 KiB"),
        Answer::Ack => {
            let els = view::read(data).unwrap_or_else(|e| {
                panic!("Ack from a body a namespace-aware reader refuses: {e}")
            });
            let body = [(SOAP, "Envelope"), (SOAP, "Body")];
            let in_body: Vec<_> = els.iter().filter(|e| e.child_of(&body)).collect();
            assert_eq!(in_body.len(), 1, "Ack with other elements in the Body");
            let acks: Vec<_> = els
                .iter()
                .filter(|e| {
                    e.is(&[
                        body[0],
                        body[1],
                        (OUT, "notificationsResponse"),
                        (OUT, "Ack"),
                    ])
                })
                .collect();
            assert_eq!(acks.len(), 1, "Ack without exactly one Ack element");
            let text = trim(&acks[0].text);
            assert!(
                matches!(text, "true" | "1"),
                "Ack from an Ack element whose text is {:?}",
                text.chars().take(80).collect::<String>()
            );
        }
        _ => {}
    }
}
