//! Stage 6: calling the receiver and judging its answer.
//!
//! obmguard buffers both ways: the receiver gets the whole rewritten body with a fresh
//! Content-Length, and Salesforce gets 200 only after the receiver's whole answer has been
//! read (bounded) and parsed as `<Ack>true</Ack>`; what goes back is then obmguard's own
//! canonical Ack, never the receiver's bytes (a receiver that echoes its request would put the
//! injected token in Salesforce's monitoring). Everything else is a SOAP fault with 502 (504
//! for a timeout), so Salesforce retries: a false Ack would lose the message for good.
//!
//! Keep-alive and false Acks. On a reused connection an answer can only be attributed to our
//! request if nothing else is waiting on it. Every pooled connection ([`pool`]) is tested
//! without blocking just before the request is written: a connection holding any byte (an unsolicited second answer, or the start of
//! one) or already closed is dropped, counted, and that receiver gets no more reused
//! connections from this process (a receiver that answered twice once may do so again). What
//! remains is a receiver that sends an unsolicited answer *after* we wrote the next request on
//! the same connection: indistinguishable from a real answer at the HTTP level. Routes whose
//! receiver cannot be trusted to answer exactly once set `upstream_keepalive = false`: one
//! connection per message, and no answer can be read on behalf of another message.
//!
//! Nothing is retried once a byte of the request may have reached the receiver: a dead pooled
//! connection is detected before writing, so the request goes once, and a failure after that
//! is answered with a fault (Salesforce retries; the receiver never gets a message twice from
//! one delivery). Informational answers (`100 Continue`, `103 Early Hints`) are skipped as
//! HTTP requires; `101` and a `Content-Encoding` we did not ask for are refused.
//! Not done here: any store-and-forward.

mod pool;

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::FutureExt;
use pingora_core::connectors::{ConnectorOptions, TransportConnector};
use pingora_core::protocols::http::v1::client::HttpSession;
use pingora_core::protocols::Stream;
use pingora_core::upstreams::peer::{HttpPeer, Peer};
use pingora_core::ErrorType;
use tokio::io::AsyncReadExt;

use crate::accept::RateLimit;
use crate::config::{Limits, Route};
use crate::reject::Failure;
use crate::soap::{self, Answer};
use crate::FastSet;

/// What goes back to Salesforce once the receiver's Ack is verified.
pub const CANONICAL_ACK: &[u8] = b"<?xml version=\"1.0\" encoding=\"UTF-8\"?><soapenv:Envelope xmlns:soapenv=\"http://schemas.xmlsoap.org/soap/envelope/\"><soapenv:Body><notificationsResponse xmlns=\"http://soap.sforce.com/2005/09/outbound\"><Ack>true</Ack></notificationsResponse></soapenv:Body></soapenv:Envelope>";

/// Most informational (1xx) answers accepted before the real one.
const MAX_INFORMATIONAL: usize = 8;

/// What the receiver did, for the audit record and metrics.
#[derive(Debug, Default, Clone)]
pub struct Report {
    pub status: Option<u16>,
    pub ack: Option<bool>,
    pub elapsed: Duration,
    /// A pooled connection held an unsolicited answer (it was dropped, not used).
    pub unsolicited: bool,
}

/// One message on its way to the receiver.
pub struct Delivery<'a> {
    pub route: &'a Route,
    pub body: Bytes,
    /// The client the message came from (`X-Forwarded-For`); `None` for a queued message.
    pub client_ip: Option<&'a str>,
    pub soap_action: Option<&'a [u8]>,
    pub bearer: Option<&'a str>,
    pub request_id: &'a str,
}

/// How long a receiver's resolved addresses are used before they are looked up again.
const DNS_TTL: Duration = Duration::from_secs(30);

/// A receiver's addresses and when they were looked up.
type Resolved = (Instant, Arc<Vec<SocketAddr>>);

/// How one attempt on one address ended: before anything was sent (the next address may be
/// tried), or after (never retried).
enum Attempt {
    Connect(Failure),
    Sent(Failure),
}
use Attempt::{Connect, Sent};

