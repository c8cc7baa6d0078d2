//! The pingora application: one connection's journey, and one message's, as a sequence of
//! calls into the stage modules. Decisions are made in the stages, not here.
//!
//! ```text
//! connection  accept::SourceFilter (pre-TLS, in pingora's listener)
//!             accept::ConnectionCaps        per listener / per source address
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
//!             record::record                metrics, audit line, log line
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
use pingora_core::protocols::Stream;
use pingora_core::server::ShutdownWatch;
use pingora_http::ResponseHeader;
use tracing::Instrument;

use crate::accept::ConnectionCaps;
use crate::head::{HeadCutOff, HeadLimited};
use crate::identity::PeerIdentity;
use crate::metrics::stage;
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
}

impl Listener {
    pub fn new(rt: Arc<Runtime>, name: String) -> Self {
        Listener {
            rt,
            name,
            caps: ConnectionCaps::new(),
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
        self.connection(stream, shutdown).await;
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
        let in_force = rt.in_force();
        let gen = &in_force.generation;
        let limits = &gen.config.limits;
        let _slot = match self.caps.admit(
            peer.ip(),
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
        let handshake = Box::pin(
            in_force
                .tls
                .handshake(stream, gen.config.timeouts.tls_handshake),
        );
        let (tls, identity) = match handshake.await {
            Ok(ok) => ok,
            Err(f) => {
                rt.metrics.tls_failure(&self.name, f.kind());
                if f == crate::tls::HandshakeFailure::Timeout {
                    rt.metrics.timeout(stage::HANDSHAKE);
                }
                tracing::debug!(listener = %self.name, %peer, kind = f.kind(), "TLS handshake failed");
                return;
            }
        };
        drop(in_force);
        let (tls, head) = HeadLimited::new(tls);
        let mut stream: Stream = Box::new(tls);
        let mut persistent: Option<HttpPersistentSettings> = None;
        let mut reused = false;
        let opened = std::time::Instant::now();
        loop {
            let gen = rt.current();
            let t = &gen.config.timeouts;
            let mut session = ServerSession::new_http1(stream);
            if let Some(p) = persistent.take() {
                p.apply_to_session(&mut session);
            }
            let stopping =
                rt.is_draining() || *shutdown.borrow() || opened.elapsed() >= t.max_connection_age;
            session.set_keepalive((!stopping).then_some(t.idle_keepalive.as_secs()));
            // A kept-alive connection may idle before its next head; once a head starts, it
            // has request_head from its first byte (enforced by `head`).
            let wait = if reused {
                t.idle_keepalive + t.request_head
            } else {
                t.request_head
            };
            head.expect_head(2 * gen.config.limits.max_header_bytes, t.request_head);
            match tokio::time::timeout(wait, session.read_request()).await {
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
                    return;
                }
                Err(_) => {
                    if !reused {
                        rt.metrics.timeout(stage::REQUEST_HEAD);
                    }
                    return;
                }
            }
            // Boxed: an idle keep-alive connection then holds a small future, not the space the
            // whole request pipeline (body, parse, token, upstream call) needs while it runs.
            let reply = Box::pin(self.request(&gen, peer, &identity, &mut session)).await;
            if reply.close
                || rt.is_draining()
                || *shutdown.borrow()
                || opened.elapsed() >= t.max_connection_age
            {
                session.set_keepalive(None);
            }
            match tokio::time::timeout(t.response_write, write(&mut session, &reply)).await {
                Ok(Ok(())) => {}
                Ok(Err(_)) => return,
                Err(_) => {
                    rt.metrics.timeout(stage::RESPONSE_WRITE);
                    return;
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
                Ok(Some(r)) => {
                    let (s, p) = ReusedHttpStream::from_reusable_stream(r, settings).consume();
                    stream = s;
                    persistent = p;
                    reused = true;
                }
                _ => return,
            }
        }
    }

    /// One message: the pipeline decides, then the record stage counts, audits and logs.
    async fn request(
        &self,
        gen: &Generation,
        peer: SocketAddr,
        identity: &Arc<PeerIdentity>,
        s: &mut ServerSession,
    ) -> Reply {
        let rt = &self.rt;
        let mut facts = Facts::new(new_request_id(), peer, identity.clone());
        let span = tracing::info_span!("request", request_id = %facts.request_id);
        let raw_length_conflict = intake::raw_length_conflict(s);
        // A copy: the body is read from the same session while the head is in use.
        let req = s.req_header().clone();
        let head = pipeline::Head {
            req: &req,
            raw_length_conflict,
        };
        let out = pipeline::Outside {
            receiver: &rt.receivers,
            clock: &pipeline::SystemClock,
            inflight_total: rt.inflight_counter(),
            store: rt.store.as_deref(),
            queued: &rt.queued,
        };
        let mut body = SessionBody(s);
        // A panic anywhere in the pipeline still ends in a fault, a metric and an audit line
        // (and the connection is closed: its state is unknown).
        let outcome = std::panic::AssertUnwindSafe(
            pipeline::run(&out, gen, &head, &mut body, &mut facts).instrument(span.clone()),
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
        record::record(
            &rt.metrics,
            &rt.audit,
            &facts,
            result.as_ref().copied(),
            reply.status,
        );
        reply
    }
}

/// The request body, read from pingora's session for the pipeline.
struct SessionBody<'s>(&'s mut ServerSession);

#[async_trait]
impl pipeline::Body for SessionBody<'_> {
    async fn read(&mut self, max: usize, deadline: std::time::Duration) -> Result<Bytes, Refusal> {
        intake::read_body(self.0, max, deadline).await
    }
}

async fn write(s: &mut ServerSession, reply: &Reply) -> pingora_core::Result<()> {
    let mut h = ResponseHeader::build(reply.status, Some(3))?;
    h.insert_header("Content-Type", "text/xml; charset=utf-8")?;
    h.insert_header("Content-Length", reply.body.len().to_string())?;
    s.write_response_header(Box::new(h)).await?;
    s.write_response_body(reply.body.clone(), true).await?;
    Ok(())
}

fn new_request_id() -> String {
    format!("{:016x}", rand::random::<u64>())
}
