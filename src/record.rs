//! At the answer: one metrics update as it is written ([`count`]), then one audit line and
//! one log line ([`write`]).
//!
//! Only identifiers and decisions are recorded: never a body, a field value, a session id or
//! a token. Every value a sender chose (ids, sObject types, the certificate subject) passes
//! [`sanitize`] first: a valid Salesforce id as it is, anything else cut short and reduced to
//! a plain character set, so a megabyte "id" or a forged log line costs a few bytes. A failure to write the audit line is logged at error level and counted
//! (`obmguard_audit_write_failures_total`) but does not change the answer already decided:
//! refusing a message the receiver has accepted would only make Salesforce deliver it again.

use std::borrow::Cow;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use crate::accept::{Origin, Shown};
use crate::audit::{self, AuditLog, AuditRecord, SessionIdSeen};
use crate::identity::PeerIdentity;
use crate::metrics::{outcome, session_action, stage, Metrics};
use crate::policy::Plan;
use crate::queue::Accepted;
use crate::reject::{Failure, Refusal, Rejection};
use crate::runtime::RouteState;
use crate::soap::{Message, SessionIdState};
use crate::token::TokenFailure;
use crate::upstream::Report;

/// What we learnt about one request on its way through the stages.
pub struct Facts {
    pub request_id: String,
    pub started: Instant,
    /// The connection's TCP peer and client (see [`Origin`]).
    pub origin: Origin,
    /// The client after `X-Forwarded-For` from a trusted proxy (the connection's client until
    /// the pipeline has looked).
    pub client_ip: Shown<IpAddr>,
    pub identity: Arc<PeerIdentity>,
    pub route: Option<Arc<RouteState>>,
    pub message: Option<Message>,
    pub plan: Option<Plan>,
    pub upstream: Option<Report>,
    /// The request body was read whole (else the connection cannot be reused).
    pub body_read: bool,
    /// Queued mode: the store's id of the committed message.
    pub queued: Option<i64>,
}

impl Facts {
    pub fn new(request_id: String, origin: Origin, identity: Arc<PeerIdentity>) -> Self {
        Facts {
            request_id,
            started: Instant::now(),
            client_ip: origin.client.clone(),
            origin,
            identity,
            route: None,
            message: None,
            plan: None,
            upstream: None,
            body_read: false,
            queued: None,
        }
    }
}

fn seen(m: Option<&Message>) -> SessionIdSeen {
    match m.map(|m| m.session_id) {
        None => SessionIdSeen::Unknown,
        Some(SessionIdState::Absent) => SessionIdSeen::Absent,
        Some(SessionIdState::Nil) => SessionIdSeen::Nil,
        Some(SessionIdState::Empty) => SessionIdSeen::Empty,
        Some(SessionIdState::Value) => SessionIdSeen::Value,
    }
}

/// What [`count`] made of a finished request, for [`write`].
#[derive(Debug, Clone, Copy)]
pub struct Counted {
    total: Duration,
    decision: &'static str,
    reason: Option<&'static str>,
    action: Option<&'static str>,
    upstream_time: Option<Duration>,
}

/// Count one finished request in the metrics. Called before its answer is written, so a
/// scrape that follows the answer sees it.
pub fn count(m: &Metrics, f: &Facts, result: Result<Accepted, &Rejection>) -> Counted {
    let state = f.route.as_deref();
    let route = state.map_or("-", |r| r.route.name.as_str());
    let total = f.started.elapsed();
    let (decision, reason) = match result {
        Ok(Accepted::Delivered) => (outcome::ACKED, None),
        Ok(Accepted::Queued(_)) => (outcome::QUEUED, None),
        Ok(Accepted::Duplicate) => (outcome::DUPLICATE, None),
        Err(r) => (r.answer().outcome, Some(r.reason())),
    };
    match state {
        Some(s) => s.metrics.request(decision),
        None => m.request(route, decision),
    }
    if let Err(r) = result {
        match state {
            Some(s) => s.metrics.rejection(r.reason()),
            None => m.rejection(route, r.reason()),
        }
        match r {
            Rejection::Refused(Refusal::BodyTimeout(_)) => m.timeout(stage::REQUEST_BODY),
            Rejection::Failed(Failure::UpstreamTimeout(_)) => m.timeout(stage::UPSTREAM),
            Rejection::Failed(Failure::TokenUnavailable(TokenFailure::Timeout)) => {
                m.timeout(stage::TOKEN)
            }
            _ => {}
        }
    }
    // A session id was stripped, removed, audited or injected only if the message went on.
    let action = match (&result, f.plan) {
        (Err(Rejection::Refused(Refusal::SessionIdRejected)), _) => Some(session_action::REJECTED),
        (_, Some(p)) if f.upstream.is_some() || f.queued.is_some() => p.action,
        _ => None,
    };
    let upstream_time = f.upstream.as_ref().map(|u| u.elapsed);
    if let Some(s) = state {
        if let Some(a) = action {
            s.metrics.session_id(a);
        }
        if let Some(t) = upstream_time {
            s.metrics.observe_upstream(t);
        }
        s.metrics
            .observe_overhead(total.saturating_sub(upstream_time.unwrap_or_default()));
    }
    Counted {
        total,
        decision,
        reason,
        action,
        upstream_time,
    }
}