/// The pooled client for all receivers.
pub struct Receivers {
    transport: TransportConnector,
    /// Idle connections for routes with `upstream_keepalive`.
    idle_pool: Arc<pool::IdlePool>,
    connect_timeout: Duration,
    idle: Duration,
    max_response: usize,
    /// Receivers (by pool key) that once left an unsolicited answer on a connection: they get
    /// a fresh connection per message from then on.
    distrusted: RwLock<FastSet<u64>>,
    /// Resolved receiver addresses by (host, port), with when they were resolved.
    dns: RwLock<HashMap<(String, u16), Resolved>>,
    /// Per route: how many failure warnings may be logged (a receiver that is down fails
    /// every message and every retry of a queued one).
    warnings: std::sync::Mutex<HashMap<String, Arc<RateLimit>>>,
}

/// Failure warnings logged per route per window; the rest are summarised when the next
/// window opens (every failure is still counted in the metrics and the audit trail).
pub const WARNINGS_PER_WINDOW: u64 = 10;
/// The window of [`WARNINGS_PER_WINDOW`].
pub const WARNING_WINDOW: Duration = Duration::from_secs(60);

impl Receivers {
    pub fn new(limits: &Limits, connect_timeout: Duration) -> Self {
        Receivers {
            // pingora connects (TCP, TLS with the route's trust); obmguard keeps idle
            // connections itself.
            transport: TransportConnector::new(Some(ConnectorOptions::new(0))),
            idle_pool: pool::IdlePool::new(limits.upstream_pool_size, limits.upstream_idle),
            connect_timeout,
            idle: limits.upstream_idle,
            max_response: limits.max_response_bytes,
            distrusted: RwLock::new(FastSet::default()),
            dns: RwLock::new(HashMap::new()),
            warnings: std::sync::Mutex::new(HashMap::new()),
        }
    }

    /// Idle receiver connections kept for reuse now.
    pub fn idle_connections(&self) -> usize {
        self.idle_pool.len()
    }

    /// Whether a failure warning for `route` may be logged now; says how many were held back
    /// when a new window opens.
    fn may_warn(&self, route: &str) -> bool {
        let limit = {
            let mut map = self.warnings.lock().unwrap_or_else(|p| p.into_inner());
            map.entry(route.to_string())
                .or_insert_with(|| Arc::new(RateLimit::new(WARNINGS_PER_WINDOW, WARNING_WINDOW)))
                .clone()
        };
        let (log, suppressed) = limit.admit(Instant::now());
        if suppressed > 0 {
            tracing::warn!(route, suppressed, "receiver failures not logged in the last minute (each is counted in the metrics and the audit trail)");
        }
        log
    }

    /// Deliver one message within the route's deadline. `Ok` means the receiver's verified
    /// Ack; the body to answer with is [`CANONICAL_ACK`].
    pub async fn deliver(&self, d: &Delivery<'_>) -> (Result<(), Failure>, Report) {
        let start = Instant::now();
        let mut report = Report::default();
        let limit = d.route.upstream_timeout;
        let result = match tokio::time::timeout(limit, self.exchange(d, &mut report)).await {
            Ok(r) => r,
            Err(_) => Err(Failure::UpstreamTimeout(limit.as_secs().max(1))),
        };
        report.elapsed = start.elapsed();
        (result, report)
    }

    async fn exchange(&self, d: &Delivery<'_>, report: &mut Report) -> Result<(), Failure> {
        // Every address the receiver's name resolves to, in order, until one connects.
        let addrs = self.resolve(d.route).await?;
        let mut last = Failure::UpstreamUnreachable;
        for addr in addrs.iter() {
            let peer = self.peer(d.route, *addr);
            match self.exchange_with(&peer, d, report).await {
                Err(Connect(f)) => last = f,
                Ok(()) => return Ok(()),
                Err(Sent(f)) => return Err(f),
            }
        }
        Err(last)
    }

    async fn exchange_with(
        &self,
        peer: &HttpPeer,
        d: &Delivery<'_>,
        report: &mut Report,
    ) -> Result<(), Attempt> {
        let key = peer.reuse_hash();
        let keepalive = d.route.upstream_keepalive
            && !self.distrusted.read().is_ok_and(|set| set.contains(&key));
        let mut stream = self
            .stream(peer, key, keepalive, d, report)
            .await
            .map_err(Connect)?;
        let head = self.request_head(d, keepalive).map_err(Sent)?;
        self.send(&mut stream, &head, &d.body, d.route)
            .await
            .map_err(Sent)?;
        // No read or write deadline of the session's own: `deliver`'s bounds the whole
        // exchange, and pingora's timer per read only repeated it (1.7k instructions a
        // message with the one in `send`).
        let mut s = HttpSession::new_with_options(stream, peer);
        let verdict = self.answer(&mut s, d, report).await;
        if verdict.is_ok() && keepalive {
            s.respect_keepalive();
            if let Some(stream) = s.reuse().await {
                self.idle_pool.put(key, stream);
            }
        }
        verdict.map_err(Sent)
    }

