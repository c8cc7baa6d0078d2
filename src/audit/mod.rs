//! The audit trail: one JSON line per message, written after the message's fate is decided.
//!
//! Threat model: the file is read by operators and shipped to log stores, so it must never
//! hold a secret. A record carries identifiers only (org, action, notification ids, sObject
//! types, certificate fingerprint and subject) and whether a session id was present, never
//! its value, a token, or any field value of the notification.
//!
//! Failure policy: a record that cannot be written (a full buffer, a failed write) is counted
//! (`obmguard_audit_write_failures_total`) and reported at error level; the message is still
//! answered truthfully. We fail open for the audit trail because refusing would make Salesforce retry a
//! message the receiver already accepted, and duplicate deliveries hurt operators more than a
//! gap in an audit file that is reported loudly.
//!
//! Records are written by the sink's own thread, in batches, within milliseconds; what a
//! crash can lose is described in [`crate::sink`] and the README's audit section.
//!
//! Deliberately not done: no reopen on SIGHUP or reload. The file is opened in append mode,
//! so rotation with `copytruncate` works; rotation by rename needs a restart.

use std::borrow::Cow;
use std::fs::OpenOptions;
use std::io::Write;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::SystemTime;

use serde::{Deserialize, Serialize};

use crate::accept::RateLimit;
use crate::sink::Sink;

mod json;

/// What the message's `SessionId` element held (as received, before any rewrite).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SessionIdSeen {
    /// A session id value was present.
    Value,
    /// `<SessionId xsi:nil="true"/>`.
    Nil,
    /// `<SessionId></SessionId>`.
    Empty,
    /// No `SessionId` element.
    Absent,
    /// The message was not parsed (refused earlier, or unparsable).
    Unknown,
}

/// One line of the audit file. Identifiers only: never a session id value, token or field.
///
/// Its text borrows what the request already holds (ids, names, labels): a record is built,
/// serialised and dropped at once, and copying its strings first cost about 1% of a request.
/// Read back, it owns them.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AuditRecord<'a> {
    /// When the decision was made: RFC 3339 UTC with milliseconds ([`timestamp`]).
    pub time: Cow<'a, str>,
    /// The request id also used in logs.
    pub request_id: Cow<'a, str>,
    /// The route's name, `-` when no route matched.
    pub route: Cow<'a, str>,
    /// `ip:port` of the TCP peer (behind a TCP load balancer, the load balancer).
    pub peer: Cow<'a, str>,
    /// The client address: the TCP peer, or the client a trusted load balancer's PROXY header
    /// named, then after trusted-proxy evaluation of `X-Forwarded-For`.
    pub client_ip: Cow<'a, str>,
    /// The AWS VPC endpoint the client came through, when a load balancer's PROXY v2 header
    /// named it (TLV 0xEA); absent otherwise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vpce_id: Option<Cow<'a, str>>,
    /// SHA-256 (hex) of the client certificate's DER.
    pub client_cert_sha256: Option<Cow<'a, str>>,
    /// The client certificate's subject.
    pub client_cert_subject: Option<Cow<'a, str>>,
    /// `OrganizationId` as found in the message.
    pub organization_id: Option<Cow<'a, str>>,
    /// `ActionId` as found in the message.
    pub action_id: Option<Cow<'a, str>>,
    /// Each `Notification/Id`.
    pub notification_ids: Vec<Cow<'a, str>>,
    /// Each distinct sObject type (`Account`, ...).
    pub sobject_types: Vec<Cow<'a, str>>,
    /// What the `SessionId` element held.
    pub session_id: SessionIdSeen,
    /// What the policy did: stripped, removed, rejected, audited, injected or kept.
    pub session_action: Option<Cow<'a, str>>,
    /// The route's session id mode: strip, remove, reject, audit or inject.
    pub mode: Option<Cow<'a, str>>,
    /// acked, nacked, rejected, upstream_error or token_unavailable.
    pub decision: Cow<'a, str>,
    /// The rejection or failure reason label.
    pub reason: Option<Cow<'a, str>>,
    /// The receiver's HTTP status, when it answered.
    pub upstream_status: Option<u16>,
    /// The receiver's Ack, when one was parsed.
    pub ack: Option<bool>,
    /// Total time spent on the message, milliseconds.
    pub duration_ms: f64,
    /// Time the receiver took, milliseconds.
    pub upstream_ms: Option<f64>,
    /// Queued mode: the store's id of the message (on the request's record once committed,
    /// and on every record of its deliveries).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message_id: Option<i64>,
    /// A delivery of a queued message: its attempt number (1 for the first). Records of
    /// deliveries have `decision` delivered, retried or dead_lettered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attempt: Option<u32>,
}

