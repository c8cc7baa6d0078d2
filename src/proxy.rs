//! The pingora application: one connection's journey, and one message's, as a sequence of
//! calls into the stage modules. Decisions are made in the stages, not here.
//!
//! ```text
//! connection  accept::SourceFilter (pre-TLS, in pingora's listener)
//!             proxy_protocol::read          a proxy_protocol_from load balancer's PROXY
//!                                           header, own timeout; its client is source-checked
//!             accept::ConnectionCaps        per listener / per source (client) address
//!             proxy_protocol::opens_with_header   any other PROXY header: refused
//!             tls::TlsStage::handshake      rustls, client certificate required, own timeout
//! request     intake::check_framing         CL+TE, header limits
//!             route by exact path           404
//!             accept::client_ip + route ranges, identity::IdentityRule      403
//!             intake::check_message_head    405 / 415 / 413 (declared length)
//!             runtime::begin                per-route in-flight cap          503
//!             intake::read_body             413 / 408, one deadline
//!             soap::parse                   400
//!             policy::check                 403 (org, action, session id)
//!             token (inject)                503
//!             soap::rewrite
//!             upstream::deliver             200 only for a real Ack; else 502 / 504
//!             record::count / record::write metrics; after the answer, audit and log lines
//! ```
//! pingora's `ProxyHttp` streams the response header downstream before the body is seen, so
//! it could not turn a 200 carrying `<Ack>false</Ack>` into a 502; obmguard implements
//! `ServerApp` directly and drives pingora's HTTP/1 session itself (pingora still provides
//! listeners, the connection filter, HTTP parsing, upstream pooling, and graceful shutdown).

use std::net::SocketAddr;
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use futures::FutureExt;
use pingora_core::apps::{HttpPersistentSettings, ReusedHttpStream, ServerApp};
use pingora_core::protocols::http::ServerSession;
use pingora_core::protocols::l4::stream::Stream as L4Stream;
use pingora_core::protocols::Stream;
use pingora_core::server::ShutdownWatch;
use pingora_http::{RequestHeader, ResponseHeader};
use tracing::Instrument;

use crate::accept::{
    ConnectionCaps, Origin, RateLimit, SourceFilter, REFUSALS_LOGGED_PER_WINDOW,
    REFUSAL_LOG_WINDOW_SECS,
};
use crate::head::{HeadControl, HeadCutOff, HeadLimited};
use crate::identity::PeerIdentity;
use crate::metrics::stage;
use crate::proxy_protocol::{self, HeaderError};
use crate::record::{self, Facts};
use crate::reject::{Failure, Refusal, Rejection};
use crate::runtime::{Generation, Runtime};
use crate::{intake, pipeline, upstream};

/// How long an early refusal keeps reading the unwanted body before closing.
const LINGER: std::time::Duration = std::time::Duration::from_secs(2);

/// One listening address.
pub struct Listener {
    rt: Arc<Runtime>,
    name: String,
    caps: Arc<ConnectionCaps>,
    /// The listener's source check (also pingora's connection filter), for the client a load
    /// balancer's PROXY header names.
    filter: Arc<SourceFilter>,
    header_log: RateLimit,
}

impl Listener {
    pub fn new(rt: Arc<Runtime>, name: String, filter: Arc<SourceFilter>) -> Self {
        Listener {
            rt,
            name,
            caps: ConnectionCaps::new(),
            filter,
            header_log: RateLimit::new(
                REFUSALS_LOGGED_PER_WINDOW,
                std::time::Duration::from_secs(REFUSAL_LOG_WINDOW_SECS),
            ),
        }
    }
}

#[async_trait]
impl ServerApp for Listener {
    async fn process_new(
        self: &Arc<Self>,
        stream: Stream,
        shutdown: &ShutdownWatch,
    ) -> Option<Stream> {
        // A task of its own, sized for this connection's loop: pingora's per-connection task
        // (about 9 KB, its accept and handshake state included) ends here instead of being
        // held for the connection's life.
        let (me, shutdown) = (self.clone(), shutdown.clone());
        tokio::spawn(async move { me.connection(stream, &shutdown).await });
        None
    }
}

/// A reply ready to write.
struct Reply {
    status: u16,
    body: Bytes,
    /// Close the connection after this reply (the request body may not have been read).
    close: bool,
}

/// What a connection keeps between its requests.
struct Conn {
    origin: Origin,
    identity: Arc<PeerIdentity>,
    head: HeadControl,
    opened: std::time::Instant,
}

/// Wait for the first byte of the next request on an idle connection; `None` when the
/// client closed it (or it broke).
async fn first_byte(stream: &mut Stream) -> Option<u8> {
    use tokio::io::AsyncReadExt;
    let mut b = [0u8; 1];
    match stream.read(&mut b).await {
        Ok(1) => Some(b[0]),
        _ => None,
    }
}