/// Audit and log one finished request, after its answer is written: the line building and
/// serialising (a tenth of a keep-alive request's CPU) is off the answer's path.
pub fn write(audit_log: &AuditLog, f: &Facts, c: &Counted, status: u16) {
    let Counted {
        total,
        decision,
        reason,
        action,
        upstream_time,
    } = *c;
    let state = f.route.as_deref();
    let route = state.map_or("-", |r| r.route.name.as_str());
    let msg = f.message.as_ref();
    let org = msg.map(|m| id(&m.organization_id));
    let rec = AuditRecord {
        time: audit::timestamp(SystemTime::now()).into(),
        request_id: f.request_id.as_str().into(),
        route: route.into(),
        peer: f.origin.peer.text().into(),
        client_ip: f.client_ip.text().into(),
        vpce_id: f.origin.vpce_id.as_deref().map(Cow::from),
        client_cert_sha256: Some(f.identity.sha256_hex.as_str().into()),
        client_cert_subject: Some(sanitize(&f.identity.subject, SUBJECT_MAX)),
        organization_id: org.clone(),
        action_id: msg.map(|m| id(&m.action_id)),
        notification_ids: msg
            .map(|m| m.notification_ids.iter().map(|n| id(n)).collect())
            .unwrap_or_default(),
        sobject_types: msg
            .map(|m| {
                m.sobject_types
                    .iter()
                    .map(|t| sanitize(t, TYPE_MAX))
                    .collect()
            })
            .unwrap_or_default(),
        session_id: seen(msg),
        session_action: action.map(Cow::from),
        mode: state.map(|r| r.route.message.session_id.as_str().into()),
        decision: decision.into(),
        reason: reason.map(Cow::from),
        upstream_status: f.upstream.as_ref().and_then(|u| u.status),
        ack: f.upstream.as_ref().and_then(|u| u.ack),
        duration_ms: total.as_secs_f64() * 1000.0,
        upstream_ms: upstream_time.map(|t| t.as_secs_f64() * 1000.0),
        message_id: f.queued,
        attempt: None,
    };
    // A record lost is counted by the audit log (obmguard_audit_write_failures_total).
    let _ = audit_log.write(&rec);
    // The request id comes from the enclosing `request` span.
    tracing::info!(
        route,
        peer = %f.origin.peer,
        client_ip = %f.client_ip,
        organization_id = org.as_deref().unwrap_or("-"),
        status,
        decision,
        reason = reason.unwrap_or("-"),
        upstream_status = f.upstream.as_ref().and_then(|u| u.status).unwrap_or(0),
        duration_ms = rec.duration_ms,
        "request"
    );
}

/// Longest sObject type name recorded (Salesforce's API names are at most 40 characters plus
/// a namespace prefix and suffix).
const TYPE_MAX: usize = 80;
/// Longest certificate subject recorded.
const SUBJECT_MAX: usize = 256;
/// Longest id recorded when it is not a valid id (a valid one is 15 or 18 characters).
const ID_MAX: usize = 24;

/// An id as recorded: as sent when it is a valid Salesforce id (or any other short run of
/// letters and digits), else sanitised and cut short.
fn id(raw: &str) -> Cow<'_, str> {
    sanitize(raw, ID_MAX)
}

/// A sender-chosen value made safe for a log line or an audit field: at most `max` characters
/// of a plain set (letters, digits and `.-_:/@=,+ `), anything else as `?`, and `…` plus the
/// original length in bytes when it was cut.
pub fn sanitize(raw: &str, max: usize) -> Cow<'_, str> {
    // The usual case, an id or a type name already plain and short, is kept as it is after one
    // pass over its bytes (an ASCII character is one byte, so `len` counts its characters).
    if raw.len() <= max && raw.bytes().all(|b| is_plain(char::from(b))) {
        return Cow::Borrowed(raw);
    }
    Cow::Owned(sanitize_chars(raw, max))
}

fn sanitize_chars(raw: &str, max: usize) -> String {
    let mut out = String::with_capacity(raw.len().min(max) + 16);
    for (n, c) in raw.chars().enumerate() {
        if n == max {
            out.push_str(&format!("…({} bytes)", raw.len()));
            return out;
        }
        out.push(if is_plain(c) { c } else { '?' });
    }
    out
}

fn is_plain(c: char) -> bool {
    c.is_ascii_alphanumeric()
        || matches!(c, '.' | '-' | '_' | ':' | '/' | '@' | '=' | ',' | '+' | ' ')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sender_values_are_bounded_and_plain() {
        assert_eq!(id("00D5e000000AbCdEAK"), "00D5e000000AbCdEAK");
        for raw in [
            "00D5e000000AbCdEAK",
            "00D5e000000AbCdEAA",
            "00D5e000000AbCd",
            "",
            "A".repeat(24).as_str(),
            "A".repeat(25).as_str(),
            "00D5e000000AbCd\u{e9}AK",
            "sf:Account_Custom__c",
            "CN=a, O=b+c/d@e",
            "x\ny\u{7f}",
            "é".repeat(30).as_str(),
        ] {
            for max in [0, 5, 15, 24, 80] {
                assert_eq!(
                    sanitize(raw, max),
                    sanitize_chars(raw, max),
                    "{raw:?} {max}"
                );
            }
        }
        let huge = "A".repeat(900_000);
        let cut = id(&huge);
        assert!(cut.len() < 64, "{cut}");
        assert!(cut.ends_with("(900000 bytes)"));
        assert_eq!(sanitize("a\nb\"c<d>\u{202e}", 80), "a?b?c?d??");
        assert_eq!(
            sanitize("CN=proxy.salesforce.com, O=Salesforce", 80),
            "CN=proxy.salesforce.com, O=Salesforce"
        );
    }
}