/// Opening the audit file failed, or a record was not queued.
#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    /// The configured audit file cannot be opened.
    #[error("cannot open audit file {path}: {source}; check that its directory exists and is writable by obmguard, or set audit to \"-\" for stdout")]
    Open {
        /// The configured path.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The record was dropped: more than the sink's capacity was waiting for the disk.
    #[error("audit record dropped: the audit file is not keeping up (a stalled or full disk); check free space and the disk's health")]
    Dropped,
    /// A record could not be serialized (a bug: every field is serializable).
    #[error("cannot serialize audit record (a bug in obmguard, please report it): {0}")]
    Serialize(#[from] serde_json::Error),
}

/// The audit sink: stdout or a file in append mode, written by its own thread
/// ([`crate::sink`]); lines never interleave.
pub struct AuditLog {
    sink: Sink,
    /// Records that never reached the queue (serialization; a bug), counted with the rest.
    unqueued: AtomicU64,
    report: RateLimit,
}

impl AuditLog {
    /// Open the sink named in the config: `-` for stdout, else a path (created if missing,
    /// mode 0640, appended to).
    pub fn open(spec: &str) -> Result<AuditLog, AuditError> {
        let out: Box<dyn Write + Send> = if spec == "-" {
            Box::new(std::io::stdout())
        } else {
            let mut opts = OpenOptions::new();
            opts.append(true).create(true);
            #[cfg(unix)]
            std::os::unix::fs::OpenOptionsExt::mode(&mut opts, 0o640);
            Box::new(opts.open(spec).map_err(|source| AuditError::Open {
                path: PathBuf::from(spec),
                source,
            })?)
        };
        Ok(AuditLog::on(Sink::new(
            "audit trail",
            out,
            crate::sink::DEFAULT_CAPACITY,
            crate::sink::AUDIT_GATHER,
        )))
    }

    fn on(sink: Sink) -> AuditLog {
        AuditLog {
            sink,
            unqueued: AtomicU64::new(0),
            report: RateLimit::new(1, std::time::Duration::from_secs(60)),
        }
    }

    /// Queue `rec` as one line for the writer. A record that cannot be queued is counted
    /// ([`AuditLog::lost`]) and logged at error level (at most once a minute), and the caller
    /// carries on: the message's answer does not depend on its audit line.
    pub fn write(&self, rec: &AuditRecord<'_>) -> Result<(), AuditError> {
        let result = self.queue(rec);
        if let Err(e) = &result {
            if matches!(e, AuditError::Serialize(_)) {
                self.unqueued.fetch_add(1, Ordering::Relaxed);
            }
            let (log, suppressed) = self.report.admit(std::time::Instant::now());
            if log {
                tracing::error!(error = %e, request_id = %rec.request_id, suppressed, "audit record lost");
            }
        }
        result
    }

    fn queue(&self, rec: &AuditRecord<'_>) -> Result<(), AuditError> {
        // A record is 600 to 900 bytes: one allocation, not four growths.
        let mut line = Vec::with_capacity(1024);
        json::write(&mut line, rec)?;
        line.push(b'\n');
        if self.sink.push(&line) {
            Ok(())
        } else {
            Err(AuditError::Dropped)
        }
    }

    /// Records lost so far: dropped, carried by a failed write, or not serializable.
    pub fn lost(&self) -> u64 {
        self.sink.dropped() + self.sink.failed() + self.unqueued.load(Ordering::Relaxed)
    }

    /// Write every queued record now (at a clean stop).
    pub fn flush(&self) {
        self.sink.flush();
    }
}

/// `t` as RFC 3339 UTC with milliseconds, e.g. `2026-03-02T09:15:04.123Z`. Fixed width, so
/// records sort and compare as strings.
pub fn timestamp(t: SystemTime) -> String {
    crate::logfmt::utc(t, crate::logfmt::Precision::Millis)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, UNIX_EPOCH};

    fn record(request_id: &str) -> AuditRecord<'_> {
        AuditRecord {
            time: timestamp(UNIX_EPOCH + Duration::from_millis(1_772_442_904_123)).into(),
            request_id: request_id.into(),
            route: "orders".into(),
            peer: "203.0.113.7:51234".into(),
            client_ip: "203.0.113.7".into(),
            vpce_id: None,
            client_cert_sha256: Some("ab".repeat(32).into()),
            client_cert_subject: Some("CN=acme.my.salesforce.com".into()),
            organization_id: Some("00D5e000000AbCdEAK".into()),
            action_id: Some("04k5e000000XyZaAAK".into()),
            notification_ids: vec!["04l5e00000AbCdEAAV".into()],
            sobject_types: vec!["Account".into()],
            session_id: SessionIdSeen::Value,
            session_action: Some("stripped".into()),
            mode: Some("strip".into()),
            decision: "acked".into(),
            reason: None,
            upstream_status: Some(200),
            ack: Some(true),
            duration_ms: 12.5,
            upstream_ms: Some(10.0),
            message_id: None,
            attempt: None,
        }
    }

    #[test]
    fn timestamp_is_rfc3339_utc_with_milliseconds() {
        let t = UNIX_EPOCH + Duration::from_millis(1_772_442_904_123);
        assert_eq!(timestamp(t), "2026-03-02T09:15:04.123Z");
        assert_eq!(timestamp(UNIX_EPOCH), "1970-01-01T00:00:00.000Z");
    }

    #[test]
    fn appends_one_json_line_per_record_that_reads_back() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.jsonl");
        let spec = path.to_str().unwrap();
        let first = AuditLog::open(spec).unwrap();
        first.write(&record("r1")).unwrap();
        first.flush();
        // A second open appends rather than truncating.
        let second = AuditLog::open(spec).unwrap();
        second.write(&record("r2")).unwrap();
        second.flush();
        let text = std::fs::read_to_string(&path).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 2);
        assert!(text.ends_with('\n'));
        let back: AuditRecord = serde_json::from_str(lines[1]).unwrap();
        assert_eq!(back, record("r2"));
        assert!(lines[0].contains(r#""session_id":"value""#));
    }

    /// The record writer's bytes are serde_json's, for every field set and unset, and for
    /// values that need escaping or are not finite.
    #[test]
    fn records_are_written_as_serde_json_writes_them() {
        let mut full = record("r1");
        full.vpce_id = Some("vpce-0123456789abcdef0".into());
        full.reason = Some("upstream_status".into());
        full.message_id = Some(-42);
        full.attempt = Some(3);
        full.notification_ids = vec!["a".into(), "b".into(), "".into()];
        let mut bare = record("r2");
        bare.client_cert_sha256 = None;
        bare.client_cert_subject = None;
        bare.organization_id = None;
        bare.action_id = None;
        bare.notification_ids = vec![];
        bare.sobject_types = vec![];
        bare.session_id = SessionIdSeen::Unknown;
        bare.session_action = None;
        bare.mode = None;
        bare.upstream_status = None;
        bare.ack = None;
        bare.upstream_ms = None;
        let mut hostile = record("\"quoted\" \\ back\nslash\u{0}\u{1f}\u{7f} é \u{2028} 😀");
        hostile.client_cert_subject = Some("CN=\"},\"forged\":true,{\"".into());
        hostile.duration_ms = f64::NAN;
        hostile.upstream_ms = Some(f64::INFINITY);
        hostile.ack = Some(false);
        for (i, rec) in [full, bare, hostile].iter().enumerate() {
            let mut ours = Vec::new();
            json::write(&mut ours, rec).unwrap();
            let theirs = serde_json::to_vec(rec).unwrap();
            assert_eq!(
                String::from_utf8_lossy(&ours),
                String::from_utf8_lossy(&theirs),
                "record {i}"
            );
        }
    }

    #[test]
    fn the_record_writer_refuses_anything_but_a_struct() {
        let mut out = Vec::new();
        assert!(json::write(&mut out, &"a string").is_err());
        assert!(json::write(&mut out, &vec![1, 2]).is_err());
        assert!(json::write(&mut out, &Some(1)).is_err());
    }

    #[test]
    fn open_reports_the_path_when_the_directory_is_missing() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("no-such-dir").join("audit.jsonl");
        let Err(err) = AuditLog::open(path.to_str().unwrap()) else {
            panic!("opening under a missing directory must fail");
        };
        assert!(err.to_string().contains("no-such-dir"), "{err}");
    }

    #[cfg(unix)]
    #[test]
    fn creates_the_file_without_world_access() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.jsonl");
        AuditLog::open(path.to_str().unwrap()).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o007, 0);
    }

    #[test]
    fn concurrent_writers_never_interleave_lines() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.jsonl");
        let log = AuditLog::open(path.to_str().unwrap()).unwrap();
        std::thread::scope(|s| {
            for t in 0..4 {
                let log = &log;
                s.spawn(move || {
                    for i in 0..200 {
                        log.write(&record(&format!("t{t}-{i}"))).unwrap();
                    }
                });
            }
        });
        log.flush();
        let text = std::fs::read_to_string(&path).unwrap();
        let mut n = 0;
        for line in text.lines() {
            serde_json::from_str::<AuditRecord>(line).unwrap();
            n += 1;
        }
        assert_eq!(n, 800);
    }

    #[test]
    fn failed_and_dropped_records_are_counted_as_lost() {
        // A real file whose every write fails (ENOSPC), behind a sink of 4 KiB.
        let full = OpenOptions::new().append(true).open("/dev/full").unwrap();
        let log = AuditLog::on(Sink::new(
            "test",
            Box::new(full),
            4096,
            crate::sink::AUDIT_GATHER,
        ));
        log.write(&record("r1")).unwrap();
        log.write(&record("r2")).unwrap();
        log.flush();
        assert_eq!(log.lost(), 2, "both records were in failed writes");
        let long_id = "x".repeat(5000);
        let huge = record(&long_id);
        assert!(matches!(log.write(&huge), Err(AuditError::Dropped)));
        assert_eq!(log.lost(), 3);
    }
}
