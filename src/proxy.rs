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
use crate::metrics::{cert_kind, stage};
use crate::policy::SessionPlan;
use crate::record::{self, Facts};
use crate::reject::Rejection;
use crate::runtime::{Generation, Runtime};
use crate::soap::{CallbackUrls, SessionRewrite};
use crate::{accept, intake, policy, soap, upstream};

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
        let gen = rt.current();
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
        let handshake = Box::pin(rt.tls.handshake(stream, gen.config.timeouts.tls_handshake));
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
        drop(gen);
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
                                .rejection("-", Rejection::HeadersTooLarge.reason());
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

    /// One message: run the stages, then record what happened.
    async fn request(
        &self,
        gen: &Generation,
        peer: SocketAddr,
        identity: &Arc<PeerIdentity>,
        s: &mut ServerSession,
    ) -> Reply {
        let mut facts = Facts::new(new_request_id(), peer, identity.clone());
        let mut body_read = false;
        let span = tracing::info_span!("request", request_id = %facts.request_id);
        // A panic anywhere in the stages still ends in a fault, a metric and an audit line
        // (and the connection is closed: its state is unknown).
        let stages = std::panic::AssertUnwindSafe(
            self.stages(gen, s, &mut facts, &mut body_read)
                .instrument(span.clone()),
        )
        .catch_unwind()
        .await;
        let _in_span = span.enter();
        let result = match stages {
            Ok(result) => result,
            Err(_) => {
                let route = facts.route.as_ref().map_or("-", |r| r.name.as_str());
                tracing::error!(route, "handling the message panicked (a bug in obmguard): answered 500, Salesforce will retry");
                self.rt.metrics.panic(route);
                body_read = false;
                Err(Rejection::Internal("panic"))
            }
        };
        let reply = match &result {
            Ok(()) => Reply {
                status: 200,
                body: Bytes::from_static(upstream::CANONICAL_ACK),
                close: false,
            },
            Err(r) => {
                let a = r.answer();
                Reply {
                    status: a.status,
                    body: a.body.into(),
                    close: !body_read,
                }
            }
        };
        record::record(&self.rt, &facts, result.as_ref().map(|_| ()), reply.status);
        reply
    }

    async fn stages(
        &self,
        gen: &Generation,
        s: &mut ServerSession,
        f: &mut Facts,
        body_read: &mut bool,
    ) -> Result<(), Rejection> {
        let rt = &self.rt;
        let config = &gen.config;
        intake::check_raw_framing(s)?;
        let req = s.req_header();
        intake::check_framing(req, &config.limits)?;
        let route = config
            .routes
            .get(intake::path(req))
            .ok_or(Rejection::UnknownPath)?
            .clone();
        f.route = Some(route.clone());
        let xff = req
            .headers
            .get_all("x-forwarded-for")
            .iter()
            .map(|v| v.as_bytes());
        f.client_ip = accept::client_ip(f.peer.ip(), xff, &config.source.trusted_proxies);
        if !route.source.contains(f.client_ip) {
            return Err(Rejection::SourceIp(f.client_ip));
        }
        f.identity
            .check_validity(crate::tls::unix_now())
            .map_err(Rejection::Identity)?;
        if let Some(rule) = &route.identity {
            rule.check(&f.identity).map_err(Rejection::Identity)?;
        }
        rt.metrics.cert_expiry(
            cert_kind::CLIENT_LAST_SEEN,
            &route.name,
            f.identity.not_after,
        );
        intake::check_message_head(req, route.message.max_body_bytes)?;
        let soap_action = req
            .headers
            .get("soapaction")
            .map(|v| Bytes::copy_from_slice(v.as_bytes()));
        let _inflight = rt.begin(gen, &route).ok_or(Rejection::Overloaded)?;
        let body = intake::read_body(
            s,
            route.message.max_body_bytes,
            config.timeouts.request_body,
        )
        .await?;
        *body_read = true;
        let msg = soap::parse(&body, &route.message.xml).map_err(Rejection::BadXml)?;
        let plan = policy::check(&msg, &route.message);
        f.message = Some(msg);
        let plan = plan?;
        f.plan = Some(plan);
        let msg = f
            .message
            .as_ref()
            .ok_or(Rejection::Internal("message lost"))?;

        let token = match (plan.session, &route.oauth) {
            (SessionPlan::Inject, Some(_)) => {
                let source = gen
                    .token_source(&route.name)
                    .ok_or(Rejection::Internal("no token source"))?;
                Some(source.token().await.map_err(|e| {
                    tracing::warn!(route = %route.name, error = %e, "no access token for inject");
                    Rejection::TokenUnavailable(e.reason())
                })?)
            }
            _ => None,
        };
        let how = match (plan.session, &token, &route.oauth) {
            (SessionPlan::Keep, ..) => SessionRewrite::Keep,
            (SessionPlan::Nil, ..) => SessionRewrite::Nil,
            (SessionPlan::Remove, ..) => SessionRewrite::Remove,
            (SessionPlan::Inject, Some(t), Some(o)) => SessionRewrite::Inject {
                token: t.access_token.expose(),
                urls: if o.rewrite_urls {
                    CallbackUrls::Rewrite(t.instance_url.as_str())
                } else {
                    CallbackUrls::Verify {
                        instance_url: t.instance_url.as_str(),
                        also: &o.callback_hosts,
                    }
                },
            },
            (SessionPlan::Inject, ..) => return Err(Rejection::Internal("inject without a token")),
        };
        let out = soap::rewrite(&body, msg, &how).map_err(|e| {
            tracing::warn!(route = %route.name, error = %e, "rewrite refused");
            match e {
                soap::RewriteError::BodyMismatch => Rejection::Internal("rewrite"),
                soap::RewriteError::CallbackUrl(what) => Rejection::CallbackUrl(what),
                _ => Rejection::TokenUnavailable("unsafe_token"),
            }
        })?;
        let out = match out {
            std::borrow::Cow::Borrowed(_) => body.clone(),
            std::borrow::Cow::Owned(v) => Bytes::from(v),
        };
        let bearer = token
            .as_ref()
            .filter(|_| route.oauth.as_ref().is_some_and(|o| o.header));
        let delivery = upstream::Delivery {
            route: &route,
            body: out,
            client_ip: f.client_ip,
            soap_action: soap_action.as_deref(),
            bearer: bearer.map(|t| t.access_token.expose()),
            request_id: &f.request_id,
            secret: token.as_ref().map(|t| t.access_token.expose()),
        };
        let (result, report) = rt.receivers.deliver(&delivery).await;
        if report.unsolicited {
            rt.metrics.upstream_unsolicited(&route.name);
        }
        f.upstream = Some(report);
        if let (Err(Rejection::UpstreamFault(text)), Some(t)) = (&result, &token) {
            // The receiver called back with our token and Salesforce refused it (revoked, or
            // the org's session timeout is shorter than ttl_seconds): fetch a new one for the
            // retry Salesforce will send. (The fault text was scrubbed of the token already.)
            if text.contains("INVALID_SESSION_ID") {
                if let Some(source) = gen.token_source(&route.name) {
                    tracing::warn!(route = %route.name, "the receiver reports INVALID_SESSION_ID: the cached token is dropped");
                    source.invalidate(t);
                }
            }
        }
        result
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