impl Listener {
    async fn connection(&self, stream: Stream, shutdown: &ShutdownWatch) {
        let rt = &self.rt;
        let Some(peer) = stream
            .get_socket_digest()
            .and_then(|d| d.peer_addr().and_then(|a| a.as_inet().copied()))
        else {
            return;
        };
        if rt.is_draining() {
            return;
        }
        // pingora hands applications a boxed stream; the PROXY header and the TLS handshake
        // need the TCP stream itself.
        let Ok(l4) = stream.into_any().downcast::<L4Stream>() else {
            return;
        };
        let mut l4 = *l4;
        let in_force = rt.in_force();
        let gen = &in_force.generation;
        let (limits, t) = (&gen.config.limits, &gen.config.timeouts);
        let from_load_balancer = self.filter.is_load_balancer(peer.ip());
        let origin = if from_load_balancer {
            match self.proxy_header(&mut l4, peer, t.proxy_header).await {
                Some(o) => o,
                None => return,
            }
        } else {
            Origin::direct(peer)
        };
        let _slot = match self.caps.admit(
            origin.client.get(),
            limits.max_connections,
            limits.max_connections_per_source,
        ) {
            Ok(s) => s,
            Err(cap) => {
                rt.metrics.connection_refused(&self.name, cap.reason());
                return;
            }
        };
        let _open = rt.metrics.connection_open(&self.name);
        let started = std::time::Instant::now();
        // Where TLS should begin, a PROXY header is never believed: from a peer outside
        // proxy_protocol_from, nor a second one from a load balancer.
        match tokio::time::timeout(t.tls_handshake, proxy_protocol::opens_with_header(&mut l4))
            .await
        {
            Ok(false) => {}
            Ok(true) => {
                let e = if from_load_balancer {
                    HeaderError::Repeated
                } else {
                    HeaderError::Untrusted
                };
                self.header_refused(e, peer);
                return;
            }
            Err(_) => {
                rt.metrics
                    .tls_failure(&self.name, crate::tls::HandshakeFailure::Timeout.kind());
                rt.metrics.timeout(stage::HANDSHAKE);
                return;
            }
        }
        let handshake = Box::pin(
            in_force
                .tls
                .handshake(l4, t.tls_handshake.saturating_sub(started.elapsed())),
        );
        let (tls, identity) = match handshake.await {
            Ok(ok) => ok,
            Err(f) => {
                rt.metrics.tls_failure(&self.name, f.kind());
                if f == crate::tls::HandshakeFailure::Timeout {
                    rt.metrics.timeout(stage::HANDSHAKE);
                }
                tracing::debug!(listener = %self.name, %peer, client = %origin.client, kind = f.kind(), "TLS handshake failed");
                return;
            }
        };
        drop(in_force);
        let (tls, head) = HeadLimited::new(tls);
        let conn = Conn {
            origin,
            identity,
            head,
            opened: std::time::Instant::now(),
        };
        let mut stream: Stream = Box::new(tls);
        let mut persistent: Option<HttpPersistentSettings> = None;
        loop {
            // Boxed: only a connection with a message in flight holds the HTTP session and
            // the pipeline's state; an idle one holds its TLS stream and this loop.
            let exchange = Box::pin(self.exchange(&conn, stream, persistent, shutdown));
            let Some((s, p)) = exchange.await else { return };
            (stream, persistent) = (s, p);
            // Idle until the next request's first byte, with nothing allocated for it.
            let t = rt.current().config.timeouts.clone();
            match tokio::time::timeout(t.idle_keepalive, first_byte(&mut stream)).await {
                Ok(Some(b)) => conn.head.hold(b),
                Ok(None) | Err(_) => return,
            }
        }
    }