    /// The receiver's addresses, from a cache refreshed every [`DNS_TTL`] (an IP literal needs
    /// no lookup).
    async fn resolve(&self, route: &Route) -> Result<Arc<Vec<SocketAddr>>, Failure> {
        let up = &route.upstream;
        if let Ok(ip) = up.host.parse::<IpAddr>() {
            return Ok(Arc::new(vec![SocketAddr::new(ip, up.port)]));
        }
        let key = (up.host.clone(), up.port);
        if let Some((at, addrs)) = self.dns.read().ok().and_then(|c| c.get(&key).cloned()) {
            if at.elapsed() < DNS_TTL {
                return Ok(addrs);
            }
        }
        let addrs: Vec<SocketAddr> = tokio::net::lookup_host((up.host.as_str(), up.port))
            .await
            .map(|it| it.collect())
            .unwrap_or_default();
        if addrs.is_empty() {
            if self.may_warn(&route.name) {
                tracing::warn!(route = %route.name, host = %up.host, "receiver host does not resolve");
            }
            return Err(Failure::UpstreamUnreachable);
        }
        let addrs = Arc::new(addrs);
        if let Ok(mut cache) = self.dns.write() {
            cache.insert(key, (Instant::now(), addrs.clone()));
        }
        Ok(addrs)
    }

    /// A connection to write a request on: a pooled one that is provably quiet, or a new one.
    /// `key` is the peer's reuse hash: the pool's key.
    async fn stream(
        &self,
        peer: &HttpPeer,
        key: u64,
        keepalive: bool,
        d: &Delivery<'_>,
        report: &mut Report,
    ) -> Result<Stream, Failure> {
        let unreachable = |e: Box<pingora_core::Error>| {
            if self.may_warn(&d.route.name) {
                tracing::warn!(route = %d.route.name, error = %e, "receiver unreachable");
            }
            Failure::UpstreamUnreachable
        };
        if keepalive {
            // Bounded: each pass takes one connection out of the pool for good.
            for _ in 0..4 {
                let Some(mut stream) = self.idle_pool.take(key) else {
                    break;
                };
                match quiet(&mut stream) {
                    Quiet::Yes => return Ok(stream),
                    Quiet::Closed => continue,
                    Quiet::Data => {
                        tracing::warn!(route = %d.route.name, "the receiver sent bytes on an idle connection that no request asked for (an unsolicited answer); the connection is dropped and this receiver gets no more reused connections");
                        report.unsolicited = true;
                        if let Ok(mut set) = self.distrusted.write() {
                            set.insert(key);
                        }
                        break;
                    }
                }
            }
        }
        self.transport.new_stream(peer).await.map_err(unreachable)
    }

    /// Write a whole request, head and body, on the connection and flush it, within the
    /// route's deadline. One `writev` where the socket takes it all (one segment where it
    /// fits): the head and the body are not copied into one buffer, and do not go out as
    /// pingora's head-then-body.
    async fn send(
        &self,
        stream: &mut Stream,
        head: &[u8],
        body: &[u8],
        route: &Route,
    ) -> Result<(), Failure> {
        use tokio::io::AsyncWriteExt;
        let write = async {
            let mut parts = [std::io::IoSlice::new(head), std::io::IoSlice::new(body)];
            let mut parts = &mut parts[..];
            while !parts.is_empty() {
                let n = stream.write_vectored(parts).await?;
                if n == 0 {
                    return Err(std::io::ErrorKind::WriteZero.into());
                }
                std::io::IoSlice::advance_slices(&mut parts, n);
            }
            stream.flush().await
        };
        // Within `deliver`'s deadline, which bounds the whole exchange.
        write.await.map_err(|e: std::io::Error| {
            if self.may_warn(&route.name) {
                tracing::warn!(route = %route.name, error = %e, "sending to the receiver failed");
            }
            Failure::UpstreamUnreachable
        })
    }

