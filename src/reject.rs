//! Every denial and failure, and the one function that turns it into an HTTP status, a SOAP
//! 1.1 fault and the metric labels.
//!
//! Salesforce treats anything but 200 + `<Ack>true</Ack>` as a failed delivery and retries it
//! for 24 hours, so every refusal here is safe for the message: it will come again. Fault
//! strings are written for the Salesforce admin reading Outbound Message monitoring and for
//! the operator reading logs: they say what was wrong, never a secret, a body or an internal
//! error chain. `soapenv:Client` means the sender must change something; `soapenv:Server`
//! means we or the receiver failed and a retry may succeed.
//!
//! The shape says which: a [`Refusal`] is the sender's to fix (4xx, `soapenv:Client`), a
//! [`Failure`] is ours or the receiver's (5xx, `soapenv:Server`). Stages return the one they
//! can produce (intake and policy refuse, delivery fails); [`Rejection`] is either.

use crate::identity::IdentityDenied;
use crate::metrics::outcome;
use crate::soap::{self, FaultCode, XmlError};
use crate::token::TokenFailure;

/// Something the sender must change: answered 4xx with a `soapenv:Client` fault.
#[derive(Debug, thiserror::Error)]
pub enum Refusal {
    #[error("no route for this path")]
    UnknownPath,
    #[error("only POST is accepted on this path")]
    Method,
    #[error("the request has both Content-Length and Transfer-Encoding")]
    AmbiguousLength,
    #[error("the request headers exceed the configured limits")]
    HeadersTooLarge,
    #[error("the source address {0} may not use this route")]
    SourceIp(std::net::IpAddr),
    #[error("{0}")]
    Identity(IdentityDenied),
    #[error("Content-Type must be text/xml or application/soap+xml")]
    ContentType,
    #[error("the body is larger than this route's limit of {0} bytes")]
    BodyTooLarge(usize),
    #[error("the body did not arrive within {0} seconds")]
    BodyTimeout(u64),
    #[error("the body could not be read completely")]
    BodyIncomplete,
    #[error("the notification is not acceptable XML: {0}")]
    BadXml(XmlError),
    #[error("{0}")]
    BadId(String),
    #[error("organization {0} may not use this route")]
    Organization(String),
    #[error("outbound message action {0} may not use this route")]
    Action(String),
    #[error("this route refuses messages that carry a session id: untick \"Send Session ID\" on the outbound message")]
    SessionIdRejected,
    #[error("the {0} is not an https URL on the Salesforce instance of this route's access token: obmguard sends no token beside a callback URL it cannot verify (send the org's own instance URL, or list its host in the route's oauth.callback_hosts)")]
    CallbackUrl(&'static str),
}

/// Something that failed on our side or the receiver's: answered 5xx with a `soapenv:Server`
/// fault; Salesforce retries.
#[derive(Debug, thiserror::Error)]
pub enum Failure {
    #[error("this route has too many messages in flight; retry later")]
    Overloaded,
    #[error("no OAuth access token could be obtained for the receiver ({}); retry later", .0.label())]
    TokenUnavailable(TokenFailure),
    #[error("the receiver could not be reached")]
    UpstreamUnreachable,
    #[error("the receiver did not answer within {0} seconds")]
    UpstreamTimeout(u64),
    #[error("the receiver answered Ack false")]
    UpstreamNack,
    #[error("the receiver answered with a SOAP fault: {0}")]
    UpstreamFault(String),
    #[error("the receiver answered HTTP {0} without an Ack")]
    UpstreamStatus(u16),
    #[error("the receiver's answer is not an Ack: {0}")]
    UpstreamBadAnswer(&'static str),
    #[error("obmguard is shutting down; retry later")]
    ShuttingDown,
    #[error("obmguard's message store is full ({0}); retry later")]
    StoreFull(&'static str),
    #[error("obmguard's message store is unavailable; retry later")]
    StoreUnavailable,
    #[error("obmguard failed to process the message ({0}); retry later")]
    Internal(&'static str),
}

/// Every way a message can end other than with an Ack.
#[derive(Debug, thiserror::Error)]
pub enum Rejection {
    #[error(transparent)]
    Refused(#[from] Refusal),
    #[error(transparent)]
    Failed(#[from] Failure),
}

/// What to send and what to count for a rejection.
pub struct Answer {
    pub status: u16,
    pub body: Vec<u8>,
    /// Label for `obmguard_rejections_total{reason}` (bounded).
    pub reason: &'static str,
    /// Label for `obmguard_requests_total{outcome}`.
    pub outcome: &'static str,
}

/// Every value of the `reason` label (see [`Rejection::reason`]), to create series up front.
pub const REASONS: &[&str] = &[
    "unknown_path",
    "method",
    "ambiguous_length",
    "headers_too_large",
    "source_ip",
    "identity",
    "content_type",
    "body_too_large",
    "body_timeout",
    "body_incomplete",
    "bad_xml",
    "bad_id",
    "organization",
    "action",
    "session_id_rejected",
    "callback_url",
    "overloaded",
    "token_unavailable",
    "upstream_unreachable",
    "upstream_timeout",
    "nack",
    "upstream_fault",
    "upstream_status",
    "upstream_bad_answer",
    "shutting_down",
    "store_full",
    "store_unavailable",
    "internal",
];

impl Refusal {
    fn reason(&self) -> &'static str {
        use Refusal::*;
        match self {
            UnknownPath => "unknown_path",
            Method => "method",
            AmbiguousLength => "ambiguous_length",
            HeadersTooLarge => "headers_too_large",
            SourceIp(_) => "source_ip",
            Identity(_) => "identity",
            ContentType => "content_type",
            BodyTooLarge(_) => "body_too_large",
            BodyTimeout(_) => "body_timeout",
            BodyIncomplete => "body_incomplete",
            BadXml(_) => "bad_xml",
            BadId(_) => "bad_id",
            Organization(_) => "organization",
            Action(_) => "action",
            SessionIdRejected => "session_id_rejected",
            CallbackUrl(_) => "callback_url",
        }
    }

    fn status(&self) -> u16 {
        use Refusal::*;
        match self {
            UnknownPath => 404,
            Method => 405,
            AmbiguousLength | BadXml(_) | BadId(_) | BodyIncomplete => 400,
            HeadersTooLarge => 431,
            SourceIp(_) | Identity(_) | Organization(_) | Action(_) | SessionIdRejected
            | CallbackUrl(_) => 403,
            ContentType => 415,
            BodyTooLarge(_) => 413,
            BodyTimeout(_) => 408,
        }
    }
}

impl Failure {
    fn reason(&self) -> &'static str {
        use Failure::*;
        match self {
            Overloaded => "overloaded",
            TokenUnavailable(_) => "token_unavailable",
            UpstreamUnreachable => "upstream_unreachable",
            UpstreamTimeout(_) => "upstream_timeout",
            UpstreamNack => "nack",
            UpstreamFault(_) => "upstream_fault",
            UpstreamStatus(_) => "upstream_status",
            UpstreamBadAnswer(_) => "upstream_bad_answer",
            ShuttingDown => "shutting_down",
            StoreFull(_) => "store_full",
            StoreUnavailable => "store_unavailable",
            Internal(_) => "internal",
        }
    }

    fn status_and_outcome(&self) -> (u16, &'static str) {
        use Failure::*;
        match self {
            Overloaded | ShuttingDown | StoreFull(_) => (503, outcome::REJECTED),
            StoreUnavailable => (503, outcome::STORE_ERROR),
            Internal(_) => (500, outcome::UPSTREAM_ERROR),
            TokenUnavailable(_) => (503, outcome::TOKEN_UNAVAILABLE),
            UpstreamUnreachable | UpstreamStatus(_) | UpstreamBadAnswer(_) => {
                (502, outcome::UPSTREAM_ERROR)
            }
            UpstreamTimeout(_) => (504, outcome::UPSTREAM_ERROR),
            UpstreamNack | UpstreamFault(_) => (502, outcome::NACKED),
        }
    }
}

impl Rejection {
    /// The bounded metric label and audit reason for this rejection.
    pub fn reason(&self) -> &'static str {
        match self {
            Rejection::Refused(r) => r.reason(),
            Rejection::Failed(f) => f.reason(),
        }
    }

    /// The one mapping from rejection to status, fault code and outcome.
    pub fn answer(&self) -> Answer {
        let (status, code, outcome) = match self {
            Rejection::Refused(r) => (r.status(), FaultCode::Client, outcome::REJECTED),
            Rejection::Failed(f) => {
                let (status, outcome) = f.status_and_outcome();
                (status, FaultCode::Server, outcome)
            }
        };
        Answer {
            status,
            body: soap::fault(code, &format!("obmguard: {self}")),
            reason: self.reason(),
            outcome,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_are_4xx_client_faults_and_failures_5xx_server_faults() {
        let a = Rejection::from(Refusal::Organization("00D000000000001".into())).answer();
        assert_eq!(a.status, 403);
        let body = String::from_utf8(a.body).unwrap();
        assert!(body.contains("soapenv:Client"), "{body}");
        assert!(body.contains("organization 00D000000000001 may not use this route"));
        let a = Rejection::from(Failure::UpstreamTimeout(30)).answer();
        assert_eq!(a.status, 504);
        assert!(String::from_utf8(a.body)
            .unwrap()
            .contains("soapenv:Server"));
        let a = Rejection::from(Failure::TokenUnavailable(TokenFailure::Timeout)).answer();
        assert_eq!(a.status, 503);
        assert!(String::from_utf8(a.body).unwrap().contains("(timeout)"));
        assert_eq!(
            Rejection::from(Failure::UpstreamNack).answer().outcome,
            outcome::NACKED
        );
    }

    #[test]
    fn every_reason_is_listed() {
        let all: Vec<Rejection> = vec![
            Refusal::UnknownPath.into(),
            Refusal::Method.into(),
            Refusal::AmbiguousLength.into(),
            Refusal::HeadersTooLarge.into(),
            Refusal::SourceIp(std::net::Ipv4Addr::LOCALHOST.into()).into(),
            Refusal::Identity(IdentityDenied::NotPinned).into(),
            Refusal::ContentType.into(),
            Refusal::BodyTooLarge(1).into(),
            Refusal::BodyTimeout(1).into(),
            Refusal::BodyIncomplete.into(),
            Refusal::BadXml(XmlError::NoRoot).into(),
            Refusal::BadId(String::new()).into(),
            Refusal::Organization(String::new()).into(),
            Refusal::Action(String::new()).into(),
            Refusal::SessionIdRejected.into(),
            Refusal::CallbackUrl("EnterpriseUrl").into(),
            Failure::Overloaded.into(),
            Failure::TokenUnavailable(TokenFailure::Status).into(),
            Failure::UpstreamUnreachable.into(),
            Failure::UpstreamTimeout(1).into(),
            Failure::UpstreamNack.into(),
            Failure::UpstreamFault(String::new()).into(),
            Failure::UpstreamStatus(500).into(),
            Failure::UpstreamBadAnswer("x").into(),
            Failure::ShuttingDown.into(),
            Failure::StoreFull("messages").into(),
            Failure::StoreUnavailable.into(),
            Failure::Internal("x").into(),
        ];
        let reasons: Vec<&str> = all.iter().map(Rejection::reason).collect();
        assert_eq!(reasons, REASONS);
        for r in &all {
            let a = r.answer();
            let client = matches!(r, Rejection::Refused(_));
            assert_eq!(client, (400..500).contains(&a.status), "{r:?}");
            assert_eq!(!client, (500..600).contains(&a.status), "{r:?}");
        }
    }

    #[test]
    fn receiver_fault_text_is_escaped() {
        let a = Rejection::from(Failure::UpstreamFault("<b>bad & worse</b>".into())).answer();
        let body = String::from_utf8(a.body).unwrap();
        assert!(
            body.contains("&lt;b&gt;bad &amp; worse&lt;/b&gt;"),
            "{body}"
        );
    }
}