    /// One request on a connection: read its head, run the pipeline, write the answer.
    /// Returns the stream when the connection may carry another request.
    async fn exchange(
        &self,
        conn: &Conn,
        stream: Stream,
        persistent: Option<HttpPersistentSettings>,
        shutdown: &ShutdownWatch,
    ) -> Option<(Stream, Option<HttpPersistentSettings>)> {
        let rt = &self.rt;
        let head = &conn.head;
        let gen = rt.current();
        let t = &gen.config.timeouts;
        let mut session = ServerSession::new_http1(stream);
        if let Some(p) = persistent {
            p.apply_to_session(&mut session);
        }
        let stopping =
            rt.is_draining() || *shutdown.borrow() || conn.opened.elapsed() >= t.max_connection_age;
        session.set_keepalive((!stopping).then_some(t.idle_keepalive.as_secs()));
        // The head has request_head from its first byte (enforced by `head`); a kept-alive
        // connection's first byte has already arrived.
        head.expect_head(2 * gen.config.limits.max_header_bytes, t.request_head);
        match tokio::time::timeout(t.request_head, session.read_request()).await {
            Ok(Ok(true)) => head.head_done(),
            Ok(_) => {
                match head.cut_off() {
                    Some(HeadCutOff::TooLarge) => {
                        rt.metrics
                            .rejection("-", Rejection::from(Refusal::HeadersTooLarge).reason());
                    }
                    Some(HeadCutOff::Deadline) => rt.metrics.timeout(stage::REQUEST_HEAD),
                    None => {}
                }
                return None;
            }
            Err(_) => {
                rt.metrics.timeout(stage::REQUEST_HEAD);
                return None;
            }
        }
        let (reply, answered) = self
            .request(&gen, &conn.origin, &conn.identity, &mut session)
            .await;
        if reply.close
            || rt.is_draining()
            || *shutdown.borrow()
            || conn.opened.elapsed() >= t.max_connection_age
        {
            session.set_keepalive(None);
        }
        let written = tokio::time::timeout(t.response_write, write(&mut session, &reply)).await;
        answered.record(&rt.audit, reply.status);
        match written {
            Ok(Ok(())) => {}
            Ok(Err(_)) => return None,
            Err(_) => {
                rt.metrics.timeout(stage::RESPONSE_WRITE);
                return None;
            }
        }
        if reply.close {
            // Refused before its body was read: take in (and discard) what the client is
            // still sending, for a bounded time, so closing does not reset the connection
            // before the client has read our answer.
            let _ = tokio::time::timeout(LINGER, session.drain_request_body()).await;
        }
        let settings = HttpPersistentSettings::for_session(&session);
        match session.finish().await {
            Ok(Some(r)) => Some(ReusedHttpStream::from_reusable_stream(r, settings).consume()),
            _ => None,
        }
    }

    /// Read a load balancer's PROXY header within `limit` and check the client it names
    /// against the source ranges. `None`: the connection is refused (counted and logged).
    async fn proxy_header(
        &self,
        l4: &mut L4Stream,
        peer: SocketAddr,
        limit: std::time::Duration,
    ) -> Option<Origin> {
        let read = tokio::time::timeout(limit, proxy_protocol::read(l4))
            .await
            .unwrap_or(Err(HeaderError::Timeout));
        let said = match read {
            Ok(p) => p,
            Err(e) => {
                self.header_refused(e, peer);
                return None;
            }
        };
        // No client named (LOCAL, UNKNOWN): the load balancer's own connection, e.g. a
        // health check; it is admitted as the load balancer, and routes' ranges decide the rest.
        let client = said.client.map_or(peer.ip(), |c| c.ip()).to_canonical();
        if said.client.is_some() && !self.filter.admits_client(client, peer) {
            return None;
        }
        Some(Origin::behind(peer, client, said.vpce_id))
    }

    /// Count and log (rate-limited) a connection closed for its PROXY header.
    fn header_refused(&self, e: HeaderError, peer: SocketAddr) {
        let kind = e.kind();
        if e == HeaderError::Closed {
            tracing::debug!(listener = %self.name, %peer, "load balancer connection closed before its PROXY header");
            return;
        }
        self.rt.metrics.proxy_protocol_error(&self.name, kind);
        if e == HeaderError::Timeout {
            self.rt.metrics.timeout(stage::PROXY_HEADER);
        }
        let hint = match e {
            HeaderError::Untrusted => "the peer is not in server.proxy_protocol_from, so its header is not believed: list the load balancer there if it is yours",
            HeaderError::Missing => "the peer is in server.proxy_protocol_from but sent no PROXY header: turn on PROXY protocol (v1 or v2) towards obmguard on the load balancer, or take it out of the list",
            HeaderError::Repeated => "a second PROXY header followed the load balancer's",
            HeaderError::Timeout => "the header was not complete within timeouts.proxy_header_ms",
            HeaderError::Unsupported => "obmguard takes TCP over IPv4 or IPv6, v1 or v2, with at most 1024 bytes of v2 payload",
            _ => "the header is not valid PROXY protocol",
        };
        let (log, suppressed) = self.header_log.admit(std::time::Instant::now());
        if suppressed > 0 {
            tracing::warn!(listener = %self.name, suppressed, "{suppressed} more connections were closed for their PROXY header in the last window and not logged (obmguard_proxy_protocol_errors_total counts them all)");
        }
        if log {
            tracing::warn!(listener = %self.name, %peer, kind, "connection closed for its PROXY protocol header ({kind}): {hint}");
        } else {
            tracing::debug!(listener = %self.name, %peer, kind, "connection closed for its PROXY protocol header");
        }
    }