    fn peer(&self, route: &Route, addr: SocketAddr) -> HttpPeer {
        let up = &route.upstream;
        let mut peer = HttpPeer::new(addr, up.tls, up.host.clone());
        let o = &mut peer.options;
        o.connection_timeout = Some(self.connect_timeout);
        o.total_connection_timeout = Some(self.connect_timeout * 2);
        o.read_timeout = Some(route.upstream_timeout);
        o.write_timeout = Some(route.upstream_timeout);
        o.idle_timeout = Some(self.idle);
        o.verify_cert = true;
        o.verify_hostname = true;
        o.ca = up.ca.clone();
        peer.group_key = up.trust_key;
        peer
    }

    /// The request head (the body goes out beside it: [`Receivers::send`]). Every header
    /// value is checked as an HTTP field value (no CR, LF or NUL can split the head).
    fn request_head(&self, d: &Delivery<'_>, keepalive: bool) -> Result<Vec<u8>, Failure> {
        let up = &d.route.upstream;
        let mut length = itoa::Buffer::new();
        let bearer = d.bearer.map(|t| format!("Bearer {t}"));
        let fields: [(&str, Option<&[u8]>); 8] = [
            ("Host", Some(up.authority.as_bytes())),
            ("Content-Type", Some(b"text/xml; charset=UTF-8")),
            ("SOAPAction", Some(d.soap_action.unwrap_or(b"\"\""))),
            (
                "Content-Length",
                Some(length.format(d.body.len()).as_bytes()),
            ),
            ("X-Forwarded-For", d.client_ip.map(str::as_bytes)),
            ("X-Request-Id", Some(d.request_id.as_bytes())),
            ("Connection", (!keepalive).then_some(b"close".as_slice())),
            ("Authorization", bearer.as_deref().map(str::as_bytes)),
        ];
        let path = up.path_and_query.as_bytes();
        if path
            .iter()
            .any(|b| b.is_ascii_whitespace() || b.is_ascii_control())
        {
            return Err(Failure::Internal(
                "the receiver's path is not a request target",
            ));
        }
        let mut out = Vec::with_capacity(512);
        out.extend_from_slice(b"POST ");
        out.extend_from_slice(path);
        out.extend_from_slice(b" HTTP/1.1\r\n");
        for (name, value) in fields {
            let Some(value) = value else { continue };
            if http::HeaderValue::from_bytes(value).is_err() {
                return Err(Failure::Internal(
                    "a header value is not a valid HTTP field value",
                ));
            }
            out.extend_from_slice(name.as_bytes());
            out.extend_from_slice(b": ");
            out.extend_from_slice(value);
            out.extend_from_slice(b"\r\n");
        }
        out.extend_from_slice(b"\r\n");
        Ok(out)
    }

    /// The answer to a request already sent. Nothing is retried from here on: the request may
    /// have reached the receiver.
    async fn answer(
        &self,
        s: &mut HttpSession,
        d: &Delivery<'_>,
        report: &mut Report,
    ) -> Result<(), Failure> {
        let name = &d.route.name;
        let limit = d.route.upstream_timeout;
        let failed = |what: &'static str| {
            move |e: Box<pingora_core::Error>| {
                if self.may_warn(name) {
                    tracing::warn!(route = %name, error = %e, "{what}");
                }
                // `deliver`'s deadline is the only one; a timeout here is still the receiver
                // being too slow.
                match e.etype() {
                    ErrorType::ReadTimedout | ErrorType::WriteTimedout => {
                        Failure::UpstreamTimeout(limit.as_secs().max(1))
                    }
                    _ => Failure::UpstreamUnreachable,
                }
            }
        };
        let mut informational = 0;
        let status = loop {
            s.read_response()
                .await
                .map_err(failed("no answer from the receiver"))?;
            let status = s.get_status().map_or(0, |c| c.as_u16());
            match status {
                101 => {
                    report.status = Some(status);
                    return Err(Failure::UpstreamBadAnswer(
                        "it switched protocols (101), which obmguard never asks for",
                    ));
                }
                100..=199 if informational < MAX_INFORMATIONAL => informational += 1,
                100..=199 => {
                    return Err(Failure::UpstreamBadAnswer(
                        "too many informational (1xx) answers",
                    ))
                }
                _ => break status,
            }
        };
        report.status = Some(status);
        let encoded = s
            .resp_header()
            .and_then(|h| h.headers.get(http::header::CONTENT_ENCODING))
            .is_some_and(|v| !v.as_bytes().eq_ignore_ascii_case(b"identity"));
        if encoded {
            return Err(Failure::UpstreamBadAnswer(
                "it carries a Content-Encoding obmguard did not ask for",
            ));
        }
        let mut body = Vec::new();
        loop {
            match s.read_body_bytes().await {
                Ok(Some(chunk)) => {
                    if body.len() + chunk.len() > self.max_response {
                        return Err(Failure::UpstreamBadAnswer(
                            "the answer is larger than limits.max_response_bytes",
                        ));
                    }
                    body.extend_from_slice(&chunk);
                }
                Ok(None) => break,
                Err(e) => {
                    if self.may_warn(name) {
                        tracing::warn!(route = %name, error = %e, "the receiver's answer was cut short");
                    }
                    return Err(Failure::UpstreamBadAnswer("the answer was cut short"));
                }
            }
        }
        let verdict = judge(status, &body, &d.route.message.xml);
        report.ack = match &verdict {
            Ok(()) => Some(true),
            Err(Failure::UpstreamNack) => Some(false),
            Err(_) => None,
        };
        verdict
    }
}

