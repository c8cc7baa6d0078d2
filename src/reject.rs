//! Every denial and failure, and the one function that turns it into an HTTP status, a SOAP
//! 1.1 fault and the metric labels.
//!
//! Salesforce treats anything but 200 + `<Ack>true</Ack>` as a failed delivery and retries it
//! for 24 hours, so every refusal here is safe for the message: it will come again. Fault
//! strings are written for the Salesforce admin reading Outbound Message monitoring and for
//! the operator reading logs: they say what was wrong, never a secret, a body or an internal
//! error chain. `soapenv:Client` means the sender must change something; `soapenv:Server`
//! means we or the receiver failed and a retry may succeed.

use crate::identity::IdentityDenied;
use crate::metrics::outcome;
use crate::soap::{self, FaultCode, XmlError};

#[derive(Debug, thiserror::Error)]
pub enum Rejection {
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
    #[error("this route has too many messages in flight; retry later")]
    Overloaded,
    #[error("no OAuth access token could be obtained for the receiver ({0}); retry later")]
    TokenUnavailable(&'static str),
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
    #[error("obmguard failed to process the message ({0}); retry later")]
    Internal(&'static str),
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

impl Rejection {
    /// The bounded metric label and audit reason for this rejection.
    pub fn reason(&self) -> &'static str {
        use Rejection::*;
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
            Overloaded => "overloaded",
            TokenUnavailable(_) => "token_unavailable",
            UpstreamUnreachable => "upstream_unreachable",
            UpstreamTimeout(_) => "upstream_timeout",
            UpstreamNack => "nack",
            UpstreamFault(_) => "upstream_fault",
            UpstreamStatus(_) => "upstream_status",
            UpstreamBadAnswer(_) => "upstream_bad_answer",
            ShuttingDown => "shutting_down",
            Internal(_) => "internal",
        }
    }

    /// The one mapping from rejection to status, fault code and outcome.
    pub fn answer(&self) -> Answer {
        use Rejection::*;
        let (status, code, outcome) = match self {
            UnknownPath => (404, FaultCode::Client, outcome::REJECTED),
            Method => (405, FaultCode::Client, outcome::REJECTED),
            AmbiguousLength | BadXml(_) | BadId(_) => (400, FaultCode::Client, outcome::REJECTED),
            BodyIncomplete => (400, FaultCode::Client, outcome::REJECTED),
            HeadersTooLarge => (431, FaultCode::Client, outcome::REJECTED),
            SourceIp(_) | Identity(_) | Organization(_) | Action(_) | SessionIdRejected
            | CallbackUrl(_) => (403, FaultCode::Client, outcome::REJECTED),
            ContentType => (415, FaultCode::Client, outcome::REJECTED),
            BodyTooLarge(_) => (413, FaultCode::Client, outcome::REJECTED),
            BodyTimeout(_) => (408, FaultCode::Client, outcome::REJECTED),
            Overloaded | ShuttingDown => (503, FaultCode::Server, outcome::REJECTED),
            Internal(_) => (500, FaultCode::Server, outcome::UPSTREAM_ERROR),
            TokenUnavailable(_) => (503, FaultCode::Server, outcome::TOKEN_UNAVAILABLE),
            UpstreamUnreachable | UpstreamStatus(_) | UpstreamBadAnswer(_) => {
                (502, FaultCode::Server, outcome::UPSTREAM_ERROR)
            }
            UpstreamTimeout(_) => (504, FaultCode::Server, outcome::UPSTREAM_ERROR),
            UpstreamNack | UpstreamFault(_) => (502, FaultCode::Server, outcome::NACKED),
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
    fn client_problems_are_4xx_client_faults_and_ours_are_5xx_server_faults() {
        let a = Rejection::Organization("00D000000000001".into()).answer();
        assert_eq!(a.status, 403);
        let body = String::from_utf8(a.body).unwrap();
        assert!(body.contains("soapenv:Client"), "{body}");
        assert!(body.contains("organization 00D000000000001 may not use this route"));
        let a = Rejection::UpstreamTimeout(30).answer();
        assert_eq!(a.status, 504);
        assert!(String::from_utf8(a.body)
            .unwrap()
            .contains("soapenv:Server"));
        assert_eq!(Rejection::TokenUnavailable("timeout").answer().status, 503);
        assert_eq!(Rejection::UpstreamNack.answer().outcome, outcome::NACKED);
    }

    #[test]
    fn receiver_fault_text_is_escaped() {
        let a = Rejection::UpstreamFault("<b>bad & worse</b>".into()).answer();
        let body = String::from_utf8(a.body).unwrap();
        assert!(
            body.contains("&lt;b&gt;bad &amp; worse&lt;/b&gt;"),
            "{body}"
        );
    }
}