    /// One message: the pipeline decides and the record stage counts it; the audit and log
    /// lines wait in the returned [`Answered`] until the answer is written.
    async fn request(
        &self,
        gen: &Generation,
        origin: &Origin,
        identity: &Arc<PeerIdentity>,
        s: &mut ServerSession,
    ) -> (Reply, Answered) {
        let rt = &self.rt;
        let mut facts = Facts::new(new_request_id(), origin.clone(), identity.clone());
        let span = tracing::info_span!("request", request_id = %facts.request_id);
        let out = pipeline::Outside {
            receiver: &rt.receivers,
            clock: &pipeline::SystemClock,
            inflight_total: rt.inflight_counter(),
            store: rt.store.as_deref(),
            queued: &rt.queued,
        };
        let mut request = SessionRequest(s);
        // A panic anywhere in the pipeline still ends in a fault, a metric and an audit line
        // (and the connection is closed: its state is unknown).
        let outcome = std::panic::AssertUnwindSafe(
            pipeline::run(&out, gen, &mut request, &mut facts).instrument(span.clone()),
        )
        .catch_unwind()
        .await;
        let _in_span = span.enter();
        let result = outcome.unwrap_or_else(|_| {
            let route = facts.route.as_ref().map_or("-", |r| r.route.name.as_str());
            tracing::error!(route, "handling the message panicked (a bug in obmguard): answered 500, Salesforce will retry");
            match &facts.route {
                Some(r) => r.metrics.panic(),
                None => rt.metrics.panic("-"),
            }
            facts.body_read = false;
            Err(Failure::Internal("panic").into())
        });
        let reply = match &result {
            Ok(_) => Reply {
                status: 200,
                body: Bytes::from_static(upstream::CANONICAL_ACK),
                close: false,
            },
            Err(r) => {
                let a = r.answer();
                Reply {
                    status: a.status,
                    body: a.body.into(),
                    close: !facts.body_read,
                }
            }
        };
        let counted = record::count(&rt.metrics, &facts, result.as_ref().copied());
        drop(_in_span);
        let answered = Answered {
            facts,
            counted,
            span,
        };
        (reply, answered)
    }
}

/// A request counted and answered (or being answered), not yet audited and logged.
struct Answered {
    facts: Facts,
    counted: record::Counted,
    span: tracing::Span,
}

impl Answered {
    /// The audit line and the log line, once the answer is written (or failed to be).
    fn record(self, audit: &crate::audit::AuditLog, status: u16) {
        let _in_span = self.span.enter();
        record::write(audit, &self.facts, &self.counted, status);
    }
}

/// The request as pingora's session holds it, for the pipeline.
struct SessionRequest<'s>(&'s mut ServerSession);

#[async_trait]
impl pipeline::Request for SessionRequest<'_> {
    fn head(&self) -> &RequestHeader {
        self.0.req_header()
    }

    fn raw_length_conflict(&self) -> bool {
        intake::raw_length_conflict(self.0)
    }

    async fn read_body(
        &mut self,
        max: usize,
        deadline: std::time::Duration,
    ) -> Result<Bytes, Refusal> {
        intake::read_body(self.0, max, deadline).await
    }
}

async fn write(s: &mut ServerSession, reply: &Reply) -> pingora_core::Result<()> {
    // Room for our two headers and the two pingora adds (Date, Connection): a map sized for
    // fewer grows twice (its headers and their case) for every answer.
    let mut h = ResponseHeader::build(reply.status, Some(4))?;
    h.insert_header("Content-Type", "text/xml; charset=utf-8")?;
    h.insert_header(
        "Content-Length",
        itoa::Buffer::new().format(reply.body.len()),
    )?;
    s.write_response_header(Box::new(h)).await?;
    s.write_response_body(reply.body.clone(), true).await?;
    Ok(())
}

/// 16 random hex digits. (`hex::encode` builds its string a char at a time.)
fn new_request_id() -> String {
    let mut digits = [0u8; 16];
    // 8 bytes always fit 16 digits, which are always ASCII.
    let _ = hex::encode_to_slice(rand::random::<u64>().to_be_bytes(), &mut digits);
    String::from_utf8_lossy(&digits).into_owned()
}

#[cfg(test)]
mod tests {
    #[test]
    fn request_ids_are_16_lowercase_hex_digits_and_differ() {
        let ids: Vec<String> = (0..64).map(|_| super::new_request_id()).collect();
        for id in &ids {
            assert_eq!(id.len(), 16, "{id}");
            assert!(
                id.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')),
                "{id}"
            );
        }
        let distinct: std::collections::HashSet<&String> = ids.iter().collect();
        assert_eq!(distinct.len(), ids.len());
    }
}