/// What a non-blocking read says about a pooled connection.
enum Quiet {
    /// Nothing to read: safe to send a request on.
    Yes,
    /// Closed or broken by the receiver.
    Closed,
    /// Bytes nobody asked for.
    Data,
}

fn quiet(stream: &mut Stream) -> Quiet {
    let mut buf = [0u8; 1];
    // `unconstrained`: a ready read must not be reported as pending because of tokio's budget.
    match tokio::task::unconstrained(stream.read(&mut buf)).now_or_never() {
        None => Quiet::Yes,
        Some(Ok(0)) | Some(Err(_)) => Quiet::Closed,
        Some(Ok(_)) => Quiet::Data,
    }
}

/// 200 + a well-formed `<Ack>true</Ack>` is the only success.
/// A fault's text is kept whole (at most 8 KiB): the inject stage scrubs the token from it
/// before it is cut for Salesforce.
fn judge(status: u16, body: &[u8], limits: &soap::Limits) -> Result<(), Failure> {
    match (status, soap::parse_answer(body, limits)) {
        (200, Answer::Ack) => Ok(()),
        (_, Answer::Nack) => Err(Failure::UpstreamNack),
        (_, Answer::Fault { faultstring, .. }) => Err(Failure::UpstreamFault(
            faultstring.unwrap_or_else(|| "no faultstring".to_owned()),
        )),
        (200, Answer::Malformed(why)) => Err(Failure::UpstreamBadAnswer(explain(why))),
        (other, _) => Err(Failure::UpstreamStatus(other)),
    }
}

/// The fault text for an answer that is not a SOAP Ack, from the parser's label.
fn explain(label: &'static str) -> &'static str {
    match label {
        "not_notifications_response" => "it is not <notificationsResponse> in namespace http://soap.sforce.com/2005/09/outbound; Salesforce itself accepts only that element with <Ack>true</Ack> (knowledge article 000381752), so this receiver was already failing before obmguard: fix its answer",
        "ack_not_boolean" => "its <Ack> is not the boolean true or false",
        "two_acks" => "it holds two <Ack> elements",
        "no_ack" => "its notificationsResponse holds no <Ack>",
        "not_soap" => "it is not a SOAP 1.1 Envelope",
        "unexpected_content" => "it holds elements or text a SOAP Ack does not have",
        other => other,
    }
}

/// Shared so every connection task can reach it.
pub type SharedReceivers = Arc<Receivers>;

#[cfg(test)]
mod tests {
    use super::*;

    const ACK: &[u8] = br#"<soapenv:Envelope xmlns:soapenv="http://schemas.xmlsoap.org/soap/envelope/"><soapenv:Body><notificationsResponse xmlns="http://soap.sforce.com/2005/09/outbound"><Ack>true</Ack></notificationsResponse></soapenv:Body></soapenv:Envelope>"#;

    #[test]
    fn only_200_with_ack_true_is_success() {
        let l = soap::Limits::default();
        assert!(judge(200, ACK, &l).is_ok());
        assert!(matches!(
            judge(500, ACK, &l),
            Err(Failure::UpstreamStatus(500))
        ));
        assert!(matches!(
            judge(200, b"<html>ok</html>", &l),
            Err(Failure::UpstreamBadAnswer(_))
        ));
        assert!(matches!(
            judge(200, b"", &l),
            Err(Failure::UpstreamBadAnswer(_))
        ));
        let nack = String::from_utf8(ACK.to_vec())
            .unwrap()
            .replace("true", "false");
        assert!(matches!(
            judge(200, nack.as_bytes(), &l),
            Err(Failure::UpstreamNack)
        ));
    }
}
